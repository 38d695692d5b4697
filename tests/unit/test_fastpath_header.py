"""The overlay header codec (fastpath/_header.py): layout, round trip, every refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath import (
    DROP_REASONS,
    FLAG_ECHO_REPLY,
    FLAG_ECHO_REQUEST,
    FLAG_RTCP,
    HEADER_LEN,
    INITIAL_TTL,
    BadPacket,
    Header,
    decode_header_untrusted,
    encode_header,
)

# docs/internal/media.md, byte for byte: version 1 + RTCP flag, ttl 8, reserved 0,
# destination 0x01020304, source 0x0A0B0C0D, session 0x1122334455667788.
WIRE = bytes.fromhex("11 08 0000 01020304 0a0b0c0d 1122334455667788") + b"rtcp"
HEADER = Header(0x01020304, 0x0A0B0C0D, 0x1122334455667788, FLAG_RTCP, INITIAL_TTL)


def test_layout_matches_the_spec() -> None:
    assert HEADER_LEN == 20
    assert encode_header(HEADER, b"rtcp") == WIRE
    assert decode_header_untrusted(WIRE) == (HEADER, b"rtcp")


@pytest.mark.parametrize(
    ("reason", "data"),
    [
        ("short", b""),
        ("short", WIRE[:19]),
        ("bad_version", b"\x21" + WIRE[1:]),
        ("bad_version", b"\x01" + WIRE[1:]),
        ("bad_flags", b"\x18" + WIRE[1:]),
        ("bad_flags", bytes([0x10 | FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY]) + WIRE[1:]),
        ("reserved", WIRE[:2] + b"\x00\x01" + WIRE[4:]),
        ("reserved", WIRE[:2] + b"\x80\x00" + WIRE[4:]),
    ],
)
def test_bad_headers_are_refused_with_the_relays_drop_reason(reason: str, data: bytes) -> None:
    with pytest.raises(BadPacket) as excinfo:
        decode_header_untrusted(data)
    assert excinfo.value.reason == reason
    assert reason in DROP_REASONS


def test_ttl_zero_decodes_the_relay_drops_it_by_policy() -> None:
    header, _ = decode_header_untrusted(encode_header(Header(1, 2, 3, ttl=0)))
    assert header.ttl == 0


@pytest.mark.parametrize(
    "header",
    [
        Header(1, 2, 3, flags=0x8),
        Header(1, 2, 3, flags=FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY),
        Header(2**32, 2, 3),
        Header(1, -1, 3),
        Header(1, 2, 2**64),
        Header(1, 2, 3, ttl=256),
    ],
)
def test_encode_refuses_what_does_not_fit(header: Header) -> None:
    with pytest.raises(ValueError, match="overlay"):
        encode_header(header)


headers = st.builds(
    Header,
    destination=st.integers(0, 2**32 - 1),
    source=st.integers(0, 2**32 - 1),
    session=st.integers(0, 2**64 - 1),
    flags=st.sampled_from([0, FLAG_RTCP, FLAG_ECHO_REQUEST, FLAG_ECHO_REPLY]),
    ttl=st.integers(0, 255),
)


@given(headers, st.binary(max_size=64))
def test_round_trip(header: Header, payload: bytes) -> None:
    assert decode_header_untrusted(encode_header(header, payload)) == (header, payload)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_bad_packet(data: bytes) -> None:
    reason = None
    try:
        header, payload = decode_header_untrusted(data)
    except BadPacket as exc:
        reason = exc.reason
    else:
        assert encode_header(header, payload) == data
    assert reason is None or reason in DROP_REASONS
