"""RTP endpoints and a minimal SIP caller and callee for media tests through the lab.

SIPp places calls but cannot tell a test where its peer's media went, so media tests use these
instead: ``RtpEndpoint`` sends a 20 ms packetised stream (172-byte packets: a 12-byte RTP header
and 160 bytes of payload, as G.711 would) and records what arrives, and ``Caller`` / ``Callee``
are just enough of a SIP UA (RFC 3261 §8 and §12: INVITE with an SDP offer, 200 with the
answer, ACK and BYE along the route set) to set up one call whose SDP names the endpoints.
Everything is bounded in time; retransmissions are the UAs' own: the caller's INVITE every T1
until answered, the callee's 2xx every T1, doubling up to T2, until the ACK (§13.3.1.4).
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from overlay.media import endpoint_of, parse_sdp_untrusted
from overlay.sip import (
    RemoteProtocolError,
    Request,
    Response,
    make_response,
    parse_message_untrusted,
    serialize,
)

PTIME = 0.020
PAYLOAD = bytes(160)
T1 = 0.5
T2 = 4.0
RTP_VERSION = 0x80
PCMU = 0


@asynccontextmanager
async def _udp_socket(host: str) -> AsyncIterator[tuple[trio.socket.SocketType, int]]:
    """A UDP socket bound to ``host`` on a free port, and that port."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind((host, 0))
        yield sock, sock.getsockname()[1]


@dataclass
class Received:
    """What an endpoint got: RTP sequence numbers with their arrival times, and sources."""

    arrivals: list[tuple[int, float]] = field(default_factory=list)
    sources: set[tuple[str, int]] = field(default_factory=set)

    def max_gap(self, after: float = 0.0) -> float:
        """The longest silence between two packets received after ``after`` (seconds)."""
        times = [t for _, t in self.arrivals if t >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class RtpEndpoint:
    """A UDP socket that sends and receives RTP; see the module docstring."""

    def __init__(self, sock: trio.socket.SocketType, host: str, port: int) -> None:
        self._sock = sock
        self.address = (host, port)
        self.received = Received()
        self.sent = 0

    @classmethod
    @asynccontextmanager
    async def open(cls, host: str) -> AsyncIterator[RtpEndpoint]:
        async with _udp_socket(host) as (sock, port):
            endpoint = cls(sock, host, port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(endpoint._receive)
                yield endpoint
                nursery.cancel_scope.cancel()

    @classmethod
    @asynccontextmanager
    async def open_many(cls, host: str, count: int) -> AsyncIterator[list[RtpEndpoint]]:
        """``count`` endpoints on ``host``, their receivers in one nursery: whatever the count,
        an error in the block comes out wrapped once, not once per endpoint."""
        async with contextlib.AsyncExitStack() as stack:
            endpoints = []
            for _ in range(count):
                sock, port = await stack.enter_async_context(_udp_socket(host))
                endpoints.append(cls(sock, host, port))
            async with trio.open_nursery() as nursery:
                for endpoint in endpoints:
                    nursery.start_soon(endpoint._receive)
                yield endpoints
                nursery.cancel_scope.cancel()

    async def _receive(self) -> None:
        while True:
            data, source = await self._sock.recvfrom(2048)
            if len(data) >= 12 and data[0] & 0xC0 == RTP_VERSION:
                (seq,) = struct.unpack_from("!H", data, 2)
                self.received.arrivals.append((seq, trio.current_time()))
                self.received.sources.add(source[:2])

    async def stream(self, to: tuple[str, int], seconds: float) -> None:
        """Send a 20 ms stream to ``to`` for ``seconds`` (paced on the clock, not on sleeps)."""
        ssrc = secrets.randbits(32)
        start = trio.current_time()
        for seq in range(round(seconds / PTIME)):
            header = struct.pack("!BBHII", RTP_VERSION, PCMU, seq & 0xFFFF, seq * 160, ssrc)
            await self._sock.sendto(header + PAYLOAD, to)
            self.sent += 1
            await trio.sleep_until(start + (seq + 1) * PTIME)


def sdp_for(address: tuple[str, int], owner: str) -> bytes:
    host, port = address
    return (
        f"v=0\r\no={owner} 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
    ).encode()


def media_target(body: bytes) -> tuple[str, int]:
    """Where the SDP ``body`` says the first stream's media goes."""
    target = endpoint_of(parse_sdp_untrusted(body), 0)
    if target is None:
        raise RuntimeError("the SDP names no media address")
    return target


class SipSocket:
    """One UDP socket of a UA: send messages, receive parsed ones."""

    def __init__(self, sock: trio.socket.SocketType, host: str, port: int) -> None:
        self.sock = sock
        self.host, self.port = host, port

    @classmethod
    @asynccontextmanager
    async def open(cls, host: str) -> AsyncIterator[SipSocket]:
        async with _udp_socket(host) as (sock, port):
            yield cls(sock, host, port)

    async def send(self, message: Request | Response, to: tuple[str, int]) -> None:
        await self.sock.sendto(serialize(message), to)

    async def receive(self) -> tuple[Request | Response, tuple[str, int]]:
        while True:
            data, source = await self.sock.recvfrom(65535)
            try:
                return parse_message_untrusted(data), source[:2]
            except RemoteProtocolError:
                continue  # a test UA ignores what it cannot read


def _headers(lines: list[str]) -> str:
    return "\r\n".join(lines)


class Caller:
    """The calling UA: one INVITE with an offer, then ACK and, later, BYE."""

    def __init__(self, sip: SipSocket, proxy: tuple[str, int], media: tuple[str, int]) -> None:
        self.sip = sip
        self.proxy = proxy
        self.media = media
        self.call_id = f"{secrets.token_hex(8)}@{sip.host}"
        self.tag = secrets.token_hex(4)
        self.answer_media: tuple[str, int] | None = None
        self._ok: Response | None = None

    def _request(self, method: str, uri: str, cseq: int, extra: list[str], body: bytes) -> Request:
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.sip.host}:{self.sip.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@{self.sip.host}>;tag={self.tag}",
            f"To: <sip:callee@{self.proxy[0]}>" + self._to_tag(),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@{self.sip.host}:{self.sip.port}>",
            *extra,
            f"Content-Length: {len(body)}",
            "",
            "",
        ]
        message = parse_message_untrusted(_headers(lines).encode() + body)
        assert isinstance(message, Request)
        return message

    def _to_tag(self) -> str:
        tag = None if self._ok is None else self._ok.to_tag
        return "" if tag is None else f";tag={tag}"

    async def invite(self, *, within: float = 10.0, delayed: bool = False) -> None:
        """INVITE until a 2xx (retransmitted every T1 until a response), then ACK. With
        ``delayed``, the INVITE has no SDP: the 2xx carries the offer, the ACK the answer."""
        uri = f"sip:callee@{self.proxy[0]}:{self.proxy[1]}"
        sdp = sdp_for(self.media, "caller")
        invite = self._request(
            "INVITE",
            uri,
            1,
            [] if delayed else ["Content-Type: application/sdp"],
            b"" if delayed else sdp,
        )
        with trio.fail_after(within):
            answered = False
            while self._ok is None:
                if not answered:
                    await self.sip.send(invite, self.proxy)
                with trio.move_on_after(T1):
                    while True:
                        message, _ = await self.sip.receive()
                        if isinstance(message, Response) and message.call_id == self.call_id:
                            answered = True
                            if message.status >= 300:
                                raise RuntimeError(f"call failed: {message.status}")
                            if message.status >= 200:
                                self._ok = message
                                break
        assert self._ok is not None
        self.answer_media = media_target(self._ok.body)
        await self._in_dialog("ACK", 1, sdp if delayed else b"")

    async def _in_dialog(self, method: str, cseq: int, sdp: bytes = b"") -> Request:
        ok = self._ok
        assert ok is not None
        routes = list(reversed(ok.headers.values("Record-Route")))
        contact = ok.headers.first_value("Contact") or ""
        target = contact.strip().removeprefix("<").split(">")[0]
        extra = [f"Route: {r}" for r in routes]
        if sdp:
            extra.append("Content-Type: application/sdp")
        request = self._request(method, target, cseq, extra, sdp)
        await self.sip.send(request, self.proxy)
        return request

    async def bye(self, *, within: float = 10.0) -> None:
        with trio.fail_after(within):
            while True:
                await self._in_dialog("BYE", 2)
                with trio.move_on_after(T1):
                    while True:
                        message, _ = await self.sip.receive()
                        if (
                            isinstance(message, Response)
                            and message.call_id == self.call_id
                            and message.cseq.method == "BYE"
                        ):
                            return


@dataclass
class CalleeCall:
    """One call the callee answered: its own media address and where the offer said to send."""

    media: tuple[str, int]
    offer_media: tuple[str, int] | None  # None until the ACK's answer of a delayed offer
    answered: bool = False
    acked: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)


class Callee:
    """The called UA: answers each new INVITE with the next of its media addresses (486 when
    none is left; the offer itself when the INVITE had none), and BYEs. With ``reuse``, a
    call's media address is free again once its BYE came, for callers placing one call after
    another."""

    def __init__(
        self, sip: SipSocket, media: list[tuple[str, int]], *, reuse: bool = False
    ) -> None:
        self.sip = sip
        self._free = list(media)
        self._reuse = reuse
        self.calls: dict[str, CalleeCall] = {}  # by Call-ID
        self.tag = secrets.token_hex(4)

    async def peer_media(self, call_id: str, *, within: float = 5.0) -> tuple[str, int]:
        """Where the call's media goes, once its ACK came (the answer of a delayed offer)."""
        call = self.calls[call_id]
        with trio.fail_after(within):
            await call.acked.wait()
        if call.offer_media is None:
            raise RuntimeError(f"call {call_id}: no SDP from the caller")
        return call.offer_media

    async def serve(self) -> None:
        """Answer INVITEs (200 with SDP, sent again until the ACK) and BYEs (200) until
        cancelled."""
        async with trio.open_nursery() as nursery:
            await self._serve(nursery)

    async def _send_until_acked(self, call: CalleeCall, ok: Response, to: tuple[str, int]) -> None:
        """RFC 3261 §13.3.1.4: a UAS sends its 2xx again, every T1 doubling up to T2, until the
        ACK (or a BYE) comes, for 64·T1 at most. No proxy on the way retransmits a 2xx, so one
        lost in the overlay would otherwise leave the call half set up."""
        interval = T1
        with trio.move_on_after(64 * T1):
            while True:
                await trio.sleep(interval)
                if call.acked.is_set() or call.ended.is_set():
                    return
                await self.sip.send(ok, to)
                interval = min(2 * interval, T2)

    async def _serve(self, nursery: trio.Nursery) -> None:
        while True:
            message, source = await self.sip.receive()
            if not isinstance(message, Request):
                continue
            to = source  # the egress node's socket (RFC 3581: answer where it came from)
            if message.method == "INVITE":
                call = self.calls.get(message.call_id)  # None unless retransmitted
                if call is None and not self._free:
                    await self.sip.send(make_response(message, 486, to_tag=self.tag), to)
                    continue
                if call is None:
                    offer = media_target(message.body) if message.body else None
                    call = CalleeCall(self._free.pop(0), offer)
                    self.calls[message.call_id] = call
                ok = make_response(message, 200, to_tag=self.tag)
                for route in message.headers.values("Record-Route"):
                    ok.headers.add("Record-Route", route)
                ok.headers.add("Contact", f"<sip:callee@{self.sip.host}:{self.sip.port}>")
                ok.headers.add("Content-Type", "application/sdp")
                ok.body = sdp_for(call.media, "callee")
                await self.sip.send(ok, to)
                if not call.answered:
                    call.answered = True
                    nursery.start_soon(self._send_until_acked, call, ok, to)
            elif message.method == "ACK":
                if (call := self.calls.get(message.call_id)) is not None:
                    if message.body:
                        call.offer_media = media_target(message.body)  # a delayed offer's answer
                    call.acked.set()
            elif message.method == "BYE":
                await self.sip.send(make_response(message, 200), to)
                if (
                    call := self.calls.get(message.call_id)
                ) is not None and not call.ended.is_set():
                    call.ended.set()
                    if self._reuse:
                        self._free.append(call.media)
