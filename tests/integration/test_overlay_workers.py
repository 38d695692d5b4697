"""Overlay nodes with two SIP workers each: worker 0 owns the mesh, worker 1 follows it.

Three lab nodes, every one its own process tree: the ingress A and the egress B with
``sip.workers = 2``, a transit C with one. SIPp calls enter at A and leave at B.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from google.protobuf.message import Message

from overlay.grpc import GrpcBridge, RpcError, open_grpc_bridge
from overlay.lab.node_process import open_node
from overlay.lab.sipp import open_uas, run_uac
from overlay.lab.topology import SIP_PORT, LabNode, Topology, node_config
from overlay.v1 import control_pb2

pytestmark = [pytest.mark.integration, pytest.mark.sipp]

TOPOLOGY = Topology(
    regions=(("a", "lab-a"), ("b", "lab-b"), ("c", "lab-c")),
    rtt={frozenset("ab"): 0.0, frozenset("ac"): 0.0, frozenset("bc"): 0.0},
    ingresses=("a",),
    egress="b",
)
WORKERS = {"a": 2, "b": 2, "c": 1}
RPC_TIMEOUT_S = 5.0
ReplyT = TypeVar("ReplyT", bound=Message)


def configs(nodes: list[LabNode], target: str) -> dict[str, str]:
    """The lab's configs, signalling only (no [media]), with WORKERS."""
    texts = {}
    for node in nodes:
        text = node_config(node, nodes, egress=["b"], target=target, topology=TOPOLOGY)
        listen = f'listen = ["udp:{node.host}:{SIP_PORT}"]\n'
        text = text.replace(listen, f"{listen}workers = {WORKERS[node.node_id]}\n", 1)
        text, removed = re.subn(r"(?ms)^\[media\]\n.*?\n\n", "", text, count=1)
        assert removed == 1
        texts[node.node_id] = text
    return texts


class Noc:
    def __init__(self, bridge: GrpcBridge, nodes: dict[str, LabNode]) -> None:
        self.bridge = bridge
        self.nodes = nodes

    async def call(
        self, node_id: str, method: str, request: Message, reply: type[ReplyT]
    ) -> ReplyT:
        return await self.bridge.unary(
            self.nodes[node_id].grpc_target,
            f"/overlay.v1.Control/{method}",
            request,
            lambda message: message.SerializeToString(),
            reply.FromString,
            timeout=RPC_TIMEOUT_S,
        )

    async def counters(self, node_id: str) -> dict[str, int]:
        reply = await self.call(
            node_id,
            "GetCounters",
            control_pb2.GetCountersRequest(),
            control_pb2.GetCountersResponse,
        )
        return dict(reply.counters)

    async def path(self, node_id: str, destination: str) -> list[str]:
        try:
            reply = await self.call(
                node_id, "GetRoutes", control_pb2.GetRoutesRequest(), control_pb2.GetRoutesResponse
            )
        except RpcError:
            return []
        return next((list(r.path) for r in reply.routes if r.destination == destination), [])

    async def wait_path(self, node_id: str, destination: str, path: list[str]) -> None:
        """Polls another process: there is no event to wait on."""
        with trio.fail_after(30):
            while await self.path(node_id, destination) != path:  # noqa: ASYNC110
                await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def overlay(loopback_host: Callable[[], str], workdir: Path) -> AsyncIterator[Noc]:
    nodes = [LabNode(site, region, loopback_host(), site) for site, region in TOPOLOGY.regions]
    by_id = {node.node_id: node for node in nodes}
    async with contextlib.AsyncExitStack() as stack:
        uas = await stack.enter_async_context(open_uas(loopback_host(), scenario="uas_no180"))
        texts = configs(nodes, f"{uas.host}:{uas.port}")
        for node in nodes:
            (workdir / node.node_id).mkdir()
            await stack.enter_async_context(
                open_node(
                    texts[node.node_id],
                    host=node.host,
                    port=SIP_PORT,
                    workdir=workdir / node.node_id,
                )
            )
        noc = Noc(await stack.enter_async_context(open_grpc_bridge()), by_id)
        await noc.wait_path("a", "b", ["a", "b"])
        yield noc


@pytest.mark.trio
async def test_calls_through_overlay_nodes_with_two_workers(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    async with overlay(loopback_host, tmp_path) as noc:
        a = noc.nodes["a"]
        caller = loopback_host()
        result = await run_uac(
            (a.host, SIP_PORT),
            local_host=caller,
            scenario="uac_rr",
            calls=200,
            rate=50,
            max_seconds=60,
        )
        assert (result.calls_successful, result.calls_failed) == (200, 0), result

        # Both workers of each edge carried calls; the owner's counters sum them.
        for node_id in ("a", "b"):
            counters = await noc.counters(node_id)
            per_worker = [counters[f"workers.{n}.sip.calls.offered"] for n in (0, 1)]
            assert all(n >= 20 for n in per_worker), (node_id, per_worker)
            assert counters["sip.calls.offered"] == sum(per_worker) == 200
            assert counters["sip.calls.answered"] == 200
        # The owner's call book holds every worker's calls.
        calls = await noc.call(
            "a",
            "ListCalls",
            control_pb2.ListCallsRequest(include_ended=True),
            control_pb2.ListCallsResponse,
        )
        ended = {c.call_id for c in calls.calls if c.state == control_pb2.Call.ENDED}
        assert len(ended) == 200
        assert all(c.far_node == "b" and c.path == ["a", "b"] for c in calls.calls)
        for call_id in sorted(ended)[:10]:
            one = await noc.call(
                "a",
                "GetCall",
                control_pb2.GetCallRequest(call_id=call_id),
                control_pb2.GetCallResponse,
            )
            assert one.call.call_id == call_id

        # A route change on the owner reaches worker 1: with A-B forced down, every call of
        # both workers goes through C.
        await noc.call(
            "a",
            "SetLinkOverride",
            control_pb2.SetLinkOverrideRequest(peer="b", force_down=True, ttl_s=600),
            control_pb2.SetLinkOverrideResponse,
        )
        await noc.wait_path("a", "b", ["a", "c", "b"])
        before = (await noc.counters("c")).get("sip.requests.INVITE", 0)
        result = await run_uac(
            (a.host, SIP_PORT),
            local_host=caller,
            scenario="uac_rr",
            calls=40,
            rate=20,
            max_seconds=30,
        )
        assert (result.calls_successful, result.calls_failed) == (40, 0), result
        assert (await noc.counters("c")).get("sip.requests.INVITE", 0) - before == 40

        # Probes were answered all along, whichever worker read them: no link went down.
        for node_id in ("a", "b", "c"):
            links = await noc.call(
                node_id, "ListLinks", control_pb2.ListLinksRequest(), control_pb2.ListLinksResponse
            )
            assert len(links.links) == 2
            assert all(link.state == control_pb2.LinkStatus.UP for link in links.links), links
            counters = await noc.counters(node_id)
            assert counters["overlay.bad_messages"] == 0
        for node_id in ("a", "b"):
            log = (tmp_path / node_id / "node.log").read_text()
            assert "link down" not in log
            assert "worker failed" not in log
