"""The HA agent: the trio shell around :class:`HaCore` (``overlay ha`` runs it on each member).

Two tasks share one core, both on the trio thread:

* the heartbeat task checks the peer's ``grpc.health.v1.Health/Check`` every
  ``heartbeat_interval`` seconds, through the gRPC bridge (the only place grpc meets trio), with
  a deadline of one interval, and feeds each result to the core;
* the decision task drains the core's events, logs them, runs the EC2 reads and moves they ask
  for, and sleeps until the core's next timer or the next heartbeat result.

boto3 blocks, so each EC2 call sequence runs in one of trio's worker threads
(``trio.to_thread.run_sync``): heartbeats keep their rhythm while the API answers. Only the
decision task calls the API, so calls never overlap, and every result is fed to the core back
on the trio thread.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from grpc_health.v1 import health_pb2

from overlay.aws import ClientFactory
from overlay.grpc import GrpcBridge, RpcError, TlsCredentials, open_grpc_bridge
from overlay.tls import load_tls

from ._core import (
    HaCore,
    HaEvent,
    HaStatistics,
    Holder,
    HolderChanged,
    HolderCheck,
    PeerAlive,
    PeerDead,
    Takeover,
    TakeoverSkipped,
)
from ._ec2 import API_ERRORS, FloatingAddress
from ._hold import HoldFile
from ._os import OsAddress, OsAddressError

if TYPE_CHECKING:
    from ._config import HaMember

__all__ = [
    "HEALTH_CHECK_METHOD",
    "LIVENESS_SERVICE",
    "PEER_UP_METRIC",
    "TAKEOVERS_METRIC",
    "TAKEOVERS_NAMESPACE",
    "HaAgent",
    "HaAgentConfig",
    "run_agent",
]

log = structlog.get_logger("overlay.ha")

#: The standard gRPC health check (grpc/grpc doc/health-checking.md), served by every node.
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
#: A takeover, as the HA agent reports it to CloudWatch (the namespace of the nodes' own
#: metrics, ``overlay.shell.telemetry``); the deployer's takeover alarm watches it.
TAKEOVERS_METRIC = "Takeovers"
#: Whether the agent's peer answers (1) or is dead (0), sent every ``report_interval``: the
#: pair-degraded alarm watches it, as a dead standby takes nothing down but the redundancy.
PEER_UP_METRIC = "PeerUp"
TAKEOVERS_NAMESPACE = "Overlay/Links"
#: The health status a node keeps SERVING while its event loop turns (``GrpcBridge.beat``),
#: whether or not it is draining: the server's own status (``""``) says whether it takes new
#: calls, which a drained but live active does not, and must not lose its address for.
LIVENESS_SERVICE = "overlay.v1.Liveness"


@dataclass(frozen=True, slots=True)
class HaAgentConfig:
    """One member of an active/standby pair in one AZ.

    Args:
        region: the pair's region (its EC2 endpoint).
        own_eni_id: this member's ENI, where a takeover moves the address.
        peer_eni_id: the other member's ENI.
        floating_private_ip: the secondary private IP that moves with the active.
        allocation_id: the allocation id of the EIP associated with the floating IP.
        peer_grpc_target: ``"host:port"`` of the peer node's gRPC server (its health service).
        heartbeat_interval: seconds between health checks; also each check's deadline.
        dead_after: consecutive missed heartbeats that make the peer dead.
        hold_down: seconds without takeover after a takeover or a recovery of the peer.
        api_check_interval: seconds between periodic readings of who holds the address.
        health_service: the health status asked about (by default the node's liveness, not the
            server's ``""``, which drain sets NOT_SERVING).
        tls_files: the ``(ca, cert, key)`` PEM files the agent dials its peer with (mutual TLS:
            the node's own certificate will do); ``None``: plaintext (``insecure = true``).
        fleet: the fleet's name (fleet.toml); with it, each takeover is reported to CloudWatch
            (``TAKEOVERS_METRIC`` under Fleet, Region and Node = ``pair``) for the pair's
            takeover alarm; ``None``: not reported (a pair outside a deployed fleet).
        pair: the pair's name (its AZ), the metric's ``Node``.
        report_interval: seconds between two ``PEER_UP_METRIC`` data (with ``fleet``).
        interface: where the agent adds the floating address to this machine while the EC2 API
            says it holds it, and removes it otherwise (``"auto"``: the interface it is routed
            through); ``None``: the agent leaves the OS alone (something else configures it).
        hold_file: instead of an interface, the file that names the member holding the address
            (``overlay.ha._hold``: two members on one machine, the lab); with ``member``.
        member: this member's name in ``hold_file`` (its node's ``[pair] member``).

    Raises:
        ValueError: a value out of range, an IP that does not parse, the same ENI twice, a
            target without a port, or ``hold_file`` with ``interface`` or without ``member``.
    """

    region: str
    own_eni_id: str
    peer_eni_id: str
    floating_private_ip: str
    allocation_id: str
    peer_grpc_target: str
    heartbeat_interval: float = 0.5
    dead_after: int = 3
    hold_down: float = 10.0
    api_check_interval: float = 5.0
    health_service: str = LIVENESS_SERVICE
    tls_files: tuple[str, str, str] | None = None
    interface: str | None = None
    fleet: str | None = None
    pair: str = ""
    report_interval: float = 60.0
    hold_file: str | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        if (self.hold_file is None) != (self.member is None):
            raise ValueError("hold_file and member go together")
        if self.hold_file is not None and self.interface is not None:
            raise ValueError("hold_file stands for interface: give one or the other")
        if self.own_eni_id == self.peer_eni_id:
            raise ValueError(f"own_eni_id and peer_eni_id are both {self.own_eni_id!r}")
        ipaddress.ip_address(self.floating_private_ip)  # ValueError names the bad value
        host, _, port = self.peer_grpc_target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"peer_grpc_target must be host:port, not {self.peer_grpc_target!r}")
        for name in ("heartbeat_interval", "api_check_interval", "report_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.dead_after < 1:
            raise ValueError(f"dead_after must be at least 1, not {self.dead_after}")
        if not self.hold_down >= 0:
            raise ValueError(f"hold_down must not be negative, not {self.hold_down}")


class HaAgent:
    """A running agent, handed out by ``nursery.start(run_agent, ...)``.

    Read it only through :meth:`statistics` and :meth:`wait_until`, on the trio thread.
    """

    def __init__(
        self,
        config: HaAgentConfig,
        address: FloatingAddress,
        bridge: GrpcBridge,
        cloudwatch: Any = None,  # noqa: ANN401 (a boto3 client, with config.fleet)
    ) -> None:
        self.config = config
        self._cloudwatch = cloudwatch
        self.report_failures = 0
        self._address = address
        self._bridge = bridge
        self._core = HaCore(
            trio.current_time(),
            dead_after=config.dead_after,
            hold_down=config.hold_down,
            api_check_interval=config.api_check_interval,
        )
        self._os: OsAddress | HoldFile | None = None
        if config.hold_file is not None and config.member is not None:
            self._os = HoldFile(config.floating_private_ip, config.hold_file, config.member)
        elif config.interface is not None:
            self._os = OsAddress(config.floating_private_ip, config.interface)
        self._os_present: bool | None = None  # as last configured; None: not yet
        self.os_address_failures = 0
        self._wake = trio.Event()  # set when the heartbeat task fed the core
        self._changed = trio.lowlevel.ParkingLot()  # wait_until() callers
        self._log = log.bind(own_eni=config.own_eni_id, peer=config.peer_grpc_target)

    def statistics(self) -> HaStatistics:
        return self._core.statistics()

    async def wait_until(self, predicate: Callable[[HaStatistics], bool]) -> HaStatistics:
        """Wait until ``predicate(self.statistics())`` holds; returns those statistics.

        Checked after every heartbeat result and every EC2 answer. Bound it with
        ``trio.fail_after`` / ``trio.move_on_after``.
        """
        await trio.lowlevel.checkpoint()
        while not predicate(stats := self.statistics()):
            await self._changed.park()
        return stats

    # -- heartbeats ---------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.config.heartbeat_interval
        next_at = trio.current_time()
        while True:
            why = await self._check_peer(interval)
            now = trio.current_time()
            if why is None:
                self._core.heartbeat_succeeded(now)
            else:
                self._core.heartbeat_failed(now, why)
            self._fed()
            next_at = max(next_at + interval, trio.current_time())
            await trio.sleep_until(next_at)

    async def _check_peer(self, interval: float) -> str | None:
        """None when the peer answers SERVING within ``interval``, else why not."""
        request = health_pb2.HealthCheckRequest(service=self.config.health_service)
        # The gRPC deadline ends the call at the server too; the trio one is a backstop, should
        # the bridge be slow to report it.
        with trio.move_on_after(interval * 1.5):
            try:
                response = await self._bridge.unary(
                    self.config.peer_grpc_target,
                    HEALTH_CHECK_METHOD,
                    request,
                    health_pb2.HealthCheckRequest.SerializeToString,
                    health_pb2.HealthCheckResponse.FromString,
                    timeout=interval,
                )
            except RpcError as exc:
                return f"{exc.code.name}: {exc.message}"
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
            return None
        return f"no answer within {interval * 1.5:g} s"

    # -- decisions ----------------------------------------------------------------------------

    async def _decisions(self) -> None:
        core = self._core
        while True:
            while (event := core.next_event()) is not None:
                await self._act(event)
                self._fed()
            deadline = core.get_timer()
            self._wake = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline) as timeout:
                await self._wake.wait()
            if deadline is not None:
                now = trio.current_time()
                if timeout.cancelled_caught:
                    core.handle_timer(max(deadline, now))  # max: guards an early wake-up
                elif now >= deadline:
                    core.handle_timer(now)

    def _fed(self) -> None:
        self._wake.set()
        self._changed.unpark_all()

    async def _act(self, event: HaEvent) -> None:
        core, logger = self._core, self._log
        match event:
            case HolderCheck(reason=reason):
                logger.debug("reading the holder", reason=reason)
                try:
                    holder = await trio.to_thread.run_sync(self._address.holder)
                except API_ERRORS as exc:
                    logger.warning("cannot read the holder", reason=reason, error=repr(exc))
                    core.holder_check_failed(trio.current_time(), repr(exc))
                else:
                    core.holder_observed(holder, trio.current_time())
                    await self._configure_os(holder is Holder.OURS)
            case Takeover(reason=reason):
                await self._take_over(reason)
            case PeerDead(misses=misses, reason=reason):
                logger.warning("peer dead", misses=misses, reason=reason)
            case PeerAlive(hold_down_until=until, reason=reason):
                logger.info("peer alive", hold_down_s=until - trio.current_time(), reason=reason)
            case HolderChanged(before=before, after=after, reason=reason):
                logger.info(
                    "holder changed",
                    before=None if before is None else before.name,
                    after=after.name,
                    reason=reason,
                )
            case TakeoverSkipped(reason=reason):
                logger.info("takeover skipped", reason=reason)

    async def _take_over(self, reason: str) -> None:
        core, logger = self._core, self._log
        logger.warning("taking over", reason=reason)
        start = trio.current_time()
        try:
            report = await trio.to_thread.run_sync(self._address.take_over)
        except API_ERRORS as exc:
            now = trio.current_time()
            logger.error("takeover failed", duration_s=now - start, error=repr(exc))
            core.takeover_failed(now, repr(exc))
            return
        now = trio.current_time()
        if not report.moved:
            logger.info("takeover not needed", holder=report.holder_before.name)
            core.takeover_declined(report.holder_before, now)
            return
        core.takeover_succeeded(now, now - start)
        await self._configure_os(True)
        stats = core.statistics()
        logger.warning(
            "takeover",
            duration_s=round(now - start, 4),
            failover_s=None
            if stats.last_failover_time is None
            else round(stats.last_failover_time, 4),
            holder_before=report.holder_before.name,
            steps=list(report.steps),
            takeovers=stats.takeovers,
        )
        await self._report(TAKEOVERS_METRIC, 1.0, "Count")  # for the pair's takeover alarm

    async def _report_peer(self) -> None:
        """Every ``report_interval``, whether the peer answers, for the pair-degraded alarm."""
        if self._pair_dimensions() is None:
            return
        while True:
            await trio.sleep(self.config.report_interval)
            await self._report(PEER_UP_METRIC, 0.0 if self._core.peer_dead else 1.0, "None")

    async def _report(self, metric: str, value: float, unit: str) -> None:
        """One datum for the pair's alarms; a failure is logged and counted, never retried
        (what it reports is done, and logged)."""
        dimensions = self._pair_dimensions()
        if dimensions is None:
            return
        datum = {"MetricName": metric, "Dimensions": dimensions, "Value": value, "Unit": unit}
        try:
            await trio.to_thread.run_sync(
                functools.partial(
                    self._cloudwatch.put_metric_data,
                    Namespace=TAKEOVERS_NAMESPACE,
                    MetricData=[datum],
                )
            )
        except API_ERRORS as exc:
            self.report_failures += 1
            self._log.error("cannot report to CloudWatch", metric=metric, error=repr(exc))

    def _pair_dimensions(self) -> list[dict[str, str]] | None:
        config = self.config
        if self._cloudwatch is None or config.fleet is None:
            return None
        return [
            {"Name": "Fleet", "Value": config.fleet},
            {"Name": "Region", "Value": config.region},
            {"Name": "Node", "Value": config.pair},
        ]

    async def _configure_os(self, present: bool) -> None:
        """Make this machine's interfaces agree with the EC2 API: the address on it exactly
        while it holds it. A failure is retried at the next reading of the holder."""
        if self._os is None or self._os_present is present:
            return
        try:
            device = await self._os.set_present(present)
        except OsAddressError as exc:
            self.os_address_failures += 1
            self._log.error(
                "cannot configure the floating address", present=present, error=str(exc)
            )
            return
        self._os_present = present
        self._log.warning(
            "floating address added" if present else "floating address removed",
            address=self._os.ip,
            interface=device,  # a hold file's path, for a HoldFile
        )


def load_agent_tls(config: HaAgentConfig | HaMember) -> TlsCredentials | None:
    """Read and check the agent's TLS files (``config.tls_files``); ``None`` when insecure.

    Raises:
        TlsError: a file is unreadable, not PEM, or the files do not belong together.
    """
    if config.tls_files is None:
        return None
    ca, cert, key = (Path(name) for name in config.tls_files)
    return load_tls(ca, cert, key, now=datetime.datetime.now(datetime.UTC))


async def run_agent(
    config: HaAgentConfig,
    aws: ClientFactory,
    *,
    tls: TlsCredentials | None = None,
    task_status: trio.TaskStatus[HaAgent] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the HA agent of one member until cancelled.

    Watches the peer's gRPC health and moves the floating address (private IP and EIP) to
    ``config.own_eni_id`` when the peer is dead and the EC2 API says the address is not already
    ours (see ``overlay.ha._core`` for the rules and the hold-down).

    Args:
        config: the pair and the timings.
        aws: where EC2 clients come from (``aws.client("ec2", config.region)``).
        tls: this member's mutual-TLS identity for the health checks (``load_agent_tls``).
        task_status: reports the :class:`HaAgent` once its tasks run.

    Error handling: failed EC2 calls and failed health checks are logged, counted and retried;
    they never end the agent. Anything else (a bug) propagates.

    Resource handling: opens its own gRPC bridge (a thread) and uses trio's worker threads for
    boto3; all are stopped and joined when the agent is cancelled.
    """
    address = FloatingAddress(
        aws.client("ec2", config.region),
        own_eni=config.own_eni_id,
        peer_eni=config.peer_eni_id,
        private_ip=config.floating_private_ip,
        allocation_id=config.allocation_id,
    )
    async with open_grpc_bridge(tls=tls) as bridge, trio.open_nursery() as nursery:
        cloudwatch = None if config.fleet is None else aws.client("cloudwatch", config.region)
        agent = HaAgent(config, address, bridge, cloudwatch)
        nursery.start_soon(agent._decisions)
        nursery.start_soon(agent._heartbeats)
        nursery.start_soon(agent._report_peer)
        agent._log.info(
            "HA agent started",
            floating_ip=config.floating_private_ip,
            allocation_id=config.allocation_id,
            heartbeat_interval=config.heartbeat_interval,
            dead_after=config.dead_after,
            hold_down=config.hold_down,
        )
        task_status.started(agent)
