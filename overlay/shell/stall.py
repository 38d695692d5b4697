"""Event-loop stall watchdog: how late the node's trio loop wakes a task that sleeps ``TICK``.

Everything a node does runs on one trio thread. When that thread cannot run (a long
garbage-collector pass, a burst of work, a machine short of CPU), timers fire late, probes wait
unanswered and the neighbours see the node fall silent: a stall longer than link detection's
window (three probe intervals) takes links down. ``StallWatchdog`` makes stalls visible: one
task sleeps ``TICK`` and measures how late it woke. It keeps a histogram of that lateness and
the longest stall (``/metrics``: ``overlay_loop_stall_seconds``, ``overlay_loop_stall_max_seconds``;
``GetCounters``: ``loop.stalls``, ``loop.longest_stall_us``), and logs a warning for every stall
of ``WARN_AFTER`` or more with the longest garbage-collector pass that ran meanwhile, so a
collector pause is told apart from overload, and with how long the loop's thread was on a CPU
meanwhile (``ran_ms``, its CPU clock, over the tick and the stall): a stall the thread spent
running is the node's own work; one it spent off the CPU is a machine short of CPU (or a
blocking call).

The collector's passes are timed through ``gc.callbacks`` (``GcPasses``), which run on whichever
thread triggered the pass, the gRPC bridge's included: they are timed with ``time.perf_counter``,
since the trio clock can be read only on the trio thread. The longest pass of each generation
is kept too (``gc.longest_pass_us.<generation>``, ``overlay_gc_pass_max_seconds``).
"""

from __future__ import annotations

import bisect
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

log = structlog.get_logger("overlay.stall")

TICK = 0.010  # seconds the watchdog sleeps between two measurements
WARN_AFTER = 0.050  # a stall this long or longer is logged (and counted in loop.stalls)
#: Upper bounds of the histogram's buckets, seconds (``+Inf`` is implied).
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GENERATIONS = 3


@dataclass(frozen=True, slots=True)
class GcPass:
    """One garbage-collector pass: its generation, how long it took and what it freed."""

    generation: int
    seconds: float
    collected: int


class GcPasses:
    """Times the collector's passes (install ``callback`` in ``gc.callbacks``).

    Passes never overlap (the collector runs under the GIL and refuses to re-enter), so one
    start time is enough.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self._longest: GcPass | None = None  # since the last take()
        self.longest_by_generation = [0.0] * GENERATIONS  # seconds, since the start

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        generation = info["generation"]
        done = GcPass(generation, self._clock() - self._started, info["collected"])
        if self._longest is None or done.seconds > self._longest.seconds:
            self._longest = done
        if done.seconds > self.longest_by_generation[generation]:
            self.longest_by_generation[generation] = done.seconds

    def take(self) -> GcPass | None:
        """The longest pass since the previous call, if any ran."""
        longest, self._longest = self._longest, None
        return longest


@dataclass(frozen=True, slots=True)
class StallStatistics:
    """The watchdog's measurements since the node started.

    ``buckets`` pairs each bound of ``BUCKETS`` (and ``inf``) with the number of ticks at
    most that late (cumulative, as Prometheus wants them); ``late_sum`` is their total.
    """

    ticks: int
    stalls: int  # ticks WARN_AFTER or more late
    longest: float  # seconds
    late_sum: float
    buckets: tuple[tuple[float, int], ...]
    gc_longest: tuple[float, ...]  # by generation, seconds


class StallWatchdog:
    """See the module docstring. ``observe`` is the measurement, ``run`` the task."""

    def __init__(
        self,
        *,
        tick: float = TICK,
        warn_after: float = WARN_AFTER,
        gc_passes: GcPasses | None = None,
    ) -> None:
        self._tick = tick
        self._warn_after = warn_after
        self.gc_passes = GcPasses() if gc_passes is None else gc_passes
        self._counts = [0] * (len(BUCKETS) + 1)
        self._ticks = 0
        self._stalls = 0
        self._longest = 0.0
        self._late_sum = 0.0

    def observe(
        self, late: float, gc_pass: GcPass | None = None, *, ran: float | None = None
    ) -> None:
        """Record a tick that woke ``late`` seconds after its deadline, during which
        ``gc_pass`` was the longest collector pass (if any ran) and the loop's thread ran
        ``ran`` seconds (if measured)."""
        late = max(late, 0.0)
        self._ticks += 1
        self._late_sum += late
        self._counts[bisect.bisect_left(BUCKETS, late)] += 1
        self._longest = max(self._longest, late)
        if late < self._warn_after:
            return
        self._stalls += 1
        fields: dict[str, float] = {"stall_ms": round(late * 1000, 1)}
        if ran is not None:
            fields["ran_ms"] = round(ran * 1000, 1)
        if gc_pass is not None:
            fields["gc_generation"] = gc_pass.generation
            fields["gc_ms"] = round(gc_pass.seconds * 1000, 1)
            fields["gc_collected"] = gc_pass.collected
        log.warning("event loop stalled", **fields)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure until cancelled, with the collector's passes timed meanwhile."""
        gc.callbacks.append(self.gc_passes.callback)
        try:
            task_status.started()
            self.gc_passes.take()  # what ran before the first tick is no stall of the loop
            while True:
                deadline = trio.current_time() + self._tick
                cpu = time.thread_time()
                await trio.sleep_until(deadline)
                late = trio.current_time() - deadline
                self.observe(late, self.gc_passes.take(), ran=time.thread_time() - cpu)
        finally:
            gc.callbacks.remove(self.gc_passes.callback)

    def statistics(self) -> StallStatistics:
        cumulative = 0
        buckets = []
        for bound, count in zip((*BUCKETS, math.inf), self._counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return StallStatistics(
            ticks=self._ticks,
            stalls=self._stalls,
            longest=self._longest,
            late_sum=self._late_sum,
            buckets=tuple(buckets),
            gc_longest=tuple(self.gc_passes.longest_by_generation),
        )

    def counters(self) -> dict[str, int]:
        """By dotted name, for ``Node.counters()``: microseconds, so a short pass is not 0."""
        counters = {
            "loop.stalls": self._stalls,
            "loop.longest_stall_us": round(self._longest * 1e6),
        }
        for generation, seconds in enumerate(self.gc_passes.longest_by_generation):
            counters[f"gc.longest_pass_us.{generation}"] = round(seconds * 1e6)
        return counters
