"""Media echo probes between two in-process nodes with real relays, sockets and gRPC.

The link-state plane must see the media path: the measurement echoes give it the media path's
RTT and loss, and where the relays stop hearing each other while the signalling is healthy (here
A's relay drops everything it sends to B's, by fault injection, as a firewall that drops the
media ports would), the relays' liveness echoes go silent and take the link down at both ends,
so no call's audio is sent into it; the measurement echoes show the loss meanwhile. Healed, the
link comes back after its hold-down.
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


def link_up(node: Node, neighbor: str) -> bool:
    return link(node, neighbor).state is LinkState.UP


def down_by_liveness(node: Node, neighbor: str) -> bool:
    assert node.mesh is not None
    monitor = node.mesh.monitors[neighbor]
    return monitor.state is LinkState.DOWN and monitor.cause == "liveness"


def advertised_up(reader: Node, origin: str, neighbor: str) -> bool:
    """Whether ``origin`` advertises its link to ``neighbor`` up, as ``reader`` knows it."""
    assert reader.mesh is not None
    lsa = reader.mesh.flooder.lsdb.snapshot().get(origin)
    metrics = None if lsa is None else lsa.link(neighbor)
    return metrics is not None and metrics.up


@pytest.mark.trio
async def test_echoes_measure_the_media_path_and_a_dead_relay_takes_the_link_down(
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

        # A's relay sends nothing to B's any more: A's echoes and its answers to B's are lost.
        # Both ends' liveness echoes go silent and take the link down, though the probes (SIP)
        # still answer; the measurement echoes show the media path lossy.
        assert a.media is not None
        a.media.set_faults({"echo-b": (0.0, True)})
        for node, neighbor in ((a, "echo-b"), (b, "echo-a")):
            await wait_for(partial(down_by_liveness, node, neighbor), within=5.0)
            await wait_for(partial(media_lossy, node, neighbor), within=10.0)
            assert link(node, neighbor).probes_answered > 0
        assert a.counters()["media.drops.fault"] > 0
        # Flooded: B knows A advertises the link down.
        await wait_for(lambda: not advertised_up(b, "echo-a", "echo-b"), within=5.0)

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
        # Healed: the link is UP again at both ends once healthy for its hold-down.
        for node, neighbor in ((a, "echo-b"), (b, "echo-a")):
            await wait_for(partial(link_up, node, neighbor), within=10.0)


def serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data
