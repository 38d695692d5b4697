"""A seeded random chaos scenario through real node processes, and the generator's own rules.

The scenario (``overlay.lab.chaos``): a random topology of five regions with two ingresses,
SIPp callers at each ingress and an RTP lane per ingress for 40 s, under a random sequence of
degradations, partitions, kills, restarts and heals drawn from the seed. Every call must
succeed and every RTP call keep its audio; a failure prints the seed, the replay command and
the explanation of every failed Call-ID. ``--chaos-seed N`` (or ``OVERLAY_CHAOS_SEED``)
replays another seed.

The generator's tests need no lab: the same seed gives the same scenario, and no schedule
kills an edge, restarts a live node or cuts an ingress off the egress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from overlay.lab.chaos import (
    Degrade,
    Heal,
    Kill,
    Partition,
    Restart,
    larger_scenario,
    random_scenario,
    run_scenario,
)
from overlay.lab.topology import MAX_RTT_MS, MIN_RTT_MS

SECONDS = 40.0
RATE = 5.0
GAP_LIMIT_S = 1.0


def test_a_seed_is_a_whole_scenario() -> None:
    assert random_scenario(7).describe() == random_scenario(7).describe()
    assert random_scenario(7).describe() != random_scenario(8).describe()


@pytest.mark.parametrize("seed", range(40))
def test_schedules_keep_the_edges_alive_and_every_ingress_connected(seed: int) -> None:
    scenario = random_scenario(seed, seconds=90)
    topology = scenario.topology
    assert 5 <= len(topology.regions) <= 8
    assert len(topology.ingresses) >= 2
    assert all(MIN_RTT_MS <= ms <= MAX_RTT_MS for ms in topology.rtt.values())
    dead: set[str] = set()
    cut: set[frozenset[str]] = set()
    for step in scenario.steps:
        action = step.action
        if isinstance(action, Kill):
            assert action.node not in topology.edges() | dead
            dead.add(action.node)
        elif isinstance(action, Restart):
            assert action.node in dead
            dead.discard(action.node)
        elif isinstance(action, Partition):
            cut.add(frozenset({action.a, action.b}))
        elif isinstance(action, Degrade):
            cut.discard(frozenset({action.a, action.b}))
        elif isinstance(action, Heal):
            cut.clear()
        assert _connected(topology.sites(), topology.ingresses, topology.egress, dead, cut)
    # The quiet period: nothing dead, nothing cut, at least 10 s before the load ends.
    assert isinstance(scenario.steps[-1].action, Heal)
    assert not dead
    assert scenario.seconds - scenario.steps[-1].at_s >= 10


def _connected(
    sites: list[str],
    ingresses: tuple[str, ...],
    egress: str,
    dead: set[str],
    cut: set[frozenset[str]],
) -> bool:
    seen, todo = {egress}, [egress]
    while todo:
        here = todo.pop()
        for there in sites:
            if there not in dead | seen and frozenset({here, there}) not in cut:
                seen.add(there)
                todo.append(there)
    return set(ingresses) <= seen


def test_the_larger_case_is_the_issue_s_sequence() -> None:
    scenario = larger_scenario()
    assert len(scenario.topology.regions) == 6
    assert len(scenario.topology.ingresses) == 2
    assert (scenario.rate, scenario.hold_ms) == (20.0, 2000)
    kinds = [type(step.action).__name__ for step in scenario.steps]
    assert kinds == ["Degrade", "KillTransit", "Partition", "Restart", "KillTransit", "Heal"]


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.sipp
@pytest.mark.trio
async def test_random_chaos_fails_no_call(
    chaos_seed: int, loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    scenario = replace(
        random_scenario(chaos_seed, seconds=SECONDS, rate=RATE, regions=5),
        replay=f"pytest tests/chaos/test_chaos_random.py --chaos-seed {chaos_seed}",
    )
    with trio.fail_after(SECONDS + 120):
        result = await run_scenario(
            scenario, address=loopback_host, workdir=tmp_path, gap_limit_s=GAP_LIMIT_S
        )
    print(result.report())
    assert not result.failed(), f"seed {chaos_seed}:\n{result.report()}"
    assert result.rtp
    assert all(not call.failure for call in result.rtp)
    assert result.max_gap_s() <= GAP_LIMIT_S
