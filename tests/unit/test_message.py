"""Parsing and serialising whole messages (RFC 3261 §7, §18.3, §20), and building responses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.sip import (
    REASON_PHRASES,
    CSeq,
    Headers,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Request,
    Response,
    Via,
    make_error_response,
    make_response,
    parse_message_untrusted,
    serialize,
)

VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9"
MANDATORY = [
    ("Via", VIA),
    ("Max-Forwards", "70"),
    ("From", "Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl"),
    ("To", "Bob <sip:bob@biloxi.example.com>"),
    ("Call-ID", "3848276298220188511@atlanta.example.com"),
]


def _wire(start: str, fields: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{name}: {value}" for name, value in fields), "", ""]
    return "\r\n".join(lines).encode() + body


def _same(parsed: Message, expected: Message) -> None:
    assert type(parsed) is type(expected)
    if isinstance(parsed, Request):
        assert isinstance(expected, Request)
        assert (parsed.method, parsed.uri) == (expected.method, expected.uri)
    else:
        assert isinstance(expected, Response)
        assert (parsed.status, parsed.reason) == (expected.status, expected.reason)
    assert list(parsed.headers) == list(expected.headers)
    assert parsed.body == expected.body


_OPTIONS_FIELDS = [*MANDATORY, ("CSeq", "63104 OPTIONS"), ("Content-Length", "0")]
_SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
_INVITE_FIELDS = [
    *MANDATORY,
    ("CSeq", "314159 INVITE"),
    ("Contact", "<sip:alice@192.0.2.1>"),
    ("Content-Type", "application/sdp"),
    ("Content-Length", str(len(_SDP))),
]
_RESPONSE_FIELDS = [
    ("Via", VIA),
    ("From", "Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl"),
    ("To", "Bob <sip:bob@biloxi.example.com>;tag=8321234356"),
    ("Call-ID", "3848276298220188511@atlanta.example.com"),
    ("CSeq", "314159 INVITE"),
    ("Content-Length", "0"),
]

# (wire bytes, expected message, what serialize() writes for it; None = the same bytes).
WIRE_CASES: list[tuple[bytes, Message, bytes | None]] = [
    (
        _wire("OPTIONS sip:bob@biloxi.example.com SIP/2.0", _OPTIONS_FIELDS),
        Request("OPTIONS", "sip:bob@biloxi.example.com", Headers(_OPTIONS_FIELDS)),
        None,
    ),
    (
        _wire("INVITE sip:bob@biloxi.example.com SIP/2.0", _INVITE_FIELDS, _SDP),
        Request("INVITE", "sip:bob@biloxi.example.com", Headers(_INVITE_FIELDS), _SDP),
        None,
    ),
    (
        _wire("SIP/2.0 200 OK", _RESPONSE_FIELDS),
        Response(200, "OK", Headers(_RESPONSE_FIELDS)),
        None,
    ),
    # RFC 4475 §3.1.1.13: empty reason phrase, the SP kept.
    (
        _wire("SIP/2.0 100 ", _RESPONSE_FIELDS),
        Response(100, "", Headers(_RESPONSE_FIELDS)),
        None,
    ),
    # RFC 4475 §3.1.1.12: UTF-8 reason phrase.
    (
        _wire("SIP/2.0 200 Хорошо", _RESPONSE_FIELDS),
        Response(200, "Хорошо", Headers(_RESPONSE_FIELDS)),
        None,
    ),
    # Compact forms, odd case and LWS around the colon: names come out canonical.
    (
        b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"v: " + VIA.encode() + b"\r\n"
        b"f   : <sip:a@b>;tag=1\r\n"
        b"T:<sip:c@d>\r\n"
        b"i: abc@host\r\n"
        b"cseq: 1 OPTIONS\r\n"
        b"X-Unknown-Header :  kept as is  \r\n"
        b"l: 0\r\n\r\n",
        Request(
            "OPTIONS",
            "sip:bob@biloxi.example.com",
            Headers(
                [
                    ("Via", VIA),
                    ("From", "<sip:a@b>;tag=1"),
                    ("To", "<sip:c@d>"),
                    ("Call-ID", "abc@host"),
                    ("CSeq", "1 OPTIONS"),
                    ("X-Unknown-Header", "kept as is"),
                    ("Content-Length", "0"),
                ]
            ),
        ),
        b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: " + VIA.encode() + b"\r\n"
        b"From: <sip:a@b>;tag=1\r\n"
        b"To: <sip:c@d>\r\n"
        b"Call-ID: abc@host\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"X-Unknown-Header: kept as is\r\n"
        b"Content-Length: 0\r\n\r\n",
    ),
    # Folding (RFC 3261 §7.3.1) is unfolded to one SP; leading CRLFs are skipped (§7.5).
    (
        b"\r\n\r\nOPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP\r\n 192.0.2.1:5060;branch=z9hG4bK74bf9\r\n"
        b"From: <sip:a@b>\r\n\t;tag=1\r\n"
        b"To: <sip:c@d>\r\n"
        b"Call-ID: abc@host\r\n"
        b"CSeq: 1\r\n  OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n",
        Request(
            "OPTIONS",
            "sip:bob@biloxi.example.com",
            Headers(
                [
                    ("Via", VIA),
                    ("From", "<sip:a@b> ;tag=1"),
                    ("To", "<sip:c@d>"),
                    ("Call-ID", "abc@host"),
                    ("CSeq", "1 OPTIONS"),
                    ("Content-Length", "0"),
                ]
            ),
        ),
        b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: " + VIA.encode() + b"\r\n"
        b"From: <sip:a@b> ;tag=1\r\n"
        b"To: <sip:c@d>\r\n"
        b"Call-ID: abc@host\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n",
    ),
    # Datagram without Content-Length: the body is the rest (RFC 4475 §3.4.1); serialize adds
    # the header.
    (
        _wire("INVITE sip:bob@biloxi.example.com SIP/2.0", _INVITE_FIELDS[:-1], _SDP),
        Request("INVITE", "sip:bob@biloxi.example.com", Headers(_INVITE_FIELDS[:-1]), _SDP),
        _wire("INVITE sip:bob@biloxi.example.com SIP/2.0", _INVITE_FIELDS, _SDP),
    ),
    # Extra bytes after the body in a datagram are ignored (RFC 4475 §3.1.1.8).
    (
        _wire("SIP/2.0 200 OK", _RESPONSE_FIELDS) + b"\r\ngarbage",
        Response(200, "OK", Headers(_RESPONSE_FIELDS)),
        _wire("SIP/2.0 200 OK", _RESPONSE_FIELDS),
    ),
]


@pytest.mark.parametrize(("data", "expected", "written"), WIRE_CASES)
def test_wire_cases(data: bytes, expected: Message, written: bytes | None) -> None:
    _same(parse_message_untrusted(data), expected)
    assert serialize(expected) == (data if written is None else written)
    # What we write parses back, and is then written identically.
    assert serialize(parse_message_untrusted(serialize(expected))) == serialize(expected)


def test_accessors() -> None:
    fields = [
        ("Via", VIA + ", SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK2"),
        ("Via", "SIP/2.0/UDP c.example.com;branch=z9hG4bK3"),
        ("From", "<sip:a@b>;tag=from1"),
        ("To", "sip:c@d"),
        ("Call-ID", "cid@host"),
        ("CSeq", "7 INVITE"),
        ("Max-Forwards", "0068"),
    ]
    request = parse_message_untrusted(_wire("INVITE sip:c@d SIP/2.0", fields))
    assert isinstance(request, Request)
    assert request.call_id == "cid@host"
    assert request.cseq == CSeq(7, "INVITE")
    assert request.top_via == Via.parse_untrusted(VIA)
    assert [via.host for via in request.vias] == ["192.0.2.1", "[2001:db8::1]", "c.example.com"]
    assert request.from_tag == "from1"
    assert request.to_tag is None
    assert request.max_forwards == 68
    request.headers.remove("Max-Forwards")
    assert request.copy().max_forwards is None

    copy = request.copy()
    copy.headers.set("Call-ID", "other")
    assert request.call_id == "cid@host"
    assert copy.call_id == "other"

    response = parse_message_untrusted(_wire("SIP/2.0 180 Ringing", _RESPONSE_FIELDS))
    assert isinstance(response, Response)
    assert response.to_tag == "8321234356"
    assert response.copy().headers == response.headers


@pytest.mark.parametrize(
    ("message", "attribute", "reason", "hint"),
    [
        (Request("BYE", "sip:a@b", Headers()), "call_id", "Missing Call-ID header", 400),
        (Response(200, "OK", Headers()), "call_id", "Missing Call-ID header", None),
        (Request("BYE", "sip:a@b", Headers([("CSeq", "x")])), "cseq", "Bad CSeq", 400),
        (Response(200, "OK", Headers([("CSeq", "x")])), "cseq", "Bad CSeq", None),
        (Response(200, "OK", Headers()), "top_via", "Missing Via header", None),
        (Request("BYE", "sip:a@b", Headers([("Via", "bad")])), "top_via", "Malformed Via", 400),
        (Response(200, "OK", Headers([("Via", "x,,y")])), "vias", "Empty element in Via", None),
        (
            Response(200, "OK", Headers([("From", '"x')])),
            "from_tag",
            "Unterminated quoted string in From",
            None,
        ),
        (Request("BYE", "sip:a@b", Headers()), "to_tag", "Missing To header", 400),
        (
            Request("BYE", "sip:a@b", Headers([("Max-Forwards", "256")])),
            "max_forwards",
            "Max-Forwards out of range",
            400,
        ),
        (
            Request("BYE", "sip:a@b", Headers([("Max-Forwards", "-1")])),
            "max_forwards",
            "Bad Max-Forwards",
            400,
        ),
    ],
)
def test_accessor_errors(message: Message, attribute: str, reason: str, hint: int | None) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        getattr(message, attribute)
    assert info.value.reason == reason
    assert info.value.status_hint == hint


def _request(
    start: str = "INVITE sip:bob@biloxi.example.com SIP/2.0", **replace: str | None
) -> bytes:
    """A valid INVITE with some fields replaced (value) or removed (None)."""
    fields = []
    for name, value in _INVITE_FIELDS[:-1]:
        key = name.replace("-", "_")
        if key in replace:
            new = replace[key]
            if new is not None:
                fields.append((name, new))
        else:
            fields.append((name, value))
    return _wire(start, fields)


BAD_REQUESTS: list[tuple[bytes, str, int | None]] = [
    (b"", "Empty message", None),
    (b"\r\n\r\n", "Empty message", None),
    (_request().removesuffix(b"\r\n"), "Header section not terminated by an empty line", 400),
    (_request(Via=None), "Missing Via header", None),
    (_request(From=None), "Missing From header", 400),
    (_request(To=None), "Missing To header", 400),
    (_request(Call_ID=None), "Missing Call-ID header", 400),
    (_request(CSeq=None), "Missing CSeq header", 400),
    (_request(CSeq="1 BYE"), "CSeq method does not match request method", 400),
    (_request(CSeq="99999999999 INVITE"), "CSeq number too large", 400),
    (_request(CSeq="one INVITE"), "Bad CSeq", 400),
    (_request(Call_ID="has space@x"), "Bad Call-ID", 400),
    (_request(Call_ID=""), "Bad Call-ID", 400),
    (_request(Max_Forwards="256"), "Max-Forwards out of range", 400),
    (_request(Max_Forwards="0" * 30 + "300"), "Max-Forwards out of range", 400),
    (_request(Max_Forwards="seventy"), "Bad Max-Forwards", 400),
    (_request(Max_Forwards="0" * 5000 + "256"), "Max-Forwards out of range", 400),
    (_request(Via="SIP/2.0/UDP"), "Malformed Via", 400),
    (_request(Via="SIP/2.0/UDP h;;,;,,"), "Bad parameter in Via", 400),
    (_request(To='"Mr. J. User <sip:j.user@example.com>'), "Unterminated quoted string in To", 400),
    (
        _request(From="Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
        "Bad display name in From",
        400,
    ),
    (_request(To="< sip:t.watson@example.org >"), "Malformed URI in To", 400),
    (_request("INVITE <sip:a@b> SIP/2.0"), "Request-URI enclosed in <>", 400),
    (_request("INVITE sip:a@b; lr SIP/2.0"), "Request-URI contains whitespace", 400),
    (_request("INVITE  sip:a@b SIP/2.0"), "Extra SP in Request-Line", 400),
    (_request("INVITE sip:a@b SIP/2.0 "), "Extra SP in Request-Line", 400),
    (_request("INVITE sip:a@b"), "Malformed Request-Line", 400),
    (_request("INVITE sip:a@b HTTP/1.1"), "Malformed Request-Line", 400),
    (_request("INVITE sip:a@b SIP/7.0"), "Version Not Supported", 505),
    (_request("INV<ITE sip:a@b SIP/2.0", CSeq="314159 INV<ITE"), "Bad method", 400),
    (_request("INVITE sip:a@b?Route=%3Csip:x%3E SIP/2.0"), "Request-URI contains headers", 400),
    (
        _request("INVITE sip:2001:db8::10 SIP/2.0"),
        "Bad Request-URI: IPv6 address without brackets in SIP URI",
        400,
    ),
    (_request("INVITE nocolon SIP/2.0"), "Bad Request-URI: URI has no scheme", 400),
    (_request().replace(b"To:", b"To:\xff"), "Header section is not valid UTF-8", 400),
    (_request().replace(b"To:", b"To:\n"), "Bare CR or LF in header section", 400),
    (_request().replace(b"To:", b"To:\r"), "Bare CR or LF in header section", 400),
    (_request().replace(b"To:", b"To"), "Malformed header line 5", 400),
    (_request().replace(b"Max-Forwards:", b"Max Forwards:"), "Malformed header line 3", 400),
    (_request().replace(b"To:", b": x\r\nTo:"), "Malformed header line 5", 400),
    # Line numbers count wire lines: the fold before the bad line is counted.
    (
        _request().replace(b"Max-Forwards:", b"X: a\r\n b\r\nbad line\r\nMax-Forwards:"),
        "Malformed header line 5",
        400,
    ),
    (_request().replace(b"To: ", b"To: <sip:x@y>\r\nTo: "), "Multiple To headers", 400),
    (
        _wire(
            "INVITE sip:a@b SIP/2.0", [*_INVITE_FIELDS[:-1], ("Content-Length", "1"), ("l", "1")]
        ),
        "Multiple Content-Length headers",
        400,
    ),
    (
        _wire("INVITE sip:a@b SIP/2.0", [*_INVITE_FIELDS[:-1], ("Content-Length", "-1")]),
        "Bad Content-Length",
        400,
    ),
    (
        _wire("INVITE sip:a@b SIP/2.0", [*_INVITE_FIELDS[:-1], ("Content-Length", "five")]),
        "Bad Content-Length",
        400,
    ),
    (
        _wire("INVITE sip:a@b SIP/2.0", [*_INVITE_FIELDS[:-1], ("Content-Length", "10")], b"short"),
        "Content-Length larger than message",
        400,
    ),
    (
        _wire("INVITE sip:a@b SIP/2.0", [*_INVITE_FIELDS[:-1], ("Content-Length", "9" * 40)]),
        "Content-Length larger than message",
        400,
    ),
    # No response is ever sent to an ACK (RFC 3261 §17.2.1).
    (
        _request("ACK sip:a@b SIP/2.0", CSeq="1 INVITE"),
        "CSeq method does not match request method",
        None,
    ),
]


@pytest.mark.parametrize(("data", "reason", "hint"), BAD_REQUESTS)
def test_bad_requests(data: bytes, reason: str, hint: int | None) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(data)
    assert info.value.reason == reason
    assert info.value.status_hint == hint
    assert "\r" not in info.value.reason
    assert "\n" not in info.value.reason


BAD_RESPONSES: list[tuple[bytes, str]] = [
    (
        _wire("SIP/2.0 4294967301 better not break the receiver", _RESPONSE_FIELDS),
        "Bad status code",
    ),
    (_wire("SIP/2.0 099 Low", _RESPONSE_FIELDS), "Bad status code"),
    (_wire("SIP/2.0 700 High", _RESPONSE_FIELDS), "Bad status code"),
    (_wire("SIP/2.0 2x0 OK", _RESPONSE_FIELDS), "Bad status code"),
    (_wire("SIP/3.0 200 OK", _RESPONSE_FIELDS), "Version Not Supported"),
    (_wire("SIP/2.0 200 O\x00K", _RESPONSE_FIELDS), "Control character in Reason-Phrase"),
    (_wire("SIP/2.0 200 OK", _RESPONSE_FIELDS[1:]), "Missing Via header"),
    (
        _wire(
            "SIP/2.0 200 OK", [*_RESPONSE_FIELDS[:-2], ("CSeq", "9292394834772304023312 OPTIONS")]
        ),
        "CSeq number too large",
    ),
]


@pytest.mark.parametrize(("data", "reason"), BAD_RESPONSES)
def test_bad_responses_are_never_answered(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(data)
    assert info.value.reason == reason
    assert info.value.status_hint is None
    assert info.value.headers is None
    assert make_error_response(info.value) is None


def test_response_without_reason_separator_is_accepted() -> None:
    response = parse_message_untrusted(_wire("SIP/2.0 200", _RESPONSE_FIELDS))
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (200, "")


def test_huge_leading_zeros_are_fine() -> None:
    """int() refuses strings of more than 4300 digits, leading zeros included."""
    zeros = "0" * 5000
    data = _wire(
        "INVITE sip:a@b SIP/2.0",
        [
            *_INVITE_FIELDS[:-1],
            ("Content-Length", zeros + str(len(_SDP))),
        ],
        _SDP,
    ).replace(b"Max-Forwards: 70", f"Max-Forwards: {zeros}70".encode())
    request = parse_message_untrusted(
        data.replace(b"CSeq: 314159", f"CSeq: {zeros}314159".encode())
    )
    assert isinstance(request, Request)
    assert (request.max_forwards, request.cseq.number, request.body) == (70, 314159, _SDP)
    assert parse_message_untrusted(data, stream=True).body == _SDP


def test_lower_case_version_is_accepted() -> None:
    request = parse_message_untrusted(_request("INVITE sip:a@b sip/2.0"))
    assert isinstance(request, Request)
    assert request.uri == "sip:a@b"


def test_max_size() -> None:
    data = _wire("INVITE sip:a@b SIP/2.0", _INVITE_FIELDS, _SDP)
    assert parse_message_untrusted(data, max_size=len(data)).body == _SDP
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(data, max_size=len(data) - 1)
    assert info.value.status_hint == 513
    response = make_error_response(info.value)
    assert response is not None
    assert response.status == 513


def test_stream_mode_needs_exact_content_length() -> None:
    data = _wire("INVITE sip:a@b SIP/2.0", _INVITE_FIELDS, _SDP)
    assert parse_message_untrusted(data, stream=True).body == _SDP
    with pytest.raises(RemoteProtocolError, match="does not match"):
        parse_message_untrusted(data + b"x", stream=True)
    no_length = _wire("INVITE sip:a@b SIP/2.0", _INVITE_FIELDS[:-1], _SDP)
    with pytest.raises(RemoteProtocolError, match="Missing Content-Length"):
        parse_message_untrusted(no_length, stream=True)


def test_serialize_rewrites_content_length() -> None:
    request = Request(
        "MESSAGE",
        "sip:a@b",
        Headers([("Content-Length", "999"), ("Via", VIA), ("l", "5")]),
        b"hello world",
    )
    assert serialize(request) == (
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 11\r\nVia: " + VIA.encode() + b"\r\n\r\n"
        b"hello world"
    )


@pytest.mark.parametrize(
    "message",
    [
        Request("INVITE", "sip:a@b c", Headers()),
        Request("IN VITE", "sip:a@b", Headers()),
        Request("INVITE", "sip:a@b\r\nX: y", Headers()),
        Response(200, "OK\r\nX: y", Headers()),
    ],
)
def test_serialize_refuses_bad_start_line(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        serialize(message)


# --- make_response / make_error_response (RFC 3261 §8.2.6) ------------------------------------


_TWO_VIAS = (
    "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1, SIP/2.0/UDP a.example.com;branch=z9hG4bKa"
)


def _invite_with_extras() -> Request:
    fields = [
        ("Via", _TWO_VIAS),
        ("Record-Route", "<sip:proxy.example.com;lr>"),
        ("Via", "SIP/2.0/TCP b.example.com;branch=z9hG4bKb"),
        ("Max-Forwards", "69"),
        ("From", "Alice <sip:alice@example.com>;tag=f1"),
        ("To", "Bob <sip:bob@example.com>"),
        ("Call-ID", "c1@example.com"),
        ("CSeq", "1 INVITE"),
        ("Timestamp", "54.2 0.5"),
        ("Contact", "<sip:alice@192.0.2.1>"),
        ("Content-Type", "application/sdp"),
    ]
    message = parse_message_untrusted(_wire("INVITE sip:bob@example.com SIP/2.0", fields, _SDP))
    assert isinstance(message, Request)
    return message


def test_make_response_copies_the_right_headers() -> None:
    request = _invite_with_extras()
    response = make_response(request, 180, to_tag="t42")
    assert (response.status, response.reason, response.body) == (180, "Ringing", b"")
    assert list(response.headers) == [
        ("Via", _TWO_VIAS),
        ("Via", "SIP/2.0/TCP b.example.com;branch=z9hG4bKb"),
        ("From", "Alice <sip:alice@example.com>;tag=f1"),
        ("To", "Bob <sip:bob@example.com>;tag=t42"),
        ("Call-ID", "c1@example.com"),
        ("CSeq", "1 INVITE"),
    ]
    assert response.to_tag == "t42"
    parsed = parse_message_untrusted(serialize(response))
    assert isinstance(parsed, Response)
    assert parsed.to_tag == "t42"
    assert [via.branch for via in parsed.vias] == ["z9hG4bKp1", "z9hG4bKa", "z9hG4bKb"]


def test_make_response_100_copies_timestamp_and_no_tag() -> None:
    response = make_response(_invite_with_extras(), 100, to_tag="ignored")
    assert response.reason == "Trying"
    assert response.headers.get("Timestamp") == "54.2 0.5"
    assert response.to_tag is None


def test_make_response_keeps_an_existing_to_tag() -> None:
    request = _invite_with_extras()
    request.headers.set("To", "Bob <sip:bob@example.com>;tag=existing")
    response = make_response(request, 200, "Fine", to_tag="new")
    assert response.reason == "Fine"
    assert response.to_tag == "existing"
    assert "Timestamp" not in response.headers


def test_make_response_default_reasons() -> None:
    request = _invite_with_extras()
    assert make_response(request, 483).reason == "Too Many Hops"
    assert make_response(request, 499).reason == "Bad Request"
    assert make_response(request, 699).reason == REASON_PHRASES[600]
    assert make_response(request, 200).headers.get("To") == "Bob <sip:bob@example.com>"


@pytest.mark.parametrize(
    ("status", "reason", "to_tag"),
    [(99, None, None), (700, None, None), (200, "O\r\nK", None), (200, None, "bad tag")],
)
def test_make_response_refuses_bad_arguments(
    status: int, reason: str | None, to_tag: str | None
) -> None:
    with pytest.raises(LocalProtocolError):
        make_response(_invite_with_extras(), status, reason, to_tag=to_tag)


def test_make_error_response() -> None:
    data = _request(CSeq="1 BYE").replace(
        b"Via: ", b"Via: SIP/2.0/TCP first;branch=z9hG4bK0\r\nVia: "
    )
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(data)
    response = make_error_response(info.value)
    assert response is not None
    assert response.status == 400
    assert response.reason == "CSeq method does not match request method"
    assert response.headers.get_all("Via") == ["SIP/2.0/TCP first;branch=z9hG4bK0", VIA]
    assert response.call_id == "3848276298220188511@atlanta.example.com"
    assert response.headers.get("CSeq") == "1 BYE"
    tag = response.to_tag
    assert tag is not None
    # The same request gets the same tag (RFC 3261 §8.2.7 stateless behaviour).
    with pytest.raises(RemoteProtocolError) as again:
        parse_message_untrusted(data)
    second = make_error_response(again.value)
    assert second is not None
    assert second.to_tag == tag
    parsed = parse_message_untrusted(serialize(response))
    assert list(parsed.headers) == [*response.headers, ("Content-Length", "0")]


def test_make_error_response_copies_singletons_once_and_bad_to_untouched() -> None:
    data = _request(To='"unterminated <sip:x@y>').replace(
        b"From: ", b"From: <sip:z@z>;tag=2\r\nFrom: "
    )
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(data)
    assert info.value.reason == "Multiple From headers"
    response = make_error_response(info.value)
    assert response is not None
    assert response.headers.get_all("From") == ["<sip:z@z>;tag=2"]
    assert response.headers.get_all("To") == ['"unterminated <sip:x@y>']


def test_make_error_response_505() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(_request("OPTIONS sip:a@b SIP/7.0", CSeq="1 OPTIONS"))
    response = make_error_response(info.value)
    assert response is not None
    assert (response.status, response.reason) == (505, "Version Not Supported")


def test_make_error_response_none_without_via_or_hint() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message_untrusted(_request(Via=None))
    assert info.value.headers is not None
    assert make_error_response(info.value) is None
    assert make_error_response(RemoteProtocolError("x")) is None
    assert (
        make_error_response(
            RemoteProtocolError("x", status_hint=None, headers=Headers([("Via", VIA)]))
        )
        is None
    )
    unsafe = RemoteProtocolError("a\r\nb", headers=Headers([("Via", VIA)]))
    response = make_error_response(unsafe)
    assert response is not None
    assert response.reason == "a  b"


# --- property: generated valid messages round-trip ------------------------------------------

_token = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=10,
)
_label = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
_value_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"),
    max_size=30,
).map(lambda s: s.strip(" \t"))
_extra_header = st.tuples(
    st.sampled_from(
        ["X-Custom", "Subject", "User-Agent", "Allow", "Supported", "Contact", "Route"]
    ),
    _value_text,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    is_request = draw(st.booleans())
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "REGISTER"]) | _token.map(str.upper))
    fields: list[tuple[str, str]] = [
        ("Via", f"SIP/2.0/UDP {draw(_label)}.example.com;branch=z9hG4bK{draw(_token)}"),
        ("From", f"<sip:{draw(_token)}@example.com>;tag={draw(_token)}"),
        ("To", f'"{draw(_token)}" <sip:{draw(_token)}@example.com>'),
        ("Call-ID", f"{draw(_token)}@{draw(_token)}"),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
    ]
    if is_request:
        fields.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    extras = draw(st.lists(_extra_header, max_size=6))
    for extra in extras:
        fields.insert(draw(st.integers(0, len(fields))), extra)
    body = draw(st.binary(max_size=200))
    headers = Headers(fields)
    if is_request:
        return Request(method, f"sip:{draw(_label)}@example.com", headers, body)
    status = draw(st.integers(100, 699))
    return Response(status, draw(_value_text), headers, body)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(messages(), st.booleans())
def test_serialize_parse_round_trip(message: Message, stream: bool) -> None:
    data = serialize(message)
    parsed = parse_message_untrusted(data, stream=stream)
    assert serialize(parsed) == data
    assert list(parsed.headers)[: len(message.headers)] == list(message.headers)
    assert parsed.body == message.body


def test_accessors_follow_header_changes_after_parse() -> None:
    """The parser remembers the values it validated; a change to the headers forgets them."""
    data = _wire("INVITE sip:bob@biloxi.example.com SIP/2.0", [*MANDATORY, ("CSeq", "1 INVITE")])
    request = parse_message_untrusted(data)
    assert isinstance(request, Request)
    assert request.top_via.branch == "z9hG4bK74bf9"
    assert request.to_tag is None
    assert request.max_forwards == 70
    copy = request.copy()
    copy.headers.replace_first_value("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKother")
    copy.headers.set("To", "Bob <sip:bob@biloxi.example.com>;tag=b1")
    copy.headers.set("Max-Forwards", "69")
    copy.headers.set("CSeq", "2 INVITE")
    copy.headers.set("Call-ID", "other@atlanta.example.com")
    assert (copy.top_via.host, copy.top_via.branch) == ("192.0.2.9", "z9hG4bKother")
    assert copy.to_tag == "b1"
    assert copy.max_forwards == 69
    assert copy.cseq == CSeq(2, "INVITE")
    assert copy.call_id == "other@atlanta.example.com"
    # The original keeps its own values.
    assert request.top_via.branch == "z9hG4bK74bf9"
    assert request.to_tag is None
    assert request.max_forwards == 70
    assert request.cseq == CSeq(1, "INVITE")
    assert request.call_id == "3848276298220188511@atlanta.example.com"
    request.headers.pop_first_value("Via")
    with pytest.raises(RemoteProtocolError, match="Missing Via"):
        _ = request.top_via
    request.headers.remove("Max-Forwards")
    assert request.copy().max_forwards is None
    request.headers.add("Via", VIA)
    assert request.top_via == Via.parse_untrusted(VIA)
    # A copy's memo is its own: what one learns after a change never reaches the other.
    other = request.copy()
    request.headers.insert_first("v", "SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKnew")
    assert request.top_via.transport == "TCP"
    assert other.top_via == Via.parse_untrusted(VIA)
    other.headers.remove("t")
    with pytest.raises(RemoteProtocolError, match="Missing To"):
        _ = other.to_tag
    assert request.to_tag is None
