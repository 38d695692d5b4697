"""Media echo probes between two in-process nodes with real relays, sockets and gRPC.

The link-state plane must see the media path: where relays stop hearing each other while the
signalling is healthy (here A's relay drops everything it sends to B's, by fault injection, as a
firewall that drops the media ports would), the link is still UP but advertises the media path's
loss, so the cost function steers calls' audio away from it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import trio
from google.protobuf.message import Message

from overlay.grpc import open_grpc_bridge
from overlay.linkstate import LinkState, LinkStatistics
from overlay.shell.node import Node
from overlay.v1 import control_pb2
from tests.mesh_helpers import mesh_config, open_nodes, wait_for


def link(node: Node, neighbor: str) -> LinkStatistics:
    assert node.mesh is not None
    return node.mesh.monitors[neighbor].statistics(trio.current_time())


def media_lossy(node: Node, neighbor: str) -> bool:
    return link(node, neighbor).metrics.loss_ratio >= 0.5


def advertised_loss(reader: Node, origin: str, neighbor: str) -> float:
    """The loss ``origin`` advertises for its link to ``neighbor``, as ``reader`` knows it."""
    assert reader.mesh is not None
    lsa = reader.mesh.flooder.lsdb.snapshot().get(origin)
    metrics = None if lsa is None else lsa.link(neighbor)
    return 0.0 if metrics is None else metrics.loss_ratio


@pytest.mark.trio
async def test_echoes_measure_the_media_path_and_a_dead_relay_shows_as_loss(
    loopback_host: Callable[[], str],
) -> None:
    hosts = {"echo-a": loopback_host(), "echo-b": loopback_host()}
    (a_host, b_host) = hosts.values()
    texts = {
        "echo-a": mesh_config("echo-a", a_host, "echo-b", b_host, region="lab", media=True),
        "echo-b": mesh_config("echo-b", b_host, "echo-a", a_host, region="lab", media=True),
    }
    async with open_nodes(texts) as nodes:
        a, b = nodes["echo-a"], nodes["echo-b"]

        def media_answered(node: Node, neighbor: str) -> int:
            media = link(node, neighbor).media
            return 0 if media is None else media.answered

        # B measures A's relay: answered, no loss.
        await wait_for(lambda: media_answered(b, "echo-a") >= 20, within=10.0)
        stats = link(b, "echo-a")
        assert stats.state is LinkState.UP
        assert stats.media is not None
        assert stats.media.loss_ratio == 0.0
        assert 0.0 < stats.media.rtt_ms < 50.0
        assert stats.metrics.loss_ratio == 0.0

        # A's relay sends nothing to B's any more: A's echoes and its answers to B's are lost,
        # so both ends see the media path lossy while the link stays UP.
        assert a.media is not None
        a.media.set_faults({"echo-b": (0.0, True)})
        for node, neighbor in ((a, "echo-b"), (b, "echo-a")):
            await wait_for(partial(media_lossy, node, neighbor), within=10.0)
            assert link(node, neighbor).state is LinkState.UP
        assert a.counters()["media.drops.fault"] > 0
        # The loss is flooded: B routes on what A advertises about the link.
        await wait_for(lambda: advertised_loss(b, "echo-a", "echo-b") >= 0.5, within=10.0)

        # The Control service's InjectFault / ClearFaults reach the relay too.
        a.media.set_faults({})
        dropped = a.counters()["media.drops.fault"]
        async with open_grpc_bridge() as bridge:

            async def control(method: str, request: Message, response: type[Message]) -> None:
                target = f"{hosts['echo-a']}:7000"
                path = f"/overlay.v1.Control/{method}"
                await bridge.unary(
                    target, path, request, serialize, response.FromString, timeout=5.0
                )

            fault = control_pb2.Fault(peer="echo-b", blackhole=True)
            request = control_pb2.InjectFaultRequest(fault=fault)
            await control("InjectFault", request, control_pb2.InjectFaultResponse)
            await wait_for(lambda: a.counters()["media.drops.fault"] > dropped, within=5.0)
            await control(
                "ClearFaults", control_pb2.ClearFaultsRequest(), control_pb2.ClearFaultsResponse
            )
            dropped = a.counters()["media.drops.fault"]
            answered = media_answered(a, "echo-b")
            await wait_for(lambda: media_answered(a, "echo-b") > answered + 5, within=5.0)
            assert a.counters()["media.drops.fault"] == dropped


def serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data
