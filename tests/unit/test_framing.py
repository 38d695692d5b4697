"""Stream framing by Content-Length (RFC 3261 §18.3) with StreamFramer."""

from __future__ import annotations

import pytest

from overlay.sip import (
    LocalProtocolError,
    RemoteProtocolError,
    StreamFramer,
    make_error_response,
    parse_message_untrusted,
)


def _message(
    body: bytes = b"", *, length: str | None = None, name: str = "Content-Length"
) -> bytes:
    head = (
        "INVITE sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
        "From: <sip:a@example.com>;tag=1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: c1@example.com\r\n"
        "CSeq: 1 INVITE\r\n"
        f"{name}: {len(body) if length is None else length}\r\n"
        "\r\n"
    )
    return head.encode() + body


_SDP = b"v=0\r\n\r\n\r\nbody with CRLFCRLF inside\r\n\r\n"
_RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.com>;tag=1\r\n"
    b"To: <sip:bob@example.com>;tag=2\r\n"
    b"Call-ID: c1@example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"l  :\r\n 0\r\n"
    b"\r\n"
)

# (stream bytes, the messages it frames into)
STREAM_CASES: list[tuple[bytes, list[bytes]]] = [
    (_message(), [_message()]),
    (_message(_SDP), [_message(_SDP)]),
    (_message(_SDP) + _message() + _RESPONSE, [_message(_SDP), _message(), _RESPONSE]),
    # RFC 5626 §4.4.1 keep-alives (CRLFCRLF ping, CRLF pong) between and before messages.
    (b"\r\n\r\n" + _message() + b"\r\n" + _message(b"x"), [_message(), _message(b"x")]),
    (_message(b"abc", name="l"), [_message(b"abc", name="l")]),
    (_message(b"abc", name="CONTENT-LENGTH"), [_message(b"abc", name="CONTENT-LENGTH")]),
    (_message(b"abc", length="0003"), [_message(b"abc", length="0003")]),
    (_message(b"abc", length="0" * 5000 + "3"), [_message(b"abc", length="0" * 5000 + "3")]),
    (_message(length="0" * 5000), [_message(length="0" * 5000)]),
    (_RESPONSE, [_RESPONSE]),
    (b"\r\n\r\n\r\n", []),
]


def _drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (message := framer.next_message()) is not None:
        out.append(message)
    return out


@pytest.mark.parametrize(("data", "expected"), STREAM_CASES)
def test_stream_whole(data: bytes, expected: list[bytes]) -> None:
    framer = StreamFramer()
    framer.receive_data(data)
    assert _drain(framer) == expected
    open_before_eof = framer.closed
    framer.receive_data(b"")
    assert framer.next_message() is None
    assert (open_before_eof, framer.closed) == (False, True)
    for message in expected:
        parse_message_untrusted(message, stream=True)


@pytest.mark.parametrize(("data", "expected"), STREAM_CASES)
def test_stream_byte_at_a_time(data: bytes, expected: list[bytes]) -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for index in range(len(data)):
        framer.receive_data(data[index : index + 1])
        out.extend(_drain(framer))
    assert out == expected
    framer.receive_data(b"")
    assert framer.next_message() is None
    assert framer.closed


def test_waits_for_body() -> None:
    framer = StreamFramer()
    data = _message(b"0123456789")
    framer.receive_data(data[:-3])
    assert framer.next_message() is None
    assert framer.next_message() is None
    framer.receive_data(data[-3:])
    assert framer.next_message() == data


def test_linear_time_on_slow_head() -> None:
    """Feeding a head byte by byte must not rescan the buffer (h11 ReceiveBuffer).

    White-box: after each call the framer has remembered that everything it holds was searched.
    """
    big = _message().replace(b"CSeq:", b"X-Pad: " + b"a" * 3000 + b"\r\nCSeq:")
    framer = StreamFramer()
    for index in range(len(big) - 1):
        framer.receive_data(big[index : index + 1])
        assert framer.next_message() is None
        assert framer._searched == index + 1 or framer._message_size is not None
    framer.receive_data(big[-1:])
    assert framer.next_message() == big


@pytest.mark.parametrize(
    ("data", "reason", "hint"),
    [
        (_message(b"abc").replace(b"Content-Length: 3\r\n", b""), "Missing Content-Length", 400),
        (_message(length="-999"), "Bad Content-Length", 400),  # RFC 4475 §3.1.2.3
        (_message(length="five"), "Bad Content-Length", 400),
        (_message(length="99999999999999999999"), "Message Too Large", 513),
        (_message(length="70000"), "Message Too Large", 513),
        # RFC 4475 §3.3.9
        (
            _message(b"abc").replace(b"Content-Length: 3", b"Content-Length: 3\r\nl: 5"),
            "Multiple Content-Length headers",
            400,
        ),
        # Framing errors on a response: nobody to answer.
        (_RESPONSE.replace(b"l  :\r\n 0\r\n", b""), "Missing Content-Length", None),
    ],
)
def test_framing_errors(data: bytes, reason: str, hint: int | None) -> None:
    framer = StreamFramer()
    framer.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.reason == reason
    assert info.value.status_hint == hint
    if hint is not None:
        response = make_error_response(info.value)
        assert response is not None
        assert response.status == hint
        assert response.call_id == "c1@example.com"
    # The error state sticks, and later data is ignored.
    framer.receive_data(_message())
    with pytest.raises(RemoteProtocolError) as again:
        framer.next_message()
    assert again.value.reason == reason


def test_head_too_large() -> None:
    framer = StreamFramer(max_size=1000)
    framer.receive_data(b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\n")
    framer.receive_data(b"X-Pad: " + b"a" * 1000)
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.status_hint == 513
    assert info.value.headers is not None
    assert info.value.headers.get("Via") == "SIP/2.0/TCP h;branch=z9hG4bKx"


@pytest.mark.parametrize("data", [_message()[:-10], _message(b"abcdef")[:-2]])
def test_eof_inside_a_message(data: bytes) -> None:
    framer = StreamFramer()
    framer.receive_data(data)
    assert framer.next_message() is None
    framer.receive_data(b"")
    assert not framer.closed
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.reason == "EOF inside a message"
    assert info.value.status_hint is None


def test_data_after_eof_is_a_local_error() -> None:
    framer = StreamFramer()
    framer.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        framer.receive_data(b"x")
