"""The four-region lab as real processes carrying real SIPp calls: degradation, kill -9, heal.

Every node is its own OS process on its own loopback address; latency between regions is the
impairment layer's emulation of the reference RTTs; link state floods over real gRPC; a SIPp
caller enters at us-west-2 and a SIPp callee sits behind us-east-1. Routes, links and counters
are read through each node's Control service, as a NOC tool would.
"""

from __future__ import annotations

import random

import pytest
import trio

from overlay.lab.lab import EGRESS, INGRESS, Lab
from overlay.lab.sipp import SippResult
from overlay.lab.topology import REGIONS
from overlay.v1 import control_pb2

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.slow, pytest.mark.sipp]

DIRECT = [INGRESS, EGRESS]
RELAYED = "sip.relayed.requests"


async def relayed(lab: Lab, node_id: str) -> int:
    return (await lab.counters(node_id)).get(RELAYED, 0)


async def assert_no_failed_call(lab: Lab, result: SippResult, calls: int) -> None:
    if (result.calls_successful, result.calls_failed) == (calls, 0):
        return
    failures = {k: v for k, v in result.stats.items() if k.startswith("Failed") and v != "0"}
    counters = {node_id: await lab.counters(node_id) for node_id in lab.live()}
    logs = "\n".join(f"--- {n}\n{lab.processes[n].log()[-4000:]}" for n in lab.live())
    pytest.fail(
        f"{result.calls_successful}/{calls} calls completed; SIPp: {failures}\n"
        f"counters: {counters}\n{logs}"
    )


@pytest.mark.trio
async def test_calls_follow_degradation_survive_kill_and_return_after_heal(lab: Lab) -> None:
    links = await lab.control(INGRESS, "ListLinks", control_pb2.ListLinksRequest())
    assert isinstance(links, control_pb2.ListLinksResponse)
    rtt = {link.neighbor: link.measured.rtt_ms for link in links.links}
    assert 60.0 < rtt[EGRESS] < 100.0  # the emulated 68 ms backbone RTT

    # Degraded direct link (delay and loss, but answering well within the detection time, so
    # the cost function must move the calls): a detour within 3 s, kept while degraded.
    await lab.degrade(INGRESS, EGRESS, delay_ms=60.0, loss_ratio=0.05)
    detour, _ = await lab.wait_path(INGRESS, EGRESS, lambda p: p != DIRECT, within=3)
    assert detour == [INGRESS, "use2", EGRESS]
    transit = detour[1]
    before = await relayed(lab, transit)
    paths: set[tuple[str, ...]] = set()

    async def watch_paths(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            paths.add(tuple(await lab.path(INGRESS, EGRESS)))
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_paths)
        result = await lab.place_calls(calls=20, rate=10, duration_ms=200)
        nursery.cancel_scope.cancel()
    await assert_no_failed_call(lab, result, 20)
    assert paths == {tuple(detour)}  # no flapping while degraded
    # INVITE, ACK and BYE of every call crossed the transit.
    assert await relayed(lab, transit) - before >= 3 * 20

    # kill -9 the transit region in use while calls are set up and torn down through it.
    async def kill_transit() -> None:
        lab.kill(transit)

    result, _ = await lab.calls_during(kill_transit, calls=60, rate=15, hold_ms=1000)
    await assert_no_failed_call(lab, result, 60)
    path = await lab.path(INGRESS, EGRESS)
    assert path, "no route left"
    assert transit not in path
    for node_id in lab.live():
        assert await lab.path(node_id, transit) == []  # every survivor dropped the dead node

    # Healed: new calls go back to the direct link; the remaining transit sees none of them.
    await lab.heal()
    await lab.wait_path(INGRESS, EGRESS, lambda p: p == DIRECT, within=10)
    others = [node_id for node_id in lab.live() if node_id not in DIRECT]
    before_heal = {node_id: await relayed(lab, node_id) for node_id in others}
    result = await lab.place_calls(calls=20, rate=10)
    await assert_no_failed_call(lab, result, 20)
    assert {node_id: await relayed(lab, node_id) for node_id in others} == before_heal
    # Every call anchored media at both edges, and every port came back (100 calls, one kill).
    for node_id in DIRECT:
        counters = await lab.counters(node_id)
        assert counters["media.ended.bye"] == 100
        assert (counters["media.sessions"], counters["media.ports_in_use"]) == (0, 0)


@pytest.mark.trio
async def test_killing_a_random_non_edge_region_fails_no_call(lab: Lab) -> None:
    victim = random.choice([node_id for node_id, _ in REGIONS if node_id not in DIRECT])

    async def kill_victim() -> None:
        lab.kill(victim)

    result, _ = await lab.calls_during(kill_victim, calls=45, rate=15, hold_ms=500)
    await assert_no_failed_call(lab, result, 45)
    await lab.wait_path(INGRESS, victim, lambda p: p == [], within=2)
    assert await lab.path(INGRESS, EGRESS) == DIRECT
