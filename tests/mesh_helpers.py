"""Builders for tests of a node's view of its links: two-node mesh configs, link statistics,
and waiting for what the nodes' own timers change."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

import trio

from overlay.config import parse_config
from overlay.linkstate import LinkMetrics, LinkState, LinkStatistics
from overlay.shell.node import Node, open_node

#: Fast probes and a 1 s detection time.
FAST_PROBES = "probe_interval = 0.05\nprobe_multiplier = 20"


def mesh_config(
    node_id: str,
    host: str,
    peer_id: str,
    peer_host: str,
    *,
    region: str,
    media: bool = False,
    extra: str = "",
    linkstate: str = FAST_PROBES,
) -> str:
    """A node on ``host`` (SIP 5060, gRPC 7000, ``linkstate`` timers) whose one peer is on
    ``peer_host``, with a media relay (overlay port 7100) when ``media``; ``extra`` is
    appended (more sections)."""
    relay = ""
    if media:
        relay = (
            f'media = "{peer_host}:7100"\n\n[media]\naddress = "{host}"\n'
            f'overlay = "{host}:7100"\nport_first = 21000\nport_last = 21009\n'
        )
    return f"""
[node]
node_id = "{node_id}"
region = "{region}"

[sip]
listen = ["udp:{host}:5060"]

[grpc]
listen = "{host}:7000"
insecure = true

[linkstate]
{linkstate}

[[peers]]
node_id = "{peer_id}"
region = "us-east-1"
sip = "{peer_host}:5060"
grpc = "{peer_host}:7000"
{relay}{extra}"""


def link_statistics(neighbor: str, state: LinkState, **metrics: float) -> LinkStatistics:
    """A link's statistics as a monitor reports them; ``metrics`` are ``LinkMetrics`` fields."""
    return LinkStatistics(
        neighbor=neighbor,
        state=state,
        since=0.0,
        metrics=LinkMetrics(neighbor, state is LinkState.UP, **metrics),
        probes_sent=100,
        probes_answered=95,
        probes_lost=5,
    )


async def wait_for(predicate: Callable[[], bool], *, within: float) -> None:
    """Poll: link state and exporters change on the nodes' own timers, which signal no event
    to a test."""
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def open_nodes(texts: Mapping[str, str]) -> AsyncIterator[dict[str, Node]]:
    """Serve one node per ``{name: node.toml text}``, started in order, until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = {}
        for name, text in texts.items():
            config = parse_config(text, source=f"{name}.toml")
            nodes[name] = await stack.enter_async_context(open_node(config))
        yield nodes
