"""Media echo probes between two in-process nodes with real relays, sockets and gRPC.

The link-state plane must see the media path: where a neighbour's relay does not answer while its
signalling is healthy (here A has B's relay at a port where nothing listens, as a firewall that
drops the media ports would leave it), the link is still UP but advertises the media path's loss,
so the cost function steers calls' audio away from it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from overlay.config import parse_config
from overlay.linkstate import LinkState, LinkStatistics
from overlay.node import Node


def config(hosts: dict[str, str], node_id: str, *, peer_media_port: int = 7100) -> str:
    host = hosts[node_id]
    (peer,) = (other for other in hosts if other != node_id)
    peer_host = hosts[peer]
    return f"""
[node]
node_id = "{node_id}"
region = "lab"

[sip]
listen = ["udp:{host}:5060"]

[grpc]
listen = "{host}:7000"

[media]
address = "{host}"
overlay = "{host}:7100"
port_first = 21000
port_last = 21009

[linkstate]
probe_interval = 0.05

[[peers]]
node_id = "{peer}"
region = "lab"
sip = "{peer_host}:5060"
grpc = "{peer_host}:7000"
media = "{peer_host}:{peer_media_port}"
"""


async def wait_for(predicate: Callable[[], bool], *, within: float) -> None:
    """Poll: measurements change on the nodes' own timers, which signal no event to a test."""
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


def link(node: Node, neighbor: str) -> LinkStatistics:
    assert node.mesh is not None
    return node.mesh.monitors[neighbor].statistics(trio.current_time())


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
    texts = {
        "echo-a": config(hosts, "echo-a", peer_media_port=7199),
        "echo-b": config(hosts, "echo-b"),
    }
    nodes = {name: Node(parse_config(text, source=f"{name}.toml")) for name, text in texts.items()}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(node.serve)
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

        # A's echoes to B's relay go unanswered: A's link to B is UP but lossy.
        await wait_for(lambda: link(a, "echo-b").metrics.loss_ratio >= 0.5, within=10.0)
        stats = link(a, "echo-b")
        assert stats.state is LinkState.UP
        assert stats.media is not None
        assert stats.media.answered == 0
        # The loss is flooded: B routes on what A advertises about the link.
        await wait_for(lambda: advertised_loss(b, "echo-a", "echo-b") >= 0.5, within=10.0)
        assert advertised_loss(a, "echo-b", "echo-a") == 0.0
        nursery.cancel_scope.cancel()
