"""However tight edge security is, it never limits or blocks the overlay's own traffic.

Two in-process nodes with real sockets and gRPC, each with a closed ACL and a rate of one request
per second: calls from a trunk enter at A, cross to B and leave to a SIPp callee; the nodes keep
answering each other's probes; a stranger gets nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from overlay.lab.node_process import options_probe
from overlay.lab.sipp import open_uas, run_uac
from overlay.shell.node import Node
from tests.integration.raw_sip import receive_all, udp_socket
from tests.mesh_helpers import open_nodes

pytestmark = [pytest.mark.integration, pytest.mark.sipp]


def config(hosts: dict[str, str], node_id: str, trunk: str, callee: tuple[str, int]) -> str:
    host = hosts[node_id]
    (peer,) = (other for other in hosts if other != node_id)
    return f"""
[node]
node_id = "{node_id}"
region = "lab"

[sip]
listen = ["udp:{host}:5060"]

[grpc]
listen = "{host}:7000"
insecure = true

[linkstate]
probe_interval = 0.25  # a link survives a stall of this busy test process (DOWN after 0.75 s)

[[peers]]
node_id = "{peer}"
region = "lab"
sip = "{hosts[peer]}:5060"
grpc = "{hosts[peer]}:7000"

[security]
allow = []
rate = 1
burst = 1
max_limited = 1
max_failures = 1
sweep_users = 2

[[security.trunks]]
cidr = "{trunk}/32"
rate = 1000
burst = 1000

[[dialplan]]
target = "{callee[0]}:{callee[1]}"
egress = "sec-b"
"""


async def wait_reachable(node: Node, peer: str, *, within: float) -> None:
    """Poll: the link comes up on the nodes' own probe timers, which signal no event."""
    with trio.fail_after(within):
        while True:
            if node.mesh is not None and node.mesh.view.reachable(peer):
                return
            await trio.sleep(0.05)


@pytest.mark.trio
async def test_calls_and_probes_between_nodes_pass_the_tightest_limits(
    loopback_host: Callable[[], str],
) -> None:
    hosts = {"sec-a": loopback_host(), "sec-b": loopback_host()}
    trunk, uas_host, stranger = loopback_host(), loopback_host(), loopback_host()
    # The overlay's edges Record-Route: the callee must honour it (the lab's callee too).
    async with open_uas(uas_host, scenario="uas_rr") as uas:
        texts = {name: config(hosts, name, trunk, uas.address) for name in hosts}
        async with open_nodes(texts) as nodes:
            a = nodes["sec-a"]
            await wait_reachable(a, "sec-b", within=10.0)
            result = await run_uac(
                (hosts["sec-a"], 5060),
                local_host=trunk,
                scenario="uac_rr",
                calls=200,
                rate=50,
                max_seconds=30,
            )
            with await udp_socket(stranger) as sock:
                await sock.sendto(options_probe(hosts["sec-a"], 5060), (hosts["sec-a"], 5060))
                stranger_got = await receive_all(sock, quiet=0.5)
            assert a.mesh is not None
            link = a.mesh.monitors["sec-b"].statistics(trio.current_time())
            counters = {name: node.counters() for name, node in nodes.items()}
    assert (result.calls_successful, result.calls_failed) == (200, 0), result
    # B answered A's probes all along (a stall of this shared machine may cost one or two).
    assert link.probes_sent >= 10, link
    assert link.probes_answered >= 0.9 * link.probes_sent, link
    # B took 200 calls from A at 1 request/s allowed: none of them was even counted.
    assert counters["sec-b"]["sip.requests.INVITE"] >= 200
    for name in hosts:
        assert counters[name]["security.rate_limited"] == 0, name
        assert counters[name]["security.blocked_sources"] == 0, name
    assert stranger_got == []
    assert counters["sec-a"]["security.denied"] == 1
    assert counters["sec-b"]["security.denied"] == 0
