"""Edge security under load: a SIPp flood against a node on real sockets (overload control,
which every node has, is tests/integration/test_overload.py's).

The node runs in this process (so that its counters can be read) on its own loopback address;
SIPp callers, callee and flooder are processes of their own. On the 2-core development machine
one node process takes about 8,000 INVITEs/s when it only forwards them, and completes about
1,800 calls/s; without ``[security]`` a 30,000 INVITE/s flood made 1 legitimate call in 6 fail,
and 3,000 calls/s collapsed into retransmissions (659 of 12,000 calls failed, 37 s for a 4 s run).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import structlog.testing
import trio

from overlay.config import parse_config
from overlay.lab.node_process import options_probe
from overlay.lab.sipp import SippResult, open_uas, run_uac
from overlay.shell.node import Node, open_node

pytestmark = [pytest.mark.integration, pytest.mark.sipp]

FLOOD_RATE = 30_000  # INVITEs per second, from one address
FLOOD_SECONDS = 2.0
PROBE_INTERVAL = 0.05
#: The longest an OPTIONS may wait for its answer during the load: T1 (500 ms), after which a
#: caller would start retransmitting.
RESPONSIVE = 0.5


@asynccontextmanager
async def serving(config_text: str) -> AsyncIterator[tuple[Node, int]]:
    """A node from ``config_text`` serving until the block ends; yields it and its UDP port."""
    async with open_node(parse_config(config_text, source="node.toml")) as node:
        [listener] = node.listeners
        yield node, listener.port


async def probe_until(
    done: trio.Event, source: str, node: tuple[str, int], latencies: list[float]
) -> None:
    """OPTIONS to the node every PROBE_INTERVAL from ``source`` until ``done``; each answer's
    latency goes to ``latencies`` (an unanswered one counts as ``inf``)."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind((source, 0))
        attempt = 0
        while not done.is_set():
            attempt += 1
            call_id = f"probe-{attempt}"
            sent = trio.current_time()
            await sock.sendto(options_probe(*node, call_id=call_id), node)
            latency = float("inf")
            with trio.move_on_after(2.0):
                while call_id.encode() not in await sock.recv(65535):
                    pass
                latency = trio.current_time() - sent
            latencies.append(latency)
            with trio.move_on_after(PROBE_INTERVAL):
                await done.wait()


def _config(node_host: str, uas: tuple[str, int], sink: tuple[str, int], security: str) -> str:
    return (
        f'[node]\nnode_id = "edge"\nregion = "lab"\n'
        f'[sip]\nlisten = ["udp:{node_host}:0"]\n'
        f"[security]\n{security}\n"
        f'[[dialplan]]\nuser_prefix = "service"\ntarget = "{uas[0]}:{uas[1]}"\n'
        f'[[dialplan]]\ntarget = "{sink[0]}:{sink[1]}"\n'
    )


@pytest.mark.trio
async def test_flooder_is_blocked_while_legitimate_calls_complete(
    loopback_host: Callable[[], str],
) -> None:
    node_host, uas_host, caller, flooder, prober, sink_host = (loopback_host() for _ in range(6))
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # flood calls go nowhere
        await sink.bind((sink_host, 0))
        async with open_uas(uas_host) as uas:
            config = _config(node_host, uas.address, sink.getsockname(), "")  # the defaults
            with structlog.testing.capture_logs() as logs:
                async with serving(config) as (node, port):
                    target = (node_host, port)
                    results: dict[str, SippResult] = {}
                    latencies: list[float] = []
                    flood_over = trio.Event()

                    async def call() -> None:
                        results["calls"] = await run_uac(
                            target,
                            local_host=caller,
                            scenario="uac_rr",
                            calls=100,
                            rate=20,  # within the default limit of 20/s per source
                            max_seconds=30,
                        )

                    async def flood() -> None:
                        await trio.sleep(1.0)  # the calls are under way
                        results["flood"] = await run_uac(
                            target,
                            local_host=flooder,
                            scenario="flood_invite",
                            calls=int(FLOOD_RATE * FLOOD_SECONDS),
                            rate=FLOOD_RATE,
                            service="premium",  # the catch-all rule: to the silent sink
                            max_seconds=FLOOD_SECONDS + 20,
                        )
                        flood_over.set()

                    async with trio.open_nursery() as load:
                        load.start_soon(call)
                        load.start_soon(flood)
                        load.start_soon(probe_until, flood_over, prober, target, latencies)
                    await trio.sleep(1.5)  # the housekeeping tick logs the block
                    counters = node.counters()

    calls, flood_run = results["calls"], results["flood"]
    assert (calls.calls_attempted, calls.calls_successful, calls.calls_failed) == (100, 100, 0)
    assert calls.retransmissions == 0, calls
    assert flood_run.calls_attempted == FLOOD_RATE * FLOOD_SECONDS
    # The flooder got its burst, then 503s, then was blocked: 100 refusals (max_limited) in.
    assert counters["security.rate_limited"] == 100
    assert counters["security.blocked.flood"] == 1
    assert counters["security.blocked_sources"] == 1
    # After that its flood cost a dict lookup per datagram: almost none of it was parsed.
    assert counters["security.blocked_drops"] > 0.9 * flood_run.calls_attempted
    assert counters["sip.requests.INVITE"] < 100 + 40 + 100 + 10, counters
    # The node answered every probe, and fast.
    assert latencies, "no probe was sent"
    assert max(latencies) < RESPONSIVE, sorted(latencies)[-5:]
    blocked = [entry for entry in logs if entry["event"] == "source blocked"]
    assert len(blocked) == 1, logs
    assert (blocked[0]["source"], blocked[0]["reason"]) == (flooder, "flood")
