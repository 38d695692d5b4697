"""The NOC Control service over real gRPC with mutual TLS, on two real node processes.

usw2 and use1 run as OS processes on their own loopback addresses, each with a certificate
from a test CA, flooding to each other; each also lists a third peer, use2, that never
answers. A raw-socket caller enters at usw2 and a raw-socket callee sits behind use1, so a real
call crosses the overlay. Every RPC is driven through a real gRPC client (the bridge, with an
operator's or a viewer's certificate), and through ``overlayctl`` run as a process: the answers,
the failure statuses and the exit codes a NOC script relies on.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import trio
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from overlay.grpc import GrpcBridge, Role, RpcError, StreamBroken, open_grpc_bridge
from overlay.ha import LIVENESS_SERVICE
from overlay.lab.node_process import NodeProcess, open_node
from overlay.lab.pki import ClientFiles, LabPki, make_lab_pki
from overlay.sip import Request, Response, parse_message_untrusted
from overlay.v1 import control_pb2 as c
from overlay.v1 import linkstate_pb2
from tests.integration.raw_sip import udp_socket

pytestmark = [pytest.mark.integration, pytest.mark.trio]

SIP_PORT = 5060
GRPC_PORT = 7000
TIMEOUT = 20  # bound on every test body
CONTROL = "/overlay.v1.Control/"

T = TypeVar("T", bound=Message)


@dataclass
class Pair:
    """Two running nodes, their certificates, and a caller and a callee socket's addresses."""

    hosts: dict[str, str]  # usw2, use1, use2 (never started)
    pki: LabPki
    processes: dict[str, NodeProcess]
    caller: str
    callee: tuple[str, int]

    def target(self, node: str = "usw2") -> str:
        return f"{self.hosts[node]}:{GRPC_PORT}"

    def client(self, name: str, role: Role) -> ClientFiles:
        return self.pki.client(name, role)


def node_config(pair_hosts: dict[str, str], node: str, pki: LabPki, callee: str) -> str:
    region = {"usw2": "us-west-2", "use1": "us-east-1", "use2": "us-east-2"}
    lines = [
        f'[node]\nnode_id = "{node}"\nregion = "{region[node]}"\n',
        f'[sip]\nlisten = ["udp:{pair_hosts[node]}:{SIP_PORT}"]\n',
        f'[grpc]\nlisten = "{pair_hosts[node]}:{GRPC_PORT}"',
        *pki.grpc_lines(node),
        "\n[linkstate]\nprobe_interval = 0.05\nhold_down = 0.5\n",
    ]
    for peer in ("usw2", "use1", "use2"):
        if peer != node:
            host = pair_hosts[peer]
            lines.append(
                f'[[peers]]\nnode_id = "{peer}"\nregion = "{region[peer]}"\n'
                f'sip = "{host}:{SIP_PORT}"\ngrpc = "{host}:{GRPC_PORT}"\n'
            )
    lines.append(f'[[dialplan]]\nuser_prefix = "+1"\ntarget = "{callee}"\negress = "use1"\n')
    return "\n".join(lines)


@pytest.fixture
async def pair(loopback_host: Callable[[], str], tmp_path: Path) -> AsyncIterator[Pair]:
    hosts = {node: loopback_host() for node in ("usw2", "use1", "use2")}
    pki = make_lab_pki(tmp_path, {node: host for node, host in hosts.items()})
    callee = (loopback_host(), 5099)
    async with contextlib.AsyncExitStack() as stack:
        processes = {}
        for node in ("usw2", "use1"):
            config = node_config(hosts, node, pki, f"{callee[0]}:{callee[1]}")
            processes[node] = await stack.enter_async_context(
                open_node(config, host=hosts[node], port=SIP_PORT)
            )
        pair = Pair(hosts, pki, processes, loopback_host(), callee)
        async with operator(pair) as bridge:
            with trio.fail_after(20):
                while True:
                    if await settled(bridge, pair):
                        break
                    await trio.sleep(0.05)  # polls other processes: no event to wait on
        yield pair


@contextlib.asynccontextmanager
async def operator(pair: Pair, role: Role = Role.OPERATOR) -> AsyncIterator[GrpcBridge]:
    name = "olga" if role is Role.OPERATOR else "victor"
    async with open_grpc_bridge(tls=pair.client(name, role).credentials()) as bridge:
        yield bridge


async def call(
    bridge: GrpcBridge, target: str, method: str, request: Message, response_type: type[T]
) -> T:
    return await bridge.unary(
        target,
        CONTROL + method,
        request,
        lambda message: message.SerializeToString(),
        response_type.FromString,
        timeout=5,
    )


async def settled(bridge: GrpcBridge, pair: Pair) -> bool:
    """Both nodes flood to each other and route to each other."""
    for node, other in (("usw2", "use1"), ("use1", "usw2")):
        try:
            nodes = await call(
                bridge, pair.target(node), "ListNodes", c.ListNodesRequest(), c.ListNodesResponse
            )
        except RpcError:
            return False  # its gRPC server is a moment behind its SIP
        peer = next(info for info in nodes.nodes if info.node_id == other)
        if not (peer.flooding and peer.path):
            return False
    return True


# --- a real call through the pair ------------------------------------------------------------


class RawCall:
    """A caller socket that sends an INVITE into usw2, and a callee socket behind use1.

    In-dialog requests follow the dialog's route set (the 200's Record-Route, reversed) to the
    callee's Contact, as RFC 3261 §12.2.1.1 says.
    """

    def __init__(
        self, pair: Pair, caller: trio.socket.SocketType, callee: trio.socket.SocketType
    ) -> None:
        self.pair = pair
        self.caller = caller
        self.callee = callee
        self.call_id = "ctl-call-1@test"
        self.ok: Response | None = None

    def request(self, method: str, cseq: int) -> bytes:
        host, port = self.caller.getsockname()
        ingress = self.pair.hosts["usw2"]
        branch = f"z9hG4bK-{self.call_id.partition('@')[0]}-{method.lower()}-{cseq}"
        uri, to, routes = f"sip:+14155550100@{ingress}:{SIP_PORT}", "", ()
        if self.ok is not None:  # in the dialog
            callee_host, callee_port = self.callee.getsockname()
            uri, to = f"sip:callee@{callee_host}:{callee_port}", f";tag={self.ok.to_tag}"
            routes = tuple(reversed(self.ok.headers.values("Record-Route")))
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@{host}>;tag=caller",
            f"To: <sip:+14155550100@{ingress}>{to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@{host}:{port}>",
            *(f"Route: {route}" for route in routes),
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()

    async def send(self, data: bytes) -> None:
        await self.caller.sendto(data, (self.pair.hosts["usw2"], SIP_PORT))

    async def callee_receives(self, method: str) -> Request:
        while True:
            message = parse_message_untrusted(await self.callee.recv(65535))
            if isinstance(message, Request) and message.method == method:
                return message

    async def caller_receives(self, status: int) -> Response:
        while True:
            message = parse_message_untrusted(await self.caller.recv(65535))
            if isinstance(message, Response) and message.status == status:
                return message

    async def answer(self, request: Request, status: int) -> None:
        """The callee's response: Vias, Record-Routes, To tag and Contact (§8.2.6, §12.1.1)."""
        host, port = self.callee.getsockname()
        headers = request.headers
        to = headers.get("To") or ""
        lines = [
            f"SIP/2.0 {status} Reason",
            *(f"Via: {via}" for via in headers.values("Via")),
            *(f"Record-Route: {rr}" for rr in headers.values("Record-Route")),
            f"From: {headers.get('From')}",
            f"To: {to}" + ("" if ";tag=" in to else ";tag=callee"),
            f"Call-ID: {request.call_id}",
            f"CSeq: {headers.get('CSeq')}",
            f"Contact: <sip:callee@{host}:{port}>",
            "Content-Length: 0",
            "",
            "",
        ]
        via = request.top_via
        sent_to = (via.param("received") or via.host, via.port or SIP_PORT)
        await self.callee.sendto("\r\n".join(lines).encode(), sent_to)

    async def establish(self) -> None:
        await self.send(self.request("INVITE", 1))
        invite = await self.callee_receives("INVITE")
        await self.answer(invite, 180)
        await self.caller_receives(180)
        await self.answer(invite, 200)
        self.ok = await self.caller_receives(200)
        await self.send(self.request("ACK", 1))
        await self.callee_receives("ACK")

    async def hang_up(self) -> None:
        await self.send(self.request("BYE", 2))
        bye = await self.callee_receives("BYE")
        await self.answer(bye, 200)
        await self.caller_receives(200)


@contextlib.asynccontextmanager
async def raw_call(pair: Pair) -> AsyncIterator[RawCall]:
    caller = await udp_socket(pair.caller)
    callee = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await callee.bind(pair.callee)
    with caller, callee:
        yield RawCall(pair, caller, callee)


# --- every RPC through real gRPC -------------------------------------------------------------


async def test_every_rpc_through_grpc(pair: Pair):
    events: list[c.Event] = []
    arrived = trio.Event()

    async def watch(bridge: GrpcBridge, *, task_status: trio.TaskStatus[None]) -> None:
        async with bridge.open_server_stream(
            pair.target(),
            CONTROL + "WatchEvents",
            c.WatchEventsRequest(),
            c.WatchEventsRequest.SerializeToString,
            c.Event.FromString,
        ) as stream:
            task_status.started()
            while True:
                events.append(await stream.receive())
                arrived.set()

    async def event(kind: str, **match: str) -> c.Event:
        nonlocal arrived
        while True:
            for seen in events:
                if c.EventType.Name(seen.type) == kind and all(
                    getattr(getattr(seen, seen.WhichOneof("detail")), key) == value
                    for key, value in match.items()
                ):
                    return seen
            arrived = trio.Event()
            await arrived.wait()

    usw2 = pair.target()
    with trio.fail_after(TIMEOUT):
        async with operator(pair) as bridge, trio.open_nursery() as nursery:
            await nursery.start(watch, bridge)

            nodes = await call(bridge, usw2, "ListNodes", c.ListNodesRequest(), c.ListNodesResponse)
            by_id = {node.node_id: node for node in nodes.nodes}
            assert sorted(by_id) == ["use1", "use2", "usw2"]
            assert by_id["usw2"].local
            assert by_id["usw2"].reachable
            assert (by_id["use1"].reachable, by_id["use1"].flooding) == (True, True)
            assert list(by_id["use1"].path) == ["usw2", "use1"]
            assert (by_id["use2"].configured_peer, by_id["use2"].in_lsdb) == (True, False)
            assert by_id["use2"].grpc == pair.target("use2")
            assert not nodes.drain.draining

            topology = await call(
                bridge, usw2, "GetTopology", c.GetTopologyRequest(), c.GetTopologyResponse
            )
            usable = {(link.origin, link.neighbor) for link in topology.links if link.usable}
            assert usable == {("usw2", "use1"), ("use1", "usw2")}
            assert {n.node_id for n in topology.nodes} == {"usw2", "use1"}

            links = await call(bridge, usw2, "ListLinks", c.ListLinksRequest(), c.ListLinksResponse)
            state = {link.neighbor: link for link in links.links}
            assert state["use1"].state == c.LinkStatus.UP
            assert state["use1"].advertised_up
            assert state["use1"].cost_ms > 20.0
            assert state["use1"].flooding
            assert state["use2"].state != c.LinkStatus.UP
            assert not state["use2"].advertised_up

            # use1 is the egress: it probes the callee's address, which answers nothing.
            callee = f"{pair.callee[0]}:{pair.callee[1]}"
            egress = await call(
                bridge, pair.target("use1"), "ListTrunks", c.ListTrunksRequest(),
                c.ListTrunksResponse,
            )  # fmt: skip
            assert egress.enabled
            ((trunk,),) = [egress.trunks]
            assert (trunk.trunk, list(trunk.targets)) == (f"udp:{callee}", [callee])
            assert trunk.state in (c.TrunkStatus.INIT, c.TrunkStatus.DOWN)
            assert trunk.probes_sent >= 1
            assert trunk.probes_answered == 0
            ingress = await call(
                bridge, usw2, "ListTrunks", c.ListTrunksRequest(), c.ListTrunksResponse
            )
            assert (ingress.node_id, list(ingress.trunks)) == ("usw2", [])

            routes = await call(
                bridge, usw2, "GetRoutes", c.GetRoutesRequest(), c.GetRoutesResponse
            )
            assert [(r.destination, list(r.path)) for r in routes.routes] == [
                ("use1", ["usw2", "use1"])
            ]

            explained = await call(
                bridge,
                usw2,
                "ExplainRoute",
                c.ExplainRouteRequest(request_uri="sip:+14155550100@example.com"),
                c.ExplainRouteResponse,
            )
            assert explained.dialplan.matched
            assert explained.dialplan.egress == "use1"
            assert explained.destination == "use1"
            assert explained.outcome.startswith("to egress use1, which sends it to ")
            assert list(explained.chosen.path) == ["usw2", "use1"]
            (link,) = explained.chosen.links
            assert link.hop_ms == 20.0
            assert link.total_ms == pytest.approx(explained.chosen.cost_ms)
            assert [
                (r.first_hop, c.Candidate.Verdict.Name(r.verdict)) for r in explained.rejected
            ] == [("use2", "LINK_DOWN")]
            nowhere = await call(
                bridge,
                usw2,
                "ExplainRoute",
                c.ExplainRouteRequest(request_uri="+44207"),
                c.ExplainRouteResponse,
            )
            assert nowhere.outcome == "404 Not Found: no dialplan rule matches"

            async with raw_call(pair) as sip:
                await sip.establish()
                listed = await call(
                    bridge, usw2, "ListCalls", c.ListCallsRequest(), c.ListCallsResponse
                )
                assert listed.active == 1
                (ingress,) = listed.calls
                assert (ingress.call_id, ingress.far_node, list(ingress.path)) == (
                    sip.call_id,
                    "use1",
                    ["usw2", "use1"],
                )
                assert (ingress.role, ingress.state) == (c.Call.INGRESS, c.Call.ANSWERED)
                assert ingress.setup_ms > 0
                assert ingress.sip_responses >= 2
                egress = (
                    await call(
                        bridge,
                        pair.target("use1"),
                        "GetCall",
                        c.GetCallRequest(call_id=sip.call_id),
                        c.GetCallResponse,
                    )
                ).call
                assert (egress.role, egress.state, egress.far_node) == (
                    c.Call.EGRESS,
                    c.Call.ANSWERED,
                    "usw2",
                )
                with pytest.raises(RpcError) as unknown:
                    await call(
                        bridge,
                        usw2,
                        "GetCall",
                        c.GetCallRequest(call_id="nope"),
                        c.GetCallResponse,
                    )
                assert unknown.value.code == grpc.StatusCode.NOT_FOUND

                # Drain: new INVITEs get 503 with Retry-After, the call that is up continues.
                drained = await call(
                    bridge,
                    usw2,
                    "Drain",
                    c.DrainRequest(reason="fibre work", retry_after_s=120),
                    c.DrainResponse,
                )
                assert drained.drain.draining
                assert drained.drain.by == "olga"
                assert drained.drain.active_calls == 1
                assert not drained.already_draining
                await event("DRAIN")
                assert await health(bridge, usw2) == health_pb2.HealthCheckResponse.NOT_SERVING
                # Drained is not dead: the pair's HA agent, which asks its liveness, keeps off.
                alive = await health(bridge, usw2, LIVENESS_SERVICE)
                assert alive == health_pb2.HealthCheckResponse.SERVING
                other = RawCall(pair, sip.caller, sip.callee)
                other.call_id = "ctl-call-2@test"  # a new call, while the first is up
                await other.send(other.request("INVITE", 1))
                refused = await other.caller_receives(503)
                assert (refused.reason, refused.headers.get("Retry-After")) == ("Draining", "120")
                await sip.hang_up()
                undrained = await call(
                    bridge, usw2, "Undrain", c.UndrainRequest(), c.UndrainResponse
                )
                assert undrained.was_draining
                assert await health(bridge, usw2) == health_pb2.HealthCheckResponse.SERVING

            ended = await call(
                bridge,
                usw2,
                "ListCalls",
                c.ListCallsRequest(include_ended=True),
                c.ListCallsResponse,
            )
            assert ended.active == 0
            assert [(x.call_id, x.state) for x in ended.calls] == [(sip.call_id, c.Call.ENDED)]
            failed = await event("CALL_FAILED", call_id="ctl-call-2@test")
            assert (failed.call.status, failed.summary) == (
                503,
                "call ctl-call-2@test failed: 503 Draining",
            )

            # An override forcing the link down takes use1 out of the routes; clearing it
            # brings it back.
            override = await call(
                bridge,
                usw2,
                "SetLinkOverride",
                c.SetLinkOverrideRequest(peer="use1", force_down=True, ttl_s=60, reason="test"),
                c.SetLinkOverrideResponse,
            )
            assert override.override.force_down
            assert override.override.set_by == "olga"
            await event("LINK_OVERRIDE_SET")
            gone = await event("ROUTE_CHANGE", destination="use1")
            assert list(gone.route.new_path) == []
            links = await call(bridge, usw2, "ListLinks", c.ListLinksRequest(), c.ListLinksResponse)
            use1 = next(link for link in links.links if link.neighbor == "use1")
            assert use1.state == c.LinkStatus.UP
            assert not use1.advertised_up
            assert use1.override.force_down
            cleared = await call(
                bridge,
                usw2,
                "ClearLinkOverride",
                c.ClearLinkOverrideRequest(peer="use1"),
                c.ClearLinkOverrideResponse,
            )
            assert cleared.cleared == 1
            back = await event("ROUTE_CHANGE", reason="reachable again")
            assert list(back.route.new_path) == ["usw2", "use1"]
            # An override ends by itself at its expiry.
            await call(
                bridge, usw2, "SetLinkOverride",
                c.SetLinkOverrideRequest(peer="use1", admin_cost_ms=1000, ttl_s=0.3),
                c.SetLinkOverrideResponse,
            )  # fmt: skip
            expired = await event("LINK_OVERRIDE_CLEARED", expired=True)
            assert expired.override.override.admin_cost_ms == 1000
            assert expired.by == ""  # the node's own doing

            fault = c.Fault(peer="use1", delay_ms=5.0, loss_ratio=0.01)
            await call(
                bridge,
                usw2,
                "InjectFault",
                c.InjectFaultRequest(fault=fault),
                c.InjectFaultResponse,
            )
            injected = await event("FAULT_INJECTED")
            assert injected.fault.fault == fault
            assert injected.by == "olga"
            links = await call(bridge, usw2, "ListLinks", c.ListLinksRequest(), c.ListLinksResponse)
            assert next(link.fault for link in links.links if link.neighbor == "use1") == fault
            faults = await call(
                bridge, usw2, "ClearFaults", c.ClearFaultsRequest(), c.ClearFaultsResponse
            )
            assert faults.cleared == 1

            counters = await call(
                bridge, usw2, "GetCounters", c.GetCountersRequest(), c.GetCountersResponse
            )
            assert counters.counters["sip.requests.INVITE"] >= 2
            assert counters.counters["sip.generated.503"] == 1
            assert counters.counters["control.rpc.Drain.OK"] == 1
            assert counters.counters["control.calls.failed"] == 0  # refused before it was a call
            nursery.cancel_scope.cancel()
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def health(bridge: GrpcBridge, target: str, service: str = "") -> int:
    response = await bridge.unary(
        target,
        "/grpc.health.v1.Health/Check",
        health_pb2.HealthCheckRequest(service=service),
        health_pb2.HealthCheckRequest.SerializeToString,
        health_pb2.HealthCheckResponse.FromString,
        timeout=5,
    )
    status: int = response.status
    return status


# --- roles, authentication, arguments -------------------------------------------------------

OPERATOR_CALLS = [
    ("Drain", c.DrainRequest(), c.DrainResponse),
    ("Undrain", c.UndrainRequest(), c.UndrainResponse),
    (
        "SetLinkOverride",
        c.SetLinkOverrideRequest(peer="use1", admin_cost_ms=5, ttl_s=5),
        c.SetLinkOverrideResponse,
    ),
    ("ClearLinkOverride", c.ClearLinkOverrideRequest(), c.ClearLinkOverrideResponse),
    ("InjectFault", c.InjectFaultRequest(fault=c.Fault(peer="use1")), c.InjectFaultResponse),
    ("ClearFaults", c.ClearFaultsRequest(), c.ClearFaultsResponse),
    ("Unblock", c.UnblockRequest(source="*"), c.UnblockResponse),
]
VIEWER_CALLS = [
    ("ListNodes", c.ListNodesRequest(), c.ListNodesResponse),
    ("GetTopology", c.GetTopologyRequest(), c.GetTopologyResponse),
    ("ListLinks", c.ListLinksRequest(), c.ListLinksResponse),
    ("ListTrunks", c.ListTrunksRequest(), c.ListTrunksResponse),
    ("GetRoutes", c.GetRoutesRequest(), c.GetRoutesResponse),
    ("ExplainRoute", c.ExplainRouteRequest(node_id="use1"), c.ExplainRouteResponse),
    ("ListCalls", c.ListCallsRequest(), c.ListCallsResponse),
    ("GetCounters", c.GetCountersRequest(), c.GetCountersResponse),
    ("ListBlocks", c.ListBlocksRequest(), c.ListBlocksResponse),
]


async def test_viewer_reads_and_is_refused_changes(pair: Pair):
    with trio.fail_after(TIMEOUT):
        async with operator(pair, Role.VIEWER) as bridge:
            for method, request, response in VIEWER_CALLS:
                await call(bridge, pair.target(), method, request, response)
            for method, request, response in OPERATOR_CALLS:
                with pytest.raises(RpcError) as caught:
                    await call(bridge, pair.target(), method, request, response)
                assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert caught.value.message == (
                    f"{method} needs the operator role; victor (viewer) does not have it"
                )
            async with operator(pair) as admin:
                counters = await call(
                    admin,
                    pair.target(),
                    "GetCounters",
                    c.GetCountersRequest(),
                    c.GetCountersResponse,
                )
    assert counters.counters["control.rpc.Drain.PERMISSION_DENIED"] == 1
    assert "control.rpc.Drain.OK" not in counters.counters


async def test_nodes_flood_only_as_themselves_and_call_nothing_else(pair: Pair):
    use1 = pair.pki.directory
    node_tls = ClientFiles(pair.pki.ca_file, use1 / "use1.pem", use1 / "use1.key").credentials()
    with trio.fail_after(TIMEOUT):
        async with open_grpc_bridge(tls=node_tls) as bridge:
            with pytest.raises(RpcError) as caught:
                await call(
                    bridge, pair.target(), "ListNodes", c.ListNodesRequest(), c.ListNodesResponse
                )
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "nodes may only flood link state" in caught.value.message
            impostor = await flood_hello(bridge, pair.target(), "use2")
            assert impostor.code == grpc.StatusCode.PERMISSION_DENIED
            assert impostor.details == "hello from 'use2' over a connection authenticated as 'use1'"
        async with operator(pair) as bridge:
            refused = await flood_hello(bridge, pair.target(), "use1")
            assert refused.code == grpc.StatusCode.PERMISSION_DENIED
            assert "only overlay nodes may flood link state" in refused.details


async def flood_hello(bridge: GrpcBridge, target: str, node_id: str) -> StreamBroken:
    async with bridge.open_stream(
        target,
        "/overlay.v1.LinkState/Flood",
        linkstate_pb2.FloodMessage.SerializeToString,
        linkstate_pb2.FloodReply.FromString,
    ) as stream:
        hello = linkstate_pb2.Hello(node_id=node_id, region="x")
        await stream.send(linkstate_pb2.FloodMessage(hello=hello))
        while True:
            try:
                await stream.receive()
            except StreamBroken as broken:
                return broken


async def test_clients_without_a_certificate_of_the_ca_cannot_connect(pair: Pair, tmp_path: Path):
    (tmp_path / "other").mkdir()
    stranger = make_lab_pki(tmp_path / "other", {}).client("eve", Role.OPERATOR).credentials()
    with trio.fail_after(TIMEOUT):
        for tls in (None, stranger):
            async with open_grpc_bridge(tls=tls) as bridge:
                with pytest.raises(RpcError) as caught:
                    await call(
                        bridge,
                        pair.target(),
                        "ListNodes",
                        c.ListNodesRequest(),
                        c.ListNodesResponse,
                    )
                assert caught.value.code == grpc.StatusCode.UNAVAILABLE


BAD_ARGUMENTS = [
    (
        "SetLinkOverride",
        c.SetLinkOverrideRequest(peer="eu1", admin_cost_ms=5, ttl_s=60),
        "peer: 'eu1' is not a peer of usw2 (peers: use1, use2)",
    ),
    (
        "SetLinkOverride",
        c.SetLinkOverrideRequest(peer="use1", admin_cost_ms=-5, ttl_s=60),
        "admin_cost_ms must be a finite number >= 0, got -5.0",
    ),
    (
        "SetLinkOverride",
        c.SetLinkOverrideRequest(peer="use1", force_down=True),
        "an override needs one expiry: ttl_s or expires_at",
    ),
    (
        "SetLinkOverride",
        c.SetLinkOverrideRequest(peer="use1", admin_cost_ms=5, ttl_s=-1),
        "ttl_s must be a positive number of seconds, got -1.0",
    ),
    (
        "SetLinkOverride",
        c.SetLinkOverrideRequest(
            peer="use1", force_down=True, expires_at={"seconds": 1_000_000_000}
        ),
        "in the past",
    ),
    (
        "ClearLinkOverride",
        c.ClearLinkOverrideRequest(peer="nope"),
        "peer: 'nope' is not a peer",
    ),
    (
        "InjectFault",
        c.InjectFaultRequest(fault=c.Fault(peer="use1", loss_ratio=2)),
        "fault: loss_ratio must be between 0 and 1, got 2.0",
    ),
    ("InjectFault", c.InjectFaultRequest(fault=c.Fault()), "fault.peer: empty"),
    ("ExplainRoute", c.ExplainRouteRequest(), "give node_id or request_uri"),
    ("ExplainRoute", c.ExplainRouteRequest(node_id="eu1"), "node_id: unknown node 'eu1'"),
    ("ExplainRoute", c.ExplainRouteRequest(node_id="usw2"), "node_id: usw2 is this node"),
    ("ExplainRoute", c.ExplainRouteRequest(request_uri="sip:"), "request_uri:"),
    ("Drain", c.DrainRequest(retry_after_s=100_000), "retry_after_s: at most 86400"),
    ("Drain", c.DrainRequest(reason="two\nlines"), "reason: at most 200 printable"),
    ("GetCall", c.GetCallRequest(), "call_id: empty"),
]


async def test_bad_arguments_are_invalid_argument_saying_what_is_wrong(pair: Pair):
    responses = {name: response for name, _, response in OPERATOR_CALLS + VIEWER_CALLS}
    responses["GetCall"] = c.GetCallResponse
    answers = []
    with trio.fail_after(TIMEOUT):
        async with operator(pair) as bridge:
            for method, request, _ in BAD_ARGUMENTS:
                try:
                    await call(bridge, pair.target(), method, request, responses[method])
                except RpcError as error:
                    answers.append((error.code, error.message))
                else:
                    answers.append((grpc.StatusCode.OK, ""))
    for (method, _, message), (code, details) in zip(BAD_ARGUMENTS, answers, strict=True):
        assert (method, code, message in details) == (
            method,
            grpc.StatusCode.INVALID_ARGUMENT,
            True,
        ), details


# --- standard clients: reflection (what grpcurl uses) and health ----------------------------


async def test_reflection_and_health_work_for_standard_clients(pair: Pair):
    files = pair.client("olga", Role.OPERATOR)
    credentials = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    found: dict[str, Any] = {}

    def like_grpcurl() -> None:
        """What grpcurl does: discover the service by reflection, build the request message
        from the descriptors it got, call the method, then check health as grpc_health_probe."""
        with grpc.secure_channel(pair.target(), credentials) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            found["services"] = set(database.get_services())
            pool = descriptor_pool.DescriptorPool(database)
            service = pool.FindServiceByName("overlay.v1.Control")
            found["methods"] = {method.name for method in service.methods}
            method = service.methods_by_name["ListNodes"]
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            list_nodes = channel.unary_unary(
                "/overlay.v1.Control/ListNodes",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            found["nodes"] = [node.node_id for node in list_nodes(request_class(), timeout=5).nodes]
            stub = health_pb2_grpc.HealthStub(channel)
            found["health"] = stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            ).status

    with trio.fail_after(TIMEOUT):
        await trio.to_thread.run_sync(like_grpcurl)
    assert {"overlay.v1.Control", "overlay.v1.LinkState", "grpc.health.v1.Health"} <= found[
        "services"
    ]
    assert found["methods"] == {
        "ListNodes",
        "GetTopology",
        "ListLinks",
        "ListTrunks",
        "GetRoutes",
        "ExplainRoute",
        "ListCalls",
        "GetCall",
        "GetCounters",
        "ListBlocks",
        "WatchEvents",
        "Drain",
        "Undrain",
        "SetLinkOverride",
        "ClearLinkOverride",
        "InjectFault",
        "ClearFaults",
        "Unblock",
    }
    assert found["nodes"] == ["use1", "use2", "usw2"]
    assert found["health"] == health_pb2.HealthCheckResponse.SERVING


# --- overlayctl --------------------------------------------------------------------------------


async def overlayctl(
    pair: Pair, *args: str, role: Role = Role.OPERATOR, node: str = "usw2"
) -> tuple[int, str, str]:
    """Run overlayctl as a process; returns its exit code, stdout and stderr."""
    files = pair.client("olga" if role is Role.OPERATOR else "victor", role)
    command = [sys.executable, "-m", "overlay.cli.ctl", "--target", pair.target(node)]
    command += ["--ca", str(files.ca), "--cert", str(files.cert), "--key", str(files.key)]
    result = await trio.run_process(
        [*command, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def overlayctl_json(pair: Pair, *args: str, node: str = "usw2") -> dict[str, Any]:
    code, out, err = await overlayctl(pair, "--json", *args, node=node)
    assert (code, err) == (0, ""), out
    result: dict[str, Any] = json.loads(out)
    return result


async def test_every_command_through_overlayctl(pair: Pair):
    with trio.fail_after(TIMEOUT * 2):
        nodes = await overlayctl_json(pair, "nodes")
        assert [n["node_id"] for n in nodes["nodes"]] == ["use1", "use2", "usw2"]
        topology = await overlayctl_json(pair, "topology")
        assert {
            (link["origin"], link["neighbor"]) for link in topology["links"] if link["usable"]
        } == {
            ("usw2", "use1"),
            ("use1", "usw2"),
        }
        links = await overlayctl_json(pair, "links")
        assert {link["neighbor"]: link["state"] for link in links["links"]}["use1"] == "UP"
        trunks = await overlayctl_json(pair, "trunks", node="use1")
        callee = f"{pair.callee[0]}:{pair.callee[1]}"
        assert [t["trunk"] for t in trunks["trunks"]] == [f"udp:{callee}"]
        assert trunks["trunks"][0]["targets"] == [callee]
        code, out, err = await overlayctl(pair, "trunks", node="use1")  # the human table
        assert (code, err) == (0, "")
        assert f"udp:{callee}" in out
        routes = await overlayctl_json(pair, "routes")
        assert routes["routes"][0]["path"] == ["usw2", "use1"]
        explained = await overlayctl_json(pair, "explain", "+14155550100")
        assert explained["dialplan"]["egress"] == "use1"
        assert explained["chosen"]["verdict"] == "CHOSEN"
        by_node = await overlayctl_json(pair, "explain", "use1")
        assert by_node["rejected"][0]["verdict"] == "LINK_DOWN"
        assert (await overlayctl_json(pair, "calls", "--all"))["calls"] == []
        counters = await overlayctl_json(pair, "counters", "control.rpc.")
        assert counters["counters"]["control.rpc.ListNodes.OK"] >= 1

        # watch follows events live while an operator changes the node.
        async with trio.open_nursery() as nursery:
            watched: list[tuple[int, str, str]] = []

            async def watch() -> None:
                watched.append(await overlayctl(pair, "--json", "watch", "--count", "4"))

            nursery.start_soon(watch)
            await wait_for_watchers(pair, 1)
            drained = await overlayctl_json(
                pair, "drain", "--reason", "test", "--retry-after", "60"
            )
            assert drained["drain"]["draining"]
            assert drained["drain"]["retry_after_s"] == 60
            code, out, _ = await overlayctl(pair, "health")
            assert (code, out.strip()) == (5, "NOT_SERVING")
            assert (await overlayctl_json(pair, "undrain"))["was_draining"] is True
            code, out, _ = await overlayctl(pair, "health")
            assert (code, out.strip()) == (0, "SERVING")
            override = await overlayctl_json(
                pair, "override", "use1", "--cost", "250", "--for", "10m", "--reason", "test"
            )
            assert override["override"]["admin_cost_ms"] == 250
            assert (await overlayctl_json(pair, "clear-override", "use1"))["cleared"] == 1
        code, out, err = watched[0]
        assert (code, err) == (0, "")
        kinds = [json.loads(line)["type"] for line in out.splitlines()]
        assert kinds == ["DRAIN", "UNDRAIN", "LINK_OVERRIDE_SET", "LINK_OVERRIDE_CLEARED"]

        assert await overlayctl_json(pair, "fault", "use1", "--delay-ms", "3") == {}
        assert (await overlayctl_json(pair, "clear-faults"))["cleared"] == 1

        code, out, err = await overlayctl(pair, "nodes")  # the human table
        assert code == 0
        assert "usw2: taking calls; 0 active call(s)" in out
        code, out, err = await overlayctl(pair, "explain", "use1")
        assert code == 0
        assert "chosen: usw2→use1" in out
        assert "LINK_DOWN" in out


async def wait_for_watchers(pair: Pair, watchers: int) -> None:
    async with operator(pair) as bridge:
        while True:
            counters = await call(
                bridge, pair.target(), "GetCounters", c.GetCountersRequest(), c.GetCountersResponse
            )
            if counters.counters["control.events.watchers"] >= watchers:
                return
            await trio.sleep(0.05)  # the watcher is another process: no event to wait on


async def test_overlayctl_exit_codes(pair: Pair):
    with trio.fail_after(TIMEOUT):
        code, _, err = await overlayctl(pair, "drain", role=Role.VIEWER)
        assert code == 4
        assert err == (
            "overlayctl: PERMISSION_DENIED: Drain needs the operator role; victor (viewer) "
            "does not have it\n"
        )
        code, _, err = await overlayctl(pair, "override", "eu1", "--cost", "5", "--for", "1m")
        assert code == 1
        assert err.startswith("overlayctl: INVALID_ARGUMENT: peer: 'eu1' is not a peer of usw2")
        code, _, err = await overlayctl(pair, "call", "nope")
        assert (code, err.split(":")[1].strip()) == (1, "NOT_FOUND")
        code, _, err = await overlayctl(pair, "override", "use1", "--cost", "5")
        assert (code, err) == (2, "overlayctl: give one of --for and --until\n")
        code, _, err = await overlayctl(pair, "watch", "--type", "LINK_SIDEWAYS")
        assert code == 2
        assert "--type 'LINK_SIDEWAYS': one of LINK_UP, LINK_DOWN" in err
        code, _, err = await overlayctl(pair, "nodes", node="use2")  # never started
        assert code == 3
        assert err.startswith("overlayctl: UNAVAILABLE: ")
        result = await trio.run_process(
            [sys.executable, "-m", "overlay.cli.ctl", "--target", pair.target(), "nodes"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 2
        assert b"give --ca, --cert and --key" in result.stderr


# --- starting a node ------------------------------------------------------------------------


def without_tls(config: str) -> str:
    return "\n".join(
        line for line in config.splitlines() if not line.startswith(("ca =", "cert =", "key ="))
    )


async def test_node_refuses_to_start_without_usable_tls(
    loopback_host: Callable[[], str], tmp_path: Path
):
    hosts = {node: loopback_host() for node in ("usw2", "use1", "use2")}
    pki = make_lab_pki(tmp_path, {"usw2": hosts["usw2"]})
    config = tmp_path / "node.toml"

    async def start() -> tuple[int, str]:
        result = await trio.run_process(
            [sys.executable, "-m", "overlay", "node", "--config", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        return result.returncode, result.stderr.decode()

    text = node_config(hosts, "usw2", pki, "127.0.0.1:5099")
    (tmp_path / "other").mkdir()
    other = make_lab_pki(tmp_path / "other", {})
    with trio.fail_after(TIMEOUT):
        config.write_text(without_tls(text))
        code, err = await start()
        assert code == 2
        assert f"overlay: refusing to start: {config}:8: grpc: required: ca, cert, key" in err
        config.write_text(text.replace(str(pki.ca_file), str(other.ca_file)))
        code, err = await start()
        assert code == 2
        assert "[grpc] " in err
        assert "usw2.pem: not signed by the CA in" in err


async def test_insecure_node_lets_anyone_operate(loopback_host: Callable[[], str], tmp_path: Path):
    hosts = {node: loopback_host() for node in ("usw2", "use1", "use2")}
    pki = make_lab_pki(tmp_path, {})
    listen = f'listen = "{hosts["usw2"]}:{GRPC_PORT}"'
    text = without_tls(node_config(hosts, "usw2", pki, "127.0.0.1:5099"))
    text = text.replace(listen, listen + "\ninsecure = true")
    with trio.fail_after(TIMEOUT):
        async with open_node(text, host=hosts["usw2"], port=SIP_PORT):
            target = f"{hosts['usw2']}:{GRPC_PORT}"
            command = [sys.executable, "-m", "overlay.cli.ctl", "--target", target, "--insecure"]
            for args in (["--json", "nodes"], ["drain"], ["undrain"]):
                with trio.fail_after(15):
                    while True:
                        result = await trio.run_process(
                            [*command, *args], capture_stdout=True, capture_stderr=True, check=False
                        )
                        if result.returncode != 3:  # its gRPC server is a moment behind its SIP
                            break
                        await trio.sleep(0.05)
                assert (result.returncode, result.stderr) == (0, b"")


# --- edge security blocks --------------------------------------------------------------------


@pytest.fixture
async def guarded(loopback_host: Callable[[], str], tmp_path: Path) -> AsyncIterator[Pair]:
    """usw2 alone, with [security] (its peers never answer): blocks for the NOC to lift."""
    hosts = {node: loopback_host() for node in ("usw2", "use1", "use2")}
    pki = make_lab_pki(tmp_path, {"usw2": hosts["usw2"]})
    callee = (loopback_host(), 5099)
    config = node_config(hosts, "usw2", pki, f"{callee[0]}:{callee[1]}") + "\n[security]\n"
    async with open_node(config, host=hosts["usw2"], port=SIP_PORT) as process:
        pair = Pair(hosts, pki, {"usw2": process}, loopback_host(), callee)
        async with operator(pair) as bridge:
            await wait_for_blocks(bridge, pair, lambda blocks: True)  # its gRPC server is up
        yield pair


def options(pair: Pair, sock: trio.socket.SocketType, n: int, user_agent: str = "") -> bytes:
    """An OPTIONS to usw2 itself, which it answers unless the source is blocked."""
    host, port = sock.getsockname()
    lines = [
        f"OPTIONS sip:{pair.hosts['usw2']}:{SIP_PORT} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-blocks-{n};rport",
        "Max-Forwards: 70",
        f"From: <sip:noc-test@{host}>;tag=blocks",
        f"To: <sip:{pair.hosts['usw2']}>",
        f"Call-ID: blocks-{n}@test",
        f"CSeq: {n} OPTIONS",
        *([f"User-Agent: {user_agent}"] if user_agent else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def wait_for_blocks(
    bridge: GrpcBridge, pair: Pair, done: Callable[[list[c.BlockedSource]], bool]
) -> c.ListBlocksResponse:
    """ListBlocks, until its blocks satisfy ``done``."""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                response = await call(
                    bridge, pair.target(), "ListBlocks", c.ListBlocksRequest(), c.ListBlocksResponse
                )
            except RpcError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE:
                    raise
            else:
                if done(list(response.blocks)):
                    return response
            # The node is another process: its datagrams and its server have no event to await.
            await trio.sleep(0.05)


async def unblock(bridge: GrpcBridge, pair: Pair, source: str) -> c.UnblockResponse:
    return await call(
        bridge, pair.target(), "Unblock", c.UnblockRequest(source=source), c.UnblockResponse
    )


async def test_noc_lists_and_lifts_a_block(guarded: Pair):
    pair = guarded
    node = (pair.hosts["usw2"], SIP_PORT)
    events: list[c.Event] = []

    async def watch(bridge: GrpcBridge, *, task_status: trio.TaskStatus[None]) -> None:
        request = c.WatchEventsRequest(types=[c.SOURCES_UNBLOCKED])
        async with bridge.open_server_stream(
            pair.target(),
            CONTROL + "WatchEvents",
            request,
            c.WatchEventsRequest.SerializeToString,
            c.Event.FromString,
        ) as stream:
            task_status.started()
            events.append(await stream.receive())

    with trio.fail_after(TIMEOUT), await udp_socket(pair.caller) as scanner:
        async with operator(pair) as bridge, trio.open_nursery() as nursery:
            await nursery.start(watch, bridge)
            await wait_for_watchers(pair, 1)
            await scanner.sendto(options(pair, scanner, 1, "friendly-scanner"), node)
            listed = await wait_for_blocks(bridge, pair, lambda blocks: len(blocks) == 1)
            assert (listed.security, listed.blocked) == (True, 1)
            [block] = listed.blocks
            assert (block.source, block.reason, block.detail) == (
                pair.caller,
                c.BlockedSource.USER_AGENT,
                "friendly-scanner",
            )
            assert block.until.ToSeconds() - block.since.ToSeconds() == pytest.approx(600, abs=1)
            assert not block.HasField("last_dropped_at")

            # A blocked source gets nothing, even for a good request; the NOC sees it still sends.
            await scanner.sendto(options(pair, scanner, 2), node)
            [block] = (await wait_for_blocks(bridge, pair, lambda b: b[0].dropped == 1)).blocks
            assert block.HasField("last_dropped_at")

            async with operator(pair, Role.VIEWER) as viewer:
                with pytest.raises(RpcError) as refused:
                    await unblock(viewer, pair, pair.caller)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            for bad, why in (("", "''"), ("pbx.example", "'pbx.example'"), ("10.0.0.0/8", "")):
                with pytest.raises(RpcError) as invalid:
                    await unblock(bridge, pair, bad)
                assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert invalid.value.message.startswith(f"source: {why}")
                assert "is not an IP address or an IPv6 /64 (or '*' for every source)" in (
                    invalid.value.message
                )

            lifted = await unblock(bridge, pair, pair.caller)
            assert lifted.unblocked == 1
            assert [(b.source, b.dropped) for b in lifted.blocks] == [(pair.caller, 1)]
            # Its next request is answered.
            await scanner.sendto(options(pair, scanner, 3), node)
            answer = parse_message_untrusted(await scanner.recv(65535))
            assert isinstance(answer, Response)
            assert (answer.status, answer.headers.get("Call-ID")) == (200, "blocks-3@test")

            again = await unblock(bridge, pair, pair.caller)
            assert (again.unblocked, list(again.blocks)) == (0, [])
            assert (await wait_for_blocks(bridge, pair, lambda b: True)).blocked == 0
            counters = await call(
                bridge, pair.target(), "GetCounters", c.GetCountersRequest(), c.GetCountersResponse
            )
    [event] = events
    assert (event.type, event.by, event.unblock.source) == (
        c.SOURCES_UNBLOCKED,
        "olga",
        pair.caller,
    )
    assert list(event.unblock.sources) == [pair.caller]
    assert event.summary == f"unblocked {pair.caller}: 1 block(s) lifted"
    assert counters.counters["security.lifted"] == 1
    assert counters.counters["security.blocked_drops"] == 1
    assert counters.counters["control.rpc.Unblock.OK"] == 2
    assert counters.counters["control.rpc.Unblock.PERMISSION_DENIED"] == 1
    assert counters.counters["control.rpc.Unblock.INVALID_ARGUMENT"] == 3
    # Every Unblock is logged with who made it, also one that found nothing to lift.
    logged = [line for line in pair.processes["usw2"].log().splitlines() if "unblocked" in line]
    assert len(logged) == 2, logged
    assert all(f"source={pair.caller}" in line and "by=olga" in line for line in logged), logged
    assert ["unblocked=1" in logged[0], "unblocked=0" in logged[1]] == [True, True], logged


async def test_blocks_and_unblock_through_overlayctl(guarded: Pair):
    pair = guarded
    node = (pair.hosts["usw2"], SIP_PORT)
    with trio.fail_after(TIMEOUT * 2), await udp_socket(pair.caller) as scanner:
        await scanner.sendto(options(pair, scanner, 1, "sipvicious"), node)
        async with operator(pair) as bridge:
            await wait_for_blocks(bridge, pair, lambda blocks: len(blocks) == 1)
        listed = await overlayctl_json(pair, "blocks")
        assert [(b["source"], b["reason"]) for b in listed["blocks"]] == [
            (pair.caller, "USER_AGENT")
        ]
        code, out, _ = await overlayctl(pair, "blocks")
        assert code == 0
        assert "usw2: 1 source(s) blocked" in out
        assert f"{pair.caller}  user_agent" in out
        code, _, err = await overlayctl(pair, "unblock", pair.caller, role=Role.VIEWER)
        assert (code, err) == (
            4,
            "overlayctl: PERMISSION_DENIED: Unblock needs the operator role; victor (viewer) "
            "does not have it\n",
        )
        code, _, err = await overlayctl(pair, "unblock", "not-an-address")
        assert code == 1
        assert err.startswith("overlayctl: INVALID_ARGUMENT: source: 'not-an-address' is not")
        lifted = await overlayctl_json(pair, "unblock", "*")
        assert lifted["unblocked"] == 1
        code, out, _ = await overlayctl(pair, "unblock", pair.caller)
        assert (code, out.strip()) == (0, f"{pair.caller}: not blocked; nothing lifted")
        code, out, _ = await overlayctl(pair, "blocks")
        assert (code, out.strip()) == (0, "usw2: 0 source(s) blocked")
