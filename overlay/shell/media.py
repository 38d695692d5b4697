"""The node's media plane: ``MediaEdge`` (sans-IO decisions) driving the fastpath relay.

``MediaPlane`` owns the relay (its forwarding thread runs with the GIL released) and is the
only code that calls it:

* after the proxy core ran (``apply``), the edge's ``AddSession`` / ``RemoveSession`` commands
  become ``add_session`` / ``remove_session``;
* when the route table changes (``set_routes``), the relay's next-hop table is replaced as a
  whole: destination node → the media address of the next hop node, so live calls follow the
  new path with their next packet;
* every ``ACTIVITY_INTERVAL`` (``run``, one ``poll`` each), each session's packet counters are
  read: a session with new packets from its endpoint is touched, the sources its relay session
  latched are noted in the edge's book (pair replication carries them to the standby), and
  sessions silent past the inactivity timeout are ended (their ports freed);
* a session a standby restored from its active (``MediaEdge.restore_call``) is added to the
  relay latched where the active's relay had latched, so no stranger takes its port while the
  pair takes over;
* the mesh sends an echo to every neighbour's relay with each probe round (``send_echo``) and
  collects the answers (``take_echo_replies``), so link state measures the media path too;
* liveness (``start_liveness``): the relay thread itself sends the neighbours' relays an echo
  every ``[linkstate] liveness_interval`` and tells the mesh (``wait_liveness``, then
  ``liveness``) when one falls silent or comes back: BFD-grade detection with no Python on the
  packet path at either end;
* the relay's overlay socket takes datagrams only from the ``[[peers]]`` media addresses
  (``set_peers`` at construction): anything else is dropped and counted
  (``media.drops.unknown_peer``), so nobody can inject media into a call or use the relay as a
  reflector;
* fault injection (``set_faults``) drops some or all of what the relay sends to a peer's
  relay, as ``Impairments`` does for signalling;
* the gate (``relay_held``, ``release_relay``): a pair member that holds the pair's address by
  file (``[pair] hold = "file"``, two members on one machine: the lab) shares its media address
  and overlay port with the other member, so until it holds the address its relay binds nothing
  there: its overlay socket waits on a spare port, and no command reaches it. The edge's book
  keeps every session meanwhile, a standby's restored ones (pair replication) included.
  ``release_relay`` then binds the overlay address and adds the sessions the book has now, in
  one sweep: what they are, not the history of commands that made them. With several workers
  the other workers' books are in their processes: while the gate holds, their commands are
  folded into what they leave (``_parked``: each session's last add, dropped by its remove),
  which the sweep adds too.

A command the relay refuses (a port taken by another program) costs that stream, not the
node: it is logged and counted in ``failures``.

Several SIP workers (``sip.workers`` > 1, an overlay node): the node still has one relay, in
worker 0 (the owner), and only this ``MediaPlane`` there has it, with everything above. Every
other worker has a ``WorkerMedia``: its own ``MediaEdge`` (the SDP of its calls, their session
book), on its own slice of the relay ports (``port_slice``) and with session ids no other
worker draws (``worker_session_ids``), but no relay. Its edge's commands go to the owner over
the worker channel (``overlay.shell.workerlink``), which hands them to ``apply_from``: the relay
takes them exactly as it takes the owner's own, a refused one counted and logged here. Each
``poll`` reads every session's counters; the activity of a worker's sessions (which saw
packets, what they latched) goes back to that worker in one message (``on_activity``), sent
every poll, empty too: the worker's edge then runs its inactivity timers (``WorkerMedia.
activity``), as this edge does here after its own.
"""

from __future__ import annotations

import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
import trio

import fastpath
from fastpath import LivenessCounters, SessionCounters
from overlay.config import NodeConfig
from overlay.media import (
    AddSession,
    MediaCommand,
    MediaEdge,
    MediaSession,
    MediaSessions,
    PortAllocator,
    media_id,
    port_slice,
    worker_session_ids,
)
from overlay.shell.transport import ALL_PEERS
from overlay.sip import LocalProtocolError

log = structlog.get_logger("overlay.media")

ACTIVITY_INTERVAL = 1.0  # seconds between reads of the sessions' counters
#: An echo's payload: a mark and the sender's probe number (the reply carries it back).
_ECHO = struct.Struct("!4sQ")
_ECHO_MARK = b"OVLe"


@dataclass(frozen=True, slots=True)
class SessionActivity:
    """A relay session that saw packets from its endpoint since the last poll, and the sources
    it has latched (``None``: not yet), for the edge of the worker that owns it."""

    session_id: int
    rtp_latched: tuple[str, int] | None
    rtcp_latched: tuple[str, int] | None


def _edge(config: NodeConfig, worker: int, workers: int) -> MediaEdge:
    """Worker ``worker``'s media edge: its slice of the relay ports, its own session ids."""
    media = config.media
    assert media is not None
    first, last = media.port_first, media.port_last
    if workers > 1:
        first, last = port_slice(first, last, workers, worker)
    sessions = MediaSessions(
        PortAllocator(first, last),
        timeout=media.inactivity_timeout,
        session_ids=worker_session_ids(worker, workers),
    )
    # The SDP tells endpoints the address they reach the relay at.
    return MediaEdge(config.node.node_id, media.advertise or media.address, sessions)


def _edge_counters(edge: MediaEdge) -> dict[str, int]:
    """An edge's own counters (each worker's are summed into the node's)."""
    stats = edge.sessions.statistics()
    counters = {"media.sessions": stats.sessions, "media.ports_in_use": stats.ports_in_use}
    counters.update({f"media.ended.{reason}": n for reason, n in stats.ended.items()})
    counters.update({f"media.edge.{name}": n for name, n in edge.counters.items()})
    return counters


class MediaPlane:
    """See the module docstring.

    Args:
        config: the node's configuration (with ``[media]``).
        workers: the node's SIP workers; this one is worker 0, the owner of the relay.
    """

    def __init__(self, config: NodeConfig, *, workers: int = 1) -> None:
        media = config.media
        assert media is not None
        node_id = config.node.node_id
        self._node_id = node_id
        self.edge = _edge(config, 0, workers)
        self._workers = workers
        #: Called every poll with each other worker's index and its sessions' activity.
        self.on_activity: Callable[[int, tuple[SessionActivity, ...]], None] | None = None
        self._address = media.address
        self._overlay = media.overlay
        self._niceness = media.thread_niceness
        self._realtime = media.thread_realtime
        self._node_media = {peer.node_id: peer.media for peer in config.peers if peer.media}
        self._node_of_media_id = {media_id(node): node for node in self._node_media}
        pair = config.pair
        self._held = pair is not None and pair.hold == "file"
        # Held, the overlay socket takes a spare port until release_relay (module notes).
        self.relay = self._new_relay(0 if self._held else media.overlay[1])
        self._running = False
        # As last set, for the relay release_relay makes.
        self._next_hops: dict[int, tuple[str, int]] = {}
        self._faults: dict[tuple[str, int], tuple[float, bool]] = {}
        self._packets: dict[int, int] = {}  # session id -> packets_in at the last look
        self._worker_of: dict[int, int] = {}  # session id -> its worker, for other workers'
        #: While the gate holds: other workers' sessions, as their commands leave them.
        self._parked: dict[int, tuple[AddSession, int]] = {}
        self.failures: Counter[str] = Counter()

    def _new_relay(self, overlay_port: int) -> fastpath.Relay:
        relay = fastpath.Relay(media_id(self._node_id), self._overlay[0], overlay_port)
        # Peers' relays send from their overlay address, the one configured here.
        relay.set_peers(self._node_media.values())
        return relay

    def start(self) -> None:
        self._start(self.relay)
        self._running = True

    def _start(self, relay: fastpath.Relay) -> None:
        relay.start(niceness=self._niceness, realtime=self._realtime)
        if relay.realtime_error:
            self.failures["thread realtime"] += 1
            log.warning(
                "relay thread not real-time: SCHED_FIFO needs CAP_SYS_NICE",
                priority=self._realtime,
                error=os.strerror(relay.realtime_error),
            )
        if relay.niceness_error:
            self.failures["thread priority"] += 1
            log.warning(
                "relay thread at the node's priority: raising it needs CAP_SYS_NICE",
                niceness=self._niceness,
                error=os.strerror(relay.niceness_error),
            )

    def stop(self) -> None:
        self._running = False
        _stop(self.relay)

    @property
    def relay_held(self) -> bool:
        """Whether the gate holds the relay back (module notes): ``True`` from the start for a
        pair member that holds by file, until ``release_relay``."""
        return self._held

    def release_relay(self) -> int:
        """Open the gate: bind the overlay address and hand the relay, in one sweep, every
        session the edge forwards now, each latched where the book says its endpoints were
        (a standby's restored sessions: where its active's relay had latched them).

        Returns:
            How many sessions the relay was given (a refused one is counted in ``failures``).

        Raises:
            RuntimeError: the gate is not held.
            OSError: the overlay address cannot be bound (the gate stays held).
        """
        if not self._held:
            raise RuntimeError("the relay is not held")
        parked, self.relay = self.relay, self._new_relay(self._overlay[1])
        self.relay.set_next_hops(self._next_hops)
        self.relay.set_faults(self._faults)
        if self._running:
            self._start(self.relay)
        _stop(parked)
        self._held = False
        added = 0
        for call_id in sorted({session.call_id for session in self.edge.sessions}):
            state = self.edge.call_state(call_id)
            book = {item.session.session_id: item for item in state.sessions}
            for session in state.forwarding:
                entry = book[session.session_id]
                self._add(AddSession(session, entry.rtp_latched, entry.rtcp_latched))
                added += 1
        others, self._parked = self._parked, {}
        for command, worker in others.values():
            self._add(command, worker)
        return added + len(others)

    def session_counters(self, session_id: int) -> SessionCounters:
        """The relay session's counters (of the relay in use: ``release_relay`` replaces it).

        Raises:
            KeyError: the relay has no such session.
        """
        return self.relay.session_counters(session_id)

    def apply(self) -> None:
        """Pass the edge's pending commands to the relay (dropped while the gate holds it:
        ``release_relay`` reads the sessions from the book instead)."""
        commands = self.edge.commands
        self._apply(commands, 0)
        commands.clear()

    def apply_from(self, worker: int, commands: Sequence[MediaCommand]) -> None:
        """Pass another worker's edge's commands to the relay, as ``apply`` passes this
        edge's (module notes)."""
        self._apply(commands, worker)

    def _apply(self, commands: Iterable[MediaCommand], worker: int) -> None:
        if self._held:
            if worker:  # its book is in its process: keep what the commands leave
                for command in commands:
                    if isinstance(command, AddSession):
                        self._parked[command.session.session_id] = (command, worker)
                    else:
                        self._parked.pop(command.session_id, None)
            return
        for command in commands:
            if isinstance(command, AddSession):
                self._add(command, worker)
            # Remove only what the relay took: an add it refused has nothing to remove.
            elif self._packets.pop(command.session_id, None) is not None:
                self._worker_of.pop(command.session_id, None)
                self.relay.remove_session(command.session_id)

    def _add(self, command: AddSession, worker: int = 0) -> None:
        session = command.session
        remote = session.remote
        assert remote is not None
        latched = command.rtp_latched
        try:
            self.relay.add_session(
                session.session_id,
                self._address,
                session.ports.rtp,
                session.ports.rtcp,
                session.endpoint if latched is None else latched,
                media_id(remote.node_id),
                remote.session_id,
                latched=latched is not None,
                rtcp_latched=command.rtcp_latched,
            )
        except (OSError, ValueError) as error:
            self.failures["add session"] += 1
            log.error(
                "relay refused a session", call_id=session.call_id, worker=worker, error=str(error)
            )
            return
        self._packets[session.session_id] = 0
        if worker:
            self._worker_of[session.session_id] = worker

    def set_routes(self, next_hops: dict[str, str]) -> None:
        """``{destination node: next hop node}`` from the route table, for the relay."""
        table = {
            media_id(destination): address
            for destination, hop in next_hops.items()
            if (address := self._node_media.get(hop)) is not None
        }
        self._next_hops = table
        self.relay.set_next_hops(table)

    def set_faults(self, faults: Mapping[str, tuple[float, bool]]) -> None:
        """Impair what the relay sends to peers: ``{node id: (loss_ratio, blackhole)}``.

        Replaces every media fault; ``"*"`` stands for every peer not named itself, as in
        ``Impairments``. Forwarded media, echo requests and echo replies sent to that peer's
        relay are dropped with the probability, or all when blackholed, and counted in
        ``media.drops.fault``. The relay holds no packet: signalling's delay and jitter have no
        media counterpart.

        Raises:
            ValueError: a node id that is not a peer with a media address, or a loss ratio
                outside 0..1.
        """
        unknown = sorted(set(faults) - set(self._node_media) - {ALL_PEERS})
        if unknown:
            raise ValueError(f"not a peer with a media address: {', '.join(unknown)}")
        every = faults.get(ALL_PEERS)
        table = {}
        for node, address in self._node_media.items():
            fault = faults.get(node, every)
            if fault is not None:
                table[address] = fault
        self._faults = table
        self.relay.set_faults(table)

    def send_echo(self, neighbor: str, seq: int) -> None:
        """Send echo ``seq`` straight to ``neighbor``'s relay (a ``[[peers]]`` with ``media``)."""
        address = self._node_media[neighbor]
        self.relay.send_echo(media_id(neighbor), _ECHO.pack(_ECHO_MARK, seq), via=address)

    def start_liveness(
        self, neighbors: Iterable[str], interval: float, detection_time: float
    ) -> None:
        """Have the relay send liveness echoes to ``neighbors`` (``[[peers]]`` with ``media``)
        every ``interval`` seconds; silence longer than ``detection_time`` is reported."""
        peers = {media_id(node): self._node_media[node] for node in neighbors}
        self.relay.set_liveness(peers, interval, detection_time)

    async def wait_liveness(self) -> None:
        """Return once a neighbour's liveness silence started or ended (read ``liveness``)."""
        relay = self.relay
        while not relay.take_liveness_notice():
            await trio.lowlevel.wait_readable(relay.liveness_fd)

    def liveness(self) -> dict[str, LivenessCounters]:
        """Each liveness neighbour's echoes (silent, sent, answered), by node id."""
        nodes = self._node_of_media_id
        return {nodes[media]: state for media, state in self.relay.liveness().items()}

    def take_echo_replies(self) -> list[tuple[str, int, float]]:
        """The echo answers received since the last call: ``(neighbor, seq, received at)``.

        The relay stamps each reply on the monotonic clock when it arrives (so a slow poll
        adds nothing to the RTT); the stamp is moved to the trio clock here.
        """
        offset = trio.current_time() - time.monotonic()
        replies = []
        for source, payload, received_at in self.relay.take_echo_replies():
            node = self._node_of_media_id.get(source)
            if node is None or len(payload) != _ECHO.size or not payload.startswith(_ECHO_MARK):
                self.failures["bad echo reply"] += 1
                continue
            _, seq = _ECHO.unpack(payload)
            replies.append((node, seq, received_at + offset))
        return replies

    def counters(self) -> dict[str, int]:
        """The relay's and the media sessions' counters, by dotted name (admin GetCounters).
        With several workers, the sessions' are this worker's edge's (the node's are the sum
        of every worker's), the relay's are the node's."""
        relay = self.relay.counters()
        names = self._node_of_media_id
        counters = {
            **_edge_counters(self.edge),
            "media.relay_sessions": relay["sessions"],
            "media.overlay_in.packets": relay["overlay_in"]["packets"],
            "media.liveness_stalls": relay["liveness_stalls"],
        }
        counters.update(
            {f"media.failures.{reason.replace(' ', '_')}": n for reason, n in self.failures.items()}
        )
        counters.update({f"media.drops.{reason}": n for reason, n in relay["drops"].items()})
        for media, state in self.relay.liveness().items():
            node = names.get(media, str(media))
            counters[f"media.liveness.{node}.sent"] = state["sent"]
            counters[f"media.liveness.{node}.answered"] = state["answered"]
        for destination, traffic in relay["links"].items():
            node = names.get(destination, str(destination))
            counters[f"media.sent_toward.{node}.packets"] = traffic["packets"]
        return counters

    async def run(self) -> None:
        """``poll`` every ``ACTIVITY_INTERVAL``, until cancelled."""
        while True:
            await trio.sleep(ACTIVITY_INTERVAL)
            self.poll(trio.current_time())

    def poll(self, now: float) -> None:
        """Read the sessions' activity and latched sources, and end the silent ones; tell each
        other worker of its sessions' activity (module notes)."""
        others: dict[int, list[SessionActivity]] = {n: [] for n in range(1, self._workers)}
        for session_id, seen in list(self._packets.items()):
            try:
                counters = self.relay.session_counters(session_id)
            except KeyError:
                continue
            packets = counters["packets_in"]
            if packets != seen:  # latching, too, happens only on a packet from the endpoint
                self._packets[session_id] = packets
                activity = SessionActivity(
                    session_id,
                    counters["endpoint"] if counters["latched"] else None,
                    counters["rtcp_endpoint"] if counters["rtcp_latched"] else None,
                )
                worker = self._worker_of.get(session_id)
                if worker is None:
                    self.edge.activity(
                        session_id,
                        now,
                        rtp_latched=activity.rtp_latched,
                        rtcp_latched=activity.rtcp_latched,
                    )
                else:
                    others[worker].append(activity)
        self.edge.handle_timer(now)
        self.apply()
        if self.on_activity is not None:
            for worker, sessions in others.items():
                self.on_activity(worker, tuple(sessions))


class WorkerMedia:
    """The media side of SIP worker ``worker`` (1..N-1) of an overlay node: its edge, and the
    owner's relay behind the worker channel (module notes). To the pump it stands in for the
    ``MediaPlane``.

    Args:
        config: the node's configuration (with ``[media]``).
        worker: this worker's index, above 0.
        workers: the node's SIP workers.
    """

    def __init__(self, config: NodeConfig, *, worker: int, workers: int) -> None:
        if not 0 < worker < workers:
            raise ValueError(f"worker {worker} of {workers} is not one without the relay")
        self.edge = _edge(config, worker, workers)
        #: Sends the edge's commands to the owner (``WorkerLink.media_commands``).
        self.send: Callable[[tuple[MediaCommand, ...]], None] | None = None
        self.stale_reports = 0

    def apply(self) -> None:
        """Send the edge's pending commands to the owner, in one message."""
        commands = self.edge.commands
        if commands and self.send is not None:
            self.send(tuple(commands))
            commands.clear()

    def activity(self, sessions: Iterable[SessionActivity], now: float) -> None:
        """The owner's poll: what its relay saw of this worker's sessions; then end the silent
        ones, as ``MediaPlane.poll`` does for the owner's."""
        edge = self.edge
        for item in sessions:
            try:
                edge.activity(
                    item.session_id,
                    now,
                    rtp_latched=item.rtp_latched,
                    rtcp_latched=item.rtcp_latched,
                )
            except LocalProtocolError:
                # An RTCP source of the relay session this edge has since replaced by one
                # under rtcp-mux (the report crossed the commands): the touch stands.
                self.stale_reports += 1
        edge.handle_timer(now)
        self.apply()

    def sessions_of(self, call_id: str) -> list[MediaSession]:
        """The edge's sessions of ``call_id`` (the owner's Control service shows them)."""
        return self.edge.sessions.of_call(call_id)

    def set_routes(self, next_hops: dict[str, str]) -> None:
        """Nothing: the relay that follows the routes is the owner's."""

    def counters(self) -> dict[str, int]:
        """The edge's counters; the relay's are the owner's."""
        return {**_edge_counters(self.edge), "media.stale_reports": self.stale_reports}


def _stop(relay: fastpath.Relay) -> None:
    """Stop ``relay``, first waking whoever waits for its liveness notices (its fd closes)."""
    if relay.liveness_fd >= 0 and trio.lowlevel.in_trio_run():  # outside, nobody waits
        trio.lowlevel.notify_closing(relay.liveness_fd)
    relay.stop()
