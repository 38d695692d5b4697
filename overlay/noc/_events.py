"""What a node tells the NOC as it happens (the Control service's WatchEvents), sans-IO.

The pieces of a node report events as plain records (``LinkChanged``, ``RouteChanged``, ...) to
an ``EventSink`` (the node's ``EventHub``, ``_hub``), which numbers and time-stamps each one as a
``Published`` for the watchers. ``kind`` names a record's type as the Control service does and
``summary`` turns it into the one line people read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from overlay.linkstate import LinkMetrics

from ._overrides import LinkOverride


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """The verdict on the link to ``neighbor`` changed (up or down); a link goes down when
    ``cause``, ``"liveness"`` (the relays' echoes stopped) or ``"probes"`` (no answer to the
    SIP probes), says so (``overlay.linkstate.LinkMonitor``)."""

    neighbor: str
    up: bool
    metrics: LinkMetrics
    cause: str = ""


@dataclass(frozen=True, slots=True)
class RouteChanged:
    """The path to ``destination`` changed (see ``overlay.routing.RouteChange``)."""

    destination: str
    old_path: tuple[str, ...] | None
    new_path: tuple[str, ...] | None
    reason: str
    version: int


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call anchored here got a final error response to its INVITE."""

    call_id: str
    far_node: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallFailedOver:
    """A new call entering here went on to the next egress of its rule (``overlay.sip.
    EgressFailedOver``): the caller still sees one call."""

    call_id: str
    failed: str
    egress: str
    cause: str
    attempt: int


@dataclass(frozen=True, slots=True)
class TrunkChanged:
    """The probes' verdict on a trunk address this node sends calls to changed (up or down;
    ``overlay.routing.TrunkHealth``)."""

    trunk: str  # "udp:198.51.100.7:5060"
    targets: tuple[str, ...]  # the dialplan targets that lead to it
    up: bool
    rtt_ms: float
    last_status: int  # the last final response to a probe, 0 while none
    silent_ms: float | None  # since the last answer that proved it alive; None: never one


@dataclass(frozen=True, slots=True)
class FaultInjected:
    """An operator impaired what this node sends to ``peer`` (``"*"``: every peer)."""

    peer: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_ratio: float = 0.0
    blackhole: bool = False

    def describe(self) -> str:
        """``"blackhole"``, ``"+30 ms, jitter 5 ms, loss 1.0%"``."""
        if self.blackhole:
            return "blackhole"
        parts = []
        if self.delay_ms:
            parts.append(f"+{self.delay_ms:g} ms")
        if self.jitter_ms:
            parts.append(f"jitter {self.jitter_ms:g} ms")
        if self.loss_ratio:
            parts.append(f"loss {self.loss_ratio:.1%}")
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True, slots=True)
class FaultsCleared:
    peer: str  # "" = every peer
    cleared: int


@dataclass(frozen=True, slots=True)
class DrainChanged:
    draining: bool
    reason: str


@dataclass(frozen=True, slots=True)
class OverrideSet:
    override: LinkOverride


@dataclass(frozen=True, slots=True)
class OverrideCleared:
    override: LinkOverride
    expired: bool


@dataclass(frozen=True, slots=True)
class SourcesUnblocked:
    """An operator lifted edge security blocks: of ``source`` (an address, a /64 or ``"*"``),
    which were those of ``sources``."""

    source: str
    sources: tuple[str, ...]


Event = (
    LinkChanged
    | RouteChanged
    | CallFailed
    | CallFailedOver
    | FaultInjected
    | FaultsCleared
    | DrainChanged
    | OverrideSet
    | OverrideCleared
    | SourcesUnblocked
    | TrunkChanged
)

#: Where the node's pieces report events: ``EventHub.publish`` (its result is not used).
EventSink = Callable[[Event], object]


@dataclass(frozen=True, slots=True)
class Published:
    """An event as watchers get it.

    Attributes:
        seq: numbers the node's events from 1, without gaps.
        time: wall-clock time (seconds since the epoch) it was published.
        node_id: the node that saw it.
        event: what happened.
        by: who caused it (an operator's certificate subject), "" for the node's own events.
    """

    seq: int
    time: float
    node_id: str
    event: Event
    by: str = ""


#: Every kind of event, as ``kind`` names them (the Control service's EventType).
KINDS = (
    "LINK_UP",
    "LINK_DOWN",
    "ROUTE_CHANGE",
    "CALL_FAILED",
    "FAULT_INJECTED",
    "FAULTS_CLEARED",
    "DRAIN",
    "UNDRAIN",
    "LINK_OVERRIDE_SET",
    "LINK_OVERRIDE_CLEARED",
    "SOURCES_UNBLOCKED",
    "CALL_FAILED_OVER",
    "TRUNK_UP",
    "TRUNK_DOWN",
)


def kind(event: Event) -> str:
    """The event's kind, one of ``KINDS``."""
    if isinstance(event, LinkChanged):
        return "LINK_UP" if event.up else "LINK_DOWN"
    if isinstance(event, DrainChanged):
        return "DRAIN" if event.draining else "UNDRAIN"
    if isinstance(event, TrunkChanged):
        return "TRUNK_UP" if event.up else "TRUNK_DOWN"
    return _KIND_OF[type(event)]


_KIND_OF: dict[type, str] = {
    RouteChanged: "ROUTE_CHANGE",
    CallFailed: "CALL_FAILED",
    FaultInjected: "FAULT_INJECTED",
    FaultsCleared: "FAULTS_CLEARED",
    OverrideSet: "LINK_OVERRIDE_SET",
    OverrideCleared: "LINK_OVERRIDE_CLEARED",
    SourcesUnblocked: "SOURCES_UNBLOCKED",
    CallFailedOver: "CALL_FAILED_OVER",
}


_DOWN_CAUSES = {"liveness": "liveness echoes stopped", "probes": "probes unanswered"}


def summary(event: Event) -> str:
    """One line for people: ``"link to use1 down"``, ``"route to use1: usw2→use1 ⇒ ..."``."""
    if isinstance(event, LinkChanged):
        m = event.metrics
        if not event.up:
            why = _DOWN_CAUSES.get(event.cause)
            return f"link to {event.neighbor} down" + (f": {why}" if why else "")
        return (
            f"link to {event.neighbor} up (rtt {m.rtt_ms:.1f} ms, loss {m.loss_ratio:.1%}, "
            f"jitter {m.jitter_ms:.1f} ms)"
        )
    if isinstance(event, RouteChanged):
        old = "unreachable" if event.old_path is None else "→".join(event.old_path)
        if event.new_path is None:  # the reason says "unreachable (why)"
            return f"route to {event.destination}: {old} ⇒ {event.reason}"
        return f"route to {event.destination}: {old} ⇒ {'→'.join(event.new_path)} ({event.reason})"
    if isinstance(event, CallFailed):
        return f"call {event.call_id} failed: {event.status} {event.reason}"
    if isinstance(event, CallFailedOver):
        return (
            f"call {event.call_id} failed over from {event.failed} to {event.egress} "
            f"({event.cause}, attempt {event.attempt})"
        )
    if isinstance(event, TrunkChanged):
        return _trunk_summary(event)
    if isinstance(event, FaultInjected):
        return f"fault toward {_peer(event.peer)}: {event.describe()}"
    if isinstance(event, FaultsCleared):
        return f"{event.cleared} fault(s) cleared toward {_peer(event.peer or '*')}"
    if isinstance(event, DrainChanged):
        verb = "draining" if event.draining else "no longer draining"
        return verb + (f": {event.reason}" if event.reason else "")
    if isinstance(event, OverrideSet):
        o = event.override
        return f"link to {o.peer} {o.describe()} by override" + (
            f": {o.reason}" if o.reason else ""
        )
    if isinstance(event, SourcesUnblocked):
        what = "every blocked source" if event.source == "*" else event.source
        return f"unblocked {what}: {len(event.sources)} block(s) lifted"
    o = event.override
    return f"override of the link to {o.peer} ({o.describe()}) " + (
        "expired" if event.expired else "cleared"
    )


def _trunk_summary(event: TrunkChanged) -> str:
    """``"trunk udp:198.51.100.7:5060 (sip:carrier.example) down: silent 1.0 s"``."""
    name = f"trunk {event.trunk}" + (f" ({', '.join(event.targets)})" if event.targets else "")
    if event.up:
        return f"{name} up (rtt {event.rtt_ms:.1f} ms)"
    if event.silent_ms is None:
        answered = "never answered" if not event.last_status else f"last {event.last_status}"
        return f"{name} down: {answered}"
    last = f", last {event.last_status}" if event.last_status else ""
    return f"{name} down: silent {event.silent_ms / 1000:.1f} s{last}"


def _peer(peer: str) -> str:
    return "every peer" if peer == "*" else peer
