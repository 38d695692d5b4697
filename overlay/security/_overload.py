"""Overload control, sans-IO: what a node past its capacity refuses first, and what never.

Theory of operation
-------------------
Every node has it (``[overload]``, on by default), with or without ``[security]``. The node is
judged by how long requests wait behind its UDP socket. Before each batch it handles behind
its socket, the shell's receive loop reports how long the batch's oldest datagram waited there
(from the kernel's receive timestamp), and it reports zero once it has emptied the socket: the
*wait*, held until the next report, is how long a new request waits before the node even sees
it (a queue's sojourn time). Past capacity the wait grows steadily; below it the wait stays
short, and when the node stalls for a moment (a busy machine takes its CPU, a collector pass)
it jumps and then drains. The time since the loop last emptied its socket would not tell the
two apart: at high load it grows for as long as the node stays busy, however little anything
waits.

So what counts is the wait's *floor* over each ``TICK`` (its lowest value during the tick: a
queue that drained at any moment of the tick has a low floor). An episode of shedding starts
when the floor has stayed at ``TARGET`` times ``backlog`` or more for the last ``START_TICKS``
+ 1 ticks and risen from the first of them to ``backlog`` or more in the last (a queue that
builds up, if unevenly, not one that drains after a stall), or stood at twice ``backlog`` for a
tick (a stall that long already costs retransmissions, T1 being 500 ms). Until then nothing is
shed, however high the load: a node that keeps up never refuses a call.

Within an episode, a share of new INVITEs from outside is refused (RFC 7339's loss-based idea,
applied at the node itself), and all of them while the wait is at ``backlog`` or more. The
share aims at a wait of ``TARGET`` times ``backlog`` (0.1 s by default, well under T1): it
starts at ``SHARE_STEP``, and each tick it grows by ``SHARE_STEP`` if the floor stood at the
target or more and did not fall, shrinks by as much if it was under the target and did not
rise, and holds otherwise (the wait is on its way back to the target).
Under a steady overload it settles near the excess, the node stays busy all the time (the
calls it completes are as many as its capacity allows once refusing the rest is paid for), and
calls let in do not arrive in bursts whose later messages (answers, ACKs, BYEs) put it behind
again. Once the load is gone the share is back to zero within a second or two, and the episode
ends ``EPISODE_QUIET`` after the last refusal. The share is applied deterministically (every
n-th INVITE).

Which requests are refused, cheapest to refuse and least valuable first, with a stateless 503
and ``Retry-After`` (RFC 3261 §21.5.4), while everything already admitted keeps flowing:

====================================================  ===================================
request                                               refused
====================================================  ===================================
out-of-dialog, not INVITE, from an unknown source     when the wait's floor stood at
(OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, ...)          ``unknown_backlog`` (0.1 s) for the
                                                      last tick, and within an episode
new INVITE (no To tag), from anyone outside           within an episode (above)
out-of-dialog, not INVITE, from a known source        never (a trunk's keepalive OPTIONS)
inside a dialog (To tag: ACK, BYE, re-INVITE, ...)    never: the call was admitted
CANCEL                                                never: it ends work
anything from an overlay peer (link probes, relayed)  never: probes decide link health
retransmission, response, ACK, CANCEL of a known      never: the core does not ask
transaction
====================================================  ===================================

A *known* source is an overlay peer, a ``[[security.trunks]]`` network or a static dialplan
target's address; every other address is unknown. The proxy core asks ``admit`` only for new
requests from outside the overlay (``overlay.sip.Admission``), so the last row costs nothing.

``Overload`` wraps the node's edge guard (``EdgeGuard``, with ``[security]``) when it has one:
a shed request is refused before the guard sees it, so the shedding charges no source's rate
limit, and when the node keeps up the check is a few comparisons. Each episode is one
``OverloadStarted`` and one ``OverloadEnded`` event; refusals are counted by method and by
known or unknown source.

RFC 7339's feedback (the ``oc`` Via parameters that ask each upstream server to cut its rate)
is left out: trunks rarely implement it, and the peers that would (overlay nodes) are never
shed. ``Retry-After`` is what every SIP stack understands.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.config import NodeConfig, OverloadSection, StaticTarget
from overlay.sip import Admission, Reject, Request

from ._events import GuardEvent, OverloadEnded, OverloadStarted
from ._prefix import PrefixMap, parse_source

#: An episode (one log line at each end) lasts until nothing was shed for this long, so a
#: node that sheds and catches up in turns under a steady overload reports one episode.
EPISODE_QUIET = 1.0
#: Methods counted by name when shed; any other is counted as "other", so that a scanner's
#: made-up methods cannot grow the counters (and the metrics' label values) without bound.
COUNTED_METHODS = ("INVITE", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "PUBLISH")
#: Requests that are never shed, from anyone: they end work, or belong to it.
NEVER_SHED = frozenset({"ACK", "CANCEL"})
KNOWN = "known"
UNKNOWN = "unknown"
CALL = "call"
#: The wait's floor is taken over this long (module notes).
TICK = 0.1
#: Ticks over which the floor, at ``TARGET`` times ``backlog`` or more, rose to ``backlog`` or
#: more: an episode starts (module notes).
START_TICKS = 2
#: Within an episode, the share of new INVITEs refused aims at this wait, times ``backlog``.
TARGET = 0.5
#: The share of new INVITEs refused within an episode starts at this and moves by it each tick.
SHARE_STEP = 0.05
MAX_SHARE = 0.95


@dataclass(frozen=True, slots=True)
class OverloadStatistics:
    shed: dict[str, int]  # requests answered 503, by "known.INVITE", "unknown.OPTIONS", ...
    episodes: int  # times the node began shedding
    wait: float  # seconds the last batch's oldest request waited behind the socket, 0: none
    share: float  # of new INVITEs shed even below the target wait, in an episode


def shed_class(request: Request, *, known: bool) -> str | None:
    """Which refusals ``request`` (a new request from outside the overlay) is subject to:
    ``"call"`` (a new INVITE, within an episode), ``"unknown"`` (an unknown source's
    out-of-dialog request), or ``None`` (never shed); the table in the module notes."""
    if request.to_tag is not None or request.method in NEVER_SHED:
        return None
    if request.method == "INVITE":
        return CALL
    return None if known else UNKNOWN


class Overload:
    """The node's overload control, an ``overlay.sip.Admission`` in front of ``inner``.

    Args:
        section: the ``[overload]`` configuration (``enabled`` is the caller's business).
        exempt: the overlay peers' SIP hosts: never shed, whatever they send.
        known: static dialplan targets' hosts (IP addresses): known sources.
        trunks: ``[[security.trunks]]`` networks: known sources.
        inner: the admission asked about whatever is not shed (the ``EdgeGuard``), if any.
    """

    def __init__(
        self,
        section: OverloadSection,
        *,
        exempt: Iterable[str] = (),
        known: Iterable[str] = (),
        trunks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        inner: Admission | None = None,
    ) -> None:
        self.section = section
        self.inner = inner
        # In the canonical text the transports report source addresses in.
        self._exempt = frozenset(str(ipaddress.ip_address(host)) for host in exempt)
        self._known = frozenset(ipaddress.ip_address(host) for host in known)
        self._trunks = PrefixMap((network, True) for network in trunks)
        self._refusal = Reject(503, "Server Overloaded", section.retry_after)
        self._target = TARGET * section.backlog
        self.wait = 0.0
        self.share = 0.0
        self._quota = 0.0  # shares accrued: an INVITE is shed each time it reaches 1
        self._tick_end = -math.inf  # the current tick's end, on the first report's grid
        self._floor = math.inf  # the wait's lowest value in the current tick
        self._last_floor = 0.0  # the last whole tick's
        self._floors: deque[float] = deque(maxlen=START_TICKS + 1)  # the last ticks' floors
        self._shed: Counter[str] = Counter()
        self._events: deque[GuardEvent] = deque()
        self._episodes = 0
        self._episode_shed = 0
        self._last_shed = -math.inf
        self._in_episode = False

    # -- the proxy core's Admission ----------------------------------------------------------

    def screen(self, host: str, now: float) -> bool:
        inner = self.inner
        return True if inner is None else inner.screen(host, now)

    def admit(self, request: Request, host: str, now: float) -> Reject | None:
        """503 + ``Retry-After`` for a request shed at ``now``, else ``inner``'s verdict."""
        if now >= self._tick_end:
            self._advance(now)
        if (
            self._in_episode or self._last_floor >= self.section.unknown_backlog
        ) and host not in self._exempt:
            known = self._is_known(host)
            if self._sheds(request, known, now):
                self._count(request.method, known, now)
                return self._refusal
        inner = self.inner
        return None if inner is None else inner.admit(request, host, now)

    def answered(self, host: str, status: int, now: float) -> None:
        if self.inner is not None:
            self.inner.answered(host, status, now)

    # -- the shell ---------------------------------------------------------------------------

    def backlog(self, wait: float, now: float) -> None:
        """At ``now``, the oldest request of the batch the receive loop is about to handle
        waited ``wait`` seconds behind its socket (``0.0``: the loop caught up)."""
        if now >= self._tick_end:
            self._advance(now)
        self.wait = wait
        if wait < self._floor:
            self._floor = wait

    def handle_timer(self, now: float) -> None:
        """End the episode once nothing was shed for ``EPISODE_QUIET``; call it about once a
        second (the end is reported that late at most)."""
        self._advance(now)
        if self._in_episode and now - self._last_shed >= EPISODE_QUIET:
            self._events.append(OverloadEnded(self._episode_shed))
            self._episode_shed = 0
            self._in_episode = False
            self.share = self._quota = 0.0

    def next_event(self) -> GuardEvent | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> OverloadStatistics:
        return OverloadStatistics(dict(self._shed), self._episodes, self.wait, self.share)

    def counters(self) -> dict[str, int]:
        """``statistics()`` by dotted name, as ``Node.counters()`` reports them: every class
        from the start (``overload.shed.<known|unknown>.<method>``), so rates can be taken."""
        counters = {
            f"overload.shed.{source}.{method}": self._shed[f"{source}.{method}"]
            for source in (KNOWN, UNKNOWN)
            for method in (*COUNTED_METHODS, "other")
        }
        counters["overload.episodes"] = self._episodes
        return counters

    # -- inside ------------------------------------------------------------------------------

    def _sheds(self, request: Request, known: bool, now: float) -> bool:
        """Whether ``request`` (a new request from outside, from a source not exempt) is shed
        at ``now``, the node being in an episode or short of one (module notes)."""
        kind = shed_class(request, known=known)
        if kind != CALL:
            return kind == UNKNOWN
        if not self._in_episode:
            return False
        if self.wait >= self.section.backlog:
            return True
        self._quota += self.share
        if self._quota >= 0.999999:  # not 1.0: twenty times 0.05 may fall short of it
            self._quota -= 1.0
            return True
        return False

    def _advance(self, now: float) -> None:
        """Close the ticks that ended by ``now``: judge each one's floor (module notes), the
        lowest of the wait at its start and at each report in it."""
        if self._tick_end == -math.inf:
            self._tick_end = now + TICK
            self._floor = self.wait
            return
        backlog = self.section.backlog
        while now >= self._tick_end:
            floor, last = self._floor, self._last_floor
            target = self._target
            floors = self._floors
            floors.append(floor)
            if self._in_episode:
                if floor >= target and floor >= last:
                    self.share = min(MAX_SHARE, self.share + SHARE_STEP)
                elif floor < target and floor <= last:
                    self.share = max(0.0, self.share - SHARE_STEP)
            elif floor >= 2 * backlog or (
                floor >= backlog
                and len(floors) > START_TICKS
                and floor > floors[0]
                and min(floors) >= target
            ):
                self._start(self._tick_end, floor)
            self._last_floor = floor
            self._tick_end += TICK
            self._floor = self.wait
            if not self.wait and now >= self._tick_end + TICK:
                # Idle ticks (nothing waiting, no request): each one's floor is zero.
                idle = (now - self._tick_end) // TICK
                self._tick_end += idle * TICK
                self.share = max(0.0, self.share - idle * SHARE_STEP)
                floors.append(0.0)
                self._last_floor = 0.0

    def _start(self, now: float, wait: float) -> None:
        self._in_episode = True
        self._episodes += 1
        self._last_shed = now  # the episode lasts at least EPISODE_QUIET
        self.share = SHARE_STEP
        self._events.append(OverloadStarted(wait))

    def _is_known(self, host: str) -> bool:
        parsed = parse_source(host)
        if parsed is None:
            return False
        address = parsed[1]
        return address in self._known or self._trunks.lookup(address) is not None

    def _count(self, method: str, known: bool, now: float) -> None:
        name = method if method in COUNTED_METHODS else "other"
        self._shed[f"{KNOWN if known else UNKNOWN}.{name}"] += 1
        self._episode_shed += 1
        self._last_shed = now


def overload_control(config: NodeConfig, inner: Admission | None = None) -> Overload | None:
    """The node's overload control in front of ``inner``, or ``None`` when ``[overload]``
    turns it off."""
    if not config.overload.enabled:
        return None
    known = [
        rule.target.host
        for rule in config.dialplan
        if isinstance(rule.target, StaticTarget) and parse_source(rule.target.host) is not None
    ]
    trunks = () if config.security is None else [trunk.cidr for trunk in config.security.trunks]
    return Overload(
        config.overload,
        exempt=[peer.sip[0] for peer in config.peers],
        known=known,
        trunks=trunks,
        inner=inner,
    )
