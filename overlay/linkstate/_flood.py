"""Reliable flooding of LSAs between overlay nodes (sans-IO).

Theory of operation
-------------------
Every node holds a session with each peer it can reach over gRPC (``session_up`` /
``session_down``: the shell owns the streams). Over a session a node sends ``Lsa`` messages and the
peer answers each with an ``LsaAck``; the shell moves both between this object and the wire.

* **Origination.** ``set_links`` gives the node's current view of its own links. A new LSA instance
  (sequence number + 1) is created at once when a link went up or down or a peer appeared or
  disappeared, within ``min_originate_interval`` when a metric moved beyond its threshold
  (``FloodConfig``), and every ``refresh_interval`` regardless, so that live nodes never age out.
* **Reception.** A newer instance is installed and passed on; every instance is acknowledged,
  newer or not, so the sender stops retransmitting. An older instance makes us send ours back,
  which brings a lagging neighbour up to date. A copy of our own LSA with a number at least as high
  as ours (a previous life of this node) makes us jump past it and re-originate.
* **Reliability.** Each LSA sent over a session waits for its ack; it is sent again (with its
  current age) every ``retransmit_interval`` until acknowledged, superseded by a newer instance,
  aged out, or the session goes down. When a session comes up, the whole database is sent over
  it (the database exchange): that is how a healed partition converges.
* **Scope (flooding reduction in a full mesh).** An origin sends its own LSA to every neighbour.
  A node passing on someone else's LSA skips the neighbours that both the origin's LSA and the
  neighbour's own LSA report as linked to the origin and up: those hear it from the origin
  directly. So a change costs about n-1 messages in a healthy full mesh of n nodes instead of
  (n-1)², and when a direct path is down, the LSA that says so is exactly what makes the others
  relay it around the break. Session resync and refresh cover anything the reduction misses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from ._lsa import LinkMetrics, Lsa
from ._lsdb import InstallResult, LinkStateDb


@dataclass(frozen=True, slots=True)
class FloodConfig:
    """Flooding timers (seconds) and the thresholds of a "significant" metric change."""

    refresh_interval: float = 10.0
    max_age: float = 40.0
    retransmit_interval: float = 1.0
    min_originate_interval: float = 0.2
    rtt_threshold_ms: float = 5.0
    rtt_threshold_ratio: float = 0.2
    jitter_threshold_ms: float = 5.0
    loss_threshold: float = 0.02
    retrans_threshold: float = 0.02


@dataclass(frozen=True, slots=True)
class LsaAck:
    """Acknowledges one instance: ``(origin, seq)``."""

    origin: str
    seq: int


@dataclass(frozen=True, slots=True)
class FloodStatistics:
    lsas_sent: int
    lsas_received: int
    acks_sent: int
    acks_received: int
    retransmissions: int
    originated: int
    installed: int
    sessions: int
    lsdb_size: int


@dataclass(slots=True)
class _Pending:
    seq: int
    sent_at: float


@dataclass(slots=True)
class _Counters:
    lsas_sent: int = 0
    lsas_received: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    retransmissions: int = 0
    originated: int = 0
    installed: int = 0


def significant_change(old: LinkMetrics, new: LinkMetrics, config: FloodConfig) -> bool:
    """Whether ``new`` differs from what was last advertised enough to flood at once."""
    if old.up != new.up or old.admin_cost != new.admin_cost:
        return True
    rtt_limit = max(config.rtt_threshold_ms, config.rtt_threshold_ratio * old.rtt_ms)
    return (
        abs(new.rtt_ms - old.rtt_ms) > rtt_limit
        or abs(new.jitter_ms - old.jitter_ms) > config.jitter_threshold_ms
        or abs(new.loss_ratio - old.loss_ratio) > config.loss_threshold
        or abs(new.retrans_ratio - old.retrans_ratio) > config.retrans_threshold
    )


class Flooder:
    """One node's side of flooding: its own LSA, the database, and per-session reliability."""

    def __init__(
        self,
        node_id: str,
        region: str,
        az: str,
        config: FloodConfig,
        *,
        initial_seq: int,
        now: float,
        takeover_grace_s: float = 0.0,
        state_epoch: bytes = b"",
    ) -> None:
        self.node_id = node_id
        self._takeover_grace_s = takeover_grace_s
        self.state_epoch = state_epoch
        #: A pair's standby: the last LSA its active advertised as this node (``adopt``).
        self.followed: Lsa | None = None
        self._region = region
        self._az = az
        self._config = config
        self.lsdb = LinkStateDb(max_age=config.max_age)
        self._seq = initial_seq
        self._links: tuple[LinkMetrics, ...] = ()
        self._advertised: dict[str, LinkMetrics] = {}
        self._draining = False
        self._last_originated = -float("inf")
        self._originate_due: float | None = None
        self._sessions: dict[str, dict[str, _Pending]] = {}
        self._outbox: list[tuple[str, Lsa | LsaAck]] = []
        self._counters = _Counters()
        self._originate(now)

    # -- sessions -----------------------------------------------------------------------------

    def session_up(self, neighbor: str, now: float) -> None:
        """A gRPC session to ``neighbor`` is (again) established: send it the whole database."""
        self._sessions[neighbor] = {}
        for origin in self.lsdb.origins():
            # Including the neighbour's own LSA: a restarted node learns its old number so.
            self._send(neighbor, origin, now)

    def session_down(self, neighbor: str) -> None:
        """The session is gone; what it still owed is resent by the next ``session_up``."""
        self._sessions.pop(neighbor, None)

    @property
    def sessions(self) -> list[str]:
        return sorted(self._sessions)

    # -- own LSA ------------------------------------------------------------------------------

    def set_links(self, links: Sequence[LinkMetrics], now: float) -> None:
        """This node's current measurements of its links; originates when they changed enough."""
        self._links = tuple(sorted(links, key=lambda link: link.neighbor))
        current = {link.neighbor: link for link in self._links}
        if current.keys() != self._advertised.keys() or any(
            (old.up, old.grace) != (current[name].up, current[name].grace)
            for name, old in self._advertised.items()
        ):
            self._originate(now)
            return
        if any(
            significant_change(old, current[name], self._config)
            for name, old in self._advertised.items()
        ):
            due = self._last_originated + self._config.min_originate_interval
            if now >= due:
                self._originate(now)
            elif self._originate_due is None:
                self._originate_due = due

    def adopt(self, lsa: Lsa, now: float) -> None:
        """An LSA of the active this node (a pair's standby) follows: another origin's goes in
        the database as the active holds it, so a takeover starts with its routes; the
        active's own (this node id's) is kept in ``followed``, and its number outnumbered
        by this node's next LSA. Nothing is flooded: a standby has no sessions."""
        if lsa.origin != self.node_id:
            self.lsdb.install(lsa, now)
            return
        self.followed = lsa
        self._seq = max(self._seq, lsa.seq)

    def set_epoch(self, epoch: bytes, now: float) -> None:
        """Advertise another call-state epoch: a pair's standby that took over keeps the one
        its active advertised (its calls live on here)."""
        if epoch != self.state_epoch:
            self.state_epoch = epoch
            self._originate(now)

    def set_draining(self, draining: bool, now: float) -> None:
        if draining != self._draining:
            self._draining = draining
            self._originate(now)

    def _originate(self, now: float) -> None:
        self._seq += 1
        lsa = Lsa(
            self.node_id,
            self._seq,
            0.0,
            self._region,
            self._az,
            self._links,
            self._draining,
            self._takeover_grace_s,
            self.state_epoch,
        )
        self.lsdb.install(lsa, now)
        self._advertised = {link.neighbor: link for link in self._links}
        self._last_originated = now
        self._originate_due = None
        self._counters.originated += 1
        for neighbor in self._sessions:
            self._send(neighbor, self.node_id, now)

    # -- reception ----------------------------------------------------------------------------

    def receive_lsa(self, neighbor: str, lsa: Lsa, now: float) -> None:
        """An LSA arrived over the session with ``neighbor`` (decoded by the shell)."""
        counters = self._counters
        counters.lsas_received += 1
        self._outbox.append((neighbor, LsaAck(lsa.origin, lsa.seq)))
        counters.acks_sent += 1
        if lsa.origin == self.node_id:
            if lsa.seq >= self._seq:
                self._seq = lsa.seq
                self._originate(now)
            return
        result = self.lsdb.install(lsa, now)
        if result is InstallResult.NEWER:
            counters.installed += 1
            for other in self._sessions:
                if other != neighbor and self._needs_relay(lsa, other):
                    self._send(other, lsa.origin, now)
        elif result is InstallResult.OLDER and neighbor in self._sessions:
            self._send(neighbor, lsa.origin, now)
        else:
            # The neighbour has what we would send it: as good as an ack.
            self._acknowledged(neighbor, lsa.origin, lsa.seq)

    def receive_ack(self, neighbor: str, ack: LsaAck) -> None:
        self._counters.acks_received += 1
        self._acknowledged(neighbor, ack.origin, ack.seq)

    def _acknowledged(self, neighbor: str, origin: str, seq: int) -> None:
        pending = self._sessions.get(neighbor)
        if pending is not None:
            item = pending.get(origin)
            if item is not None and seq >= item.seq:
                del pending[origin]

    def _needs_relay(self, lsa: Lsa, neighbor: str) -> bool:
        if neighbor == lsa.origin:
            return False
        forward = lsa.link(neighbor)
        if forward is None or not forward.up:
            return True
        neighbor_lsa = self.lsdb.peek(neighbor)
        backward = None if neighbor_lsa is None else neighbor_lsa.link(lsa.origin)
        return backward is None or not backward.up

    # -- sending ------------------------------------------------------------------------------

    def _send(self, neighbor: str, origin: str, now: float) -> None:
        lsa = self.lsdb.get(origin, now)
        if lsa is None:
            return
        self._sessions[neighbor][origin] = _Pending(lsa.seq, now)
        self._outbox.append((neighbor, lsa))
        self._counters.lsas_sent += 1

    def messages_to_send(self) -> list[tuple[str, Lsa | LsaAck]]:
        """``(neighbor, message)`` pairs produced since the last call, in order."""
        outbox, self._outbox = self._outbox, []
        return outbox

    # -- time ---------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Age the database, refresh or originate our LSA when due, retransmit unacked LSAs."""
        config = self._config
        self.lsdb.expire(now)
        if (self._originate_due is not None and now >= self._originate_due) or (
            now >= self._last_originated + config.refresh_interval
        ):
            self._originate(now)
        for neighbor, pending in self._sessions.items():
            for origin, item in list(pending.items()):
                if now < item.sent_at + config.retransmit_interval:
                    continue
                if origin not in self.lsdb:
                    del pending[origin]
                    continue
                self._counters.retransmissions += 1
                self._send(neighbor, origin, now)

    def get_timer(self) -> float | None:
        config = self._config
        deadlines = [self._last_originated + config.refresh_interval]
        if self._originate_due is not None:
            deadlines.append(self._originate_due)
        expiry = self.lsdb.get_timer()
        if expiry is not None:
            deadlines.append(expiry)
        for pending in self._sessions.values():
            for item in pending.values():
                deadlines.append(item.sent_at + config.retransmit_interval)
        return min(deadlines)

    def statistics(self) -> FloodStatistics:
        c = self._counters
        return FloodStatistics(
            **dataclasses.asdict(c), sessions=len(self._sessions), lsdb_size=len(self.lsdb)
        )
