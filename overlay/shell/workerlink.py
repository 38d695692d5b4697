"""The channel between an overlay node's owner (worker 0) and its other SIP workers.

An overlay node with ``sip.workers = N`` is N processes (``overlay.shell.workers``). Worker 0,
the *owner*, runs everything a one-worker overlay node runs: the ``Mesh`` (probes, flooding,
routes), the gRPC server (LinkState, Control), the event hub the NOC watches, and SIP like
every worker. Workers 1..N-1 run SIP only, each with its own proxy core, call router, call book
and a replica of the owner's ``RouteView``. Link probes and their answers are steered to the
owner whichever worker reads them (``Steering``'s ``pinned`` prefix); everything else by Call-ID.

One stream socket per worker (made before the fork, next to the steering pipes) joins it to the
owner. What crosses it:

* owner → worker: every route table the mesh installs (``RoutesInstalled``; the worker swaps
  it into its view in one assignment, so its hot path takes no lock), the mesh's reroutes
  (``Rerouted``: the worker's pump resends, fails over and ends calls as the owner's does),
  which nodes answer probes (``HeardNodes``, for ``RouteView.heard``), the drain state and
  the signalling faults the Control service sets (``DrainSet``, ``FaultsSet``), the Control
  service's questions (``Query``), and with ``[media]``, every poll of the relay, what it saw
  of the worker's media sessions (``MediaActivity``);
* worker → owner: the requests and retransmissions its core sent per next hop, every probe
  interval (``PeerTraffic``, for the links' retransmission ratio), the events its parts
  publish (``EventRaised``, into the owner's hub), its answers (``Answer``: its counters,
  its call book's records with their media sessions), and with ``[media]`` its media edge's
  commands for the node's one relay, the owner's, as its pump makes them (``MediaCommands``,
  fire-and-forget: ``overlay.shell.media``).

A pair member (``[pair]``) with several workers replicates per worker: worker i of the standby
follows worker i of the active (both members run the same worker count, so Call-ID steering
puts a call in the same worker on both), over a Follow stream of its own to the active's gRPC
server, which is worker 0's (``overlay.shell.replication``). For worker i > 0 the active's
worker 0 relays: it tells worker i of the stream (``PairFollow``, and ``PairUnfollow`` when it
ends), hands it the follower's reports (``PairApplied``), and puts worker i's batches
(``PairBatches``, tagged with the stream they were made for) on the stream. When a member
comes to hold the pair's address, its worker 0 tells the others to promote what they followed
(``PairTakeOver``), and a member that holds by file, whose SIP sockets are bound only then,
by worker 0, passes them to the others (``SipSockets``: the descriptors travel beside the frame
as ``SCM_RIGHTS`` ancillary data).

The owner sends a snapshot (table, heard nodes, drain, faults) first, so a worker that starts
before the owner's first computation serves with an empty table, as the owner does, until then.
A channel that breaks stops the node: the worker or owner that sees it raises ``LinkLost``,
its process exits with an error, and the supervisor stops the others.

The messages are plain frozen dataclasses, framed by a 4-byte length and encoded with
``pickle``. That is acceptable here and only here: both ends are processes of one node, forked
from one binary, over a socketpair no other process holds; nothing read from the network is
ever unpickled. ``encode`` and ``FrameReader`` are the sans-IO part; ``OwnerLinks`` and
``WorkerLink`` drive them with trio.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import functools
import itertools
import math
import pickle
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import networkx as nx
import structlog
import trio

from overlay.media import MediaCommand, MediaSession
from overlay.noc import CallRecord, CallTracker, Event
from overlay.routing import DrainState, Path, RouteTable, RouteView, RoutingPolicy
from overlay.shell.clock import wall_time
from overlay.shell.events import EventHub, WatcherFellBehind
from overlay.shell.media import SessionActivity
from overlay.shell.transport import BoundSocket, Fault, Impairments
from overlay.sip import Listener, Peer

log = structlog.get_logger("overlay.workers")

#: The largest frame either end accepts: far above a route table of a large mesh.
MAX_FRAME = 64 * 1024 * 1024
_LENGTH = 4
#: Seconds the owner waits for every worker's answer to a Control query.
QUERY_TIMEOUT = 2.0
#: Seconds a broken channel waits before it stops its process: when the node stops, a peer
#: that exits first must not make this one exit with an error before its own SIGTERM lands.
LOST_GRACE = 0.5
_RECEIVE_SIZE = 256 * 1024
#: Descriptors one read of a channel takes at most (``SipSockets``: one per SIP listener).
_MAX_FDS = 64
_ANCILLARY_SIZE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)


class LinkLost(Exception):
    """The channel to the owner (or to a worker) closed or carried a frame that is not one of
    ours: the node cannot keep its workers in step, so it stops."""


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutesInstalled:
    """A route table the owner's mesh installed (the fields of ``RouteTable`` that make it:
    its private caches are rebuilt by the worker). ``computed_at`` is on the owner's clock."""

    node_id: str
    version: int
    computed_at: float
    paths: Mapping[str, Path]
    graph: nx.DiGraph
    policy: RoutingPolicy

    @classmethod
    def of(cls, table: RouteTable) -> RoutesInstalled:
        return cls(
            table.node_id,
            table.version,
            table.computed_at,
            dict(table.paths),
            table.graph,
            table.policy,
        )

    def table(self) -> RouteTable:
        return RouteTable(
            self.node_id, self.version, self.computed_at, self.paths, self.graph, self.policy
        )


@dataclass(frozen=True, slots=True)
class Rerouted:
    """The mesh's ``on_reroute``: paths moved toward ``peers``, every route to ``lost``
    gone, ``restarted`` nodes came back without their calls."""

    peers: tuple[Peer, ...]
    lost: tuple[str, ...]
    restarted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HeardNodes:
    """The nodes that answer the owner's probes now (``RouteView.heard``)."""

    nodes: frozenset[str]


@dataclass(frozen=True, slots=True)
class DrainSet:
    """The node's drain state, as the Control service left it."""

    state: DrainState


@dataclass(frozen=True, slots=True)
class FaultsSet:
    """Every signalling fault in force (Control's InjectFault, ClearFaults)."""

    faults: Mapping[str, Fault]


class QueryKind(enum.Enum):
    COUNTERS = "counters"
    CALLS = "calls"
    CALL = "call"


@dataclass(frozen=True, slots=True)
class Query:
    """A question of the Control service; the worker answers it with an ``Answer``."""

    query_id: int
    kind: QueryKind
    call_id: str = ""
    include_ended: bool = False


@dataclass(frozen=True, slots=True)
class PeerTraffic:
    """``{next hop: (requests, retransmissions)}`` a worker's core sent since its last."""

    traffic: Mapping[Peer, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class EventRaised:
    """An event a worker's part published."""

    event: Event
    by: str = ""


@dataclass(frozen=True, slots=True)
class CallBook:
    """A worker's call records for a query, and its clocks' offset (wall minus trio clock)
    at the moment it read them: record times are on the worker's clock (``shift_records``).
    ``media``: the media sessions of those calls that have any, by Call-ID (the owner reads
    their figures from its relay)."""

    records: tuple[CallRecord, ...]
    active: int
    offset: float
    media: Mapping[str, tuple[MediaSession, ...]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MediaCommands:
    """A worker's media edge's commands, in order, for the owner's relay."""

    commands: tuple[MediaCommand, ...]


@dataclass(frozen=True, slots=True)
class MediaActivity:
    """What one poll of the owner's relay saw of the worker's media sessions (those that had
    packets since the last); sent every poll, empty too: the worker's inactivity tick."""

    sessions: tuple[SessionActivity, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    query_id: int
    value: Mapping[str, int] | CallBook


@dataclass(frozen=True, slots=True)
class PairFollow:
    """A follower's stream for this worker's calls opened at the owner (its Hello's state):
    the worker's replica log answers with a snapshot if it needs one, then its batches."""

    stream: int
    epoch: bytes
    applied_seq: int


@dataclass(frozen=True, slots=True)
class PairUnfollow:
    """The follower's stream ``stream`` ended (or the owner dropped it)."""

    stream: int


@dataclass(frozen=True, slots=True)
class PairApplied:
    """The follower's last ``Applied`` report, serialized."""

    applied: bytes


@dataclass(frozen=True, slots=True)
class PairBatches:
    """A worker's ``StateBatch``es (serialized), in order, for the follower's stream
    ``stream``: the owner drops those of a stream that is no longer."""

    stream: int
    batches: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PairTakeOver:
    """The member now holds the pair's address: the worker promotes what it followed."""


@dataclass(frozen=True, slots=True)
class SipSockets:
    """The SIP sockets worker 0 bound once the member held the pair's address by file, one
    descriptor per listener, in order, carried as ancillary data beside this frame."""

    listeners: tuple[Listener, ...]


Message = (
    RoutesInstalled
    | Rerouted
    | HeardNodes
    | DrainSet
    | FaultsSet
    | Query
    | PeerTraffic
    | EventRaised
    | Answer
    | MediaCommands
    | MediaActivity
    | PairFollow
    | PairUnfollow
    | PairApplied
    | PairBatches
    | PairTakeOver
    | SipSockets
)
_MESSAGES = (
    RoutesInstalled,
    Rerouted,
    HeardNodes,
    DrainSet,
    FaultsSet,
    Query,
    PeerTraffic,
    EventRaised,
    Answer,
    MediaCommands,
    MediaActivity,
    PairFollow,
    PairUnfollow,
    PairApplied,
    PairBatches,
    PairTakeOver,
    SipSockets,
)


class RelayOwner(Protocol):
    """The owner's media plane, as the channels hand it the workers' commands
    (``overlay.shell.media.MediaPlane``)."""

    def apply_from(self, worker: int, commands: Sequence[MediaCommand]) -> None: ...


class WorkerEdge(Protocol):
    """A worker's media side without a relay (``overlay.shell.media.WorkerMedia``)."""

    def activity(self, sessions: Iterable[SessionActivity], now: float) -> None: ...

    def sessions_of(self, call_id: str) -> list[MediaSession]: ...


class OwnerReplication(Protocol):
    """The owner's pair replication, as the channels hand it the workers' batches
    (``overlay.shell.replication.PairReplication``)."""

    def take_worker_batches(self, worker: int, stream: int, batches: Sequence[bytes]) -> None: ...


class WorkerReplication(Protocol):
    """A worker's pair replication, as the owner relays its follower's stream to it
    (``overlay.shell.replication.PairReplication``)."""

    def follow_through_owner(self, stream: int, epoch: bytes, applied_seq: int) -> None: ...

    def unfollow_through_owner(self, stream: int) -> None: ...

    def applied_through_owner(self, applied: bytes) -> None: ...


# -- codec (sans-IO) -------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One frame: the length of the encoded message (4 bytes, big-endian), then the message."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return len(body).to_bytes(_LENGTH, "big") + body


class FrameReader:
    """Bytes of the stream in (``receive_data``), whole messages out (``next_message``)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0

    def receive_data(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next whole message, or ``None`` until more data comes.

        Raises:
            LinkLost: a frame longer than ``MAX_FRAME`` or not one of this module's messages.
        """
        buffer, start = self._buffer, self._start
        if len(buffer) - start < _LENGTH:
            return None
        size = int.from_bytes(buffer[start : start + _LENGTH], "big")
        if size > MAX_FRAME:
            raise LinkLost(f"frame of {size} bytes exceeds {MAX_FRAME}")
        end = start + _LENGTH + size
        if len(buffer) < end:
            return None
        try:
            message = pickle.loads(memoryview(buffer)[start + _LENGTH : end])
        except Exception as exc:
            raise LinkLost(f"undecodable frame: {exc}") from None
        self._start = end
        if not isinstance(message, _MESSAGES):
            raise LinkLost(f"unexpected message {type(message).__name__}")
        return message


def shift_records(records: Iterable[CallRecord], delta: float) -> list[CallRecord]:
    """``records`` with their times moved by ``delta`` seconds (from one process's trio clock
    to another's: each starts at its own random offset)."""
    return [
        dataclasses.replace(
            record,
            started=record.started + delta,
            answered=None if record.answered is None else record.answered + delta,
            ended=None if record.ended is None else record.ended + delta,
        )
        for record in records
    ]


def merge_calls(books: Iterable[Sequence[CallRecord]]) -> list[CallRecord]:
    """Several call books' records as one: the live calls newest first, then the ended ones,
    most recently ended first (as ``CallTracker.calls`` orders one book)."""
    records = [record for book in books for record in book]
    live = sorted((r for r in records if not r.state.over), key=lambda r: -r.started)
    ended = sorted((r for r in records if r.state.over), key=lambda r: -(r.ended or r.started))
    return live + ended


def sum_counters(
    own: Mapping[str, int], workers: Sequence[Mapping[str, int]], *, per_worker: Iterable[str]
) -> dict[str, int]:
    """The node's counters: every worker's summed by name onto ``own`` (worker 0's), plus
    ``workers.<n>.<name>`` for each of ``per_worker``, so the NOC sees how calls spread."""
    total = dict(own)
    for counters in workers:
        for name, value in counters.items():
            total[name] = total.get(name, 0) + value
    for name in per_worker:
        for index, counters in enumerate((own, *workers)):
            total[f"workers.{index}.{name}"] = counters.get(name, 0)
    return total


# -- one stream (trio) -----------------------------------------------------------------------


class _Channel:
    """One end of a worker's socketpair: messages out through a queue its writer drains, in
    through ``run``'s reader."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._peer = peer
        self._out, self._queue = trio.open_memory_channel[tuple[bytes, tuple[int, ...]]](math.inf)
        #: Descriptors received and not yet taken by a ``SipSockets`` (``take_fds``).
        self._fds: list[int] = []

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Queue ``message``; ``fds``: descriptors to pass with it (duplicated by the kernel
        as the frame is written; the caller keeps its own)."""
        self._out.send_nowait((encode(message), tuple(fds)))

    def take_fds(self, count: int) -> list[int]:
        """The first ``count`` descriptors received.

        Raises:
            LinkLost: fewer came.
        """
        if len(self._fds) < count:
            raise LinkLost(f"{self._peer} sent {count} sockets, {len(self._fds)} came")
        taken, self._fds = self._fds[:count], self._fds[count:]
        return taken

    async def run(self, handle: Callable[[Message], None]) -> None:
        """Carry messages both ways until cancelled.

        Raises:
            LinkLost: the other end closed the channel or sent what is not a message.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write)
                reader = FrameReader()
                sock = self._stream.socket
                while True:
                    try:
                        data, ancillary, flags, _ = await sock.recvmsg(
                            _RECEIVE_SIZE, _ANCILLARY_SIZE
                        )
                    except OSError:
                        data, ancillary, flags = b"", [], 0
                    self._take_ancillary(ancillary, flags)
                    if not data:
                        await trio.sleep(LOST_GRACE)  # module notes: the node may be stopping
                        raise LinkLost(f"the channel to {self._peer} closed")
                    reader.receive_data(data)
                    while (message := reader.next_message()) is not None:
                        handle(message)
        finally:
            self._stream.socket.close()
            for fd in self._fds:
                socket.close(fd)
            self._fds.clear()

    def _take_ancillary(self, ancillary: list[tuple[int, int, bytes]], flags: int) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self._fds += fds
        if flags & socket.MSG_CTRUNC:
            raise LinkLost(f"{self._peer} passed more than {_MAX_FDS} descriptors at once")

    async def _write(self) -> None:
        async for data, fds in self._queue:
            try:
                if fds:  # the descriptors ride on the frame's first bytes
                    sent = await self._stream.socket.sendmsg(
                        [data],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())],
                    )
                    data = data[sent:]
                if data:
                    await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await trio.sleep(LOST_GRACE)
                raise LinkLost(f"the channel to {self._peer} broke") from None


def open_channels(workers: int) -> list[tuple[socket.socket, socket.socket]]:
    """For workers 1..N-1, one (owner's end, worker's end) stream socketpair, made before
    forking; worker 0 is the owner and has none."""
    return [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(1, workers)]


@dataclass(frozen=True, slots=True)
class WorkerSockets:
    """A worker's ends of the channels: the owner (``index`` 0) holds one per other worker,
    in worker order; worker ``index`` > 0 holds its one end."""

    index: int
    sockets: tuple[socket.socket, ...]

    @classmethod
    def of(
        cls, index: int, channels: Sequence[tuple[socket.socket, socket.socket]]
    ) -> WorkerSockets:
        """This worker's ends; the others' are closed (called in the forked child)."""
        keep: list[socket.socket] = []
        for number, (owner_end, worker_end) in enumerate(channels, start=1):
            if index == 0:
                keep.append(owner_end)
                worker_end.close()
            elif number == index:
                keep.append(worker_end)
                owner_end.close()
            else:
                owner_end.close()
                worker_end.close()
        return cls(index, tuple(keep))


# -- the owner's side ------------------------------------------------------------------------


class OwnerLinks:
    """Worker 0's channels to the other workers; see the module docstring.

    Args:
        sockets: the owner's ends, for workers 1..N-1 in order.
        view: the owner's route view (its table and ``heard`` are sent on).
        drain: the node's drain state (sent at start; then by ``drain_changed``).
        impairments: the node's signalling faults (sent at start; then by ``faults_changed``).
        events: the owner's event hub, which workers' events are published into.
        probe_interval: how often the nodes heard are looked at again.
        media: the owner's media plane, which the workers' media commands go to (with
            ``[media]``).
        pair: the owner's pair replication, which the workers' batches go to (with
            ``[pair]``).
    """

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        *,
        view: RouteView,
        drain: DrainState,
        impairments: Impairments,
        events: EventHub,
        probe_interval: float,
        media: RelayOwner | None = None,
        pair: OwnerReplication | None = None,
    ) -> None:
        self._channels = [
            _Channel(sock, f"worker {index}") for index, sock in enumerate(sockets, start=1)
        ]
        self._view = view
        self._drain = drain
        self._impairments = impairments
        self._events = events
        self._interval = probe_interval
        self._media = media
        self._pair = pair
        self._heard: frozenset[str] | None = None
        self._traffic: dict[Peer, tuple[int, int]] = {}
        self._query_ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, dict[int, Mapping[str, int] | CallBook]]] = {}

    @property
    def workers(self) -> int:
        """Workers besides the owner."""
        return len(self._channels)

    # -- owner → workers ----------------------------------------------------------------------

    def _broadcast(self, message: Message) -> None:
        for channel in self._channels:
            channel.send(message)

    def routes_installed(self, table: RouteTable) -> None:
        """The mesh's ``on_routes``: every new table, then who is heard now."""
        self._broadcast(RoutesInstalled.of(table))
        self._send_heard()

    def rerouted(self, peers: list[Peer], lost: list[str], restarted: list[str]) -> None:
        self._broadcast(Rerouted(tuple(peers), tuple(lost), tuple(restarted)))

    def drain_changed(self) -> None:
        self._broadcast(DrainSet(dataclasses.replace(self._drain)))

    def faults_changed(self) -> None:
        self._broadcast(FaultsSet(self._impairments.faults()))

    def media_activity(self, worker: int, sessions: tuple[SessionActivity, ...]) -> None:
        """The media plane's ``on_activity``: what its poll saw of ``worker``'s sessions."""
        self._channels[worker - 1].send(MediaActivity(sessions))

    def pair_follow(self, worker: int, stream: int, epoch: bytes, applied_seq: int) -> None:
        """A follower of ``worker``'s calls connected (``PairFollow``)."""
        self._channels[worker - 1].send(PairFollow(stream, epoch, applied_seq))

    def pair_unfollow(self, worker: int, stream: int) -> None:
        self._channels[worker - 1].send(PairUnfollow(stream))

    def pair_applied(self, worker: int, applied: bytes) -> None:
        self._channels[worker - 1].send(PairApplied(applied))

    def take_over(self) -> None:
        """The member holds the pair's address: every worker promotes what it followed."""
        self._broadcast(PairTakeOver())

    def send_sockets(self, sockets: Sequence[BoundSocket]) -> None:
        """Pass the SIP sockets bound once the address was held to every worker (module
        notes); each gets its own descriptors, the owner keeps its own."""
        listeners = tuple(item.listener for item in sockets)
        fds = [item.sock.fileno() for item in sockets]
        self._broadcast_with(SipSockets(listeners), fds)

    def _broadcast_with(self, message: Message, fds: Sequence[int]) -> None:
        for channel in self._channels:
            channel.send(message, fds)

    def _send_heard(self) -> None:
        view = self._view
        heard = frozenset(node for node in view.peers if view.heard(node))
        if heard != self._heard:
            self._heard = heard
            self._broadcast(HeardNodes(heard))

    # -- workers → owner ----------------------------------------------------------------------

    def take_traffic(
        self, own: Callable[[], dict[Peer, tuple[int, int]]]
    ) -> Callable[[], dict[Peer, tuple[int, int]]]:
        """The mesh's ``take_traffic``: ``own`` (the owner core's) plus what the workers sent."""

        def take() -> dict[Peer, tuple[int, int]]:
            traffic = self._traffic
            self._traffic = {}
            for peer, (requests, retransmissions) in own().items():
                before = traffic.get(peer, (0, 0))
                traffic[peer] = (before[0] + requests, before[1] + retransmissions)
            return traffic

        return take

    def _handle(self, worker: int, message: Message) -> None:
        if isinstance(message, PeerTraffic):
            traffic = self._traffic
            for peer, (requests, retransmissions) in message.traffic.items():
                before = traffic.get(peer, (0, 0))
                traffic[peer] = (before[0] + requests, before[1] + retransmissions)
        elif isinstance(message, EventRaised):
            self._events.publish(message.event, by=message.by)
        elif isinstance(message, MediaCommands) and self._media is not None:
            self._media.apply_from(worker, message.commands)
        elif isinstance(message, PairBatches) and self._pair is not None:
            self._pair.take_worker_batches(worker, message.stream, message.batches)
        elif isinstance(message, Answer):
            pending = self._pending.get(message.query_id)
            if pending is not None:
                done, answers = pending
                answers[worker] = message.value
                if len(answers) == len(self._channels):
                    done.set()
        else:
            raise LinkLost(f"worker {worker} sent {type(message).__name__}")

    # -- queries ------------------------------------------------------------------------------

    async def _ask(
        self, kind: QueryKind, *, call_id: str = "", include_ended: bool = False
    ) -> list[Mapping[str, int] | CallBook]:
        """Every worker's answer, in worker order.

        Raises:
            trio.TooSlowError: a worker did not answer within ``QUERY_TIMEOUT``.
        """
        if not self._channels:
            return []
        query_id = next(self._query_ids)
        done = trio.Event()
        answers: dict[int, Mapping[str, int] | CallBook] = {}
        self._pending[query_id] = (done, answers)
        try:
            self._broadcast(Query(query_id, kind, call_id, include_ended))
            with trio.fail_after(QUERY_TIMEOUT):
                await done.wait()
        finally:
            del self._pending[query_id]
        return [answers[index] for index in range(1, len(self._channels) + 1)]

    async def counters(self) -> list[Mapping[str, int]]:
        """Every other worker's counters."""
        answers = await self._ask(QueryKind.COUNTERS)
        return [answer for answer in answers if not isinstance(answer, CallBook)]

    async def calls(
        self, *, include_ended: bool, call_id: str = ""
    ) -> tuple[list[CallRecord], int, dict[str, tuple[MediaSession, ...]]]:
        """Every other worker's call records (or those of ``call_id``), on this process's
        clock, how many calls are active in them, and their media sessions by Call-ID."""
        kind = QueryKind.CALL if call_id else QueryKind.CALLS
        answers = await self._ask(kind, call_id=call_id, include_ended=include_ended)
        offset = wall_time() - trio.current_time()
        records: list[CallRecord] = []
        active = 0
        media: dict[str, tuple[MediaSession, ...]] = {}
        for book in answers:
            if isinstance(book, CallBook):
                records += shift_records(book.records, book.offset - offset)
                active += book.active
                media.update(book.media)
        return records, active, media

    # -- task ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send each worker the state so far, then carry messages until cancelled.

        Raises:
            LinkLost: a worker's channel broke.
        """
        self._broadcast(RoutesInstalled.of(self._view.table))
        self._heard = None
        self._send_heard()
        self.drain_changed()
        self.faults_changed()
        async with trio.open_nursery() as nursery:
            for index, channel in enumerate(self._channels, start=1):
                nursery.start_soon(channel.run, functools.partial(self._handle, index))
            task_status.started()
            while True:  # silence does not change the table: look at who is heard again
                await trio.sleep(self._interval)
                self._send_heard()


# -- a worker's side -------------------------------------------------------------------------


class WorkerLink:
    """A worker's channel to the owner (worker 0); see the module docstring. To the pump it
    stands in for the mesh: it answers no probes (they are steered to the owner) and waits
    for routes in the replica of the owner's view.

    Args:
        sock: this worker's end.
        view: this worker's route view, a replica of the owner's.
        drain: this worker's drain state, a copy of the owner's.
        impairments: this worker's signalling faults, a copy of the owner's.
        events: this worker's event hub, whose events go to the owner's.
        calls: this worker's call book.
        counters: this worker's counters.
        take_traffic: its core's per-next-hop traffic (``take_peer_traffic``).
        rerouted: its pump's ``rerouted``.
        probe_interval: how often the traffic is sent.
        media: this worker's media edge (with ``[media]``), which the owner's relay polls
            report to and whose sessions answers carry.
        pair: this worker's pair replication (with ``[pair]``), whose follower's stream the
            owner relays.
        take_over: called when the member comes to hold the pair's address (``PairTakeOver``).
        sip_sockets: called with the SIP sockets the owner bound once the member held the
            pair's address by file (``SipSockets``).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        view: RouteView,
        drain: DrainState,
        impairments: Impairments,
        events: EventHub,
        calls: CallTracker,
        counters: Callable[[], Mapping[str, int]],
        take_traffic: Callable[[], dict[Peer, tuple[int, int]]],
        rerouted: Callable[[list[Peer], list[str], list[str]], None],
        probe_interval: float,
        media: WorkerEdge | None = None,
        pair: WorkerReplication | None = None,
        take_over: Callable[[], None] | None = None,
        sip_sockets: Callable[[list[BoundSocket]], None] | None = None,
    ) -> None:
        self._channel = _Channel(sock, "the owner")
        self._media = media
        self._pair = pair
        self.take_over = take_over
        self.sip_sockets = sip_sockets
        self._view = view
        self._drain = drain
        self._impairments = impairments
        self._events = events
        self._calls = calls
        self._counters = counters
        self._take_traffic = take_traffic
        self._rerouted = rerouted
        self._interval = probe_interval
        self._heard: frozenset[str] = frozenset()
        view.heard = self._heard.__contains__
        self._routes_changed = trio.Event()
        self.events_dropped = 0

    # -- as the pump's mesh -------------------------------------------------------------------

    def handle_probe(self, data: bytes, source: Peer) -> bool:
        """Probes are steered to the owner: none is consumed here."""
        return False

    async def wait_reachable(self, node_id: str, *, until: float) -> bool:
        """Wait until the owner's routes reach ``node_id`` (``True``) or ``until`` passes."""
        with trio.move_on_at(until):
            while not self._view.reachable(node_id):
                await self._routes_changed.wait()
        return self._view.reachable(node_id)

    # -- owner → worker -----------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        if isinstance(message, RoutesInstalled):
            self._view.table = message.table()  # one assignment: readers see a whole table
            self._routes_changed.set()
            self._routes_changed = trio.Event()
        elif isinstance(message, Rerouted):
            self._rerouted(list(message.peers), list(message.lost), list(message.restarted))
        elif isinstance(message, HeardNodes):
            self._heard = message.nodes
            self._view.heard = message.nodes.__contains__
        elif isinstance(message, DrainSet):
            state = message.state
            drain = self._drain
            drain.draining, drain.since, drain.reason = state.draining, state.since, state.reason
            drain.by, drain.retry_after_s = state.by, state.retry_after_s
        elif isinstance(message, FaultsSet):
            self._impairments.clear()
            for peer, fault in message.faults.items():
                self._impairments.inject(peer, fault)
        elif isinstance(message, Query):
            self._channel.send(Answer(message.query_id, self._answer(message)))
        elif isinstance(message, MediaActivity) and self._media is not None:
            self._media.activity(message.sessions, trio.current_time())
        elif isinstance(message, PairFollow) and self._pair is not None:
            self._pair.follow_through_owner(message.stream, message.epoch, message.applied_seq)
        elif isinstance(message, PairUnfollow) and self._pair is not None:
            self._pair.unfollow_through_owner(message.stream)
        elif isinstance(message, PairApplied) and self._pair is not None:
            self._pair.applied_through_owner(message.applied)
        elif isinstance(message, PairTakeOver) and self.take_over is not None:
            self.take_over()
        elif isinstance(message, SipSockets) and self.sip_sockets is not None:
            fds = self._channel.take_fds(len(message.listeners))
            self.sip_sockets(
                [
                    BoundSocket(listener, socket.socket(fileno=fd))
                    for listener, fd in zip(message.listeners, fds, strict=True)
                ]
            )
        else:
            raise LinkLost(f"the owner sent {type(message).__name__}")

    def pair_batches(self, stream: int, batches: tuple[bytes, ...]) -> None:
        """This worker's replica batches, for the follower's stream ``stream`` at the owner."""
        self._channel.send(PairBatches(stream, batches))

    def media_commands(self, commands: tuple[MediaCommand, ...]) -> None:
        """The media edge's commands, to the owner's relay (``WorkerMedia.send``)."""
        self._channel.send(MediaCommands(commands))

    def _answer(self, query: Query) -> Mapping[str, int] | CallBook:
        if query.kind is QueryKind.COUNTERS:
            return dict(self._counters())
        now = trio.current_time()
        offset = wall_time() - now
        calls = self._calls
        if query.kind is QueryKind.CALL:
            record = calls.get(query.call_id, now)
            found: Sequence[CallRecord] = () if record is None else (record,)
        else:
            found = calls.calls(now, include_ended=query.include_ended)
        media = {}
        if self._media is not None:
            for item in found:
                if sessions := self._media.sessions_of(item.call_id):
                    media[item.call_id] = tuple(sessions)
        return CallBook(tuple(found), calls.active(now), offset, media)

    # -- task ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry messages until cancelled; send the traffic every probe interval and every
        event as it is published.

        Raises:
            LinkLost: the channel to the owner broke.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._channel.run, self._handle)
            nursery.start_soon(self._forward_events)
            task_status.started()
            while True:
                await trio.sleep(self._interval)
                traffic = self._take_traffic()
                if traffic:
                    self._channel.send(PeerTraffic(traffic))

    async def _forward_events(self) -> None:
        while True:
            with self._events.watch() as watcher:
                try:
                    while True:
                        item = await watcher.receive()
                        self._channel.send(EventRaised(item.event, item.by))
                except WatcherFellBehind:
                    self.events_dropped += 1
                    log.warning("events to the owner fell behind; some were dropped")

    def counters(self) -> dict[str, int]:
        return {"workers.events_dropped": self.events_dropped}
