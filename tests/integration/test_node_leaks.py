"""No transaction, response context or lookup outlives its timers, whatever arrives.

The node runs in-process on real loopback sockets under trio's MockClock, so the minutes of
RFC 3261 timers (Timer D alone is 32 s) pass in an instant once the traffic has been sent.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
import trio.testing

from overlay.config import parse_config
from overlay.shell.node import open_node
from tests.integration.raw_sip import hostile_messages, invite, receive_all

pytestmark = pytest.mark.integration


@pytest.mark.trio
async def test_hostile_traffic_leaves_nothing_behind(
    loopback_host: Callable[[], str], clock: trio.testing.MockClock
) -> None:
    node_host, sink_host, attacker_host = loopback_host(), loopback_host(), loopback_host()
    sink = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a callee that never answers
    await sink.bind((sink_host, 0))
    config = parse_config(
        f'[node]\nnode_id = "leak"\nregion = "lab"\n[sip]\nlisten = ["udp:{node_host}:0"]\n'
        f'[[dialplan]]\ntarget = "{sink_host}:{sink.getsockname()[1]}"\n',
        source="inline",
    )
    async with open_node(config) as node:
        [listener] = node.listeners
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            await attacker.bind((attacker_host, 0))
            port = attacker.getsockname()[1]
            messages = hostile_messages(attacker_host)
            messages += [invite(attacker_host, port, branch=f"z9hG4bK-{i}") for i in range(50)]
            for data in messages:
                await attacker.sendto(data[:65000], (listener.host, listener.port))
                await trio.lowlevel.checkpoint()
            answers = await receive_all(attacker)
        stats = node.signalling.statistics().proxy
        assert stats.transactions_client > 0  # the valid INVITEs went on to the silent callee
        assert any(a.startswith(b"SIP/2.0 400 ") for a in answers)
        assert not any(a.startswith(b"SIP/2.0 408 ") for a in answers)  # Timer B still runs
        await trio.sleep(600)  # every RFC 3261 timer runs out
        stats = node.signalling.statistics().proxy
        assert (stats.transactions_client, stats.transactions_server) == (0, 0), stats
        assert stats.contexts == 0, stats
        assert stats.pending_resolutions == 0, stats
        sink.close()
