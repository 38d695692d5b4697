"""Per-peer link monitoring from probes: smoothed RTT, jitter, loss and a BFD-like up/down state.

Theory of operation
-------------------
Each node sends a probe (a SIP OPTIONS, built by ``_probe``) to every peer every ``interval``
seconds and keeps one ``LinkMonitor`` per peer. Probes are numbered; an answer carries the number
back, so answers that arrive late, out of order or after later probes still give an RTT sample.

* **RTT and jitter.** ``rtt_ms`` is an exponentially weighted mean of the samples (gain
  ``rtt_gain``, 1/8 as TCP's SRTT in RFC 6298). ``jitter_ms`` is the smoothed absolute difference
  between consecutive samples (gain 1/16, RFC 3550 §6.4.1's interarrival jitter estimator).
* **Loss.** A probe not answered within ``probe_timeout`` counts as lost. ``loss_ratio`` is the
  fraction lost among the last ``loss_window`` probes whose fate is known since the link last
  came UP (a peer that is still starting does not make its link look lossy for seconds).
* **Down.** As in BFD (RFC 5880 §6.8.4), the link goes DOWN when nothing has been heard for the
  detection time, ``multiplier * interval``: a dead peer or a blackholed path is noticed within
  a fixed, sub-second bound, independent of SIP transaction timers.
* **Liveness echoes.** Where both nodes run a media relay, the relays also exchange BFD's echo
  function (RFC 5880 §6.4) in C, far more often than probes (``[linkstate] liveness_interval``,
  20 ms): the peer's relay reflects them without its Python event loop, and this node's relay
  thread stamps the answers and says when a peer has been silent for ``liveness_multiplier``
  intervals (``liveness_changed``). That silence takes the link down as the probes' would, in
  a fraction of their detection time: a dead node or a blackholed path is detected in about
  120-140 ms. The probes stay the SIP layer's check (a wedged peer event loop whose relay
  thread still answers) and measure RTT, jitter and loss. The relay thread excuses its own
  stalls (fastpath ``set_liveness``), so ``excuse`` leaves liveness alone.
* **Up.** A new link (INIT) comes UP on its first ``multiplier`` consecutive answers. A link that
  went DOWN comes UP again only after it has been healthy (no gap longer than the detection time)
  for ``hold_down`` seconds, so a flapping path stays out of the routing graph.
* **Takeover grace.** A peer that is one member of an active/standby pair advertises how long
  its standby needs to take its address over (``Lsa.takeover_grace_s``, set here as ``grace``).
  Its link then goes from UP to GRACE, not DOWN, at the detection time, and stays advertised up
  (``LinkMetrics.grace``) with its last metrics: routing keeps the peer as a destination but
  no longer a transit, so media and in-dialog requests keep flowing to its address. An answer
  within the grace brings the link UP at once, without hold-down (a new holder of the address,
  not a flapping path); silence for the whole grace makes it DOWN. This is OSPF's graceful
  restart helper mode (RFC 3623) for a pair.
* **SIP retransmissions.** The proxy reports, per peer, how many requests it sent and how many of
  them it had to retransmit on real traffic; ``retrans_ratio`` is the ratio over a sliding
  window of ``retrans_window`` seconds.
* **This node's own stalls.** When the node's event loop could not run for a while (a long
  garbage-collector pass, a burst of work), the answers that arrived meanwhile wait unread in
  its socket: silence then says nothing about the peer, and an answer read late says nothing
  about the path's RTT. ``excuse(start, end)`` tells the monitor: the detection time does not
  count that interval, and probes outstanding across it give no RTT sample (their answers
  still prove the peer alive and the probes are not lost for the wait). A node must not blame
  its neighbours for its own pauses, or an overloaded node partitions itself.
* **Media echoes.** Where both nodes run a media relay, an echo goes through the relays' overlay
  sockets with every probe (``next_echo`` / ``echo_answered``) and is measured the same way. The
  relay path can suffer where signalling does not (a dead relay, a policer on the media ports),
  so the advertised ``loss_ratio`` and ``jitter_ms`` are the worse of the two paths' and the
  cost function sees what calls' audio would. Echoes never decide up or down: that stays with
  the signalling probes, like BFD's control packets.

Everything is driven by ``now`` arguments: no clock is read here.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

from ._lsa import LinkMetrics

_JITTER_GAIN = 1.0 / 16.0


class LinkState(enum.Enum):
    INIT = "INIT"
    UP = "UP"
    GRACE = "GRACE"
    DOWN = "DOWN"


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """Probe timing (config ``[linkstate]``); detection time is ``multiplier * interval``."""

    interval: float = 0.1
    multiplier: int = 3
    hold_down: float = 2.0
    probe_timeout: float = 1.0
    loss_window: int = 30
    rtt_gain: float = 1.0 / 8.0
    retrans_window: float = 10.0

    @property
    def detection_time(self) -> float:
        return self.multiplier * self.interval


@dataclass(frozen=True, slots=True)
class PathStatistics:
    """What numbered probes over one path measured: smoothed RTT, jitter and recent loss."""

    rtt_ms: float
    jitter_ms: float
    loss_ratio: float
    sent: int
    answered: int
    lost: int


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """A read-only snapshot for the admin service and logs; ``media`` is ``None`` where no
    echo was ever sent (no relay on one side)."""

    neighbor: str
    state: LinkState
    since: float
    metrics: LinkMetrics
    probes_sent: int
    probes_answered: int
    probes_lost: int
    media: PathStatistics | None = None


class _ProbePath:
    """RTT, jitter and loss of one path from numbered probes and their answers."""

    def __init__(self, config: ProbeConfig, now: float) -> None:
        self._config = config
        self._next_seq = 1
        self._outstanding: dict[int, float] = {}  # probe number -> time sent
        self._unmeasured: set[int] = set()  # outstanding across a stall: no RTT sample
        self._fates: collections.deque[bool] = collections.deque(maxlen=config.loss_window)
        self._loss_epoch = now  # only probes sent since then count towards loss
        self._rtt_ms: float | None = None
        self._last_sample_ms: float | None = None
        self._jitter_ms = 0.0
        self.sent = 0
        self.answered = 0
        self.lost = 0

    def next(self, now: float) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._outstanding[seq] = now
        self.sent += 1
        return seq

    def answer(self, seq: int, now: float) -> None:
        sent = self._outstanding.pop(seq, None)
        if sent is None:
            return
        self.answered += 1
        if sent >= self._loss_epoch:
            self._fates.append(True)
        if seq in self._unmeasured:
            self._unmeasured.discard(seq)
            return
        rtt_ms = (now - sent) * 1000.0
        if self._rtt_ms is None:
            self._rtt_ms = rtt_ms
        else:
            self._rtt_ms += self._config.rtt_gain * (rtt_ms - self._rtt_ms)
        if self._last_sample_ms is not None:
            delta = abs(rtt_ms - self._last_sample_ms)
            self._jitter_ms += _JITTER_GAIN * (delta - self._jitter_ms)
        self._last_sample_ms = rtt_ms

    def expire(self, now: float) -> None:
        expired_before = now - self._config.probe_timeout
        for seq, sent in list(self._outstanding.items()):
            if sent <= expired_before:
                del self._outstanding[seq]
                self._unmeasured.discard(seq)
                self.lost += 1
                if sent >= self._loss_epoch:
                    self._fates.append(False)

    def excuse(self, start: float, end: float) -> None:
        """Probes outstanding across a stall of this node: no RTT sample, and the stall does
        not count toward their timeout."""
        stalled = end - start
        for seq, sent in self._outstanding.items():
            if sent < end:
                self._outstanding[seq] = sent + stalled
                self._unmeasured.add(seq)

    def restart_loss(self, now: float) -> None:
        self._fates.clear()
        self._loss_epoch = now

    def deadline(self) -> float | None:
        if not self._outstanding:
            return None
        return min(self._outstanding.values()) + self._config.probe_timeout

    def statistics(self) -> PathStatistics:
        fates = self._fates
        return PathStatistics(
            rtt_ms=round(self._rtt_ms or 0.0, 3),
            jitter_ms=round(self._jitter_ms, 3),
            loss_ratio=round(fates.count(False) / len(fates), 4) if fates else 0.0,
            sent=self.sent,
            answered=self.answered,
            lost=self.lost,
        )


class LinkMonitor:
    """The measured state of the link from this node to one peer."""

    def __init__(
        self, neighbor: str, config: ProbeConfig, now: float, *, admin_cost: float = 0.0
    ) -> None:
        self.neighbor = neighbor
        self.admin_cost = admin_cost
        self.grace = 0.0  # the peer's takeover grace, seconds (from its LSA; 0: no pair)
        #: A new link comes UP on its first answer, not ``multiplier`` of them: this node is a
        #: pair's standby that took over, and its active had the link up a moment ago.
        self.up_on_first_answer = False
        self._config = config
        self.state = LinkState.INIT
        self.since = now
        self._signalling = _ProbePath(config, now)
        self._media = _ProbePath(config, now)
        self._last_heard: float | None = None
        #: The relay's verdict (``liveness_changed``); ``False`` where no liveness runs.
        self._liveness_silent = False
        self._healthy_since: float | None = None  # start of the current run without a gap
        self._streak = 0  # consecutive answers (INIT -> UP)
        self._traffic: collections.deque[tuple[float, int, int]] = collections.deque()

    # -- probes -------------------------------------------------------------------------------

    def next_probe(self, now: float) -> int:
        """Number the next probe and remember when it left; the caller sends it."""
        return self._signalling.next(now)

    def probe_answered(self, seq: int, now: float) -> LinkState | None:
        """Record an answer to probe ``seq``; returns the new state when it changed.

        Answers to unknown numbers (duplicates, or answers after ``probe_timeout``) still prove
        the peer alive but give no RTT sample.
        """
        before = self.state
        self._evaluate(now)  # a gap longer than the detection time ends an UP link first
        self._signalling.answer(seq, now)
        self._last_heard = now
        self._streak += 1
        self._evaluate(now)
        return None if self.state is before else self.state

    def assume_up(self, now: float) -> None:
        """Start UP, as if healthy until ``now``: this node is a pair's standby taking over,
        and its active had the link up a moment ago. Silence for the detection time takes it
        down (or into grace) as any UP link."""
        self.state = LinkState.UP
        self.since = now
        self._last_heard = self._healthy_since = now
        self._streak = self._config.multiplier

    def liveness_changed(self, silent: bool, now: float) -> LinkState | None:
        """The relay says the peer's liveness echoes stopped (``silent``) or came back;
        returns the new state when it changed."""
        self._liveness_silent = silent
        return self._evaluate(now)

    def next_echo(self, now: float) -> int:
        """Number the next media echo and remember when it left; the caller sends it."""
        return self._media.next(now)

    def echo_answered(self, seq: int, now: float) -> None:
        """Record the answer to echo ``seq`` (``now``: when the relay received it)."""
        self._media.answer(seq, now)

    def excuse(self, start: float, end: float) -> None:
        """This node could not listen from ``start`` to ``end`` (its event loop stalled): the
        peer's silence then does not count, nor do the RTTs of probes waiting across it."""
        if end <= start:
            return
        if self._last_heard is not None and self._last_heard < start:
            self._last_heard += end - start
        self._signalling.excuse(start, end)
        self._media.excuse(start, end)

    # -- real SIP traffic ---------------------------------------------------------------------

    def record_traffic(self, requests: int, retransmissions: int, now: float) -> None:
        """Add requests sent to this peer and retransmissions of them since the last report."""
        if requests or retransmissions:
            self._traffic.append((now, requests, retransmissions))

    def _retrans_ratio(self, now: float) -> float:
        horizon = now - self._config.retrans_window
        traffic = self._traffic
        while traffic and traffic[0][0] < horizon:
            traffic.popleft()
        requests = sum(item[1] for item in traffic)
        retransmissions = sum(item[2] for item in traffic)
        if requests == 0:
            return 0.0
        return min(1.0, retransmissions / requests)

    # -- time ---------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> LinkState | None:
        """Expire unanswered probes and apply the detection time; returns a new state if any."""
        self._signalling.expire(now)
        self._media.expire(now)
        return self._evaluate(now)

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` may change something (excluding the probe schedule)."""
        deadlines = [
            deadline
            for path in (self._signalling, self._media)
            if (deadline := path.deadline()) is not None
        ]
        if self._last_heard is not None and self.state is LinkState.UP:
            deadlines.append(self._last_heard + self._config.detection_time)
        if self.state is LinkState.GRACE:
            deadlines.append(self.since + self.grace)
        if self.state is LinkState.DOWN and self._healthy_since is not None:
            deadlines.append(self._healthy_since + self._config.hold_down)
        return min(deadlines) if deadlines else None

    def _evaluate(self, now: float) -> LinkState | None:
        config = self._config
        silent = (
            self._liveness_silent
            or self._last_heard is None
            or now - self._last_heard > config.detection_time
        )
        if not silent and self._healthy_since is None:
            self._healthy_since = now
        new: LinkState
        if silent:
            self._healthy_since = None
            self._streak = 0
            if self.state is LinkState.UP:
                new = LinkState.GRACE if self.grace > 0 else LinkState.DOWN
            elif self.state is LinkState.GRACE and now - self.since >= self.grace:
                new = LinkState.DOWN
            else:
                new = self.state
        elif self.state is LinkState.GRACE:
            new = LinkState.UP
        elif self.state is LinkState.INIT:
            needed = 1 if self.up_on_first_answer else config.multiplier
            new = LinkState.UP if self._streak >= needed else LinkState.INIT
        elif self.state is LinkState.DOWN:
            assert self._healthy_since is not None
            healthy_for = now - self._healthy_since
            new = LinkState.UP if healthy_for >= config.hold_down else LinkState.DOWN
        else:
            new = LinkState.UP
        if new is self.state:
            return None
        if new is LinkState.UP:
            # Loss is measured on a live link: the probes nobody answered while the peer was
            # still starting, down or being taken over, say nothing about the path now.
            self._signalling.restart_loss(now)
            self._media.restart_loss(now)
        self.state = new
        self.since = now
        return new

    # -- reading ------------------------------------------------------------------------------

    @property
    def liveness_silent(self) -> bool:
        """Whether the relay last said the peer's liveness echoes stopped."""
        return self._liveness_silent

    @property
    def cause(self) -> str:
        """What took the link down (read as it goes down): ``"liveness"`` when the relay says
        the echoes stopped, else ``"probes"``."""
        return "liveness" if self._liveness_silent else "probes"

    def silent_ms(self, now: float) -> float | None:
        """How long nothing has been heard from the peer (stalls excused), or ``None``."""
        return None if self._last_heard is None else round((now - self._last_heard) * 1e3, 1)

    def metrics(self, now: float) -> LinkMetrics:
        """What this node advertises about the link in its LSA."""
        signalling = self._signalling.statistics()
        media = self._media.statistics()
        return LinkMetrics(
            neighbor=self.neighbor,
            up=self.state in (LinkState.UP, LinkState.GRACE),
            grace=self.state is LinkState.GRACE,
            rtt_ms=signalling.rtt_ms,
            jitter_ms=max(signalling.jitter_ms, media.jitter_ms),
            loss_ratio=max(signalling.loss_ratio, media.loss_ratio),
            retrans_ratio=round(self._retrans_ratio(now), 4),
            admin_cost=self.admin_cost,
        )

    def statistics(self, now: float) -> LinkStatistics:
        signalling = self._signalling
        return LinkStatistics(
            neighbor=self.neighbor,
            state=self.state,
            since=self.since,
            metrics=self.metrics(now),
            probes_sent=signalling.sent,
            probes_answered=signalling.answered,
            probes_lost=signalling.lost,
            media=self._media.statistics() if self._media.sent else None,
        )
