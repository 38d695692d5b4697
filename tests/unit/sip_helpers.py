"""Builders and a harness for driving the sans-IO SIP core in unit tests.

``ProxyHarness`` puts a ``ProxyCore`` between a caller at ``UAC`` and callees, with a clock the
test sets by hand: ``send(peer, data)`` delivers bytes from ``peer`` to the proxy and returns
what the proxy sent, grouped by destination.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from overlay.sip import (
    Admission,
    Listener,
    Locate,
    MediaHook,
    OverlayNodes,
    OverlayRoutes,
    Peer,
    ProxyConfig,
    ProxyCore,
    Refusal,
    Request,
    ResolveTarget,
    Response,
    SipUri,
    Target,
    TelUri,
    TimerConfig,
    parse_message_untrusted,
)

PROXY = Listener("udp", "127.0.0.1", 5060)
PROXY_TCP = Listener("tcp", "127.0.0.1", 5060)
UAC = Peer("udp", "127.0.0.2", 5061)
UAS = Peer("udp", "127.0.0.3", 5062)
UAS2 = Peer("udp", "127.0.0.4", 5063)


def request(
    method: str = "INVITE",
    *,
    uri: str = "sip:alice@example.com",
    branch: str = "z9hG4bK-caller-1",
    via_host: str = "127.0.0.2:5061",
    call_id: str = "call-1@127.0.0.2",
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str = "caller-tag",
    to_tag: str | None = None,
    max_forwards: int | None = 70,
    extra: tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    """A request as a UAC at UAC would send it."""
    to = "<sip:alice@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch={branch};rport",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        f"From: <sip:bob@example.org>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:bob@127.0.0.2:5061>",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


def response_to(
    data: bytes,
    status: int,
    reason: str = "",
    *,
    to_tag: str | None = "callee-tag",
    extra: tuple[str, ...] = (),
) -> bytes:
    """The response a callee sends to ``data`` (a request as it received it)."""
    req = parse_message_untrusted(data)
    assert isinstance(req, Request)
    headers = req.headers
    lines = [f"SIP/2.0 {status} {reason or 'Reason'}"]
    lines += [f"Via: {value}" for value in headers.get_all("Via")]
    lines += [f"Record-Route: {value}" for value in headers.get_all("Record-Route")]
    lines.append(f"From: {headers.get('From')}")
    to = headers.get("To") or ""
    if to_tag and status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {headers.get('Call-ID')}")
    lines.append(f"CSeq: {headers.get('CSeq')}")
    if 200 <= status < 300:
        lines.append("Contact: <sip:alice@127.0.0.3:5062>")
    lines += list(extra)
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def parse(data: bytes) -> Request | Response:
    return parse_message_untrusted(data)


@dataclass
class ProxyHarness:
    """A proxy core with a hand-set clock and a static or DNS dialplan (``targets`` by
    Request-URI user), or the node's own (``locate``, a ``CallRouter``'s)."""

    targets: dict[str, Target | Refusal] = field(
        default_factory=lambda: {"": Target("127.0.0.3", 5062)}
    )
    t1: float = 0.5
    timer_c: float = 180.0
    fr: float = 1.0
    max_message_size: int = 65535
    listeners: tuple[Listener, ...] = (PROXY,)
    overlay: OverlayNodes | None = None
    overlay_routes: OverlayRoutes | None = None
    media: MediaHook | None = None
    admission: Admission | None = None
    locate: Locate | None = None
    now: float = 0.0

    def __post_init__(self) -> None:
        self.proxy = ProxyCore(
            ProxyConfig(
                listeners=self.listeners,
                timers=TimerConfig(t1=self.t1),
                timer_c=self.timer_c,
                max_message_size=self.max_message_size,
                overlay=self.overlay,
                fr=self.fr,
            ),
            self._locate if self.locate is None else self.locate,
            self.overlay_routes,
            self.media,
            admission=self.admission,
        )

    def _locate(self, req: Request, uri: SipUri | TelUri) -> Target | Refusal | None:
        user = uri.user if isinstance(uri, SipUri) else uri.number
        return self.targets.get(user or "", self.targets.get(""))

    def _collect(self) -> dict[Peer, list[bytes]]:
        out: dict[Peer, list[bytes]] = defaultdict(list)
        for data, peer in self.proxy.datagrams_to_send():
            out[peer].append(data)
        return out

    def send(self, source: Peer, data: bytes) -> dict[Peer, list[bytes]]:
        self.proxy.receive_data(data, source, self.now)
        return self._collect()

    def advance(self, seconds: float) -> dict[Peer, list[bytes]]:
        """Move the clock, firing every timer due on the way, in order."""
        self.run_timers(seconds)
        return self._collect()

    def run_timers(self, seconds: float) -> None:
        """``advance`` leaving what was sent with the proxy."""
        end = self.now + seconds
        while (deadline := self.proxy.get_timer()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.proxy.handle_timer(self.now)
        self.now = end

    def resolve_events(self) -> list[ResolveTarget]:
        events = []
        while (event := self.proxy.next_event()) is not None:
            if isinstance(event, ResolveTarget):
                events.append(event)
        return events

    def resolved(self, token: int, peers: list[Peer]) -> dict[Peer, list[bytes]]:
        self.proxy.resolved(token, peers, self.now)
        return self._collect()


def status_of(data: bytes) -> int:
    message = parse(data)
    assert isinstance(message, Response), message
    return message.status
