"""The four-region lab: node processes, a SIPp callee behind the egress, and the admin calls
a NOC tool would make, for ``overlay lab``, ``overlay demo``, the chaos tests and benchmarks.

``open_lab`` starts the reference topology (``topology.REGIONS``), every node its own OS
process on its own loopback address, with a dialplan that sends every call to a SIPp UAS behind
``EGRESS``; calls enter at ``INGRESS`` (``Lab.place_calls``). Everything the lab does to the
nodes goes through their gRPC Control service, as it would in the field, with mutual TLS: the
lab makes a CA and the nodes' certificates for the run (``overlay.lab.pki``) and calls as an
operator.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from overlay.control import GrpcBridge, Role, RpcError, open_grpc_bridge
from overlay.lab.node_process import READY_TIMEOUT_S, NodeProcess, open_node
from overlay.lab.pki import LabPki, make_lab_pki
from overlay.lab.sipp import SippResult, SippUas, open_uas, run_uac
from overlay.lab.topology import (
    SIP_PORT,
    LabNode,
    lab_node_ids,
    lab_nodes,
    node_config,
    site_node_ids,
)
from overlay.v1 import control_pb2

INGRESS = "usw2"
EGRESS = "use1"
ADMIN_TIMEOUT_S = 2.0
POLL_S = 0.02

T = TypeVar("T")

_CONTROL = control_pb2.DESCRIPTOR.services_by_name["Control"]


@dataclass
class Lab:
    """A running lab; see ``open_lab``."""

    nodes: dict[str, LabNode]
    processes: dict[str, NodeProcess]
    bridge: GrpcBridge
    uas: SippUas | None  # None when the calls go to a callee of the test's own
    uac_host: str
    azs: int = 1
    dead: set[str] = field(default_factory=set)
    pki: LabPki | None = None  # the lab's CA and certificates (mutual TLS)

    def live(self) -> list[str]:
        return [node_id for node_id in self.nodes if node_id not in self.dead]

    def site(self, site: str) -> list[str]:
        """The node ids of a region (by short name, e.g. ``EGRESS``): one per AZ."""
        return site_node_ids(site, self.azs)

    async def control(self, node_id: str, method: str, request: Message) -> Message:
        """One unary call of ``node_id``'s Control service."""
        response_type: type[Message] = getattr(
            control_pb2, _CONTROL.methods_by_name[method].output_type.name
        )
        return await self.bridge.unary(
            self.nodes[node_id].grpc_target,
            f"/overlay.v1.Control/{method}",
            request,
            lambda message: message.SerializeToString(),
            response_type.FromString,
            timeout=ADMIN_TIMEOUT_S,
        )

    async def path(self, node_id: str, destination: str) -> list[str]:
        """``node_id``'s current path to ``destination`` ([] when it has none)."""
        response = await self.control(node_id, "GetRoutes", control_pb2.GetRoutesRequest())
        assert isinstance(response, control_pb2.GetRoutesResponse)
        for route in response.routes:
            if route.destination == destination:
                return list(route.path)
        return []

    async def wait_path(
        self,
        node_id: str,
        destination: str,
        accept: Callable[[list[str]], bool],
        *,
        within: float,
    ) -> tuple[list[str], float]:
        """Poll until the path is accepted; returns it and how long that took.

        Raises:
            TimeoutError: not within ``within`` seconds.
        """
        start = trio.current_time()
        with trio.fail_after(within):
            while True:
                path = await self.path(node_id, destination)
                if accept(path):
                    return path, trio.current_time() - start
                await trio.sleep(POLL_S)

    async def wait_all_links_up(self, *, within: float) -> None:
        """Until every live node sees every link to a live node up."""
        with trio.fail_after(within):
            for node_id in self.live():
                while True:
                    request = control_pb2.ListLinksRequest()
                    response = await self.control(node_id, "ListLinks", request)
                    assert isinstance(response, control_pb2.ListLinksResponse)
                    links = [link for link in response.links if link.neighbor not in self.dead]
                    if all(link.state == control_pb2.LinkStatus.UP for link in links):
                        break
                    await trio.sleep(POLL_S)

    async def degrade(self, a: str, b: str, *, delay_ms: float, loss_ratio: float) -> None:
        """Add delay and loss both ways on the link a-b."""
        for node_id, peer in ((a, b), (b, a)):
            fault = control_pb2.Fault(peer=peer, delay_ms=delay_ms, loss_ratio=loss_ratio)
            await self.control(node_id, "InjectFault", control_pb2.InjectFaultRequest(fault=fault))

    async def heal(self) -> None:
        """Clear every injected fault on every live node."""
        for node_id in self.live():
            await self.control(node_id, "ClearFaults", control_pb2.ClearFaultsRequest())

    def kill(self, node_id: str) -> None:
        """kill -9 the node's process (a region dying)."""
        self.processes[node_id].process.kill()
        self.dead.add(node_id)

    async def counters(self, node_id: str) -> dict[str, int]:
        response = await self.control(node_id, "GetCounters", control_pb2.GetCountersRequest())
        assert isinstance(response, control_pb2.GetCountersResponse)
        return dict(response.counters)

    async def calls_during(
        self, event: Callable[[], Awaitable[T]], *, calls: int, rate: float, hold_ms: int
    ) -> tuple[SippResult, T]:
        """Place calls and, once a fifth of them reached the egress (so calls are in every
        state), run ``event`` while the rest are placed; returns both results."""
        placed: list[SippResult] = []
        before = await self._invites_at_egress()
        async with trio.open_nursery() as nursery:

            async def place() -> None:
                placed.append(await self.place_calls(calls=calls, rate=rate, duration_ms=hold_ms))

            nursery.start_soon(place)
            # Polls another process: there is no event to wait on.
            with trio.fail_after(calls / rate + 10):
                while True:
                    if await self._invites_at_egress() - before >= calls // 5:
                        break
                    await trio.sleep(POLL_S)
            outcome = await event()
        return placed[0], outcome

    async def _invites_at_egress(self) -> int:
        egress = [node_id for node_id in self.site(EGRESS) if node_id not in self.dead]
        return sum([(await self.counters(n)).get("sip.requests.INVITE", 0) for n in egress])

    async def place_calls(
        self, *, calls: int, rate: float, duration_ms: int = 0, max_seconds: float | None = None
    ) -> SippResult:
        """SIPp calls from ``uac_host`` into INGRESS (its first AZ), each held ``duration_ms``
        then hung up."""
        ingress = self.nodes[self.site(INGRESS)[0]]
        return await run_uac(
            (ingress.host, SIP_PORT),
            local_host=self.uac_host,
            scenario="uac_rr",
            calls=calls,
            rate=rate,
            max_seconds=max_seconds or calls / rate + duration_ms / 1000 + 30,
            extra_args=["-d", str(duration_ms)],
        )


@contextlib.asynccontextmanager
async def open_lab(
    hosts: dict[str, str],
    *,
    uas_host: str,
    uac_host: str,
    probe_interval: float = 0.1,
    callee: tuple[str, int] | None = None,
    azs: int = 1,
    inactivity_timeout: float = 60.0,
) -> AsyncIterator[Lab]:
    """Start the reference topology on ``hosts`` (node id → loopback address, see
    ``lab_node_ids``) with a SIPp UAS on ``uas_host`` (or, with ``callee``, calls go to that
    address instead) behind every AZ of EGRESS; ``inactivity_timeout`` ends silent media
    sessions. Everything is stopped, by PID, when the block exits."""
    missing = set(lab_node_ids(azs)) - hosts.keys()
    if missing:
        raise ValueError(f"no address for {', '.join(sorted(missing))}")
    nodes = lab_nodes(hosts, azs=azs)
    egress = site_node_ids(EGRESS, azs)
    async with contextlib.AsyncExitStack() as stack:
        uas = None
        if callee is None:
            uas = await stack.enter_async_context(open_uas(uas_host, scenario="uas_rr"))
            callee = (uas.host, uas.port)
        target = f"{callee[0]}:{callee[1]}"
        pki_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="overlay-lab-pki-"))
        pki = make_lab_pki(Path(pki_dir), {node.node_id: node.host for node in nodes})
        processes: dict[str, NodeProcess] = {}
        async with trio.open_nursery() as nursery:

            async def start(node: LabNode) -> None:
                config = node_config(
                    node,
                    nodes,
                    egress=egress,
                    target=target,
                    probe_interval=probe_interval,
                    inactivity_timeout=inactivity_timeout,
                    grpc_tls=pki.grpc_lines(node.node_id),
                )
                processes[node.node_id] = await stack.enter_async_context(
                    open_node(config, host=node.host, port=SIP_PORT)
                )

            for node in nodes:
                nursery.start_soon(start, node)
        operator = pki.client("lab-operator", Role.OPERATOR).credentials()
        bridge = await stack.enter_async_context(open_grpc_bridge(tls=operator))
        for node in nodes:  # a node answers SIP a moment before its gRPC server listens
            await _wait_serving(bridge, node.grpc_target, within=READY_TIMEOUT_S)
        yield Lab(
            {node.node_id: node for node in nodes}, processes, bridge, uas, uac_host, azs, pki=pki
        )


async def _wait_serving(bridge: GrpcBridge, target: str, *, within: float) -> None:
    """Until the gRPC server at ``target`` says SERVING (standard health checking)."""
    request = health_pb2.HealthCheckRequest(service="")
    with trio.fail_after(within):
        while True:
            try:
                response = await bridge.unary(
                    target,
                    "/grpc.health.v1.Health/Check",
                    request,
                    health_pb2.HealthCheckRequest.SerializeToString,
                    health_pb2.HealthCheckResponse.FromString,
                    timeout=ADMIN_TIMEOUT_S,
                )
            except RpcError:
                response = None
            if response is not None and response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await trio.sleep(POLL_S)
