"""The four-region lab as real processes: routes follow degradation, a kill -9 and healing.

Every node is its own OS process on its own loopback address; latency between regions is the
impairment layer's emulation of the reference RTTs; link state floods over real gRPC. The test
reads each node's routes and links through the admin service, as a NOC tool would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import trio

from overlay.control import GrpcBridge, open_grpc_bridge
from overlay.lab.node_process import open_node
from overlay.lab.topology import SIP_PORT, LabNode, lab_nodes, node_config
from overlay.v1 import admin_pb2

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.slow]

ADMIN = "/overlay.v1.Admin/"


async def admin(bridge: GrpcBridge, node: LabNode, method: str, request: object) -> object:
    response_type = {
        "GetRoutes": admin_pb2.GetRoutesResponse,
        "GetLinks": admin_pb2.GetLinksResponse,
        "InjectFault": admin_pb2.InjectFaultResponse,
        "ClearFaults": admin_pb2.ClearFaultsResponse,
    }[method]
    return await bridge.unary(
        node.grpc_target,
        ADMIN + method,
        request,
        lambda message: message.SerializeToString(),
        response_type.FromString,
        timeout=2.0,
    )


async def path_to(bridge: GrpcBridge, node: LabNode, destination: str) -> list[str]:
    response = await admin(bridge, node, "GetRoutes", admin_pb2.GetRoutesRequest())
    assert isinstance(response, admin_pb2.GetRoutesResponse)
    for route in response.routes:
        if route.destination == destination:
            return list(route.path)
    return []


async def wait_path(
    bridge: GrpcBridge,
    node: LabNode,
    destination: str,
    accept: Callable[[list[str]], bool],
    *,
    within: float,
) -> tuple[list[str], float]:
    """Poll every 20 ms until the path is accepted; returns it and how long it took."""
    start = trio.current_time()
    with trio.fail_after(within):
        while True:
            path = await path_to(bridge, node, destination)
            if accept(path):
                return path, trio.current_time() - start
            await trio.sleep(0.02)


async def wait_all_links_up(bridge: GrpcBridge, nodes: list[LabNode], *, within: float) -> None:
    with trio.fail_after(within):
        for node in nodes:
            while True:
                links = await admin(bridge, node, "GetLinks", admin_pb2.GetLinksRequest())
                assert isinstance(links, admin_pb2.GetLinksResponse)
                if all(link.state == "UP" for link in links.links):
                    break
                await trio.sleep(0.05)


async def degrade(bridge: GrpcBridge, a: LabNode, b: LabNode, delay_ms: float) -> None:
    for node, peer in ((a, b), (b, a)):
        fault = admin_pb2.Fault(peer=peer.node_id, delay_ms=delay_ms, loss_ratio=0.05)
        await admin(bridge, node, "InjectFault", admin_pb2.InjectFaultRequest(fault=fault))


@pytest.mark.trio
async def test_routes_follow_degradation_kill_and_heal(loopback_host: Callable[[], str]):
    nodes = lab_nodes({node_id: loopback_host() for node_id in ("usw2", "usw1", "use2", "use1")})
    usw2, usw1, use2, use1 = nodes
    target = f"{loopback_host()}:5070"
    async with contextlib.AsyncExitStack() as stack:
        processes = {}
        for node in nodes:
            config = node_config(node, nodes, egress="use1", target=target)
            processes[node.node_id] = await stack.enter_async_context(
                open_node(config, host=node.host, port=SIP_PORT)
            )
        bridge = await stack.enter_async_context(open_grpc_bridge())

        # Healthy: the direct link (68 ms) beats the detour via us-east-2 (62 ms + a hop).
        await wait_all_links_up(bridge, nodes, within=15)
        path, _ = await wait_path(bridge, usw2, "use1", lambda p: p == ["usw2", "use1"], within=15)
        links = await admin(bridge, usw2, "GetLinks", admin_pb2.GetLinksRequest())
        assert isinstance(links, admin_pb2.GetLinksResponse)
        by_peer = {link.neighbor: link for link in links.links}
        assert by_peer["use1"].state == "UP"
        assert 60.0 < by_peer["use1"].rtt_ms < 100.0

        # Degraded direct link: new calls go around it within 3 s, and stay there.
        await degrade(bridge, usw2, use1, 150.0)
        path, took = await wait_path(
            bridge, usw2, "use1", lambda p: p != ["usw2", "use1"], within=3
        )
        assert path == ["usw2", "use2", "use1"]
        for _ in range(20):
            assert await path_to(bridge, usw2, "use1") == path
            await trio.sleep(0.05)

        # kill -9 the transit region in use: routes avoid it within a second.
        processes[use2.node_id].process.kill()
        path, took = await wait_path(bridge, usw2, "use1", lambda p: "use2" not in p, within=2)
        assert path == ["usw2", "usw1", "use1"]
        # Every survivor drops the dead node from its table.
        for node in (usw2, usw1, use1):
            await wait_path(bridge, node, "use2", lambda p: p == [], within=2)
        print(f"kill -> routes avoid it: {took * 1000:.0f} ms")
        assert took < 1.0

        # Healed: back to the direct link.
        for node in (usw2, use1):
            await admin(bridge, node, "ClearFaults", admin_pb2.ClearFaultsRequest())
        await wait_path(bridge, usw2, "use1", lambda p: p == ["usw2", "use1"], within=10)
