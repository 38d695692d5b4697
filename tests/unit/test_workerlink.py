"""The channel between an overlay node's owner and its other SIP workers: the codec, the
merging of answers, and the two ends over a real socketpair in one process."""

from __future__ import annotations

import dataclasses
import pickle
import random
import socket
from collections.abc import Callable, Iterable, Sequence

import pytest
import trio
import trio.testing

from overlay.media import (
    AddSession,
    MediaCommand,
    MediaSession,
    OverlaySession,
    PortPair,
    RemoveSession,
    Side,
)
from overlay.noc import CallFailed, CallRecord, CallRole, CallState, CallTracker
from overlay.routing import DrainState, RouteTable, RouteView, RoutingPolicy, compute_routes
from overlay.shell.events import EventHub
from overlay.shell.media import SessionActivity
from overlay.shell.transport import BoundSocket, Fault, Impairments
from overlay.shell.workerlink import (
    Answer,
    CallBook,
    DrainSet,
    EventRaised,
    FaultsSet,
    FrameReader,
    HeardNodes,
    LinkLost,
    MediaActivity,
    MediaCommands,
    Message,
    OwnerLinks,
    PairApplied,
    PairBatches,
    PairFollow,
    PairTakeOver,
    PairUnfollow,
    PeerTraffic,
    Query,
    QueryKind,
    Rerouted,
    RoutesInstalled,
    SipSockets,
    WorkerLink,
    WorkerSockets,
    encode,
    merge_calls,
    open_channels,
    shift_records,
    sum_counters,
)
from overlay.sip import Listener, Peer
from tests.unit.test_routing import Net

PEERS = {
    "usw1": Peer("udp", "127.0.0.21", 5060),
    "use2": Peer("udp", "127.0.0.22", 5060),
    "use1": Peer("udp", "127.0.0.23", 5060),
}


def reference_table(version_bump: bool = False) -> RouteTable:
    net = Net()
    table, _ = compute_routes(net.lsdb(), "usw2", RoutingPolicy(), None, 5.0)
    if version_bump:
        net.set("usw2", "use1", loss_ratio=0.2)
        table, _ = compute_routes(net.lsdb(), "usw2", RoutingPolicy(), table, 6.0)
    return table


def record(call_id: str, started: float, *, ended: float | None = None) -> CallRecord:
    return CallRecord(
        call_id=call_id,
        role=CallRole.INGRESS,
        state=CallState.ENDED if ended is not None else CallState.ANSWERED,
        from_uri="sip:a@127.0.0.2",
        to_uri="sip:b@127.0.0.3",
        request_uri="sip:b@127.0.0.3",
        far_node="use1",
        started=started,
        answered=started + 1.0,
        ended=ended,
    )


def session(session_id: int, call_id: str = "c@h") -> MediaSession:
    return MediaSession(
        session_id,
        call_id,
        Side.CALLER,
        0,
        PortPair(20500, 20501),
        3.0,
        ("127.0.0.2", 4000),
        OverlaySession("use1", 77),
    )


# -- codec -----------------------------------------------------------------------------------


MESSAGES = [
    Rerouted((PEERS["use1"],), ("use2",), ()),
    HeardNodes(frozenset({"usw1", "use1"})),
    DrainSet(DrainState(True, 1.7e9, "maintenance", "noc", 60)),
    FaultsSet({"use1": Fault(delay_ms=30.0, loss_ratio=0.1), "*": Fault(blackhole=True)}),
    Query(3, QueryKind.CALL, call_id="c@h"),
    PeerTraffic({PEERS["use1"]: (10, 2)}),
    EventRaised(CallFailed("c@h", "use1", 503, "Service Unavailable"), by="noc"),
    Answer(4, {"sip.calls.offered": 7}),
    Answer(5, CallBook((record("c@h", 10.0),), 1, 1.7e9)),
    Answer(6, CallBook((record("c@h", 10.0),), 1, 1.7e9, {"c@h": (session(3),)})),
    MediaCommands((AddSession(session(3)), RemoveSession(3), AddSession(session(5)))),
    MediaActivity((SessionActivity(3, ("127.0.0.2", 4000), None), SessionActivity(5, None, None))),
    MediaActivity(()),
    PairFollow(2, b"e" * 16, 41),
    PairUnfollow(2),
    PairApplied(b"\x08\x29"),
    PairBatches(2, (b"\x0a\x10" + b"e" * 16, b"")),
    PairTakeOver(),
    SipSockets((Listener("udp", "127.0.0.1", 5060), Listener("tcp", "127.0.0.1", 5060))),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_come_out_as_they_went_in_whole_or_a_byte_at_a_time(message: Message) -> None:
    frame = encode(message)
    reader = FrameReader()
    reader.receive_data(frame + frame)
    assert reader.next_message() == message
    assert reader.next_message() == message
    assert reader.next_message() is None
    for byte in range(len(frame)):
        assert reader.next_message() is None
        reader.receive_data(frame[byte : byte + 1])
    assert reader.next_message() == message
    assert reader.next_message() is None


def test_a_route_table_is_rebuilt_whole_from_its_fields() -> None:
    table = reference_table(version_bump=True)
    reader = FrameReader()
    reader.receive_data(encode(RoutesInstalled.of(table)))
    message = reader.next_message()
    assert isinstance(message, RoutesInstalled)
    copy = message.table()
    assert (copy.node_id, copy.version, copy.computed_at) == ("usw2", table.version, 6.0)
    assert copy.version > 0
    assert copy.paths == table.paths
    assert copy.next_hops() == table.next_hops()
    for destination in table.paths:
        assert copy.route(destination) == table.route(destination)  # alternates: from the graph
    view = RouteView("usw2", PEERS)
    view.table = copy
    assert view.forward_address(PEERS["use1"]) == PEERS[table.next_hop("use1")]


def test_frames_that_are_not_ours_break_the_link() -> None:
    reader = FrameReader()
    body = pickle.dumps({"not": "a message"})
    reader.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(LinkLost, match="unexpected message dict"):
        reader.next_message()
    reader = FrameReader()
    reader.receive_data(b"\x00\x00\x00\x03abc")
    with pytest.raises(LinkLost, match="undecodable"):
        reader.next_message()
    reader = FrameReader()
    reader.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(LinkLost, match="exceeds"):
        reader.next_message()


# -- merging answers -------------------------------------------------------------------------


def test_records_move_to_another_clock() -> None:
    moved = shift_records([record("a", 10.0, ended=20.0), record("b", 5.0)], 100.0)
    assert [(r.started, r.answered, r.ended) for r in moved] == [
        (110.0, 111.0, 120.0),
        (105.0, 106.0, None),
    ]


def test_call_books_merge_live_newest_first_then_ended_latest_first() -> None:
    own = [record("live-old", 1.0), record("ended-early", 0.0, ended=3.0)]
    other = [record("live-new", 5.0), record("ended-late", 2.0, ended=9.0)]
    merged = merge_calls([own, other])
    assert [r.call_id for r in merged] == ["live-new", "live-old", "ended-late", "ended-early"]


def test_counters_sum_by_name_with_chosen_ones_per_worker() -> None:
    total = sum_counters(
        {"sip.calls.offered": 3, "overlay.bad_messages": 1},
        [{"sip.calls.offered": 4, "sip.dialogs": 2}],
        per_worker=["sip.calls.offered", "sip.calls.answered"],
    )
    assert total == {
        "sip.calls.offered": 7,
        "overlay.bad_messages": 1,
        "sip.dialogs": 2,
        "workers.0.sip.calls.offered": 3,
        "workers.1.sip.calls.offered": 4,
        "workers.0.sip.calls.answered": 0,
        "workers.1.sip.calls.answered": 0,
    }


def test_each_worker_keeps_its_own_ends_of_the_channels() -> None:
    channels = open_channels(3)
    try:
        assert len(channels) == 2
        owner = WorkerSockets.of(0, channels)
        assert owner.sockets == (channels[0][0], channels[1][0])
        assert all(worker_end.fileno() == -1 for _, worker_end in channels)
    finally:
        for pair in channels:
            for end in pair:
                end.close()
    channels = open_channels(3)
    second = WorkerSockets.of(2, channels)
    assert second.sockets == (channels[1][1],)
    assert [end.fileno() == -1 for pair in channels for end in pair] == [True, True, True, False]
    second.sockets[0].close()


# -- the two ends ----------------------------------------------------------------------------


class Edge:
    """A worker's media side without a relay, recorded."""

    def __init__(self) -> None:
        self.reports: list[tuple[SessionActivity, ...]] = []
        self.sessions = {"c@h": [session(3)]}

    def activity(self, sessions: Iterable[SessionActivity], now: float) -> None:
        self.reports.append(tuple(sessions))

    def sessions_of(self, call_id: str) -> list[MediaSession]:
        return self.sessions.get(call_id, [])


class Relay:
    """The owner's media plane, recorded."""

    def __init__(self) -> None:
        self.commands: list[tuple[int, MediaCommand]] = []

    def apply_from(self, worker: int, commands: Sequence[MediaCommand]) -> None:
        self.commands += [(worker, command) for command in commands]


class Worker:
    """What a worker's link drives, recorded."""

    def __init__(self, sock: socket.socket) -> None:
        self.media = Edge()
        self.view = RouteView("usw2", PEERS)
        self.drain = DrainState()
        self.impairments = Impairments(rng=random.Random(1))
        self.events = EventHub("usw2")
        self.calls = CallTracker()
        self.traffic: dict[Peer, tuple[int, int]] = {PEERS["use1"]: (5, 1)}
        self.reroutes: list[tuple[list[Peer], list[str], list[str]]] = []
        self.link = WorkerLink(
            sock,
            view=self.view,
            drain=self.drain,
            impairments=self.impairments,
            events=self.events,
            calls=self.calls,
            counters=lambda: {"sip.calls.offered": 2},
            take_traffic=self.take_traffic,
            rerouted=lambda *args: self.reroutes.append(args),
            probe_interval=0.1,
            media=self.media,
        )

    def take_traffic(self) -> dict[Peer, tuple[int, int]]:
        traffic, self.traffic = self.traffic, {}
        return traffic


async def until(condition: Callable[[], object]) -> None:
    """Polls the other end's effects: there is no event to wait on across the socketpair."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def leaves(group: BaseExceptionGroup[LinkLost]) -> list[BaseException]:
    return [
        leaf
        for error in group.exceptions
        for leaf in (leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    ]


@pytest.mark.trio
async def test_the_owner_keeps_a_worker_in_step_and_hears_from_it() -> None:
    owner_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    view = RouteView("usw2", PEERS)
    view.heard = lambda node: node == "use1"
    drain = DrainState()
    impairments = Impairments(rng=random.Random(1))
    hub = EventHub("usw2")
    relay = Relay()
    owner = OwnerLinks(
        [owner_end],
        view=view,
        drain=drain,
        impairments=impairments,
        events=hub,
        probe_interval=0.1,
        media=relay,
    )
    worker = Worker(worker_end)
    with hub.watch() as watcher:
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            await nursery.start(worker.link.run)
            # The snapshot: a worker starts with what the owner has.
            await until(lambda: worker.view.heard("use1"))
            assert not worker.view.heard("usw1")
            assert not worker.view.reachable("use1")
            # Tables and reroutes, in order.
            table = reference_table()
            view.table = table
            owner.routes_installed(table)
            owner.rerouted([PEERS["use1"]], ["use2"], [])
            await until(lambda: worker.reroutes)
            assert worker.view.table.paths == table.paths
            assert worker.reroutes == [([PEERS["use1"]], ["use2"], [])]
            # Route waits end with the table that reaches the node.
            assert await worker.link.wait_reachable("use1", until=trio.current_time() + 1)
            # Drain and faults.
            drain.draining, drain.reason, drain.retry_after_s = True, "game day", 30
            owner.drain_changed()
            impairments.inject("use1", Fault(loss_ratio=0.5))
            owner.faults_changed()
            await until(lambda: worker.impairments.faults())
            assert (worker.drain.draining, worker.drain.reason) == (True, "game day")
            assert worker.drain.retry_after_s == 30
            assert worker.impairments.faults() == {"use1": Fault(loss_ratio=0.5)}
            # Traffic comes back each interval, for the owner's mesh to take with its own.
            take = owner.take_traffic(lambda: {PEERS["use1"]: (1, 0), PEERS["use2"]: (3, 3)})
            await trio.sleep(0.3)
            assert take() == {PEERS["use1"]: (6, 1), PEERS["use2"]: (3, 3)}
            # Events go to the owner's hub.
            worker.events.publish(CallFailed("c@h", "use1", 503, "x"), by="w")
            with trio.fail_after(5):
                item = await watcher.receive()
            assert (item.event, item.by) == (CallFailed("c@h", "use1", 503, "x"), "w")
            # Queries.
            assert await owner.counters() == [{"sip.calls.offered": 2}]
            worker.calls.restore(record("c@h", trio.current_time() - 5.0))
            records, active, media = await owner.calls(include_ended=False)
            assert [r.call_id for r in records] == ["c@h"]
            assert active == 1
            assert abs(records[0].started - (trio.current_time() - 5.0)) < 0.5
            # A call's media sessions come with it, for the owner to read the relay's figures.
            assert media == {"c@h": (session(3),)}
            found, _, media = await owner.calls(include_ended=True, call_id="c@h")
            assert ([r.call_id for r in found], media) == (["c@h"], {"c@h": (session(3),)})
            found, _, media = await owner.calls(include_ended=True, call_id="nope")
            assert (found, media) == ([], {})
            # The worker's media commands reach the owner's relay in order, and each poll's
            # activity of its sessions comes back to its edge.
            worker.link.media_commands((AddSession(session(3)), RemoveSession(3)))
            worker.link.media_commands((AddSession(session(5)),))
            await until(lambda: len(relay.commands) == 3)
            assert relay.commands == [
                (1, AddSession(session(3))),
                (1, RemoveSession(3)),
                (1, AddSession(session(5))),
            ]
            owner.media_activity(1, (SessionActivity(5, ("127.0.0.2", 4000), None),))
            owner.media_activity(1, ())
            await until(lambda: len(worker.media.reports) == 2)
            assert worker.media.reports == [(SessionActivity(5, ("127.0.0.2", 4000), None),), ()]
            nursery.cancel_scope.cancel()


class Replication:
    """Both ends' pair replication, recorded: the owner's takes batches, a worker's is told of
    its follower's stream."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, tuple[bytes, ...]]] = []
        self.told: list[tuple[object, ...]] = []

    def take_worker_batches(self, worker: int, stream: int, batches: Sequence[bytes]) -> None:
        self.batches.append((worker, stream, tuple(batches)))

    def follow_through_owner(self, stream: int, epoch: bytes, applied_seq: int) -> None:
        self.told.append(("follow", stream, epoch, applied_seq))

    def unfollow_through_owner(self, stream: int) -> None:
        self.told.append(("unfollow", stream))

    def applied_through_owner(self, applied: bytes) -> None:
        self.told.append(("applied", applied))


@pytest.mark.trio
async def test_a_pair_member_relays_streams_promotes_and_passes_its_sip_sockets() -> None:
    owner_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    owner_pair, worker_pair = Replication(), Replication()
    owner = OwnerLinks(
        [owner_end],
        view=RouteView("usw2", PEERS),
        drain=DrainState(),
        impairments=Impairments(rng=random.Random(1)),
        events=EventHub("usw2"),
        probe_interval=0.1,
        pair=owner_pair,
    )
    worker = Worker(worker_end)
    worker.link = WorkerLink(
        worker_end,
        view=worker.view,
        drain=worker.drain,
        impairments=worker.impairments,
        events=worker.events,
        calls=worker.calls,
        counters=dict,
        take_traffic=worker.take_traffic,
        rerouted=lambda *args: None,
        probe_interval=0.1,
        pair=worker_pair,
    )
    took_over: list[bool] = []
    passed: list[list[BoundSocket]] = []
    worker.link.take_over = lambda: took_over.append(True)
    worker.link.sip_sockets = passed.append
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    bound = [
        BoundSocket(Listener("udp", *udp.getsockname()), udp),
        BoundSocket(Listener("tcp", *tcp.getsockname()), tcp),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        await nursery.start(worker.link.run)
        # The owner relays the follower's stream to the worker, in order ...
        owner.pair_follow(1, 7, b"e" * 16, 41)
        owner.pair_applied(1, b"\x08\x29")
        owner.pair_unfollow(1, 7)
        await until(lambda: len(worker_pair.told) == 3)
        assert worker_pair.told == [
            ("follow", 7, b"e" * 16, 41),
            ("applied", b"\x08\x29"),
            ("unfollow", 7),
        ]
        # ... and takes its batches, tagged with the stream.
        worker.link.pair_batches(7, (b"one", b"two"))
        await until(lambda: owner_pair.batches)
        assert owner_pair.batches == [(1, 7, (b"one", b"two"))]
        # Held: the sockets the owner bound reach the worker as descriptors of its own, on
        # the same addresses; then it promotes.
        owner.send_sockets(bound)
        owner.take_over()
        await until(lambda: took_over and passed)
        [received] = passed
        assert [item.listener for item in received] == [item.listener for item in bound]
        for mine, theirs in zip(bound, received, strict=True):
            assert theirs.sock.fileno() != mine.sock.fileno()
            assert theirs.sock.getsockname() == mine.sock.getsockname()
            assert theirs.sock.type == mine.sock.type
            theirs.sock.close()
        nursery.cancel_scope.cancel()
    udp.close()
    tcp.close()


@pytest.mark.trio
async def test_a_closed_channel_stops_the_worker() -> None:
    owner_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker = Worker(worker_end)
    owner_end.close()
    lost = []
    try:
        with trio.fail_after(5):
            await worker.link.run()
    except* LinkLost as group:
        lost = [str(error) for error in leaves(group)]
    assert lost == ["the channel to the owner closed"]


def test_drain_set_carries_a_copy() -> None:
    state = DrainState(True, 1.0, "r", "b", 5)
    message = DrainSet(dataclasses.replace(state))
    state.draining = False
    assert message.state.draining
