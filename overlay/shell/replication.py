"""Pair state replication over gRPC: the active serves its calls, the standby follows them.

Both members of a pair run this; which part works depends on who holds the pair's address
(docs/internal/pair-state-design.md §4, proto/overlay/v1/pair.proto).

**The active** (``PairReplication``) serves ``overlay.v1.PairState`` on the node's gRPC
server, to one follower at a time (a newer stream replaces an older one). On ``Follow`` it sends
what ``ReplicaLog.follow`` says (a snapshot, unless the follower is up to date), then every batch
``flush`` makes. The signalling pump calls ``flush`` at the end of every turn, and a tick every
``REPORT_INTERVAL`` catches what changed outside signalling (a relay latching a new source, a
media timeout). Signalling never waits: a batch goes to the follower's stream through a bounded
channel with ``send_nowait``; when ``BATCH_BUFFER`` batches already wait there, the stream is
dropped and counted in ``pair.replication.overruns``, and the follower, dialling again, takes a
snapshot. A follower that says it holds the address too is a split brain: refused, logged,
counted. A member that does not hold the address serves no one.

**The standby** (``PairFollower``, on the member that does not hold the address) dials
``[pair] peer_grpc`` with the node's own certificate, says what it holds (``FollowerHello``),
applies every batch into its own objects (``ReplicaStore``, then the relay: ``apply_media``)
and reports what it applied every ``REPORT_INTERVAL``. A broken stream or a batch that does not
follow (``ResyncNeeded``) makes it dial again, at once after a resync, else after a backoff from
``RECONNECT_DELAY`` doubling to ``MAX_RECONNECT_DELAY``. It stops following the moment it holds
the address.

**Several SIP workers** (``sip.workers`` > 1; both members run the same count, so Call-ID
steering puts a call in the same worker on both): worker i of the standby follows worker i of
the active, each over its own Follow stream (the Hello names the worker), each with its own
epoch and seqs, since each worker's calls have one owner, its replica log. Only the active's
worker 0 serves gRPC: for a worker above 0 it opens the stream, tells that worker
(``WorkerStreams.pair_follow``; the worker's log answers with a snapshot if one is needed, then
its batches) and puts the batches that come back over the worker channel on it, in order
(``take_worker_batches``), the same bound of ``BATCH_BUFFER`` batches (a snapshot's excepted)
dropping a stream that falls behind; the follower's reports go to the worker. Each worker of
the standby dials for itself, with a gRPC bridge of its own (``overlay.shell.workerlink``).
The epoch a promoted member advertises is worker 0's (``take_over``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
import trio

from overlay.grpc import (
    AccessPolicy,
    BridgedStream,
    GrpcBridge,
    RpcError,
    Service,
    StatusCode,
    StreamBroken,
    stream_handler,
)
from overlay.media import MediaEdge
from overlay.noc import CallTracker
from overlay.pairstate import ReplicaLog, ReplicaStore, ResyncNeeded
from overlay.shell.clock import wall_time
from overlay.sip import ProxyCore, host_reference
from overlay.v1 import pair_pb2

log = structlog.get_logger("overlay.pair")

SERVICE = "overlay.v1.PairState"
FOLLOW_METHOD = f"/{SERVICE}/Follow"
#: Seconds between the follower's Applied reports, and between the active's flushes of what
#: changed outside signalling.
REPORT_INTERVAL = 0.1
#: Batches waiting for one follower (beyond those gRPC holds): one more drops its stream.
BATCH_BUFFER = 64
HELLO_TIMEOUT = 2.0
RECONNECT_DELAY = 0.1
MAX_RECONNECT_DELAY = 2.0


class _Stream:
    """One follower's stream, at the active: the channel ``flush`` feeds, and why the active
    dropped it (``None``: it was not dropped)."""

    def __init__(self, stream_id: int = 0, buffer: float = BATCH_BUFFER) -> None:
        self.send, self.receive = trio.open_memory_channel[pair_pb2.StateBatch](buffer)
        self.scope = trio.CancelScope()
        self.dropped: RpcError | None = None
        #: Which stream, for a worker's batches that come back tagged with it.
        self.stream_id = stream_id

    def drop(self, code: StatusCode, why: str) -> None:
        self.dropped = RpcError(code, why)
        self.scope.cancel()


class WorkerStreams(Protocol):
    """The owner's channels to the other workers, as its replication relays their followers'
    streams (``overlay.shell.workerlink.OwnerLinks``)."""

    @property
    def workers(self) -> int: ...

    def pair_follow(self, worker: int, stream: int, epoch: bytes, applied_seq: int) -> None: ...

    def pair_unfollow(self, worker: int, stream: int) -> None: ...

    def pair_applied(self, worker: int, applied: bytes) -> None: ...


class PairReplication:
    """A pair member's replication: the active's part, and (with a ``peer``) the standby's
    ``PairFollower``; see the module docstring.

    Args:
        node_id: the pair's node id (both members have it).
        peer: ``[pair] peer_grpc``, the other member's gRPC address; ``None``: never follow.
        holds: whether this member holds the pair's address now.
        access: who may follow (``AccessPolicy.authorize_pair``).
        epoch: this node's call-state epoch (the one its LSA advertises): the active's, which a
            promoted standby keeps (``take_over``).
        calls, core, edge: this node's owners of call state: the call book, the proxy core
            (its dialog book and INVITEs at the edge; ``None``: none), the media edge
            (``None``: no media plane).
        apply_media: hands the media edge's commands to the relay (``MediaPlane.apply``).
        worker: this SIP worker's index (module notes): above 0, its batches go to the owner
            through ``forward`` (``WorkerLink.pair_batches``), which this member's worker 0
            relays; its follower follows the active's worker of the same index.
    """

    def __init__(
        self,
        node_id: str,
        *,
        peer: tuple[str, int] | None,
        holds: Callable[[], bool],
        access: AccessPolicy,
        epoch: bytes,
        calls: CallTracker,
        core: ProxyCore | None,
        edge: MediaEdge | None,
        apply_media: Callable[[], None] | None,
        worker: int = 0,
    ) -> None:
        self._node_id = node_id
        self._worker = worker
        #: Worker 0 of several: the channels to the others, whose followers' streams it relays.
        self.workers: WorkerStreams | None = None
        #: A worker above 0: sends its batches to the owner, tagged with the stream.
        self.forward: Callable[[int, tuple[bytes, ...]], None] | None = None
        self._owner_stream: int | None = None  # the follower's stream at the owner
        self._worker_streams: dict[int, _Stream] = {}  # at the owner: worker -> its follower's
        self._stream_ids = itertools.count(1)
        self._holds = holds
        self._access = access
        dialogs = None if core is None else core.dialogs
        self.log = ReplicaLog(epoch, calls, dialogs, edge, core)
        self.follower = (
            None
            if peer is None
            else PairFollower(
                node_id,
                f"{host_reference(peer[0])}:{peer[1]}",
                ReplicaStore(calls, dialogs, edge, core),
                holds=holds,
                apply_media=apply_media,
                worker=worker,
            )
        )
        self._stream: _Stream | None = None
        self._reported = pair_pb2.Applied()  # the follower's last report
        self.snapshots_sent = 0
        self.overruns = 0
        self.split_brains = 0

    def take_over(self) -> bytes | None:
        """This member now holds the pair's address: the epoch of the active whose whole
        state it followed, which it keeps (its log and its LSA say it, so the peers keep the
        calls), or ``None`` when it holds no whole state (a new epoch: the peers end the
        active's calls at once)."""
        follower = self.follower
        epoch = None if follower is None else follower.store.epoch
        if epoch:
            self.log.epoch = epoch
        return epoch or None

    def service(self) -> Service:
        """``overlay.v1.PairState`` for the node's gRPC server."""
        follow = stream_handler(
            self._serve_follow,
            pair_pb2.FollowerReport.FromString,
            pair_pb2.StateBatch.SerializeToString,
        )
        return Service(SERVICE, {"Follow": follow}, self._access.authorize_pair)

    async def run(self, bridge: GrpcBridge | None) -> None:
        """Flush every ``REPORT_INTERVAL``, and run the follower (on ``bridge``: it needs one),
        until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick)
            if self.follower is not None:
                assert bridge is not None
                nursery.start_soon(self.follower.run, bridge)

    def flush(self) -> None:
        """Send what changed since the last flush to the follower, never waiting (module
        notes). Called by the signalling pump once per turn."""
        batch = self.log.flush(trio.current_time(), wall_time())
        if self.forward is not None:  # a worker above 0: the owner has the stream
            if batch is not None and self._owner_stream is not None:
                self.forward(self._owner_stream, (batch.SerializeToString(),))
            return
        stream = self._stream
        if batch is None or stream is None:
            return
        try:
            stream.send.send_nowait(batch)
        except trio.WouldBlock:
            self.overruns += 1
            log.warning("pair follower fell behind: its stream is dropped", batches=BATCH_BUFFER)
            stream.drop(StatusCode.RESOURCE_EXHAUSTED, f"{BATCH_BUFFER} batches behind")
            self._unfollow(stream)

    def counters(self) -> dict[str, int]:
        """By dotted name: the follower's own figures while this member is the standby, else
        the active's (its follower's last report; ``lag_records`` only the active knows)."""
        if self.follower is not None and self.follower.standby:
            return self._per_worker(self.follower.counters())
        reported = self._reported
        following = self._stream if self.forward is None else self._owner_stream
        return self._per_worker(
            {
                "pair.replication.following": int(following is not None),
                "pair.replication.lag_ms": _ms(reported.lag_ms),
                "pair.replication.lag_records": max(0, self.log.last_seq - reported.seq),
                "pair.replication.calls": reported.calls,
                "pair.replication.resyncs": self.snapshots_sent,
                "pair.replication.overruns": self.overruns,
                "pair.replication.split_brains": self.split_brains,
            }
        )

    def _per_worker(self, counters: dict[str, int]) -> dict[str, int]:
        """Every worker's counters are summed by name into the node's (``GetCounters``):
        ``following`` then counts the workers following, ``calls`` all of them; a lag is
        worker 0's, the others' are under ``pair.replication.workers.<n>.lag_ms``."""
        if self._worker:
            lag = counters.pop("pair.replication.lag_ms", 0)
            counters[f"pair.replication.workers.{self._worker}.lag_ms"] = lag
        return counters

    # -- a worker above 0, its follower's stream at the owner (module notes) -----------------

    def follow_through_owner(self, stream: int, epoch: bytes, applied_seq: int) -> None:
        """A follower of this worker's calls connected at the owner with this state: send it
        what ``ReplicaLog.follow`` says, then the batches of the next flushes."""
        assert self.forward is not None
        self._owner_stream = stream
        batches = self.log.follow(epoch, applied_seq, trio.current_time(), wall_time())
        if batches:
            self.snapshots_sent += 1
            self.forward(stream, tuple(batch.SerializeToString() for batch in batches))

    def unfollow_through_owner(self, stream: int) -> None:
        """The follower's stream ended at the owner (a newer one may have replaced it)."""
        if self._owner_stream == stream:
            self._owner_stream = None
            self.log.unfollow()

    def applied_through_owner(self, applied: bytes) -> None:
        """The follower's last report, relayed by the owner."""
        self._reported = pair_pb2.Applied.FromString(applied)

    # -- the owner, relaying the other workers' streams ---------------------------------------

    def take_worker_batches(self, worker: int, stream: int, batches: Sequence[bytes]) -> None:
        """Worker ``worker``'s batches for its follower's stream ``stream``, in order (a stream
        that is no longer drops them); a follower ``BATCH_BUFFER`` batches behind is dropped,
        as ``flush`` drops one, except while a snapshot is queued."""
        follower = self._worker_streams.get(worker)
        if follower is None or follower.stream_id != stream:
            return
        for data in batches:
            batch = pair_pb2.StateBatch.FromString(data)
            snapshot = batch.snapshot_begin or batch.snapshot_end
            queued = follower.send.statistics().current_buffer_used
            if not snapshot and queued >= BATCH_BUFFER:
                self.overruns += 1
                log.warning(
                    "pair follower fell behind: its stream is dropped",
                    batches=BATCH_BUFFER,
                    worker=worker,
                )
                follower.drop(StatusCode.RESOURCE_EXHAUSTED, f"{BATCH_BUFFER} batches behind")
                del self._worker_streams[worker]
                return
            follower.send.send_nowait(batch)

    async def _relay_worker(self, stream: BridgedStream, hello: pair_pb2.FollowerHello) -> None:
        """A follower of worker ``hello.worker``'s calls: its batches come through the worker
        channel (module notes)."""
        workers, worker = self.workers, hello.worker
        assert workers is not None
        follower = _Stream(next(self._stream_ids), math.inf)
        previous = self._worker_streams.get(worker)
        if previous is not None:
            previous.drop(StatusCode.ABORTED, "a newer stream of the follower replaced it")
        self._worker_streams[worker] = follower
        workers.pair_follow(worker, follower.stream_id, hello.epoch, hello.applied_seq)
        log.info("pair follower connected", peer=stream.peer, worker=worker)
        try:
            with follower.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._take_reports, stream, nursery.cancel_scope, worker)
                    await self._send_batches(stream, [], follower)
                    nursery.cancel_scope.cancel()
        finally:
            if self._worker_streams.get(worker) is follower:
                del self._worker_streams[worker]
            workers.pair_unfollow(worker, follower.stream_id)
            follower.receive.close()
        dropped = follower.dropped
        log.info(
            "pair follower gone",
            peer=stream.peer,
            worker=worker,
            dropped=dropped and dropped.message,
        )
        if dropped is not None:
            raise dropped

    async def _tick(self) -> None:
        while True:
            await trio.sleep(REPORT_INTERVAL)
            self.flush()

    def _unfollow(self, stream: _Stream) -> None:
        if self._stream is stream:
            self._stream = None
            self.log.unfollow()

    async def _serve_follow(self, stream: BridgedStream) -> None:
        try:
            hello = await self._hello(stream)
        except (trio.EndOfChannel, StreamBroken):
            return  # gone before it said anything
        if hello.worker:
            await self._relay_worker(stream, hello)
            return
        follower = _Stream()
        if self._stream is not None:
            self._stream.drop(StatusCode.ABORTED, "a newer stream of the follower replaced it")
        self._stream = follower
        batches = self.log.follow(hello.epoch, hello.applied_seq, trio.current_time(), wall_time())
        if batches:
            self.snapshots_sent += 1
        log.info(
            "pair follower connected",
            peer=stream.peer,
            snapshot_calls=sum(len(batch.records) for batch in batches) if batches else None,
            seq=self.log.last_seq,
        )
        try:
            with follower.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._take_reports, stream, nursery.cancel_scope)
                    await self._send_batches(stream, batches, follower)
                    nursery.cancel_scope.cancel()
        finally:
            self._unfollow(follower)
            follower.receive.close()
        dropped = follower.dropped
        log.info("pair follower gone", peer=stream.peer, dropped=dropped and dropped.message)
        if dropped is not None:
            raise dropped

    async def _send_batches(
        self, stream: BridgedStream, snapshot: list[pair_pb2.StateBatch], follower: _Stream
    ) -> None:
        """The snapshot, then every batch ``flush`` hands the follower, in order."""
        try:
            for batch in snapshot:
                await stream.send(batch)
            async for batch in follower.receive:
                await stream.send(batch)
        except StreamBroken:
            pass  # the follower went away: it dials again when it can

    async def _hello(self, stream: BridgedStream) -> pair_pb2.FollowerHello:
        """The follower's first message, checked (module notes).

        Raises:
            RpcError: no Hello in time, another node's, a split brain, or this member is no
                active to follow.
            trio.EndOfChannel, StreamBroken: the follower went first.
        """
        first = None
        with trio.move_on_after(HELLO_TIMEOUT):
            first = await stream.receive()
        if first is None or not first.HasField("hello"):
            raise RpcError(StatusCode.INVALID_ARGUMENT, "a Follow stream starts with a Hello")
        hello: pair_pb2.FollowerHello = first.hello
        if hello.node_id != self._node_id:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"{hello.node_id!r} is not this pair's node ({self._node_id!r})",
            )
        workers = 0 if self.workers is None else self.workers.workers
        if hello.worker > workers:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"no SIP worker {hello.worker} here: the members of a pair run the same "
                f"sip.workers ({workers + 1} here)",
            )
        if not self._holds():
            raise RpcError(
                StatusCode.UNAVAILABLE, "this member does not hold the pair's address: no active"
            )
        if hello.holds_address:
            self.split_brains += 1
            log.error(
                "split brain: the other member of the pair holds the address too; "
                "its Follow stream is refused",
                peer=stream.peer,
            )
            raise RpcError(
                StatusCode.FAILED_PRECONDITION, "split brain: both members hold the address"
            )
        return hello

    async def _take_reports(
        self, stream: BridgedStream, scope: trio.CancelScope, worker: int = 0
    ) -> None:
        """Read the follower's Applied reports (of another worker's calls: for that worker);
        end the stream when it goes."""
        try:
            while True:
                report = await stream.receive()
                if not report.HasField("applied"):
                    continue
                if worker and self.workers is not None:
                    self.workers.pair_applied(worker, report.applied.SerializeToString())
                elif not worker:
                    self._reported = report.applied
        except (trio.EndOfChannel, StreamBroken):
            scope.cancel()


class PairFollower:
    """The standby's part (module notes): follows the active at ``target`` into ``store``.

    Args:
        node_id: the pair's node id, said in the Hello.
        target: ``"host:port"`` of the other member's gRPC server.
        store: applies the active's batches to this node's owners of call state.
        holds: whether this member holds the pair's address now: it then stops following.
        apply_media: hands the media edge's commands to the relay after each batch.
        worker: the SIP worker whose calls it follows (the same worker of the active).
    """

    def __init__(
        self,
        node_id: str,
        target: str,
        store: ReplicaStore,
        *,
        holds: Callable[[], bool],
        apply_media: Callable[[], None] | None,
        worker: int = 0,
    ) -> None:
        self._node_id = node_id
        self._worker = worker
        self._target = target
        self.store = store
        self._holds = holds
        self._apply_media = apply_media
        #: This member follows, or tries to (it did not hold the address).
        self.standby = False
        #: A stream to the active is up and its state was taken whole.
        self.following = False

    def counters(self) -> dict[str, int]:
        """What the standby knows, by dotted name (``PairReplication.counters``)."""
        store = self.store
        return {
            "pair.replication.following": int(self.following),
            "pair.replication.lag_ms": _ms(store.lag_ms),
            "pair.replication.calls": store.calls,
            "pair.replication.resyncs": store.snapshots,
        }

    async def run(self, bridge: GrpcBridge) -> None:
        """Follow the active until this member holds the pair's address (a member that holds
        it from the start is the active: it follows no one)."""
        if self._holds():
            return
        self.standby = True
        target = self._target
        delay = RECONNECT_DELAY
        failures = 0  # dials in a row that never got a whole state: only the first is logged
        while not self._holds():
            why, resync = await self._follow_once(bridge, target)
            if self.following:  # it had the active's whole state: a resync dials at once
                log.warning("pair follower: the stream to the active ended", why=why)
                self.following, delay, failures = False, RECONNECT_DELAY, 0
                if resync:
                    continue
            elif failures == 0:
                log.warning("pair follower: no state from the active", target=target, why=why)
            failures += 1
            await trio.sleep(delay)
            delay = min(2 * delay, MAX_RECONNECT_DELAY)
        self.standby = self.following = False
        log.warning("pair address held: no longer following the other member")

    async def _follow_once(self, bridge: GrpcBridge, target: str) -> tuple[str, bool]:
        """One stream to the active; returns why it ended, and whether for a resync."""
        store = self.store
        hello = pair_pb2.FollowerHello(
            node_id=self._node_id,
            epoch=store.epoch,
            applied_seq=store.applied_seq,
            holds_address=self._holds(),
            worker=self._worker,
        )
        why, resync = "this member holds the pair's address", False  # unless said otherwise
        async with bridge.open_stream(
            target,
            FOLLOW_METHOD,
            pair_pb2.FollowerReport.SerializeToString,
            pair_pb2.StateBatch.FromString,
        ) as stream:
            try:
                stream.send_nowait(pair_pb2.FollowerReport(hello=hello))
            except StreamBroken as error:
                return f"{error.code.name}: {error.details}", False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report, stream, nursery.cancel_scope)
                why, resync = await self._take_batches(stream)
                nursery.cancel_scope.cancel()
        return why, resync

    async def _take_batches(self, stream: BridgedStream) -> tuple[str, bool]:
        """Apply the active's batches until the stream ends; returns why, and whether for a
        resync."""
        store = self.store
        try:
            while True:
                batch = await stream.receive()
                store.apply(batch, trio.current_time(), wall_time())
                if self._apply_media is not None:
                    self._apply_media()
                if not self.following and store.epoch:
                    self.following = True
                    log.info("following the active", calls=store.calls, seq=store.applied_seq)
        except ResyncNeeded as error:
            return f"resync: {error}", True
        except trio.EndOfChannel:
            return "the active ended the stream", False
        except StreamBroken as error:
            return f"{error.code.name}: {error.details}", False

    async def _report(self, stream: BridgedStream, scope: trio.CancelScope) -> None:
        """Applied every ``REPORT_INTERVAL``; stop following once this member holds."""
        store = self.store
        while True:
            await trio.sleep(REPORT_INTERVAL)
            if self._holds():
                scope.cancel()
                return
            applied = pair_pb2.Applied(
                seq=store.applied_seq, lag_ms=store.lag_ms, calls=store.calls
            )
            try:
                stream.send_nowait(pair_pb2.FollowerReport(applied=applied))
            except trio.WouldBlock:
                continue  # the next report says the same, later
            except StreamBroken:
                return  # _take_batches sees the end too


def _ms(value: float) -> int:
    return round(value) if math.isfinite(value) else 0
