"""Pair state replication on real sockets: SIPp calls with RTP through the active of a pair,
followed live by its standby over gRPC with mutual TLS.

Three in-process nodes on loopback: the two members of the pair ``pa`` (one node id, one
certificate naming both members' own addresses and the pair's) and the egress ``eg``. The
members hold the pair's address by file (``[pair] hold = "file"``, the lab's mode: both run on
one machine), and the file names the active. A SIPp caller sends calls with G.711 RTP both ways
into the pair's address; ``pa`` anchors their media and hands them to ``eg``, whose SIPp callee
answers. The standby dials the active's own gRPC address (``[pair] peer_grpc``) and must end up
holding what the active holds of every live call, in its own call book, dialog book and media
edge, sessions on the same relay ports and latched where the active's relay latched; it must
forget the calls that end, and take all of it again when it restarts. The lag of every batch
it applies is recorded (a spy on ``ReplicaStore.apply``) and printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import statistics
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from overlay.config import NodeConfig, parse_config
from overlay.grpc import (
    AccessPolicy,
    BridgedStream,
    GrpcBridge,
    StatusCode,
    StreamBroken,
    open_grpc_bridge,
)
from overlay.lab.pki import make_lab_pki
from overlay.lab.sipp import SippResult, open_uas, run_uac
from overlay.noc import CallRecord, CallRole, CallState, CallTracker
from overlay.pairstate import ReplicaStore
from overlay.shell.node import Node, open_node
from overlay.shell.replication import FOLLOW_METHOD, PairReplication
from overlay.tls import issue_node
from overlay.v1 import pair_pb2
from tests.mesh_helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.sipp, pytest.mark.slow]

SCENARIOS = Path(__file__).resolve().parents[1] / "fleet" / "scenarios"
CALLS = 20
RATE = 10.0
HOLD_MS = 12_000  # long enough for the standby's restart and resync mid-call
MEMBERS = ("pa.1", "pa.2")


@dataclasses.dataclass(frozen=True)
class Hosts:
    floating: str  # the pair's address
    own: dict[str, str]  # member -> its own gRPC address
    egress: str
    caller: str
    callee: str


def pair_config(hosts: Hosts, member: str, pki_lines: tuple[str, ...], hold_file: Path) -> str:
    other = next(name for name in MEMBERS if name != member)
    floating = hosts.floating
    return "\n".join(
        [
            '[node]\nnode_id = "pa"\nregion = "us-west-2"',
            f'[sip]\nlisten = ["udp:{floating}:5060"]',
            f'[grpc]\nlisten = "{hosts.own[member]}:7000"',
            *pki_lines,
            "[linkstate]\nprobe_interval = 0.05\nprobe_multiplier = 20",
            f'[media]\naddress = "{floating}"\noverlay = "{floating}:7100"',
            "port_first = 21300\nport_last = 21399",
            '[[peers]]\nnode_id = "eg"\nregion = "us-east-1"',
            f'sip = "{hosts.egress}:5060"\ngrpc = "{hosts.egress}:7000"',
            f'media = "{hosts.egress}:7100"',
            f'[[dialplan]]\ntarget = "{hosts.callee}:5060"\negress = "eg"',
            f'[pair]\naddress = "{floating}"\nhold = "file"\nhold_file = "{hold_file}"',
            f'member = "{member}"\ncheck_interval = 0.05',
            f'peer_grpc = "{hosts.own[other]}:7000"',
        ]
    )


def egress_config(hosts: Hosts, pki_lines: tuple[str, ...]) -> str:
    egress, floating = hosts.egress, hosts.floating
    return "\n".join(
        [
            '[node]\nnode_id = "eg"\nregion = "us-east-1"',
            f'[sip]\nlisten = ["udp:{egress}:5060"]',
            f'[grpc]\nlisten = "{egress}:7000"',
            *pki_lines,
            "[linkstate]\nprobe_interval = 0.05\nprobe_multiplier = 20",
            f'[media]\naddress = "{egress}"\noverlay = "{egress}:7100"',
            "port_first = 21400\nport_last = 21499",
            '[[peers]]\nnode_id = "pa"\nregion = "us-west-2"',
            f'sip = "{floating}:5060"\ngrpc = "{floating}:7000"\nmedia = "{floating}:7100"',
            f'[[dialplan]]\ntarget = "{hosts.callee}:5060"\negress = "eg"',
        ]
    )


def the_pair(
    tmp_path: Path, loopback_host: Callable[[], str]
) -> tuple[Hosts, Path, dict[str, NodeConfig], NodeConfig]:
    """The hosts, the hold file (naming pa.1), both members' configs and the egress's."""
    hosts = Hosts(
        floating=loopback_host(),
        own={member: loopback_host() for member in MEMBERS},
        egress=loopback_host(),
        caller=loopback_host(),
        callee=loopback_host(),
    )
    pki = make_lab_pki(tmp_path, {"eg": hosts.egress})
    # Both members present the pair's one certificate, at either own address or the pair's.
    now = datetime.datetime.now(datetime.UTC)
    addresses = [hosts.floating, *hosts.own.values()]
    issue_node(pki.ca, "pa", addresses, now=now).write(tmp_path / "pa.pem", tmp_path / "pa.key")
    hold_file = tmp_path / "pa.hold"
    hold_file.write_text("pa.1\n")
    configs = {
        member: parse_config(
            pair_config(hosts, member, pki.grpc_lines("pa"), hold_file), source=f"{member}.toml"
        )
        for member in MEMBERS
    }
    egress = parse_config(egress_config(hosts, pki.grpc_lines("eg")), source="eg.toml")
    return hosts, hold_file, configs, egress


async def place_calls(hosts: Hosts, results: list[SippResult], done: trio.Event) -> None:
    """CALLS calls with G.711 RTP both ways into the pair's address, each held HOLD_MS;
    SIPp's result goes in ``results``, then ``done`` is set."""
    results.append(
        await run_uac(
            (hosts.floating, 5060),
            local_host=hosts.caller,
            scenario=SCENARIOS / "uac_media.xml",
            calls=CALLS,
            rate=RATE,
            max_seconds=60,
            extra_args=["-d", str(HOLD_MS)],
        )
    )
    done.set()


def differences(active: Node, standby: Node) -> list[str]:
    """What the standby holds differently from the active, call by call (empty: the same)."""
    assert active.calls is not None
    assert standby.calls is not None
    assert active.media is not None
    assert standby.media is not None
    mine, theirs = active.signalling.core.dialogs, standby.signalling.core.dialogs
    assert mine is not None
    assert theirs is not None
    now = trio.current_time()
    live = {record.call_id: record for record in active.calls.calls(now)}
    held = {record.call_id: record for record in standby.calls.calls(now)}
    found = [f"calls {sorted(live.keys() ^ held.keys())} on one member only"]
    if live.keys() == held.keys():
        found = []
    for call_id in live.keys() & held.keys():
        if not same_record(live[call_id], held[call_id]):
            found.append(f"{call_id}: records {live[call_id]} / {held[call_id]}")
        if mine.get(call_id) != theirs.get(call_id):
            found.append(f"{call_id}: dialogs differ")
        if active.media.edge.call_state(call_id) != standby.media.edge.call_state(call_id):
            found.append(f"{call_id}: media differs")
    return found


def same_record(mine: CallRecord, theirs: CallRecord) -> bool:
    """Equal, times within a millisecond: they crossed as ages, timed by the wall clock."""
    times = ("started", "answered", "ended")
    for name in times:
        a, b = getattr(mine, name), getattr(theirs, name)
        if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-3):
            return False
    return dataclasses.replace(mine, started=0.0, answered=None, ended=None) == (
        dataclasses.replace(theirs, started=0.0, answered=None, ended=None)
    )


def answered_and_latched(node: Node, calls: int) -> bool:
    """``calls`` live calls, every one answered, every relay session latched on its source."""
    assert node.calls is not None
    assert node.media is not None
    records = node.calls.calls(trio.current_time())
    return len(records) == calls and all(
        record.answered is not None
        and all(
            state.rtp_latched is not None
            for state in node.media.edge.call_state(record.call_id).sessions
        )
        for record in records
    )


@pytest.mark.trio
async def test_the_standby_follows_every_call_of_its_active(
    tmp_path: Path, loopback_host: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts, _, configs, egress = the_pair(tmp_path, loopback_host)

    applied: list[tuple[bool, float]] = []  # (a snapshot's last batch, lag ms) per batch
    apply = ReplicaStore.apply

    def measured(store: ReplicaStore, batch: pair_pb2.StateBatch, now: float, wall: float) -> None:
        apply(store, batch, now, wall)
        if not batch.snapshot_begin or batch.snapshot_end:
            applied.append((batch.snapshot_end, store.lag_ms))

    monkeypatch.setattr(ReplicaStore, "apply", measured)

    results: list[SippResult] = []
    calls_done = trio.Event()
    async with (
        open_uas(hosts.callee, port=5060, scenario=SCENARIOS / "uas_media.xml"),
        open_node(egress),
        open_node(configs["pa.1"]) as active,
        trio.open_nursery() as nursery,
    ):
        assert active.mesh is not None
        mesh = active.mesh
        await wait_for(lambda: mesh.joined and mesh.view.reachable("eg"), within=15)

        async with open_node(configs["pa.2"]) as standby:
            nursery.start_soon(place_calls, hosts, results, calls_done)
            # Every call answered, its RTP latched by the active's relay, the standby the same.
            await wait_for(lambda: answered_and_latched(active, CALLS), within=20)
            await wait_for(lambda: not differences(active, standby), within=5)
            assert standby.media is not None
            stats = standby.media.edge.sessions.statistics()
            assert (stats.sessions, stats.foreign) == (CALLS, CALLS)  # the caller legs
            counters = standby.counters()
            assert counters["pair.replication.following"] == 1
            assert counters["pair.replication.calls"] == CALLS
            assert counters["pair.replication.resyncs"] == 1

        # The standby restarts mid-call: it comes back empty and takes everything again.
        async with open_node(configs["pa.2"]) as standby:
            await wait_for(lambda: not differences(active, standby), within=10)
            assert standby.counters()["pair.replication.resyncs"] == 1
            counters = active.counters()
            assert counters["pair.replication.resyncs"] == 2  # a snapshot for each start
            assert counters["pair.replication.following"] == 1
            assert counters["pair.replication.overruns"] == 0
            assert counters["pair.replication.split_brains"] == 0

            # The calls end (BYE): they end at the standby too, their ports freed.
            with trio.fail_after(HOLD_MS / 1000 + 30):
                await calls_done.wait()
            assert active.calls is not None
            assert standby.calls is not None
            assert active.calls.active(trio.current_time()) == 0
            await wait_for(lambda: standby.counters()["pair.replication.calls"] == 0, within=5)
            assert standby.calls.active(trio.current_time()) == 0
            assert standby.media is not None
            stats = standby.media.edge.sessions.statistics()
            assert (stats.sessions, stats.ports_in_use) == (0, 0)
            dialogs = standby.signalling.core.dialogs
            assert dialogs is not None
            assert len(dialogs) == 0
        nursery.cancel_scope.cancel()

    [result] = results
    assert (result.calls_successful, result.calls_failed) == (CALLS, 0), result
    deltas = sorted(lag for snapshot, lag in applied if not snapshot)
    assert len(deltas) > CALLS
    p50 = statistics.median(deltas)
    p99 = deltas[min(len(deltas) - 1, round(0.99 * (len(deltas) - 1)))]
    print(
        f"replication lag over {len(deltas)} batches: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {deltas[-1]:.2f} ms"
    )
    # The tail is the event loop's (three nodes share one here, and its garbage collector's
    # passes): only the median is held to a bound.
    assert p50 < 50.0


# -- the stream's rules, on one member's service over real gRPC ------------------------------


@contextlib.asynccontextmanager
async def serving(
    host: str, *, holds: bool, calls: CallTracker | None = None
) -> AsyncIterator[tuple[PairReplication, GrpcBridge, str]]:
    """A member's PairState service on ``host`` (no TLS: who may call is authorize_pair's,
    tested on its own), a bridge to dial it with, and its target."""
    replication = PairReplication(
        "pa",
        peer=None,
        holds=lambda: holds,
        access=AccessPolicy("pa", [], secure=False),
        epoch=bytes(16),
        calls=CallTracker() if calls is None else calls,
        core=None,
        edge=None,
        apply_media=None,
    )
    async with open_grpc_bridge() as bridge:
        port = await bridge.start_server(host, 0, [replication.service()])
        yield replication, bridge, f"{host}:{port}"


def hello(*, holds_address: bool = False) -> pair_pb2.FollowerReport:
    return pair_pb2.FollowerReport(
        hello=pair_pb2.FollowerHello(node_id="pa", holds_address=holds_address)
    )


async def refusal(bridge: GrpcBridge, target: str, first: pair_pb2.FollowerReport) -> StreamBroken:
    async with bridge.open_stream(
        target,
        FOLLOW_METHOD,
        pair_pb2.FollowerReport.SerializeToString,
        pair_pb2.StateBatch.FromString,
    ) as stream:
        stream.send_nowait(first)
        with pytest.raises(StreamBroken) as caught, trio.fail_after(5):
            await stream.receive()
    return caught.value


@pytest.mark.trio
async def test_a_follower_that_holds_the_address_too_is_refused(
    loopback_host: Callable[[], str],
) -> None:
    async with serving(loopback_host(), holds=True) as (replication, bridge, target):
        refused = await refusal(bridge, target, hello(holds_address=True))
        assert (refused.code, refused.details) == (
            StatusCode.FAILED_PRECONDITION,
            "split brain: both members hold the address",
        )
        assert replication.counters()["pair.replication.split_brains"] == 1
        stranger = pair_pb2.FollowerReport(hello=pair_pb2.FollowerHello(node_id="eg"))
        assert (await refusal(bridge, target, stranger)).code is StatusCode.PERMISSION_DENIED
    async with serving(loopback_host(), holds=False) as (replication, bridge, target):
        # A member that does not hold the address is no active: it serves no one.
        assert (await refusal(bridge, target, hello())).code is StatusCode.UNAVAILABLE
        assert replication.counters()["pair.replication.split_brains"] == 0


async def drain(stream: BridgedStream) -> None:
    while True:
        await stream.receive()


@pytest.mark.trio
async def test_a_follower_that_stops_reading_is_dropped_and_signalling_never_waits(
    loopback_host: Callable[[], str],
) -> None:
    calls = CallTracker()
    big = CallRecord(
        "big@h", CallRole.INGRESS, CallState.TRYING, "sip:" + "a" * 32_000, "", "", "eg", 0.0
    )
    async with serving(loopback_host(), holds=True, calls=calls) as (replication, bridge, target):
        calls.on_change = replication.log.mark
        async with bridge.open_stream(
            target,
            FOLLOW_METHOD,
            pair_pb2.FollowerReport.SerializeToString,
            pair_pb2.StateBatch.FromString,
        ) as stream:
            stream.send_nowait(hello())
            [snapshot] = [await stream.receive()]  # then it reads nothing more
            assert snapshot.snapshot_end
            await wait_for(
                lambda: replication.counters()["pair.replication.following"] == 1, within=5
            )
            for _ in range(5000):  # each turn changes the call: one 32 kB batch
                calls.restore(big)
                replication.flush()  # not async: signalling never waits for the follower
                if replication.overruns:
                    break
                await trio.sleep(0.001)  # the stream takes what flow control lets through
            counters = replication.counters()
            assert (
                counters["pair.replication.overruns"],
                counters["pair.replication.following"],
            ) == (1, 0)
            with pytest.raises(StreamBroken) as caught, trio.fail_after(10):
                await drain(stream)  # what was sent before the drop, then the end
            assert caught.value.code is StatusCode.RESOURCE_EXHAUSTED
        # Nobody follows now: a change is only counted (the next follower is owed a snapshot).
        seq = replication.log.last_seq
        calls.restore(big)
        replication.flush()
        assert replication.log.last_seq == seq + 1
        assert replication.counters()["pair.replication.overruns"] == 1


def relayed(node: Node) -> int:
    """Packets the node's relay took from the caller and sent to it, every session summed."""
    media = node.media
    assert media is not None
    total = 0
    for session in media.edge.sessions:
        counters = media.session_counters(session.session_id)
        total += counters["packets_in"] + counters["packets_out"]
    return total


@pytest.mark.trio
async def test_the_standby_takes_the_calls_over_when_the_active_stops(
    tmp_path: Path, loopback_host: Callable[[], str]
) -> None:
    """The active stops mid-call and its hold file names the standby (what its HA agent does
    when it sees it dead): the standby binds the pair's address, promotes the calls it
    followed, keeps the active's call-state epoch, and carries the calls' media and BYEs. Every
    call ends with a BYE answered end to end."""
    hosts, hold_file, configs, egress = the_pair(tmp_path, loopback_host)
    results: list[SippResult] = []
    calls_done = trio.Event()
    async with (
        open_uas(hosts.callee, port=5060, scenario=SCENARIOS / "uas_media.xml"),
        open_node(egress) as far,
        open_node(configs["pa.2"]) as standby,
        trio.open_nursery() as nursery,
    ):
        async with open_node(configs["pa.1"]) as active:
            assert active.mesh is not None
            mesh = active.mesh
            await wait_for(lambda: mesh.joined and mesh.view.reachable("eg"), within=15)

            nursery.start_soon(place_calls, hosts, results, calls_done)
            await wait_for(lambda: answered_and_latched(active, CALLS), within=20)
            await wait_for(lambda: not differences(active, standby), within=5)
            assert active.mesh.flooder.state_epoch
            epoch = active.mesh.flooder.state_epoch
            hold_file.write_text("pa.2\n")  # the HA agent's move, as the active dies
            stopped = trio.current_time()
        assert standby.mesh is not None
        taken = standby.mesh
        await wait_for(lambda: taken.joined, within=5)
        took_over = trio.current_time() - stopped
        assert taken.flooder.state_epoch == epoch  # the peers keep the calls
        assert standby.calls is not None
        assert standby.calls.active(trio.current_time()) == CALLS
        assert standby.media is not None
        stats = standby.media.edge.sessions.statistics()
        assert (stats.sessions, stats.foreign) == (CALLS, 0)  # promoted: the standby's own
        before = relayed(standby)
        await wait_for(lambda: relayed(standby) > before + 10 * CALLS, within=5)
        media_back = trio.current_time() - stopped
        with trio.fail_after(HOLD_MS / 1000 + 30):
            await calls_done.wait()
        assert far.calls is not None
        assert far.calls.active(trio.current_time()) == 0
        nursery.cancel_scope.cancel()
    [result] = results
    assert (result.calls_successful, result.calls_failed) == (CALLS, 0), result
    print(
        f"takeover after the address moved: joined the mesh {took_over * 1000:.0f} ms, media "
        f"relayed {media_back * 1000:.0f} ms"
    )
