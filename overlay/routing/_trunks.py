"""Trunk health: which addresses of the trunks this node sends calls to answer, from OPTIONS
probes, and the order the proxy core tries a trunk's next hops in (sans-IO).

Theory of operation
-------------------
A *trunk* here is one address a call may leave the overlay to, ``Peer(transport, host,
port)``: a dialplan target given as ``host:port``, or one entry of a DNS target's RFC 3263 list.
The shell tells ``TrunkHealth`` which they are (``set_trunks``, again after each DNS refresh),
sends the probes it makes (``datagrams_to_send``) and hands back every answer
(``receive_answer_untrusted``); ``order`` is what the proxy core asks (``NextHopHealth``).

* **Probes.** Every ``probe_interval`` each trunk gets an OPTIONS (RFC 3261 §11) with its own
  Call-ID, ``ovltrunk.<node id>.<n>``, and ``Max-Forwards: 70``: unlike the overlay's link
  probes (``Max-Forwards: 0``), a trunk is often a proxy in front of its servers, and the probe
  should reach what the calls reach. ``n`` is unique over the node's life (the shell starts it
  from the wall clock, so a restarted node does not repeat Call-IDs); Via branch and From tag
  derive from it. With several workers (processes sharing the sockets, UDP steered by
  Call-ID), each worker keeps only the ``n`` whose Call-ID is steered to itself, so every
  answer reaches the worker that sent the probe and no two workers use the same ``n``.
* **Alive.** A final response proves the trunk alive when its status is in ``reply_codes``, or,
  by default, any final status: a 404 or a 405 comes from a live SIP stack. A 408 never does:
  a proxy in front of a dead trunk makes one itself (Kamailio's ``ds_ping_reply_codes``
  documentation warns of exactly that). Provisional responses are ignored, and answers that
  prove nothing count as silence. An answer must come from the host probed (its port may
  differ: RFC 3261 §18.2.2 lets a server answer from another socket) and name a probe of ours
  not older than ``probe_timeout + detection time``.
* **Up and down** come from one ``overlay.linkstate.LinkMonitor`` per trunk, as for the
  overlay's own links (RTT, loss, hold-down), with one addition. A monitor leaves INIT only on
  answers: a trunk that never answers would stay INIT, "not known to be down", for ever.
  Here a trunk is DOWN once nothing proved it alive for the detection time
  (``probe_multiplier * probe_interval``) since its first probe or its last good answer,
  INIT or UP alike. It is UP again on the monitor's word: after ``probe_multiplier`` answers
  in a row when it never was UP, after ``hold_down`` seconds without a gap when it was.
* **Order.** ``order`` moves the trunks that are DOWN after the others and keeps the RFC 3263
  order otherwise. When all are down the order is left as it is (counted,
  ``trunks.all_down_tried``): a trunk that ignores OPTIONS must not be black-holed, it only
  loses its place to trunks that answer. A trunk that dies between probes costs the call the
  next-hop timer, as before.

Everything is driven by ``now`` arguments: no clock is read, nothing is sent here.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from overlay.config import TrunksSection
from overlay.linkstate import LinkMonitor, LinkState, ProbeConfig
from overlay.sip import (
    Listener,
    Peer,
    RemoteProtocolError,
    Response,
    host_reference,
    parse_message_untrusted,
    steering_owner,
)

#: Every datagram that may be an answer to a trunk probe carries this (its Call-ID's prefix).
TRUNK_MARK = b"ovltrunk."
_PREFIX = "ovltrunk."
_TAG = "ovltrunk"


def trunk_name(peer: Peer) -> str:
    """How logs, the NOC and metrics name a trunk: ``udp:198.51.100.7:5060``."""
    return f"{peer.transport}:{host_reference(peer.host)}:{peer.port}"


@dataclass(frozen=True, slots=True)
class TrunkStatistics:
    """A read-only snapshot of one trunk, for the NOC and metrics.

    Attributes:
        trunk: the address probed.
        targets: the dialplan targets that lead to it (``sip:carrier.example``,
            ``198.51.100.7:5060``), sorted.
        state: INIT (probing, not yet known either way), UP or DOWN.
        since: when ``state`` began (the node's clock).
        rtt_ms: smoothed round-trip time of the answers that proved it alive.
        loss_ratio: the share of recent probes that got no such answer within probe_timeout.
        last_status: the last final response to a probe, 0 while none came.
        silent_ms: time since the last answer that proved it alive; ``None``: never one.
    """

    trunk: Peer
    targets: tuple[str, ...]
    state: LinkState
    since: float
    rtt_ms: float
    loss_ratio: float
    probes_sent: int
    probes_answered: int
    probes_lost: int
    last_status: int
    silent_ms: float | None


@dataclass(frozen=True, slots=True)
class TrunkStateChanged:
    """A trunk's verdict changed (``statistics.state``: UP or DOWN; INIT is only a start)."""

    statistics: TrunkStatistics
    previous: LinkState


class _Trunk:
    """One probed address: its monitor, and what the monitor does not keep."""

    __slots__ = ("first_sent", "last_alive", "last_status", "monitor", "since", "state", "targets")

    def __init__(self, peer: Peer, probe: ProbeConfig, now: float) -> None:
        self.monitor = LinkMonitor(trunk_name(peer), probe, now)
        self.targets: set[str] = set()
        self.first_sent: float | None = None
        self.last_alive: float | None = None
        self.last_status = 0
        self.state = LinkState.INIT  # the verdict last published
        self.since = now

    def quiet_deadline(self, detection: float) -> float | None:
        """When silence makes it DOWN, unless an answer comes first; ``None``: never probed."""
        quiet_since = self.last_alive if self.last_alive is not None else self.first_sent
        return None if quiet_since is None else quiet_since + detection

    def verdict(self, now: float, detection: float) -> LinkState:
        monitored = self.monitor.state
        if monitored is LinkState.DOWN:
            return LinkState.DOWN
        deadline = self.quiet_deadline(detection)
        if deadline is not None and now >= deadline:
            return LinkState.DOWN
        if self.state is LinkState.DOWN and monitored is not LinkState.UP:
            return LinkState.DOWN  # a trunk never UP that fell silent: back on the monitor's UP
        return monitored


class TrunkHealth:
    """The probed health of this node's trunks; see the module docstring.

    Implements ``overlay.sip.NextHopHealth`` for the proxy core.

    Args:
        node_id: this node, named in the probes' Call-ID and From.
        config: ``[trunks]``.
        listeners: the node's SIP listeners, ``advertise`` set: a probe's Via and From name
            the one of its transport (and address family), as the world outside reaches it.
            A trunk whose transport has no listener is not probed (it stays INIT).
        user_agent: the probes' User-Agent.
        now: the current time.
        first_probe: the ``n`` of the first probe's Call-ID (the shell passes wall-clock
            milliseconds, so that a restarted node does not reuse Call-IDs).
        worker, workers: this worker's index and how many share the sockets (module notes).
    """

    def __init__(
        self,
        node_id: str,
        config: TrunksSection,
        *,
        listeners: Sequence[Listener],
        user_agent: str,
        now: float,
        first_probe: int = 1,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} of {workers}")
        self.node_id = node_id
        self.config = config
        self._probe = ProbeConfig(
            interval=config.probe_interval,
            multiplier=config.probe_multiplier,
            hold_down=config.hold_down,
            probe_timeout=config.probe_timeout,
        )
        self._detection = config.detection_time
        # Answers older than this cannot be told apart from a stranger's guess.
        self._answer_window = config.probe_timeout + self._detection
        self._listeners = tuple(listeners)
        self._user_agent = user_agent
        self._alive = frozenset(config.reply_codes)
        self._worker = worker
        self._workers = workers
        self._n = first_probe
        self._trunks: dict[Peer, _Trunk] = {}
        # n -> (trunk, the monitor's number of the probe, when it left), oldest first
        self._outstanding: dict[int, tuple[Peer, int, float]] = {}
        self._next_probe = now
        self._events: collections.deque[TrunkStateChanged] = collections.deque()
        self.probes_sent = 0
        self.answers = 0
        self.not_alive = 0  # final answers that prove nothing (408, or not in reply_codes)
        self.stray_answers = 0  # from another host, naming no probe of ours, or too late
        self.all_down_tried = 0
        self.unprobed = 0  # probes not made: no listener of the trunk's transport

    # -- which trunks ----------------------------------------------------------------------

    def set_trunks(self, trunks: Mapping[str, Iterable[Peer]], now: float) -> None:
        """Probe exactly these trunks from now on, by dialplan target (its name, e.g.
        ``sip:carrier.example``, to its addresses). A trunk still listed keeps its state;
        one no longer listed is forgotten; a new one starts INIT and is probed at once."""
        wanted: dict[Peer, set[str]] = {}
        for target, peers in trunks.items():
            for peer in peers:
                wanted.setdefault(peer, set()).add(target)
        for peer in list(self._trunks):
            if peer not in wanted:
                del self._trunks[peer]
        for peer, targets in wanted.items():
            trunk = self._trunks.get(peer)
            if trunk is None:
                trunk = self._trunks[peer] = _Trunk(peer, self._probe, now)
                self._next_probe = min(self._next_probe, now)
            trunk.targets = targets
        for n, (peer, _, _) in list(self._outstanding.items()):
            if peer not in self._trunks:
                del self._outstanding[n]

    @property
    def trunks(self) -> list[Peer]:
        return sorted(self._trunks)

    # -- the proxy core's question ---------------------------------------------------------

    def order(self, peers: Sequence[Peer], now: float) -> list[Peer]:
        """``peers`` with those known to be DOWN moved after the others, the order otherwise
        kept; all of them DOWN: unchanged (and counted). Never drops one."""
        down = [peer for peer in peers if self._is_down(peer, now)]
        if not down:
            return list(peers)
        if len(down) == len(peers):
            self.all_down_tried += 1
            return list(peers)
        return [peer for peer in peers if peer not in down] + down

    def _is_down(self, peer: Peer, now: float) -> bool:
        trunk = self._trunks.get(peer)
        return trunk is not None and trunk.verdict(now, self._detection) is LinkState.DOWN

    # -- probes out --------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Peer]]:
        """The probes due at ``now`` (one per trunk every probe_interval), to send as given."""
        if now < self._next_probe:
            return []
        self._next_probe = now + self._probe.interval
        datagrams = []
        for peer, trunk in self._trunks.items():
            listener = self._listener_for(peer)
            if listener is None:
                self.unprobed += 1
                continue
            n, data = self._next_request(peer, listener)
            seq = trunk.monitor.next_probe(now)
            self._outstanding[n] = (peer, seq, now)
            if trunk.first_sent is None:
                trunk.first_sent = now
            self.probes_sent += 1
            datagrams.append((data, peer))
        return datagrams

    def _listener_for(self, peer: Peer) -> Listener | None:
        same = [item for item in self._listeners if item.transport == peer.transport]
        v6 = ":" in peer.host
        for listener in same:
            if (":" in listener.host) == v6:
                return listener
        return same[0] if same else None

    def _next_request(self, peer: Peer, listener: Listener) -> tuple[int, bytes]:
        while True:
            n = self._n
            self._n += 1
            call_id = f"{_PREFIX}{self.node_id}.{n}"
            if self._workers == 1 or self._owns(call_id):
                return n, self._request(peer, listener, n, call_id)

    def _owns(self, call_id: str) -> bool:
        # The very function the transport steers datagrams with, on a header carrying only it.
        header = f"\r\nCall-ID: {call_id}\r\n\r\n".encode()
        return steering_owner(header, self._workers) == self._worker

    def _request(self, peer: Peer, listener: Listener, n: int, call_id: str) -> bytes:
        """OPTIONS to ``peer`` (RFC 3261 §11.1, with §8.1.1's mandatory header fields)."""
        here = listener.hostport
        there = f"{host_reference(peer.host)}:{peer.port}"
        params = "" if peer.transport == "udp" else f";transport={peer.transport}"
        return (
            f"OPTIONS sip:{there}{params} SIP/2.0\r\n"
            f"Via: SIP/2.0/{peer.transport.upper()} {here};branch=z9hG4bK.{_TAG}.{n};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{self.node_id}@{here}>;tag={_TAG}.{n}\r\n"
            f"To: <sip:{there}{params}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Accept: application/sdp\r\n"
            f"User-Agent: {self._user_agent}\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

    # -- answers in --------------------------------------------------------------------------

    def receive_answer_untrusted(self, data: bytes, source: Peer, now: float) -> bool:
        """Take ``data`` if it answers one of this node's trunk probes.

        Returns:
            ``True``: consumed (an answer, a stray one included, counted); ``False``: not an
            answer to a trunk probe of this node (a request, another node's probe, anything
            that does not parse): the caller hands it to the SIP core as usual.
        """
        n = self._answer_number(data)
        if n is None:
            return False
        self.answers += 1
        if not isinstance(n, tuple):
            self.stray_answers += 1
            return True
        number, status = n
        sent = self._outstanding.get(number)
        if sent is None or sent[0].host != source.host or sent[0].transport != source.transport:
            self.stray_answers += 1
            return True
        self.probe_answered(number, status, now)
        return True

    def _answer_number(self, data: bytes) -> tuple[int, int] | bool | None:
        """(probe number, status) of an answer to one of ours; ``True``: ours but unusable;
        ``None``: not ours."""
        try:
            message = parse_message_untrusted(data)
            call_id = message.call_id
        except RemoteProtocolError:
            return None
        mine = f"{_PREFIX}{self.node_id}."
        if not isinstance(message, Response) or not call_id.startswith(mine):
            return None
        number = call_id[len(mine) :]
        if not number.isascii() or not number.isdigit():
            return True
        return int(number), message.status

    def probe_answered(self, n: int, status: int, now: float) -> None:
        """Probe ``n`` got a response with ``status``; only a final one that proves the trunk
        alive (module notes) counts, with the time since the probe left as an RTT sample."""
        if status < 200:
            return
        sent = self._outstanding.pop(n, None)
        if sent is None:
            return
        peer, seq, _ = sent
        trunk = self._trunks[peer]
        trunk.last_status = status
        alive = status != 408 and (not self._alive or status in self._alive)
        if not alive:
            self.not_alive += 1
            return
        trunk.last_alive = now
        trunk.monitor.probe_answered(seq, now)
        self._publish(peer, trunk, now)

    # -- time --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` or ``datagrams_to_send`` has something to do."""
        deadlines = [self._next_probe] if self._trunks else []
        for trunk in self._trunks.values():
            if trunk.state is not LinkState.DOWN:
                deadline = trunk.quiet_deadline(self._detection)
                if deadline is not None:
                    deadlines.append(deadline)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Expire probes, apply the detection time and the hold-down; verdicts that change
        become events (``next_event``)."""
        horizon = now - self._answer_window
        for n, (_, _, sent) in list(self._outstanding.items()):
            if sent > horizon:
                break  # insertion order is sending order
            del self._outstanding[n]
        for peer, trunk in self._trunks.items():
            trunk.monitor.handle_timer(now)
            self._publish(peer, trunk, now)

    def _publish(self, peer: Peer, trunk: _Trunk, now: float) -> None:
        verdict = trunk.verdict(now, self._detection)
        if verdict is trunk.state:
            return
        previous = trunk.state
        trunk.state, trunk.since = verdict, now
        self._events.append(TrunkStateChanged(self._statistics(peer, trunk, now), previous))

    def next_event(self) -> TrunkStateChanged | None:
        """The next verdict change, oldest first; ``None`` when there is none."""
        return self._events.popleft() if self._events else None

    # -- reading -----------------------------------------------------------------------------

    def statistics(self, now: float) -> list[TrunkStatistics]:
        """Every trunk, sorted by address."""
        return [self._statistics(peer, self._trunks[peer], now) for peer in sorted(self._trunks)]

    def _statistics(self, peer: Peer, trunk: _Trunk, now: float) -> TrunkStatistics:
        stats = trunk.monitor.statistics(now)
        last = trunk.last_alive
        return TrunkStatistics(
            trunk=peer,
            targets=tuple(sorted(trunk.targets)),
            state=trunk.state,
            since=trunk.since,
            rtt_ms=stats.metrics.rtt_ms,
            loss_ratio=stats.metrics.loss_ratio,
            probes_sent=stats.probes_sent,
            probes_answered=stats.probes_answered,
            probes_lost=stats.probes_lost,
            last_status=trunk.last_status,
            silent_ms=None if last is None else round((now - last) * 1e3, 1),
        )

    def counters(self) -> dict[str, int]:
        """By dotted name (GetCounters, ``/metrics``)."""
        return {
            "trunks.probes_sent": self.probes_sent,
            "trunks.answers": self.answers,
            "trunks.answers_not_alive": self.not_alive,
            "trunks.stray_answers": self.stray_answers,
            "trunks.all_down_tried": self.all_down_tried,
            "trunks.unprobed": self.unprobed,
            "trunks.down": sum(t.state is LinkState.DOWN for t in self._trunks.values()),
        }
