"""The overlay header between relays (docs/internal/media.md), in pure Python.

The compiled relay reads and writes the header in C. This codec is the reference the tests hold
the relay to, and what Python tools (probes, captures) use to build or read overlay packets.

Layout (20 bytes, big endian)::

    0      1      2      4            8            12                    20
    +------+------+------+------------+------------+---------------------+---------
    |v<<4|f| ttl  | 0    | dest media | src media  | session id (dest)   | payload
    +------+------+------+------------+------------+---------------------+---------

Flags: 0x1 RTCP, 0x2 echo request, 0x4 echo reply; version 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fastpath.errors import BadPacket

HEADER_LEN = 20
VERSION = 1
INITIAL_TTL = 8
FLAG_RTCP = 0x1
FLAG_ECHO_REQUEST = 0x2
FLAG_ECHO_REPLY = 0x4
KNOWN_FLAGS = FLAG_RTCP | FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY

_LAYOUT = struct.Struct("!BBHIIQ")
assert _LAYOUT.size == HEADER_LEN


@dataclass(frozen=True)
class Header:
    """One overlay header.

    Attributes:
        destination: media id of the node the packet is for.
        source: media id of the node that sent it first.
        session: session id at the destination node (0 in echo probes).
        flags: a combination of ``FLAG_RTCP``, ``FLAG_ECHO_REQUEST``, ``FLAG_ECHO_REPLY``.
        ttl: hops left; the first relay sets ``INITIAL_TTL``.
    """

    destination: int
    source: int
    session: int
    flags: int = 0
    ttl: int = INITIAL_TTL


def encode_header(header: Header, payload: bytes = b"") -> bytes:
    """Serialize ``header`` followed by ``payload``.

    Raises:
        ValueError: a field does not fit its width, or the flags are not a valid combination.
    """
    if header.flags & ~KNOWN_FLAGS or (
        header.flags & (FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY)
        == (FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY)
    ):
        raise ValueError(f"invalid overlay flags {header.flags:#x}")
    try:
        raw = _LAYOUT.pack(
            VERSION << 4 | header.flags,
            header.ttl,
            0,
            header.destination,
            header.source,
            header.session,
        )
    except struct.error as exc:
        raise ValueError(f"overlay header field out of range: {header}") from exc
    return raw + payload


def decode_header_untrusted(data: bytes) -> tuple[Header, bytes]:
    """Parse an overlay datagram into its header and payload.

    Checks what the relay checks on every datagram before it looks at the addresses (a ttl of
    0 is a valid header: the relay drops it as ``ttl_expired``, but it decodes).

    Raises:
        BadPacket: with ``reason`` ``"short"``, ``"bad_version"``, ``"bad_flags"`` or
            ``"reserved"``; nothing else.
    """
    if len(data) < HEADER_LEN:
        raise BadPacket("short", f"overlay datagram of {len(data)} bytes, header is 20")
    first, ttl, reserved, destination, source, session = _LAYOUT.unpack_from(data)
    if first >> 4 != VERSION:
        raise BadPacket("bad_version", f"overlay version {first >> 4}, expected {VERSION}")
    flags = first & 0x0F
    if flags & ~KNOWN_FLAGS or (
        flags & (FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY) == (FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY)
    ):
        raise BadPacket("bad_flags", f"invalid overlay flags {flags:#x}")
    if reserved != 0:
        raise BadPacket("reserved", f"reserved overlay field is {reserved:#06x}, not 0")
    header = Header(destination=destination, source=source, session=session, flags=flags, ttl=ttl)
    return header, bytes(data[HEADER_LEN:])
