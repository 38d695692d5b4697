"""Fault injection: per-peer verdicts and the delay line that carries delayed sends."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from overlay.shell.transport import ALL_PEERS, DelayLine, Fault, Impairments


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """No real I/O here: time jumps as soon as every task waits."""
    return trio.testing.MockClock(autojump_threshold=0)


def impairments(**kwargs: object) -> Impairments:
    return Impairments(rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def test_no_fault_means_base_delay_only():
    imp = impairments(base_delay_ms={"b": 34.0})
    assert imp.verdict("b") == pytest.approx(0.034)
    assert imp.verdict("c") == 0.0


def test_delay_and_jitter_add_to_base_delay():
    imp = impairments(base_delay_ms={"b": 34.0})
    imp.inject("b", Fault(delay_ms=100.0, jitter_ms=10.0))
    delays = [imp.verdict("b") for _ in range(1000)]
    assert all(d is not None and 0.134 <= d <= 0.144 for d in delays)
    assert max(d for d in delays if d is not None) > 0.142


def test_loss_ratio_drops_that_fraction():
    imp = impairments()
    imp.inject("b", Fault(loss_ratio=0.3))
    verdicts = [imp.verdict("b") for _ in range(10_000)]
    lost = verdicts.count(None)
    assert 2800 < lost < 3200
    assert imp.dropped == lost


def test_blackhole_drops_everything_and_wildcard_applies_to_all_peers():
    imp = impairments()
    imp.inject(ALL_PEERS, Fault(blackhole=True))
    assert imp.verdict("b") is None
    assert imp.verdict("c") is None
    # A peer's own fault wins over the wildcard.
    imp.inject("c", Fault(delay_ms=5.0))
    assert imp.verdict("c") == pytest.approx(0.005)
    assert imp.clear("c") == 1
    assert imp.clear("c") == 0
    assert imp.clear() == 1
    assert imp.verdict("b") == 0.0


def test_addresses_map_to_peers():
    imp = impairments(addresses={"b": [("127.0.0.12", 5060), ("127.0.0.12", 7000)]})
    assert imp.peer_at("127.0.0.12", 7000) == "b"
    assert imp.peer_at("127.0.0.12", 5061) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_ms": -1.0}, "delay_ms"),
        ({"jitter_ms": float("nan")}, "jitter_ms"),
        ({"loss_ratio": 1.5}, "loss_ratio"),
    ],
)
def test_bad_fault_is_refused(kwargs: dict[str, float], message: str):
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)


@pytest.mark.trio
async def test_delay_line_runs_callbacks_at_their_time_in_order(clock: trio.testing.MockClock):
    line = DelayLine()
    seen: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(line.run)
        start = trio.current_time()
        for name, delay in [("slow", 0.3), ("fast", 0.1), ("mid", 0.2)]:
            line.schedule(delay, lambda name=name: seen.append((name, trio.current_time())))
        # A key keeps its order even when a later callback has a shorter delay.
        line.schedule(0.25, lambda: seen.append(("tcp1", trio.current_time())), ordered_key="p")
        line.schedule(0.05, lambda: seen.append(("tcp2", trio.current_time())), ordered_key="p")
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in seen] == ["fast", "mid", "tcp1", "tcp2", "slow"]
    times = dict(seen)
    assert times["fast"] - start == pytest.approx(0.1, abs=0.02)
    assert times["tcp2"] == times["tcp1"]
    assert len(line) == 0
