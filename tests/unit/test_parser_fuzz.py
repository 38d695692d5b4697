"""Fuzz invariant (python-hyper/h11/fuzz/afl-server.py): any input either parses or raises
RemoteProtocolError, nothing else.

Everything is derandomised (hypothesis ``derandomize=True``, ``random.Random(seed)``) so a
failure reproduces on every run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.sip import (
    CSeq,
    NameAddr,
    RemoteProtocolError,
    StreamFramer,
    Via,
    make_error_response,
    parse_message_untrusted,
    parse_uri_untrusted,
    serialize,
    split_list_untrusted,
)

SEEDS: list[bytes] = [
    b"INVITE sip:bob@biloxi.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK74bf9;rport,"
    b" SIP/2.0/TCP h;branch=z9hG4bK2\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice \\"A\\"" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1;transport=tcp>\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 31\r\n"
    b"\r\n"
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n",
    b"SIP/2.0 180 Ringing\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;received=192.0.2.9\r\n"
    b"f: <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"t: <sip:bob@biloxi.example.com>;tag=314\r\n"
    b"i: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"l: 0\r\n"
    b"\r\n",
    b"OPTIONS tel:+1-201-555-0123 SIP/2.0\r\n"
    b"Via:  SIP / 2.0 / TCP\r\n spindle.example.com ; branch = z9hG4bK9ikj8\r\n"
    b"To: sip:user@example.com ; tag = x\r\n"
    b"From: caller<sip:caller@example.com>;tag=323\r\n"
    b"Call-ID: ab@c\r\n"
    b"CSeq: 0009\r\n OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n",
]

# Bytes that matter to the grammar: inserting them reaches the interesting branches faster.
_INTERESTING = [
    *(bytes([char]) for char in b'"\\<>;,:=@?%[] \t\r\n\x00\xff\xc30'),
    *(b"\r\n", b"\r\n ", b"\r\n\r\n", b"9" * 30, b"-1", b"0" * 4400, b"SIP/2.0", b"sip:"),
    *(b"Content-Length: 5\r\n", b"Via: x\r\n", b"To: <\r\n"),
]


def _check_error(exc: RemoteProtocolError) -> None:
    """A refusal has a reason fit for a status line and, if answered, an answer that serialises.
    (That answer need not parse: it carries the request's Via, From and To as they were.)"""
    assert "\r" not in exc.reason
    assert "\n" not in exc.reason
    response = make_error_response(exc)
    if response is not None:
        serialize(response)


def _check_message(data: bytes) -> None:
    """The invariant, plus: what parses re-serialises into something that parses again."""
    try:
        message = parse_message_untrusted(data)
    except RemoteProtocolError as exc:
        _check_error(exc)
        return
    again = parse_message_untrusted(serialize(message))
    assert serialize(again) == serialize(message)


def _check_framer(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_size=4096)
    pieces = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for piece in pieces:
            if piece:
                framer.receive_data(piece)
            while (message := framer.next_message()) is not None:
                with contextlib.suppress(RemoteProtocolError):
                    parse_message_untrusted(message, stream=True)
        framer.receive_data(b"")
        framer.next_message()
    except RemoteProtocolError as exc:
        _check_error(exc)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits (mostly one): bit flips, truncation, insertion, and
    duplicated or deleted lines."""
    for _ in range(rng.choice((1, 1, 1, 2, 4))):
        kind = rng.randrange(6)
        if not data:
            data = rng.choice(SEEDS)
        position = rng.randrange(len(data) + 1)
        if kind == 0 and position < len(data):
            flipped = data[position] ^ (1 << rng.randrange(8))
            data = data[:position] + bytes([flipped]) + data[position + 1 :]
        elif kind == 1:
            data = data[:position]
        elif kind == 2:
            data = data[:position] + rng.choice(_INTERESTING) + data[position:]
        elif kind == 3:
            data = data[:position] + rng.randbytes(rng.randint(1, 8)) + data[position:]
        else:
            lines = data.split(b"\r\n")
            index = rng.randrange(len(lines))
            if kind == 4:
                lines.insert(index, lines[index])
            else:
                del lines[index]
            data = b"\r\n".join(lines)
    return data


@pytest.mark.parametrize("seed", range(4))
def test_mutated_messages(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(6000):
        data = _mutate(rng.choice(SEEDS), rng)
        _check_message(data)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
        _check_framer(data + rng.choice(SEEDS), cuts)


@settings(
    max_examples=1500,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _check_message(data)
    _check_message(SEEDS[0][:200] + data)
    _check_framer(data, [len(data) // 2])


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(_INTERESTING)), max_size=5),
)
def test_structured_insertions(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    data = seed
    for position, insert in edits:
        position %= len(data) + 1
        data = data[:position] + insert + data[position:]
    _check_message(data)
    _check_framer(data, [1, len(data) // 3])


_GRAMMAR_TEXT = st.text(
    st.sampled_from(list("sipSIP:/2.0UDPtcp @[]<>;,=\"\\%3a9-_.!~*'()+$&?\t \x00\xe9")),
    max_size=60,
)


def _only_remote_errors(parse: Callable[[str], object], text: str) -> None:
    try:
        parse(text)
    except RemoteProtocolError as exc:
        _check_error(exc)


@settings(max_examples=2000, derandomize=True, deadline=None)
@given(st.one_of(st.text(max_size=80), _GRAMMAR_TEXT))
def test_value_parsers(text: str) -> None:
    _only_remote_errors(parse_uri_untrusted, text)
    _only_remote_errors(parse_uri_untrusted, "sip:" + text)
    _only_remote_errors(Via.parse_untrusted, text)
    _only_remote_errors(Via.parse_untrusted, "SIP/2.0/UDP " + text)
    _only_remote_errors(NameAddr.parse_untrusted, text)
    _only_remote_errors(NameAddr.parse_untrusted, '"x" <' + text)
    _only_remote_errors(CSeq.parse_untrusted, text)
    _only_remote_errors(CSeq.parse_untrusted, "1 " + text)
    _only_remote_errors(split_list_untrusted, text)


@pytest.mark.parametrize(
    "text",
    [
        # Inputs that would make a careless regex backtrack for a long time.
        "sip:" + "a" * 20000 + "!",
        "sip:a@" + "a." * 10000 + "-",
        "sip:[" + "1:" * 40 + "x]",
        "tel:" + "-" * 20000 + "!",
        "sip:a@b;" + "x" * 20000 + "=\x00",
        '"' + "\\a" * 10000,
        "SIP/2.0/UDP h;x=" + '"' * 20001,
        "<" + "<" * 10000,
    ],
)
def test_no_catastrophic_backtracking(text: str) -> None:
    _only_remote_errors(parse_uri_untrusted, text)
    _only_remote_errors(Via.parse_untrusted, text)
    _only_remote_errors(NameAddr.parse_untrusted, text)
    _only_remote_errors(split_list_untrusted, text)
