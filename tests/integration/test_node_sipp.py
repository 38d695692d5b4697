"""A real node process between real SIPp callers and callees, over UDP and TCP."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from overlay.lab.node_process import node_config, open_node
from overlay.lab.sipp import open_uas, run_uac

pytestmark = [pytest.mark.integration, pytest.mark.sipp]

NODE_PORT = 5060


@pytest.mark.trio
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_2000_calls_without_failure(loopback_host: Callable[[], str], transport: str) -> None:
    node_host, uas_host, uac_host = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host, scenario="uas", transport=transport) as uas:
        config = node_config(
            host=node_host,
            port=NODE_PORT,
            target=f"{uas.host}:{uas.port}",
            dialplan_transport=transport,
        )
        async with open_node(config, host=node_host, port=NODE_PORT):
            result = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario="uac_rr",
                calls=2000,
                rate=400,
                transport=transport,
                max_seconds=60,
            )
    assert result.calls_attempted == 2000, result
    assert result.calls_successful == 2000, result
    assert result.calls_failed == 0, result


@pytest.mark.trio
async def test_cancel_before_answer(loopback_host: Callable[[], str]) -> None:
    node_host, uas_host, uac_host = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host, scenario="uas_ring_noanswer") as uas:
        config = node_config(host=node_host, port=NODE_PORT, target=f"{uas.host}:{uas.port}")
        async with open_node(config, host=node_host, port=NODE_PORT):
            result = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario="uac_cancel",
                calls=20,
                rate=10,
                max_seconds=30,
            )
    assert (result.calls_successful, result.calls_failed) == (20, 0), result


@pytest.mark.trio
async def test_busy_callee(loopback_host: Callable[[], str]) -> None:
    node_host, uas_host, uac_host = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host, scenario="uas_486") as uas:
        config = node_config(host=node_host, port=NODE_PORT, target=f"{uas.host}:{uas.port}")
        async with open_node(config, host=node_host, port=NODE_PORT):
            result = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario="uac_486",
                calls=20,
                rate=10,
                max_seconds=30,
            )
    assert (result.calls_successful, result.calls_failed) == (20, 0), result


@pytest.mark.trio
async def test_silent_callee_gives_408_within_timer_b(loopback_host: Callable[[], str]) -> None:
    t1 = 0.05  # Timer B = 64 * T1 = 3.2 s
    node_host, uas_host, uac_host = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host, scenario="uas_silent") as uas:
        config = node_config(host=node_host, port=NODE_PORT, target=f"{uas.host}:{uas.port}", t1=t1)
        async with open_node(config, host=node_host, port=NODE_PORT):
            start = trio.current_time()
            result = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario="uac_expect_408",
                calls=3,
                rate=10,
                max_seconds=30,
            )
            elapsed = trio.current_time() - start
    assert (result.calls_successful, result.calls_failed) == (3, 0), result
    # Each call waits Timer B (3.2 s); all three overlap. Allow process start-up slack only.
    assert 64 * t1 <= elapsed < 64 * t1 + 3.0, elapsed
