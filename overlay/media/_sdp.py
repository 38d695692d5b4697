"""SDP (RFC 8866) as the overlay edges need it: parse, rewrite toward the relay, serialise.

Theory of operation
-------------------
An edge rewrites every offer and answer so that its endpoint sends media to the local relay
(DESIGN.md, "Media"). It must not disturb anything else in the body: codecs, crypto, ICE,
bandwidth and vendor attributes travel to the other endpoint exactly as written. So an ``Sdp``
is first of all its lines, each kept as the bytes received together with its own line ending
(CRLF, or a bare LF which RFC 8866 §5 asks parsers to accept), and ``serialize_sdp`` gives back
the body byte for byte when nothing was changed. Only the lines the overlay acts on are parsed:

- ``v=`` (first line, must be ``v=0``) and ``o=`` (once, in the session part; RFC 3264 §8
  versioning, see ``bump_version`` and ``OriginKeeper``);
- ``c=`` at session level and in each media section, at most one per level, ``IN IP4`` or
  ``IN IP6``, with the ``/ttl`` and ``/number-of-addresses`` suffixes tolerated (§5.7);
- ``m=`` (§5.14): media, port with an optional ``/count``, proto, formats. Port 0 is a disabled
  stream (RFC 3264 §6) and is never given relay ports;
- in media sections: ``a=rtcp`` (RFC 3605), ``a=rtcp-mux`` (RFC 5761), the direction
  attributes (RFC 3264 §5.1; at session level too) and the overlay's own
  ``a=x-overlay-session:<node_id> <16 hex digits>`` (docs/internal/media.md).

Every other line only has to look like ``<letter>=<text>`` without NUL or CR: its text may be in
any charset (``a=charset``), since it is never decoded. Blank lines are accepted only at the
end (some stacks add one) and are kept. Operations never mutate an ``Sdp``: ``rewrite`` and the
other editing functions build the new lines and parse them again, so a result is always
internally consistent and ``parse_sdp_untrusted(serialize_sdp(x)) == x``.

Hold (RFC 3264 §8.4): ``a=inactive`` / ``a=sendonly`` are plain attributes and pass through.
The old form, a ``c=`` address of ``0.0.0.0`` (or ``::``), is kept as it is by ``rewrite``, so a
held stream stays held; ``endpoint_of`` reports no endpoint for it.

Error handling
--------------
``parse_sdp_untrusted`` raises only ``RemoteProtocolError`` (overlay.sip's, so the proxy treats a
bad body like any other bad input), with a reason naming the line, such as ``"SDP line 5 (c=):
bad address"``, safe to use as a SIP reason phrase. The status hint is 400 for a malformed body,
413 for one over the size limit and 488 (Not Acceptable Here) for a well-formed body the relay
cannot serve (a network type other than IN, an address type other than IP4/IP6, more than
``MAX_MEDIA`` streams). The editing functions raise ``LocalProtocolError`` when called with
arguments that do not fit the SDP (a bug in the caller).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Sequence
from typing import Final

from overlay.sip import LocalProtocolError, RemoteProtocolError

from ._ports import PortPair

__all__ = [
    "DIRECTIONS",
    "MAX_MEDIA",
    "MAX_SDP_SIZE",
    "Connection",
    "MediaDescription",
    "Origin",
    "OriginKeeper",
    "OverlaySession",
    "Rtcp",
    "Sdp",
    "SdpLine",
    "bump_version",
    "direction_of",
    "endpoint_of",
    "parse_sdp_untrusted",
    "rewrite",
    "serialize_sdp",
    "set_overlay_session",
    "strip_overlay_sessions",
]

MAX_SDP_SIZE: Final = 65536
MAX_MEDIA: Final = 64
DIRECTIONS: Final = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

_MAX_SESSION_ID: Final = (1 << 64) - 1

# RFC 8866 §9: token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / %x41-5A / %x5E-7E
_TOKEN = rb"[!#-'*+\-.0-9A-Z^-~]+"
_TOKEN_RE = re.compile(_TOKEN)
# proto = token *("/" token) (§5.14)
_PROTO_RE = re.compile(_TOKEN + rb"(?:/" + _TOKEN + rb")*")

# Fields are separated by SP (§5); runs of SP and trailing SP are tolerated. Every repetition
# below is separated by a character class its neighbour cannot match, so no pattern backtracks.
# o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (§5.2)
_ORIGIN_RE = re.compile(rb"o=([^ ]+) +([^ ]+) +([0-9]+) +([!-~]+) +([!-~]+) +([!-~]+) *")
# c=<nettype> <addrtype> <connection-address>, address[/ttl][/count] (§5.7); "/" is %x2F.
_CONNECTION_RE = re.compile(
    rb"c=([!-~]+) +([!-~]+) +([!-.0-~]+)(?:/([0-9]{1,5})(?:/([0-9]{1,5}))?)? *"
)
# m=<media> <port>[/<number of ports>] <proto> <fmt> ... (§5.14)
_MEDIA_RE = re.compile(rb"m=([!-~]+) +([0-9]{1,5})(?:/([0-9]{1,5}))? +([!-~]+)((?: +[!-~]+)*) *")
# RFC 3605 §2.1: "a=rtcp:" port [nettype space addrtype space connection-address]
_RTCP_RE = re.compile(rb"a=rtcp:([0-9]{1,5})(?: +([!-~]+) +([!-~]+) +([!-.0-~]+))? *")
# docs/internal/media.md: a=x-overlay-session:<node_id> <session id, 16 hex digits>
_OVERLAY_RE = re.compile(rb"a=x-overlay-session:([a-z0-9-]{1,63}) ([0-9A-Fa-f]{16})")
_NODE_ID_RE = re.compile(r"[a-z0-9-]{1,63}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

# Line roles: what the parser found each line to be (only these are ever edited).
_V, _O, _C, _M, _RTCP, _MUX, _DIRECTION, _OVERLAY, _OTHER, _BLANK = (
    "v",
    "o",
    "c",
    "m",
    "rtcp",
    "rtcp-mux",
    "direction",
    "overlay",
    "other",
    "blank",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line (RFC 8866 §5.7); the network type is always IN.

    Attributes:
        address_type: ``"IP4"`` or ``"IP6"``.
        address: as written (an IP literal or a domain name), without the suffixes.
        ttl: the ``/ttl`` of an IPv4 multicast address, else ``None``.
        count: the number of addresses suffix, else ``None``.
    """

    address_type: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @property
    def is_ip(self) -> bool:
        """The address is an IP literal (not a domain name)."""
        return _ip(self.address) is not None

    @property
    def held(self) -> bool:
        """``0.0.0.0`` or ``::``: the old form of hold (RFC 3264 §8.4, RFC 2543)."""
        address = _ip(self.address)
        return address is not None and address.is_unspecified


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line (RFC 8866 §5.2). ``username`` and ``session_id`` are shown decoded (bytes
    that are not UTF-8 replaced); on the wire they stay exactly as received. ``session_version``
    is a decimal string of any length."""

    username: str
    session_id: str
    session_version: str
    network_type: str
    address_type: str
    address: str


@dataclasses.dataclass(frozen=True, slots=True)
class Rtcp:
    """An ``a=rtcp`` attribute (RFC 3605); the address parts are ``None`` when absent."""

    port: int
    address_type: str | None = None
    address: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class OverlaySession:
    """The overlay session attribute of a media section: the node that owns the session and the
    session's 64-bit id there (never 0)."""

    node_id: str
    session_id: int

    def __post_init__(self) -> None:
        if not _NODE_ID_RE.fullmatch(self.node_id):
            raise LocalProtocolError(f"Bad node id {self.node_id!r}")
        if not 1 <= self.session_id <= _MAX_SESSION_ID:
            raise LocalProtocolError(f"Session id {self.session_id} is not a non-zero 64-bit id")

    def __str__(self) -> str:
        return f"{self.node_id} {self.session_id:016x}"


@dataclasses.dataclass(frozen=True, slots=True)
class MediaDescription:
    """One media section: its ``m=`` line and the media-level lines the overlay reads.

    Attributes:
        media: ``audio``, ``video``, ``application``, ...
        port: 0 for a disabled stream.
        port_count: the ``/count`` of the m= line, else ``None``.
        proto: ``RTP/AVP``, ``RTP/SAVPF``, ``UDP/TLS/RTP/SAVPF``, ...
        formats: payload types or format names, as written.
        connection: the media-level ``c=``; ``None`` means the session-level one applies.
        rtcp: the ``a=rtcp`` attribute, if any.
        rtcp_mux: ``a=rtcp-mux`` is present.
        direction: the media-level direction attribute, if any (see ``direction_of``).
        overlay_session: the ``a=x-overlay-session`` attribute, if any.
    """

    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    rtcp: Rtcp | None = None
    rtcp_mux: bool = False
    direction: str | None = None
    overlay_session: OverlaySession | None = None

    @property
    def disabled(self) -> bool:
        return self.port == 0


@dataclasses.dataclass(frozen=True, slots=True)
class SdpLine:
    """One line as received: what ``serialize_sdp`` writes back."""

    text: bytes  # without its line ending
    eol: bytes  # b"\r\n", b"\n", or b"" for a last line without one
    role: str  # what the parser read it as: "v", "o", "c", "m", "rtcp", "rtcp-mux",
    # "direction", "overlay", "blank" (trailing empty line) or "other" (kept verbatim)
    section: int  # -1 for the session part, else the index of the media section


@dataclasses.dataclass(frozen=True, slots=True)
class Sdp:
    """A parsed session description. Build it with ``parse_sdp_untrusted``; every line is kept
    as received (see the module docstring)."""

    origin: Origin
    connection: Connection | None
    direction: str | None
    media: tuple[MediaDescription, ...]
    lines: tuple[SdpLine, ...] = dataclasses.field(repr=False)


def _error(number: int, kind: str, what: str, *, hint: int = 400) -> RemoteProtocolError:
    return RemoteProtocolError(f"SDP line {number} ({kind}=): {what}", status_hint=hint)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # a scope id means nothing to a remote peer
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_domain(text: str) -> bool:
    name = text.removesuffix(".")
    if not 0 < len(name) <= 253:
        return False
    labels = name.split(".")
    # A name whose last label is all digits would be a mangled IPv4 address.
    return not labels[-1].isdigit() and all(_LABEL_RE.fullmatch(label) for label in labels)


def _address(
    number: int, kind: str, network: bytes, address_type: bytes, address: bytes
) -> tuple[str, str]:
    """Check ``IN IP4|IP6 <address>``; returns (address type, address)."""
    if network != b"IN":
        raise _error(number, kind, "network type is not IN", hint=488)
    if address_type not in (b"IP4", b"IP6"):
        raise _error(number, kind, "address type is not IP4 or IP6", hint=488)
    text = address.decode("ascii")
    parsed = _ip(text)
    if parsed is None:
        if not _is_domain(text):
            raise _error(number, kind, "bad address")
    elif parsed.version != (4 if address_type == b"IP4" else 6):
        raise _error(number, kind, "address does not match the address type")
    return address_type.decode("ascii"), text


def _port(number: int, kind: str, digits: bytes) -> int:
    port = int(digits)
    if port > 65535:
        raise _error(number, kind, "port out of range")
    return port


def _parse_origin(number: int, text: bytes) -> Origin:
    match = _ORIGIN_RE.fullmatch(text)
    if match is None:
        raise _error(number, "o", "malformed origin")
    username, session_id, version, network, address_type, address = match.groups()
    return Origin(
        username=username.decode("utf-8", "replace"),
        session_id=session_id.decode("utf-8", "replace"),
        session_version=version.decode("ascii"),
        network_type=network.decode("ascii"),
        address_type=address_type.decode("ascii"),
        address=address.decode("ascii"),
    )


def _parse_connection(number: int, text: bytes) -> Connection:
    match = _CONNECTION_RE.fullmatch(text)
    if match is None:
        raise _error(number, "c", "malformed connection data")
    network, address_type, address, first, second = match.groups()
    kind, host = _address(number, "c", network, address_type, address)
    ttl = count = None
    if kind == "IP6":
        # §5.7: IPv6 multicast has no TTL, only the number of addresses.
        if second is not None:
            raise _error(number, "c", "IP6 address with a TTL")
        count = None if first is None else int(first)
    else:
        ttl = None if first is None else int(first)
        count = None if second is None else int(second)
    if count == 0:
        raise _error(number, "c", "number of addresses is 0")
    return Connection(kind, host, ttl, count)


def _parse_media(number: int, text: bytes) -> MediaDescription:
    match = _MEDIA_RE.fullmatch(text)
    if match is None:
        raise _error(number, "m", "malformed media description")
    media, port_text, count_text, proto, formats_text = match.groups()
    port = _port(number, "m", port_text)
    count = None if count_text is None else int(count_text)
    if count == 0:
        raise _error(number, "m", "number of ports is 0")
    formats = formats_text.split()
    if not _TOKEN_RE.fullmatch(media):
        raise _error(number, "m", "bad media type")
    if not _PROTO_RE.fullmatch(proto):
        raise _error(number, "m", "bad transport protocol")
    if not all(_TOKEN_RE.fullmatch(item) for item in formats):
        raise _error(number, "m", "bad format")
    if not formats and port != 0:
        raise _error(number, "m", "no format")
    return MediaDescription(
        media=media.decode("ascii"),
        port=port,
        port_count=count,
        proto=proto.decode("ascii"),
        formats=tuple(item.decode("ascii") for item in formats),
    )


def _parse_rtcp(number: int, text: bytes) -> Rtcp:
    match = _RTCP_RE.fullmatch(text)
    if match is None:
        raise _error(number, "a", "malformed rtcp attribute")
    port_text, network, address_type, address = match.groups()
    port = _port(number, "a", port_text)
    if network is None or address_type is None or address is None:
        return Rtcp(port)
    kind, host = _address(number, "a", network, address_type, address)
    return Rtcp(port, kind, host)


def _parse_overlay(number: int, text: bytes) -> OverlaySession:
    match = _OVERLAY_RE.fullmatch(text)
    if match is None:
        raise _error(number, "a", "malformed x-overlay-session attribute")
    session_id = int(match[2], 16)
    if session_id == 0:
        raise _error(number, "a", "x-overlay-session id is 0")
    return OverlaySession(match[1].decode("ascii"), session_id)


def _split_lines(data: bytes) -> list[tuple[bytes, bytes]]:
    pieces = data.split(b"\n")
    last = pieces.pop()
    lines = [(piece[:-1], b"\r\n") if piece.endswith(b"\r") else (piece, b"\n") for piece in pieces]
    if last:
        lines.append((last, b""))
    return lines


class _Part:
    """The lines the overlay reads in the session part or in one media section."""

    __slots__ = ("connection", "description", "direction", "number", "overlay", "rtcp", "rtcp_mux")

    def __init__(self, number: int, description: MediaDescription | None) -> None:
        self.number = number
        self.description = description
        self.connection: Connection | None = None
        self.direction: str | None = None
        self.overlay: OverlaySession | None = None
        self.rtcp: Rtcp | None = None
        self.rtcp_mux = False


class _Builder:
    """Collects what the parser reads, one line at a time."""

    __slots__ = ("lines", "origin", "parts")

    def __init__(self) -> None:
        self.lines: list[SdpLine] = []
        self.origin: Origin | None = None
        self.parts = [_Part(0, None)]  # the session part, then one per media section

    def add(self, number: int, text: bytes, eol: bytes) -> None:
        kind = chr(text[0])
        part = self.parts[-1]
        role = _OTHER
        if kind == "v":
            raise _error(number, kind, "repeated version line")
        if kind == "o":
            if part.description is not None or self.origin is not None:
                raise _error(number, kind, "origin repeated or inside a media section")
            self.origin = _parse_origin(number, text)
            role = _O
        elif kind == "c":
            if part.connection is not None:
                raise _error(number, kind, "several connection lines at one level")
            part.connection = _parse_connection(number, text)
            role = _C
        elif kind == "m":
            if len(self.parts) > MAX_MEDIA:
                raise _error(number, kind, f"more than {MAX_MEDIA} media sections", hint=488)
            part = _Part(number, _parse_media(number, text))
            self.parts.append(part)
            role = _M
        elif kind == "a":
            role = _attribute(number, text, part)
        self.lines.append(SdpLine(text, eol, role, len(self.parts) - 2))

    def finish(self) -> Sdp:
        if self.origin is None:
            raise RemoteProtocolError("SDP has no o= line")
        session, *sections = self.parts
        media = []
        for part in sections:
            description = part.description
            assert description is not None
            if part.connection is None and session.connection is None and description.port:
                raise _error(part.number, "m", "no connection line for this stream")
            media.append(
                dataclasses.replace(
                    description,
                    connection=part.connection,
                    rtcp=part.rtcp,
                    rtcp_mux=part.rtcp_mux,
                    direction=part.direction,
                    overlay_session=part.overlay,
                )
            )
        return Sdp(
            self.origin, session.connection, session.direction, tuple(media), tuple(self.lines)
        )


def _attribute(number: int, text: bytes, part: _Part) -> str:
    """Read an a= line into ``part``; returns its role."""
    name, colon, _ = text[2:].partition(b":")
    if name in _DIRECTION_NAMES:
        if colon:
            raise _error(number, "a", f"{name.decode()} takes no value")
        if part.direction is not None:
            raise _error(number, "a", "several direction attributes")
        part.direction = name.decode()
        return _DIRECTION
    if name == b"x-overlay-session":
        if part.overlay is not None:
            raise _error(number, "a", "several x-overlay-session attributes")
        part.overlay = _parse_overlay(number, text)
        return _OVERLAY
    if part.description is None:
        return _OTHER  # a=rtcp and a=rtcp-mux mean nothing at session level
    if name == b"rtcp":
        if part.rtcp is not None:
            raise _error(number, "a", "several rtcp attributes")
        part.rtcp = _parse_rtcp(number, text)
        return _RTCP
    if name == b"rtcp-mux":
        if colon:
            raise _error(number, "a", "rtcp-mux takes no value")
        part.rtcp_mux = True
        return _MUX
    return _OTHER


_DIRECTION_NAMES: Final = frozenset(name.encode() for name in DIRECTIONS)


def parse_sdp_untrusted(data: bytes, *, max_size: int = MAX_SDP_SIZE) -> Sdp:
    """Parse a session description (RFC 8866) received from a peer.

    Args:
        data: the message body.
        max_size: larger bodies are refused (413).

    Returns:
        the parsed ``Sdp``; ``serialize_sdp`` of it gives ``data`` back unchanged.

    Raises:
        RemoteProtocolError: the only exception; ``reason`` names the line and the problem,
            ``status_hint`` is 400, 413 or 488 (see the module docstring).
    """
    if len(data) > max_size:
        raise RemoteProtocolError(f"SDP larger than {max_size} bytes", status_hint=413)
    return _parse(data)


def _parse(data: bytes) -> Sdp:
    if not data:
        raise RemoteProtocolError("Empty SDP")
    nul = data.find(b"\0")
    if nul >= 0:
        number = data.count(b"\n", 0, nul) + 1
        raise RemoteProtocolError(f"SDP line {number}: NUL byte")
    builder = _Builder()
    blank_from = 0
    for number, (text, eol) in enumerate(_split_lines(data), start=1):
        if not text:
            blank_from = blank_from or number
            builder.lines.append(SdpLine(text, eol, _BLANK, -1))
            continue
        if blank_from:
            raise RemoteProtocolError(f"SDP line {blank_from}: empty line")
        if b"\r" in text:
            raise RemoteProtocolError(f"SDP line {number}: bare CR")
        if len(text) < 2 or text[1:2] != b"=" or not b"a" <= text[:1] <= b"z":
            raise RemoteProtocolError(f"SDP line {number}: not of the form <letter>=<value>")
        if number == 1:
            if text != b"v=0":
                raise _error(number, chr(text[0]), "the first line must be v=0")
            builder.lines.append(SdpLine(text, eol, _V, -1))
        else:
            builder.add(number, text, eol)
    return builder.finish()


def serialize_sdp(sdp: Sdp) -> bytes:
    """The body: every line as received or as rewritten, with its own line ending."""
    return b"".join(line.text + line.eol for line in sdp.lines)


# -- editing ----------------------------------------------------------------------------------


def _default_eol(sdp: Sdp) -> bytes:
    eol = sdp.lines[0].eol
    return eol if eol else b"\r\n"


class _Edit:
    """A mutable copy of the lines; ``result`` parses them back into an ``Sdp``."""

    __slots__ = ("eol", "lines")

    def __init__(self, sdp: Sdp) -> None:
        self.lines: list[list[bytes]] = [[line.text, line.eol] for line in sdp.lines]
        self.eol = _default_eol(sdp)

    def insert(self, position: int, text: bytes) -> None:
        """Insert a new line before ``position`` (which may be the end)."""
        eol = self.eol
        before = self.lines[position - 1]
        if not before[1]:
            # The line before was the last one and had no line ending: it gets one, and the new
            # last line goes without, as the body did.
            before[1], eol = self.eol, b""
        self.lines.insert(position, [text, eol])

    def result(self) -> Sdp:
        data = b"".join(text + eol for text, eol in self.lines)
        try:
            return _parse(data)
        except RemoteProtocolError as exc:  # pragma: no cover - a bug here, not bad input
            raise LocalProtocolError(f"Edited SDP does not parse: {exc.reason}") from None


def _section_ends(sdp: Sdp) -> list[int]:
    """For each media section, the index just after its last line (before trailing blanks)."""
    ends = [0] * len(sdp.media)
    for index, line in enumerate(sdp.lines):
        if line.section >= 0 and line.role != _BLANK:
            ends[line.section] = index + 1
    return ends


def _relay_address(address: str) -> tuple[bytes, bytes]:
    parsed = _ip(address)
    if parsed is None or parsed.is_unspecified:
        raise LocalProtocolError(f"Media address {address!r} is not a usable IP address")
    return (b"IP4" if parsed.version == 4 else b"IP6"), str(parsed).encode("ascii")


def _replace_group(text: bytes, match: re.Match[bytes], group: int, value: bytes) -> bytes:
    return text[: match.start(group)] + value + text[match.end(group) :]


def rewrite(sdp: Sdp, media_address: str, ports: Sequence[PortPair | None]) -> Sdp:
    """Point the SDP at the relay: what an edge does to every offer and answer it passes on.

    For each media section ``i`` with ``ports[i]`` not ``None``: the m= port becomes
    ``ports[i].rtp`` (a ``/count`` is dropped: the relay offers one stream), the media-level c=
    (if any) becomes ``IN IP4|IP6 media_address``, an ``a=rtcp`` gets the RTCP port (the RTP
    port under rtcp-mux) and, when it named an address, ``media_address``; and when the RTCP
    port is not RTP + 1 and there is neither ``a=rtcp`` nor ``a=rtcp-mux``, an ``a=rtcp:<port>``
    is added at the end of the section. Sections with ``None`` are left exactly as they were.

    The session-level c= becomes ``media_address`` when a rewritten section relies on it, or
    when no active section does (so it does not show the endpoint's address); an active section
    left alone that relied on it then gets its own copy of the original c= line, so it still
    reaches its endpoint. A c= of ``0.0.0.0`` / ``::`` (hold) is never changed. The
    o= address always becomes ``media_address``; its version is left to ``bump_version`` /
    ``OriginKeeper``.

    Args:
        sdp: the parsed body.
        media_address: the relay's IPv4 or IPv6 address (no brackets).
        ports: one entry per m= line: the relay's ports for it, or ``None`` to leave it.

    Returns:
        the rewritten ``Sdp`` (every other line unchanged).

    Raises:
        LocalProtocolError: ``media_address`` is not an IP address, ``ports`` has the wrong
            length, a disabled stream (port 0) was given ports, or a pair without an RTCP port
            was given to a stream without rtcp-mux.
    """
    address_type, address = _relay_address(media_address)
    if len(ports) != len(sdp.media):
        raise LocalProtocolError(f"{len(ports)} port pairs for {len(sdp.media)} media sections")
    for index, (description, pair) in enumerate(zip(sdp.media, ports, strict=True)):
        if pair is None:
            continue
        if description.disabled:
            raise LocalProtocolError(f"Media section {index} is disabled (port 0): no ports")
        if pair.rtcp is None and not description.rtcp_mux:
            raise LocalProtocolError(f"Media section {index} has no rtcp-mux: needs an RTCP port")

    session = sdp.connection
    uses_session = [
        description.connection is None and not description.disabled for description in sdp.media
    ]
    needed_by_rewritten = any(
        pair is not None and uses for pair, uses in zip(ports, uses_session, strict=True)
    )
    needed_by_others = any(
        pair is None and uses for pair, uses in zip(ports, uses_session, strict=True)
    )
    # Also replaced when no stream needs it, so that it does not show the endpoint's address.
    rewrite_session = (
        session is not None
        and not session.held
        and (needed_by_rewritten or (not needed_by_others and any(ports)))
    )
    new_connection = b"c=IN " + address_type + b" " + address
    session_text = next(
        (line.text for line in sdp.lines if line.role == _C and line.section < 0), b""
    )
    ends = _section_ends(sdp)
    inserts: dict[int, list[bytes]] = {}

    edit = _Edit(sdp)
    for index, line in enumerate(sdp.lines):
        slot = edit.lines[index]
        section = line.section
        pair = ports[section] if section >= 0 else None
        if line.role == _O:
            match = _ORIGIN_RE.fullmatch(line.text)
            assert match is not None
            slot[0] = line.text[: match.start(4)] + b"IN " + address_type + b" " + address
        elif line.role == _C and section < 0:
            if rewrite_session:
                slot[0] = new_connection
        elif line.role == _C:
            connection = sdp.media[section].connection
            if pair is not None and connection is not None and not connection.held:
                slot[0] = new_connection
        elif line.role == _M:
            if pair is not None:
                match = _MEDIA_RE.fullmatch(line.text)
                assert match is not None
                slot[0] = (
                    line.text[: match.start(2)]
                    + str(pair.rtp).encode()
                    + line.text[match.end(3 if match[3] is not None else 2) :]
                )
            elif rewrite_session and uses_session[section]:
                # Left alone but the session c= changes: keep its original address (§5.7:
                # a media-level c= overrides the session-level one). It goes after the m= line
                # and any i= lines, as §5 orders them.
                position = index + 1
                while position < len(sdp.lines) and sdp.lines[position].text.startswith(b"i="):
                    position += 1
                inserts.setdefault(position, []).append(session_text)
        elif line.role == _RTCP and pair is not None:
            rtcp = sdp.media[section].rtcp
            assert rtcp is not None
            port = str(pair.rtp if pair.rtcp is None else pair.rtcp).encode()
            text = b"a=rtcp:" + port
            if rtcp.address is not None:
                text += b" IN " + address_type + b" " + address
            slot[0] = text
    for section, (description, pair) in enumerate(zip(sdp.media, ports, strict=True)):
        if (
            pair is not None
            and pair.rtcp is not None
            and pair.rtcp != pair.rtp + 1
            and description.rtcp is None
            and not description.rtcp_mux
        ):
            inserts.setdefault(ends[section], []).append(b"a=rtcp:%d" % pair.rtcp)
    for position in sorted(inserts, reverse=True):
        for text in reversed(inserts[position]):
            edit.insert(position, text)
    return edit.result()


def endpoint_of(sdp: Sdp, index: int) -> tuple[str, int] | None:
    """Where the endpoint wants to receive the RTP of media section ``index``.

    Returns:
        ``(host, port)`` from the media-level c= or else the session-level one, the host an IP
        literal in its canonical text form (so it compares equal to a packet's source
        address); ``None`` for a disabled stream, a held one (c= ``0.0.0.0`` / ``::``), or a
        c= with a domain name (then the relay learns the address from the first packet).

    Raises:
        IndexError: there is no such media section.
    """
    description = sdp.media[index]
    connection = description.connection or sdp.connection
    if description.disabled or connection is None:
        return None
    address = _ip(connection.address)
    if address is None or address.is_unspecified:
        return None
    return str(address), description.port


def direction_of(sdp: Sdp, index: int) -> str:
    """The direction of media section ``index``: its own attribute, else the session's, else
    ``"sendrecv"`` (RFC 3264 §5.1). An old-style hold (``Connection.held``) is not reflected.

    Raises:
        IndexError: there is no such media section.
    """
    return sdp.media[index].direction or sdp.direction or "sendrecv"


def _with_origin(sdp: Sdp, **groups: bytes) -> Sdp:
    """Replace fields of the o= line: ``username``, ``session_id`` or ``version``."""
    numbers = {"username": 1, "session_id": 2, "version": 3}
    edit = _Edit(sdp)
    for index, line in enumerate(sdp.lines):
        if line.role == _O:
            text = line.text
            for name in sorted(groups, key=numbers.__getitem__, reverse=True):
                match = _ORIGIN_RE.fullmatch(text)
                assert match is not None
                text = _replace_group(text, match, numbers[name], groups[name])
            edit.lines[index][0] = text
    return edit.result()


def _increment(digits: str) -> str:
    """A decimal string plus one, at any length (``int`` refuses over 4300 digits)."""
    stem = digits.rstrip("9")
    nines = len(digits) - len(stem)
    if not stem:
        return "1" + "0" * nines
    return stem[:-1] + chr(ord(stem[-1]) + 1) + "0" * nines


def bump_version(sdp: Sdp) -> Sdp:
    """The same SDP with the o= session version incremented by one (RFC 3264 §8: each new
    offer or answer that changes the session carries the previous version plus one)."""
    return _with_origin(sdp, version=_increment(sdp.origin.session_version).encode("ascii"))


class OriginKeeper:
    """Keeps the o= line that one endpoint sees consistent over a dialog (RFC 3264 §8).

    Use one per endpoint and dialog, and pass it every SDP sent to that endpoint after
    ``rewrite``. The first SDP goes out as it is. After that the o= username and session id
    stay those of the first SDP, and the version is the previous one when the body is otherwise
    identical to the previous body, else the previous one plus one. So the endpoint never sees
    the same version with a different body, whatever the other side did with its own o= (a
    re-INVITE without a version change but with new relay ports, a transfer that changed the
    session id).
    """

    __slots__ = ("_last",)

    def __init__(self, last: Sdp | None = None) -> None:
        """``last``: the SDP last sent to the endpoint, when a standby restores the keeper of
        its active (pair replication, issue 16, through ``MediaEdge.restore_call``)."""
        self._last = last

    @property
    def last(self) -> Sdp | None:
        """The SDP last sent to the endpoint (``None`` before the first), which pair
        replication carries to the standby (``MediaEdge.call_state``)."""
        return self._last

    def apply(self, sdp: Sdp) -> Sdp:
        """Returns the SDP to send to the endpoint (see the class docstring)."""
        last = self._last
        if last is None:
            self._last = sdp
            return sdp
        previous = _ORIGIN_RE.fullmatch(next(line.text for line in last.lines if line.role == _O))
        assert previous is not None
        pinned = _with_origin(
            sdp, username=previous[1], session_id=previous[2], version=previous[3]
        )
        if serialize_sdp(pinned) == serialize_sdp(last):
            return last
        result = bump_version(pinned)
        self._last = result
        return result


def set_overlay_session(sdp: Sdp, index: int, session: OverlaySession) -> Sdp:
    """The SDP with ``a=x-overlay-session`` of media section ``index`` set to ``session``
    (replacing the one there, else added at the end of the section).

    Raises:
        IndexError: there is no such media section.
    """
    if not 0 <= index < len(sdp.media):
        raise IndexError(f"no media section {index}")
    text = b"a=x-overlay-session:" + str(session).encode("ascii")
    edit = _Edit(sdp)
    for position, line in enumerate(sdp.lines):
        if line.role == _OVERLAY and line.section == index:
            edit.lines[position][0] = text
            return edit.result()
    edit.insert(_section_ends(sdp)[index], text)
    return edit.result()


def strip_overlay_sessions(sdp: Sdp) -> Sdp:
    """The SDP without any ``a=x-overlay-session`` line, as edges send it out of the overlay
    and as they must take it in from outside (so no endpoint can name an overlay session).
    Returns ``sdp`` itself when there is none."""
    if not any(line.role == _OVERLAY for line in sdp.lines):
        return sdp
    kept = [line for line in sdp.lines if line.role != _OVERLAY]
    edit = _Edit(sdp)
    edit.lines = [[line.text, line.eol] for line in kept]
    if sdp.lines[-1].role == _OVERLAY and not sdp.lines[-1].eol:
        edit.lines[-1][1] = b""  # the body ended without a line ending: keep it so
    return edit.result()
