"""overlay.shell.stall: the event-loop stall watchdog on trio's MockClock, and collector timing."""

from __future__ import annotations

import gc
import itertools

import pytest
import structlog.testing
import trio
import trio.testing

from overlay.shell.stall import BUCKETS, GcPasses, StallWatchdog


def test_observe_fills_the_histogram_and_keeps_the_longest() -> None:
    watchdog = StallWatchdog()
    with structlog.testing.capture_logs() as logs:
        for late in (0.0002, 0.003, 0.003, 0.049, 0.120, -0.001):
            watchdog.observe(late)
    stats = watchdog.statistics()
    assert stats.ticks == 6
    assert stats.stalls == 1  # only 120 ms is WARN_AFTER or more
    assert stats.longest == pytest.approx(0.120)
    assert stats.late_sum == pytest.approx(0.1752)
    cumulative = dict(stats.buckets)
    assert cumulative[0.001] == 2  # 0.2 ms and the early wake-up, counted as 0
    assert cumulative[0.005] == 4
    assert cumulative[0.05] == 5
    assert cumulative[0.25] == 6
    assert stats.buckets[-1] == (float("inf"), 6)
    assert [bound for bound, _ in stats.buckets[:-1]] == list(BUCKETS)
    assert logs == [{"event": "event loop stalled", "log_level": "warning", "stall_ms": 120.0}]
    assert watchdog.counters() == {
        "loop.stalls": 1,
        "loop.longest_stall_us": 120_000,
        "gc.longest_pass_us.0": 0,
        "gc.longest_pass_us.1": 0,
        "gc.longest_pass_us.2": 0,
    }


def test_a_stall_names_the_collector_pass_that_ran_meanwhile() -> None:
    ticks = itertools.count()
    passes = GcPasses(clock=lambda: next(ticks) * 0.070)  # every pass takes 70 ms
    passes.callback("start", {"generation": 2, "collected": 0, "uncollectable": 0})
    passes.callback("stop", {"generation": 2, "collected": 41, "uncollectable": 0})
    watchdog = StallWatchdog(gc_passes=passes)
    with structlog.testing.capture_logs() as logs:
        watchdog.observe(0.075, passes.take(), ran=0.0851)
        watchdog.observe(0.080, passes.take(), ran=0.0042)  # no pass; the thread was off CPU
    assert logs == [
        {
            "event": "event loop stalled",
            "log_level": "warning",
            "stall_ms": 75.0,
            "ran_ms": 85.1,
            "gc_generation": 2,
            "gc_ms": 70.0,
            "gc_collected": 41,
        },
        {"event": "event loop stalled", "log_level": "warning", "stall_ms": 80.0, "ran_ms": 4.2},
    ]
    assert watchdog.counters()["gc.longest_pass_us.2"] == 70_000


def test_gc_passes_keep_the_longest_since_the_last_take() -> None:
    times = iter([0.0, 0.002, 1.0, 1.030, 2.0, 2.001])
    passes = GcPasses(clock=lambda: next(times))
    for generation, collected in ((0, 3), (1, 0), (0, 7)):
        passes.callback("start", {"generation": generation})
        passes.callback("stop", {"generation": generation, "collected": collected})
    longest = passes.take()
    assert longest is not None
    assert (longest.generation, longest.collected) == (1, 0)
    assert longest.seconds == pytest.approx(0.030)
    assert passes.take() is None
    assert passes.longest_by_generation == [pytest.approx(0.002), pytest.approx(0.030), 0.0]


@pytest.mark.trio
async def test_watchdog_measures_a_stall_of_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watchdog = StallWatchdog()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.run)
            await trio.sleep(1.0)  # a hundred punctual ticks
            await trio.sleep(0.005)
            autojump_clock.jump(0.2)  # the loop could not run for 200 ms
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    stats = watchdog.statistics()
    assert stats.stalls == 1
    assert stats.longest == pytest.approx(0.195)
    assert dict(stats.buckets)[0.001] == stats.ticks - 1
    [line] = logs
    assert line["event"] == "event loop stalled"
    assert line["stall_ms"] == pytest.approx(195.0)
    assert line["ran_ms"] < 50  # the clock jumped: the loop's thread did not run 200 ms


@pytest.mark.trio
async def test_watchdog_times_the_collector_only_while_it_runs() -> None:
    watchdog = StallWatchdog()
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        assert watchdog.gc_passes.callback in gc.callbacks
        gc.collect(0)
        assert watchdog.gc_passes.longest_by_generation[0] > 0
        nursery.cancel_scope.cancel()
    assert watchdog.gc_passes.callback not in gc.callbacks
