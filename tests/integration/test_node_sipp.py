"""A real node process between real SIPp callers and callees, over UDP and TCP."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from overlay.lab.node_process import place_calls_through_node

pytestmark = [pytest.mark.integration, pytest.mark.sipp]


@pytest.mark.trio
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_2000_calls_without_failure(loopback_host: Callable[[], str], transport: str) -> None:
    result = await place_calls_through_node(
        node_host=loopback_host(),
        uas_host=loopback_host(),
        uac_host=loopback_host(),
        calls=2000,
        rate=400,
        transport=transport,
    )
    assert result.calls_attempted == 2000, result
    assert result.calls_successful == 2000, result
    assert result.calls_failed == 0, result


@pytest.mark.trio
@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario"),
    [
        ("uas_ring_noanswer", "uac_cancel"),  # CANCEL before answer: 200 to CANCEL, 487 to INVITE
        ("uas_486", "uac_486"),  # the callee is busy: 486 reaches the caller, both ACKed
    ],
)
async def test_call_flows(
    loopback_host: Callable[[], str], uas_scenario: str, uac_scenario: str
) -> None:
    result = await place_calls_through_node(
        node_host=loopback_host(),
        uas_host=loopback_host(),
        uac_host=loopback_host(),
        calls=20,
        rate=10,
        uas_scenario=uas_scenario,
        uac_scenario=uac_scenario,
    )
    assert (result.calls_successful, result.calls_failed) == (20, 0), result


@pytest.mark.trio
async def test_silent_callee_gives_408_within_timer_b(loopback_host: Callable[[], str]) -> None:
    t1 = 0.05  # Timer B = 64 * T1 = 3.2 s
    result = await place_calls_through_node(
        node_host=loopback_host(),
        uas_host=loopback_host(),
        uac_host=loopback_host(),
        calls=3,
        rate=10,
        uas_scenario="uas_silent",
        uac_scenario="uac_expect_408",
        t1=t1,
    )
    assert (result.calls_successful, result.calls_failed) == (3, 0), result
    # The caller's run: three calls started 0.1 s apart, each answered 408 after Timer B.
    assert 64 * t1 <= result.elapsed_s < 64 * t1 + 1.5, result.elapsed_s
