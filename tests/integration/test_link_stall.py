"""A node whose own event loop stalls keeps its links: two in-process nodes, real sockets and
gRPC, and a stall longer than the detection time (as a long garbage-collector pass would make).

Both nodes share the process, so both stall: each must excuse the silence it could not hear
instead of declaring its healthy neighbour dead, which would partition the overlay and refuse
every new call for the hold-down.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import trio

from overlay.linkstate import LinkState
from overlay.shell.node import Node
from tests.mesh_helpers import mesh_config, open_nodes, wait_for

pytestmark = pytest.mark.integration

STALL_S = 1.5  # the detection time of mesh_config is 1 s


def link_state(node: Node, neighbor: str) -> tuple[LinkState, float]:
    assert node.mesh is not None
    stats = node.mesh.monitors[neighbor].statistics(trio.current_time())
    return stats.state, stats.since


@pytest.mark.trio
async def test_links_survive_a_stall_of_the_nodes_own_event_loop(
    loopback_host: Callable[[], str],
) -> None:
    hosts = {"stall-a": loopback_host(), "stall-b": loopback_host()}
    (a_host, b_host) = hosts.values()
    texts = {
        "stall-a": mesh_config("stall-a", a_host, "stall-b", b_host, region="lab"),
        "stall-b": mesh_config("stall-b", b_host, "stall-a", a_host, region="lab"),
    }
    peers = {"stall-a": "stall-b", "stall-b": "stall-a"}
    async with open_nodes(texts) as nodes:
        for name, node in nodes.items():
            await wait_for(
                lambda n=node, p=peers[name]: link_state(n, p)[0] is LinkState.UP, within=10.0
            )
        before = {name: link_state(node, peers[name]) for name, node in nodes.items()}

        time.sleep(STALL_S)  # noqa: ASYNC251 - the point: the whole event loop stops
        # Long enough after the stall for any detection that counted it to have fired.
        await trio.sleep(0.5)

        for name, node in nodes.items():
            assert link_state(node, peers[name]) == before[name], name
            counters = node.counters()
            assert counters["overlay.stalls_excused"] >= 1
            assert counters["overlay.stalls_excused"] <= 2
