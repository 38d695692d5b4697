"""The HA agent against moto's EC2 over HTTP and real gRPC health checks over loopback.

The pair: a VPC, a subnet, two ENIs with two instances on them, the floating secondary IP on the
active's ENI and an EIP associated with it. Each node is a real gRPC server (the bridge's
standard health service) on its own loopback address and its own bridge, so a test can make it
answer NOT_SERVING (``Node.serving``) or stop it altogether (``Node.stop``). Each agent opens
its own bridge too, as ``overlay ha`` would in its own process.

Waiting: for what the agents do to EC2, the tests poll moto (another process's state, read over
HTTP) under ``trio.fail_after``; for what an agent decided, ``HaAgent.wait_until``. trio.sleep is
used only to shape a flapping heartbeat.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from overlay.aws import ClientFactory
from overlay.grpc import GrpcBridge, TlsCredentials, open_grpc_bridge
from overlay.ha import (
    LIVENESS_SERVICE,
    PEER_UP_METRIC,
    TAKEOVERS_METRIC,
    TAKEOVERS_NAMESPACE,
    FloatingAddress,
    HaAgent,
    HaAgentConfig,
    HaStatistics,
    Holder,
    OsAddress,
    load_agent_tls,
    run_agent,
)
from overlay.lab.pki import make_lab_pki

pytestmark = [pytest.mark.deploy, pytest.mark.trio]

REGION = "us-west-2"
FLOATING_IP = "10.20.1.100"
INTERVAL = 0.2
DEAD_AFTER = 3
#: Heartbeats a live pair exchanges before a test changes anything.
SETTLED = 3


# --- the pair in moto ------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Where moto says the address is: the EIP's ENI and association, the ENIs with the IP."""

    eip_eni: str | None
    association: str | None
    ip_enis: frozenset[str]


@dataclass(frozen=True)
class Pair:
    ec2: Any
    active_eni: str
    standby_eni: str
    allocation: str

    def where(self) -> Where:
        [address] = self.ec2.describe_addresses(AllocationIds=[self.allocation])["Addresses"]
        interfaces = self.ec2.describe_network_interfaces(
            NetworkInterfaceIds=[self.active_eni, self.standby_eni]
        )["NetworkInterfaces"]
        return Where(
            address.get("NetworkInterfaceId") or None,
            address.get("AssociationId") or None,
            frozenset(
                i["NetworkInterfaceId"]
                for i in interfaces
                if FLOATING_IP in {p["PrivateIpAddress"] for p in i["PrivateIpAddresses"]}
            ),
        )

    async def wait_held_by(self, eni: str) -> Where:
        """Poll moto until ``eni`` has both the EIP and the IP, and nothing else has the IP."""
        while True:
            where = await trio.to_thread.run_sync(self.where)
            if where.eip_eni == eni and where.ip_enis == {eni}:
                return where
            await trio.sleep(0.02)

    def agent_config(self, *, own: str, peer_target: str, **timing: float | str) -> HaAgentConfig:
        return HaAgentConfig(
            region=REGION,
            own_eni_id=own,
            peer_eni_id=self.standby_eni if own == self.active_eni else self.active_eni,
            floating_private_ip=FLOATING_IP,
            allocation_id=self.allocation,
            peer_grpc_target=peer_target,
            heartbeat_interval=INTERVAL,
            dead_after=DEAD_AFTER,
            **timing,  # type: ignore[arg-type]
        )


@pytest.fixture
def pair(aws: ClientFactory) -> Pair:
    ec2 = aws.client("ec2", REGION)
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24", AvailabilityZone="us-west-2a")[
        "Subnet"
    ]["SubnetId"]
    image = ec2.register_image(
        Name="overlay-router",
        Architecture="x86_64",
        RootDeviceName="/dev/xvda",
        VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
    )["ImageId"]
    enis = []
    for primary in ("10.20.1.10", "10.20.1.11"):
        eni = ec2.create_network_interface(
            SubnetId=subnet, PrivateIpAddresses=[{"PrivateIpAddress": primary, "Primary": True}]
        )["NetworkInterface"]["NetworkInterfaceId"]
        ec2.run_instances(
            ImageId=image,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            NetworkInterfaces=[{"DeviceIndex": 0, "NetworkInterfaceId": eni}],
        )
        enis.append(eni)
    active, standby = enis
    ec2.assign_private_ip_addresses(NetworkInterfaceId=active, PrivateIpAddresses=[FLOATING_IP])
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(
        AllocationId=allocation, NetworkInterfaceId=active, PrivateIpAddress=FLOATING_IP
    )
    made = Pair(ec2, active, standby, allocation)
    assert made.where().ip_enis == {active}
    return made


# --- nodes and agents ------------------------------------------------------------------------


@dataclass
class Node:
    """A node's gRPC server: the standard health service only, on a bridge of its own: the
    server's status (``""``, drain) and its liveness (``LIVENESS_SERVICE``, its event loop)."""

    bridge: GrpcBridge
    target: str
    scope: trio.CancelScope

    def serving(self, serving: bool) -> None:
        """Its event loop turns, or it is wedged (for its peer's agent: alive or dead)."""
        self.bridge.set_serving(LIVENESS_SERVICE, serving)

    def draining(self, draining: bool) -> None:
        """The NOC drained it (or undrained it): it takes no new calls, and is alive."""
        self.bridge.set_serving("", not draining)

    def stop(self) -> None:
        """The node dies: its server stops and its port refuses connections."""
        self.scope.cancel()


async def serve_node(
    host: str, *, tls: TlsCredentials | None = None, task_status: trio.TaskStatus[Node]
) -> None:
    with trio.CancelScope() as scope:
        async with open_grpc_bridge(tls=tls) as bridge:
            port = await bridge.start_server(host, 0, [])
            bridge.set_serving(LIVENESS_SERVICE, True)
            task_status.started(Node(bridge, f"{host}:{port}", scope))
            await trio.sleep_forever()


async def settled(agent: HaAgent, holder: Holder) -> HaStatistics:
    """Wait until ``agent`` has heard its peer a few times and read the holder from the API."""
    with trio.fail_after(3):
        return await agent.wait_until(
            lambda s: s.heartbeats_ok >= SETTLED and s.holder is holder and s.api_checks >= 1
        )


async def wait_stats(agent: HaAgent, predicate: Callable[[HaStatistics], bool]) -> HaStatistics:
    with trio.fail_after(5):
        return await agent.wait_until(predicate)


async def flap(node: Node, *, down: float, up: float, cycles: int) -> None:
    """NOT_SERVING for ``down`` seconds, then SERVING for ``up``, ``cycles`` times."""
    at = trio.current_time()
    for _ in range(cycles):
        node.serving(False)
        at += down
        await trio.sleep_until(at)
        node.serving(True)
        at += up
        await trio.sleep_until(at)


# --- the tests -------------------------------------------------------------------------------


async def test_standby_takes_over_when_the_active_dies(
    pair: Pair,
    aws: ClientFactory,
    loopback_host: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
):
    # This machine's interfaces are not the test's: the OS side is recorded, not applied
    # (tests/unit/test_ha_os.py applies it in a namespace of its own).
    configured: list[bool] = []

    async def set_present(self: OsAddress, present: bool) -> str:
        configured.append(present)
        return "ens5"

    monkeypatch.setattr(OsAddress, "set_present", set_present)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            active: Node = await nursery.start(serve_node, loopback_host())
            config = pair.agent_config(
                own=pair.standby_eni,
                peer_target=active.target,
                interface="auto",
                fleet="voice",
                pair="us-west-2a",
                report_interval=0.3,
            )
            standby: HaAgent = await nursery.start(run_agent, config, aws)
            await settled(standby, Holder.PEER)

            died = trio.current_time()
            active.stop()
            with trio.fail_after(3):
                where = await pair.wait_held_by(pair.standby_eni)
            moved_after = trio.current_time() - died
            stats = await wait_stats(standby, lambda s: s.takeovers == 1)
            with trio.fail_after(3):  # the next PeerUp datum says the peer is dead
                # CloudWatch tells no one: read back.
                while (0.0, 1.0) not in await trio.to_thread.run_sync(peer_up, aws):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    # Detection takes DEAD_AFTER missed heartbeats; the API calls take milliseconds on moto.
    assert (DEAD_AFTER - 1) * INTERVAL < moved_after < 3.0
    assert stats.takeovers == 1
    assert stats.peer_deaths == 1
    assert stats.heartbeats_missed >= DEAD_AFTER
    assert stats.holder is Holder.OURS
    assert stats.last_takeover_duration is not None
    assert 0 < stats.last_takeover_duration < 1.0
    assert stats.last_failover_time is not None
    assert stats.last_failover_time < moved_after + 2 * INTERVAL
    # moto: the EIP is on the standby's ENI; the IP is on the standby's ENI and no longer on the
    # active's (unassigned explicitly: moto's AllowReassignment would have left it there).
    assert where.eip_eni == pair.standby_eni
    assert where.ip_enis == {pair.standby_eni}
    [takeover] = [e for e in logs if e["event"] == "takeover"]
    assert takeover["log_level"] == "warning"
    assert takeover["duration_s"] == pytest.approx(stats.last_takeover_duration, abs=1e-3)
    assert takeover["holder_before"] == "PEER"
    assert takeover["own_eni"] == pair.standby_eni
    assert takeover["steps"] == [
        f"unassign {FLOATING_IP} from {pair.active_eni}",
        f"assign {FLOATING_IP} to {pair.standby_eni}",
        f"associate {pair.allocation} with {pair.standby_eni}/{FLOATING_IP}",
    ]
    [dead] = [e for e in logs if e["event"] == "peer dead"]
    assert dead["misses"] == DEAD_AFTER
    # Off this machine while the peer held the address, on it once taken over.
    assert configured == [False, True]
    # Reported for the pair's takeover and pair-degraded alarms: the peer up, then dead.
    cloudwatch = aws.client("cloudwatch", REGION)
    [metric] = cloudwatch.list_metrics(Namespace=TAKEOVERS_NAMESPACE, MetricName=TAKEOVERS_METRIC)[
        "Metrics"
    ]
    assert metric["Dimensions"] == PAIR_DIMENSIONS
    assert peer_up(aws) == [(0.0, 1.0)]
    [added] = [e for e in logs if e["event"] == "floating address added"]
    assert (added["address"], added["interface"]) == (FLOATING_IP, "ens5")


PAIR_DIMENSIONS = [
    {"Name": "Fleet", "Value": "voice"},
    {"Name": "Region", "Value": REGION},
    {"Name": "Node", "Value": "us-west-2a"},
]


def peer_up(aws: ClientFactory) -> list[tuple[float, float]]:
    """The lowest and highest PeerUp reported in the last minutes, in one hour's bucket."""
    now = datetime.datetime.now(datetime.UTC)
    points = aws.client("cloudwatch", REGION).get_metric_statistics(
        Namespace=TAKEOVERS_NAMESPACE,
        MetricName=PEER_UP_METRIC,
        Dimensions=PAIR_DIMENSIONS,
        StartTime=now - datetime.timedelta(minutes=5),
        EndTime=now + datetime.timedelta(minutes=1),
        Period=3600,
        Statistics=["Minimum", "Maximum"],
    )["Datapoints"]
    return [(p["Minimum"], p["Maximum"]) for p in points]


async def test_a_drained_active_is_not_taken_over(
    pair: Pair, aws: ClientFactory, loopback_host: Callable[[], str]
):
    before = pair.where()
    async with trio.open_nursery() as nursery:
        active: Node = await nursery.start(serve_node, loopback_host())
        config = pair.agent_config(own=pair.standby_eni, peer_target=active.target)
        standby: HaAgent = await nursery.start(run_agent, config, aws)
        await settled(standby, Holder.PEER)
        active.draining(True)  # its calls go on; new ones go elsewhere
        ok = standby.statistics().heartbeats_ok
        stats = await wait_stats(standby, lambda s: s.heartbeats_ok >= ok + 3 * DEAD_AFTER)
        nursery.cancel_scope.cancel()
    assert (stats.heartbeats_missed, stats.peer_deaths, stats.takeovers) == (0, 0, 0)
    assert pair.where() == before


async def test_flapping_heartbeat_causes_no_takeover(
    pair: Pair, aws: ClientFactory, loopback_host: Callable[[], str]
):
    before = pair.where()
    async with trio.open_nursery() as nursery:
        active: Node = await nursery.start(serve_node, loopback_host())
        config = pair.agent_config(own=pair.standby_eni, peer_target=active.target)
        standby: HaAgent = await nursery.start(run_agent, config, aws)
        await settled(standby, Holder.PEER)
        # At most 2 heartbeats fall in 0.25 s of NOT_SERVING, at least one in 0.35 s of
        # SERVING: never DEAD_AFTER misses in a row.
        await flap(active, down=0.25, up=0.35, cycles=3)
        stats = standby.statistics()
        nursery.cancel_scope.cancel()
    assert stats.heartbeats_missed >= 3  # the flapping was seen
    assert stats.consecutive_misses < DEAD_AFTER
    assert (stats.peer_deaths, stats.takeovers) == (0, 0)
    assert pair.where() == before


async def test_flapping_after_a_takeover_causes_no_second_one_within_hold_down(
    pair: Pair, aws: ClientFactory, loopback_host: Callable[[], str]
):
    async with trio.open_nursery() as nursery:
        active: Node = await nursery.start(serve_node, loopback_host())
        config = pair.agent_config(
            own=pair.standby_eni, peer_target=active.target, hold_down=30.0, api_check_interval=0.3
        )
        standby: HaAgent = await nursery.start(run_agent, config, aws)
        await settled(standby, Holder.PEER)

        active.serving(False)  # dies (for its peer's agent)
        with trio.fail_after(3):
            await pair.wait_held_by(pair.standby_eni)
        # It comes back and the address is moved back to it (by hand, or by its own agent).
        active.serving(True)
        failback = FloatingAddress(
            pair.ec2,
            own_eni=pair.active_eni,
            peer_eni=pair.standby_eni,
            private_ip=FLOATING_IP,
            allocation_id=pair.allocation,
        )
        assert (await trio.to_thread.run_sync(failback.take_over)).moved
        await wait_stats(standby, lambda s: s.holder is Holder.PEER and s.peer_recoveries == 1)
        returned = pair.where()
        # Now it flaps across the dead line: 0.7 s down is at least 3 missed heartbeats, 0.3 s
        # up at least one answer.
        await flap(active, down=0.7, up=0.3, cycles=2)
        stats = await wait_stats(standby, lambda s: s.takeovers_held_down >= 2)
        nursery.cancel_scope.cancel()
    assert stats.peer_deaths == 3
    assert stats.takeovers == 1
    assert pair.where() == returned  # not moved again: the same association, on the active


async def start_agents(
    nursery: trio.Nursery,
    pair: Pair,
    aws: ClientFactory,
    active_node: Node,
    standby_node: Node,
    **timing: float,
) -> tuple[HaAgent, HaAgent]:
    """Both members' agents, each watching the other's node, once they agree who holds it."""
    active: HaAgent = await nursery.start(
        run_agent,
        pair.agent_config(own=pair.active_eni, peer_target=standby_node.target, **timing),
        aws,
    )
    standby: HaAgent = await nursery.start(
        run_agent,
        pair.agent_config(own=pair.standby_eni, peer_target=active_node.target, **timing),
        aws,
    )
    await settled(active, Holder.OURS)
    await settled(standby, Holder.PEER)
    return active, standby


async def test_two_live_agents_never_move_the_address(
    pair: Pair, aws: ClientFactory, loopback_host: Callable[[], str]
):
    before = pair.where()
    async with trio.open_nursery() as nursery:
        active_node: Node = await nursery.start(serve_node, loopback_host())
        standby_node: Node = await nursery.start(serve_node, loopback_host())
        timing = {"api_check_interval": 0.2}
        active, standby = await start_agents(
            nursery, pair, aws, active_node, standby_node, **timing
        )
        for agent in (active, standby):
            await wait_stats(agent, lambda s: s.api_checks >= 5)
        assert pair.where() == before
        # The standby dies: the active holds the address and does not move it to itself.
        standby_node.stop()
        stats = await wait_stats(active, lambda s: s.takeovers_skipped == 1)
        nursery.cancel_scope.cancel()
    assert (stats.peer_deaths, stats.takeovers) == (1, 0)
    assert standby.statistics().takeovers == 0
    assert pair.where() == before  # the same association id: associate_address was not called


async def test_old_active_does_not_take_the_address_back(
    pair: Pair, aws: ClientFactory, loopback_host: Callable[[], str]
):
    async with trio.open_nursery() as nursery:
        active_node: Node = await nursery.start(serve_node, loopback_host())
        standby_node: Node = await nursery.start(serve_node, loopback_host())
        # A short hold-down, so that it is not what keeps the old active from moving.
        timing = {"api_check_interval": 0.2, "hold_down": 0.4}
        active, standby = await start_agents(
            nursery, pair, aws, active_node, standby_node, **timing
        )

        active_node.serving(False)  # the active node fails; its agent lives on
        with trio.fail_after(3):
            taken = await pair.wait_held_by(pair.standby_eni)
        active_node.serving(True)
        seen = await wait_stats(active, lambda s: s.holder is Holder.PEER)
        # Six more readings (1.2 s, three hold-downs) with the new active alive: nothing moves.
        await wait_stats(active, lambda s: s.api_checks >= seen.api_checks + 6)
        stats = active.statistics()
        nursery.cancel_scope.cancel()
    assert stats.taken_by_peer == 1
    assert (stats.takeovers, stats.peer_deaths) == (0, 0)
    assert standby.statistics().takeovers == 1
    assert pair.where() == taken


def tls_files(directory: Path, node_id: str) -> tuple[str, str, str]:
    """A lab node's CA, certificate and key files (``make_lab_pki``)."""
    return (
        str(directory / "ca.pem"),
        str(directory / f"{node_id}.pem"),
        str(directory / f"{node_id}.key"),
    )


def node_tls(directory: Path, node_id: str) -> TlsCredentials:
    return TlsCredentials(*(Path(name).read_bytes() for name in tls_files(directory, node_id)))


async def test_heartbeats_cross_mutual_tls_with_the_members_node_certificate(
    pair: Pair, aws: ClientFactory, loopback_host: Callable[[], str], tmp_path: Path
):
    hosts = {"usw2-a1": loopback_host(), "usw2-a2": loopback_host()}
    make_lab_pki(tmp_path, hosts)
    async with trio.open_nursery() as nursery:
        serve = partial(serve_node, hosts["usw2-a1"], tls=node_tls(tmp_path, "usw2-a1"))
        active: Node = await nursery.start(serve)
        config = pair.agent_config(own=pair.standby_eni, peer_target=active.target)
        # Without a certificate the standby cannot tell a live peer from a dead one.
        async with trio.open_nursery() as plain_nursery:
            plain: HaAgent = await plain_nursery.start(run_agent, config, aws)
            await wait_stats(plain, lambda s: s.heartbeats_missed >= 1)
            assert plain.statistics().heartbeats_ok == 0
            plain_nursery.cancel_scope.cancel()
        # With its own node certificate it hears the peer and leaves the address alone.
        config = dataclasses.replace(config, tls_files=tls_files(tmp_path, "usw2-a2"))
        tls = load_agent_tls(config)
        secure: HaAgent = await nursery.start(partial(run_agent, config, aws, tls=tls))
        stats = await settled(secure, Holder.PEER)
        assert stats.heartbeats_missed == 0
        assert stats.takeovers == 0
        nursery.cancel_scope.cancel()
    assert pair.where().ip_enis == {pair.active_eni}
