"""A new call whose egress is unreachable for a moment waits for a route instead of failing.

Two in-process overlay nodes on real sockets: the ingress takes a call before its egress has
even started; the call reaches the callee once link state has a route to the egress. With no
route within ``route_wait``, the caller gets 503 No Route to Egress.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from overlay.config import NodeConfig, parse_config
from overlay.shell.node import open_node
from tests.integration.raw_sip import invite, is_trunk_probe, udp_socket
from tests.mesh_helpers import FAST_PROBES, mesh_config

pytestmark = pytest.mark.integration


def node(name: str, host: str, peer: str, peer_host: str, target: str, extra: str) -> NodeConfig:
    text = mesh_config(
        name,
        host,
        peer,
        peer_host,
        region="lab",
        linkstate=f"{FAST_PROBES}\n{extra}",
        extra=f'\n[[dialplan]]\ntarget = "{target}"\negress = ["wait-b"]\n',
    )
    return parse_config(text, source=f"{name}.toml")


async def first_line(sock: trio.socket.SocketType, *, within: float) -> bytes:
    """The first line of the next message that is not a 100 Trying or a trunk probe."""
    with trio.fail_after(within):
        while True:
            data = await sock.recv(65535)
            line = data.split(b"\r\n", 1)[0]
            if not line.startswith(b"SIP/2.0 100") and not is_trunk_probe(data):
                return line


@pytest.mark.trio
async def test_call_waits_for_its_egress_to_become_reachable(
    loopback_host: Callable[[], str],
) -> None:
    a_host, b_host, uac_host, uas_host = (loopback_host() for _ in range(4))
    caller, callee = await udp_socket(uac_host), await udp_socket(uas_host)
    target = "{}:{}".format(*callee.getsockname())
    a = node("wait-a", a_host, "wait-b", b_host, target, "route_wait = 8")
    b = node("wait-b", b_host, "wait-a", a_host, target, "")
    with caller, callee:
        async with open_node(a) as ingress:
            await caller.sendto(invite(uac_host, caller.getsockname()[1]), (a_host, 5060))
            with trio.fail_after(2.0):
                assert (await caller.recv(65535)).startswith(b"SIP/2.0 100")
            started = trio.current_time()
            async with open_node(b):  # the egress comes up only now
                line = await first_line(callee, within=8.0)
            assert line.startswith(b"INVITE sip:service@"), line
            assert trio.current_time() - started < 8.0
            assert ingress.counters().get("sip.generated.503", 0) == 0


@pytest.mark.trio
async def test_call_without_a_route_in_time_gets_503(loopback_host: Callable[[], str]) -> None:
    a_host, b_host, uac_host = (loopback_host() for _ in range(3))
    caller = await udp_socket(uac_host)
    a = node("wait-a", a_host, "wait-b", b_host, "127.0.0.9:5060", "route_wait = 0.5")
    with caller:
        async with open_node(a):
            sent = trio.current_time()
            await caller.sendto(invite(uac_host, caller.getsockname()[1]), (a_host, 5060))
            line = await first_line(caller, within=3.0)
            assert line == b"SIP/2.0 503 No Route to Egress"
            assert 0.5 <= trio.current_time() - sent < 1.5
