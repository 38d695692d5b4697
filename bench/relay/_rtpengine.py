"""rtpengine's ng control protocol, as much of it as bench/relay_pps needs.

Imported as ``_rtpengine`` with bench/relay on sys.path.

* ``bencode`` / ``bdecode``: the encoding of every ng message (integers, byte strings, lists,
  dictionaries with sorted keys). Strings are encoded as UTF-8; decoded strings stay ``bytes``.
* ``NgClient``: one UDP socket; a request is ``<cookie> <bencoded dict>``, the reply carries the
  same cookie. Each request is retried a bounded number of times.
* ``offer_answer``: one call set up with "offer" then "answer": side A's SDP names the address A
  receives on, side B's the address B receives on (each side sends from that same address:
  rtpengine learns the source from the first packets, symmetric RTP). Returns the address
  rtpengine gave each side to send to.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Mapping, Sequence

__all__ = [
    "BencodeError",
    "NgClient",
    "NgError",
    "bdecode",
    "bencode",
    "offer_answer",
    "sdp_media_address",
]

Addr = tuple[str, int]
Bencodable = int | str | bytes | Sequence["Bencodable"] | Mapping[str, "Bencodable"]
Decoded = int | bytes | list["Decoded"] | dict[str, "Decoded"]


class BencodeError(ValueError):
    """The bytes are not one well-formed bencoded value."""


class NgError(RuntimeError):
    """rtpengine did not answer, or answered with ``result`` other than ``ok``/``pong``."""


def bencode(value: Bencodable) -> bytes:
    """Encode ``value``; dictionary keys are sorted as bencoding requires."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, Mapping):
        items = sorted((k.encode(), v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    if isinstance(value, Sequence):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Decoded:
    """Decode exactly one bencoded value; dictionary keys become ``str``.

    Raises:
        BencodeError: truncated or malformed input, or bytes left over after the value.
    """
    value, end = _decode_at(data, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value")
    return value


def _decode_at(data: bytes, i: int) -> tuple[Decoded, int]:
    if i >= len(data):
        raise BencodeError("truncated")
    head = data[i : i + 1]
    if head == b"i":
        end = data.find(b"e", i)
        if end < 0:
            raise BencodeError("unterminated integer")
        try:
            return int(data[i + 1 : end]), end + 1
        except ValueError:
            raise BencodeError(f"bad integer {data[i + 1 : end]!r}") from None
    if head == b"l":
        items: list[Decoded] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode_at(data, i)
            items.append(item)
        return items, i + 1
    if head == b"d":
        out: dict[str, Decoded] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode_at(data, i)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            out[key.decode("utf-8", "replace")], i = _decode_at(data, i)
        return out, i + 1
    if head.isdigit():
        colon = data.find(b":", i)
        if colon < 0 or not data[i:colon].isdigit():
            raise BencodeError("bad string length")
        start = colon + 1
        end = start + int(data[i:colon])
        if end > len(data):
            raise BencodeError("truncated string")
        return data[start:end], end
    raise BencodeError(f"unexpected {head!r} at {i}")


class NgClient:
    """A UDP ng client; ``request`` sends one command and returns the decoded reply."""

    def __init__(self, server: Addr, *, local_host: str) -> None:
        self.server = server
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((local_host, 0))
        self._cookies = itertools.count(1)
        self._prefix = f"bench{os.getpid()}-"

    def close(self) -> None:
        self._sock.close()

    def request(
        self, command: Mapping[str, Bencodable], *, timeout: float = 1.0, tries: int = 3
    ) -> dict[str, Decoded]:
        """Send ``command`` (retried ``tries`` times, ``timeout`` s each) and return the reply.

        Raises:
            NgError: no reply, or a reply whose ``result`` is not ``ok`` or ``pong``.
        """
        cookie = f"{self._prefix}{next(self._cookies)}".encode()
        message = cookie + b" " + bencode(command)
        self._sock.settimeout(timeout)
        for _ in range(tries):
            self._sock.sendto(message, self.server)
            try:
                while True:
                    data, _ = self._sock.recvfrom(65535)
                    got, _, body = data.partition(b" ")
                    if got == cookie:
                        break
            except TimeoutError:
                continue
            try:
                reply = bdecode(body)
            except BencodeError as exc:
                raise NgError(f"undecodable ng reply: {exc}") from None
            if not isinstance(reply, dict):
                raise NgError("ng reply is not a dictionary")
            result = reply.get("result")
            if result not in (b"ok", b"pong"):
                reason = reply.get("error-reason", b"")
                raise NgError(f"ng {command.get('command')!r}: {result!r} {reason!r}")
            return reply
        raise NgError(f"no ng reply from {self.server[0]}:{self.server[1]} to {command!r:.60}")


def sdp(addr: Addr, session_version: int) -> str:
    """An audio-only PCMU offer/answer naming ``addr`` for RTP (RTCP on port + 1)."""
    host, port = addr
    return (
        "v=0\r\n"
        f"o=- {session_version} 1 IN IP4 {host}\r\n"
        "s=relay_pps\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=sendrecv\r\n"
    )


_M_AUDIO = re.compile(rb"^m=audio (\d+) ", re.MULTILINE)
_C_IN_IP4 = re.compile(rb"^c=IN IP4 (\S+)", re.MULTILINE)


def sdp_media_address(sdp_bytes: bytes) -> Addr:
    """The (connection address, audio port) of an SDP rtpengine returned."""
    port = _M_AUDIO.search(sdp_bytes)
    host = _C_IN_IP4.search(sdp_bytes)
    if port is None or host is None:
        raise NgError(f"no audio address in the SDP: {sdp_bytes[:200]!r}")
    return host.group(1).decode(), int(port.group(1))


def offer_answer(ng: NgClient, call_id: str, a: Addr, b: Addr) -> tuple[Addr, Addr]:
    """Set up one call between A and B through rtpengine.

    Returns:
        (where A sends to reach B, where B sends to reach A): the addresses rtpengine put in the
        answer (given to A) and in the offer (given to B).
    """
    flags: dict[str, Bencodable] = {"ICE": "remove", "replace": ["origin", "session-connection"]}
    offer = ng.request(
        {"command": "offer", "call-id": call_id, "from-tag": "a", "sdp": sdp(a, 1), **flags}
    )
    answer = ng.request(
        {
            "command": "answer",
            "call-id": call_id,
            "from-tag": "a",
            "to-tag": "b",
            "sdp": sdp(b, 1),
            **flags,
        }
    )
    for_b, for_a = offer.get("sdp"), answer.get("sdp")
    if not isinstance(for_a, bytes) or not isinstance(for_b, bytes):
        raise NgError(f"call {call_id}: no SDP in the offer or answer reply")
    return sdp_media_address(for_a), sdp_media_address(for_b)
