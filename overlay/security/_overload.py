"""Overload control, sans-IO: what a node past its capacity refuses first, and what never.

Theory of operation
-------------------
Every node has it (``[overload]``, on by default), with or without ``[security]``. The node is
judged by how long it has been behind its UDP socket. The shell's receive loop drains a socket
in batches: while the node keeps up, a batch ends with the socket empty; past capacity every
batch finds more waiting, and the time since the loop last emptied the socket grows with the
queue. That time bounds how long a new request waits in the kernel before the node even sees
it. Past a level, new work is refused with a stateless 503 and ``Retry-After`` (RFC 3261
§21.5.4), cheapest to refuse and least valuable first, while everything already admitted keeps
flowing:

====================================================  ===================================
request                                               shed once behind for
====================================================  ===================================
out-of-dialog, not INVITE, from an unknown source     ``unknown_backlog`` (0.1 s)
(OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, ...)
new INVITE (no To tag), from anyone outside           ``backlog`` (0.2 s, under T1)
out-of-dialog, not INVITE, from a known source        never (a trunk's keepalive OPTIONS)
inside a dialog (To tag: ACK, BYE, re-INVITE, ...)    never: the call was admitted
CANCEL                                                never: it ends work
anything from an overlay peer (link probes, relayed)  never: probes decide link health
retransmission, response, ACK, CANCEL of a known      never: the core does not ask
transaction
====================================================  ===================================

Shedding by the backlog alone oscillates: once the loop catches up, every new INVITE is let in
again until it has been behind for ``backlog`` once more, and at twice the node's capacity that
is a burst of calls whose later messages (answers, ACKs, BYEs) put it further behind than T1.
So within an episode the node also sheds a share of new INVITEs while it keeps up (RFC 7339's
loss-based idea, applied at the node itself): every ``TICK`` the share grows by ``SHARE_UP``
if the backlog passed ``backlog`` during the tick, and shrinks by ``SHARE_DOWN`` otherwise.
Under a steady overload it settles around the excess (half, at twice the capacity), and the
backlog stays near ``backlog``; the share is applied deterministically (every n-th INVITE),
and while it is above zero unknown sources' requests are shed too.

A *known* source is an overlay peer, a ``[[security.trunks]]`` network or a static dialplan
target's address; every other address is unknown. The proxy core asks ``admit`` only for new
requests from outside the overlay (``overlay.sip.Admission``), so the last row costs nothing.

``Overload`` wraps the node's edge guard (``EdgeGuard``, with ``[security]``) when it has one:
a shed request is refused before the guard sees it, so the shedding charges no source's rate
limit, and when the node keeps up the check is one comparison. Each episode of shedding (from
the first refusal until none for ``EPISODE_QUIET``) is one ``OverloadStarted`` and one
``OverloadEnded`` event; refusals are counted by method and by known or unknown source.

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
#: How often the share of new INVITEs shed while the node keeps up is adjusted (module notes).
TICK = 0.1
SHARE_UP = 0.1
SHARE_DOWN = 0.02
MAX_SHARE = 0.95


@dataclass(frozen=True, slots=True)
class OverloadStatistics:
    shed: dict[str, int]  # requests answered 503, by "known.INVITE", "unknown.OPTIONS", ...
    episodes: int  # times the node began shedding
    behind_since: float | None  # when the receive loop fell behind, None while it keeps up
    share: float  # of new INVITEs shed even while the node keeps up, in an episode


def shed_after(
    request: Request, *, known: bool, backlog: float, unknown_backlog: float
) -> float | None:
    """How long the node may be behind before ``request`` (a new request from outside the
    overlay) is shed, or ``None`` if it never is; the table in the module notes."""
    method = request.method
    if request.to_tag is not None or method in NEVER_SHED:
        return None
    if method == "INVITE":
        return backlog
    return None if known else unknown_backlog


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
        self._first = min(section.backlog, section.unknown_backlog)
        self.behind_since: float | None = None
        self.share = 0.0
        self._quota = 0.0  # shares accrued: an INVITE is shed each time it reaches 1
        self._next_tick = math.inf  # set at an episode's start
        self._hard = False  # the backlog passed ``backlog`` during this tick
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
        since = self.behind_since
        behind = 0.0 if since is None else now - since
        if self._in_episode:
            self._tick(now)
        if (behind >= self._first or self.share) and host not in self._exempt:
            known = self._is_known(host)
            section = self.section
            after = shed_after(
                request,
                known=known,
                backlog=section.backlog,
                unknown_backlog=section.unknown_backlog,
            )
            if after is not None and self._sheds(after, behind):
                self._count(request.method, known, now)
                return self._refusal
        inner = self.inner
        return None if inner is None else inner.admit(request, host, now)

    def answered(self, host: str, status: int, now: float) -> None:
        if self.inner is not None:
            self.inner.answered(host, status, now)

    # -- the shell ---------------------------------------------------------------------------

    def backlog(self, since: float | None) -> None:
        """The receive loop is behind its socket since ``since``, or caught up (``None``)."""
        self.behind_since = since

    def handle_timer(self, now: float) -> None:
        """End the episode once nothing was shed for ``EPISODE_QUIET``; call it about once a
        second (the end is reported that late at most)."""
        if self._in_episode:
            self._tick(now)
        if self._in_episode and now - self._last_shed >= EPISODE_QUIET:
            self._events.append(OverloadEnded(self._episode_shed))
            self._episode_shed = 0
            self._in_episode = False
            self.share = self._quota = 0.0

    def next_event(self) -> GuardEvent | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> OverloadStatistics:
        return OverloadStatistics(dict(self._shed), self._episodes, self.behind_since, self.share)

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

    def _sheds(self, after: float, behind: float) -> bool:
        """Whether a request shed once ``after`` seconds behind is shed now."""
        if after < self.section.backlog:
            return True  # an unknown source's: in an episode with a share, or far enough behind
        if behind >= after:
            self._hard = True
            return True
        self._quota += self.share
        if self._quota >= 1.0:
            self._quota -= 1.0
            return True
        return False

    def _tick(self, now: float) -> None:
        while now >= self._next_tick:
            if self._hard:
                self.share = min(MAX_SHARE, self.share + SHARE_UP)
            else:
                self.share = max(0.0, self.share - SHARE_DOWN)
            self._hard = False
            self._next_tick += TICK

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
        if not self._in_episode:
            self._in_episode = True
            self._episodes += 1
            self._next_tick = now + TICK
            self._hard = True
            assert self.behind_since is not None
            self._events.append(OverloadStarted(now - self.behind_since))


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
