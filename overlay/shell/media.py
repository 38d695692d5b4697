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
  one sweep: what they are, not the history of commands that made them.

A command the relay refuses (a port taken by another program) costs that stream, not the
node: it is logged and counted in ``failures``.
"""

from __future__ import annotations

import os
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping

import structlog
import trio

import fastpath
from fastpath import LivenessCounters, SessionCounters
from overlay.config import NodeConfig
from overlay.media import (
    AddSession,
    MediaEdge,
    MediaSessions,
    PortAllocator,
    media_id,
)
from overlay.shell.transport import ALL_PEERS

log = structlog.get_logger("overlay.media")

ACTIVITY_INTERVAL = 1.0  # seconds between reads of the sessions' counters
#: An echo's payload: a mark and the sender's probe number (the reply carries it back).
_ECHO = struct.Struct("!4sQ")
_ECHO_MARK = b"OVLe"


class MediaPlane:
    """See the module docstring."""

    def __init__(self, config: NodeConfig) -> None:
        media = config.media
        assert media is not None
        node_id = config.node.node_id
        self._node_id = node_id
        sessions = MediaSessions(
            PortAllocator(media.port_first, media.port_last), timeout=media.inactivity_timeout
        )
        # The SDP tells endpoints the address they reach the relay at.
        self.edge = MediaEdge(node_id, media.advertise or media.address, sessions)
        self._address = media.address
        self._overlay = media.overlay
        self._niceness = media.thread_niceness
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
        relay.start(niceness=self._niceness)
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
        return added

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
        if self._held:
            commands.clear()
            return
        for command in commands:
            if isinstance(command, AddSession):
                self._add(command)
            # Remove only what the relay took: an add it refused has nothing to remove.
            elif self._packets.pop(command.session_id, None) is not None:
                self.relay.remove_session(command.session_id)
        commands.clear()

    def _add(self, command: AddSession) -> None:
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
            log.error("relay refused a session", call_id=session.call_id, error=str(error))
            return
        self._packets[session.session_id] = 0

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
        """The relay's and the media sessions' counters, by dotted name (admin GetCounters)."""
        relay = self.relay.counters()
        names = self._node_of_media_id
        stats = self.edge.sessions.statistics()
        counters = {
            "media.sessions": stats.sessions,
            "media.ports_in_use": stats.ports_in_use,
            "media.relay_sessions": relay["sessions"],
            "media.overlay_in.packets": relay["overlay_in"]["packets"],
            "media.liveness_stalls": relay["liveness_stalls"],
        }
        counters.update(
            {f"media.failures.{reason.replace(' ', '_')}": n for reason, n in self.failures.items()}
        )
        counters.update({f"media.ended.{reason}": n for reason, n in stats.ended.items()})
        counters.update({f"media.drops.{reason}": n for reason, n in relay["drops"].items()})
        counters.update({f"media.edge.{name}": n for name, n in self.edge.counters.items()})
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
        """Read the sessions' activity and latched sources, and end the silent ones."""
        for session_id, seen in list(self._packets.items()):
            try:
                counters = self.relay.session_counters(session_id)
            except KeyError:
                continue
            packets = counters["packets_in"]
            if packets != seen:  # latching, too, happens only on a packet from the endpoint
                self._packets[session_id] = packets
                self.edge.activity(
                    session_id,
                    now,
                    rtp_latched=counters["endpoint"] if counters["latched"] else None,
                    rtcp_latched=counters["rtcp_endpoint"] if counters["rtcp_latched"] else None,
                )
        self.edge.handle_timer(now)
        self.apply()


def _stop(relay: fastpath.Relay) -> None:
    """Stop ``relay``, first waking whoever waits for its liveness notices (its fd closes)."""
    if relay.liveness_fd >= 0 and trio.lowlevel.in_trio_run():  # outside, nobody waits
        trio.lowlevel.notify_closing(relay.liveness_fd)
    relay.stop()
