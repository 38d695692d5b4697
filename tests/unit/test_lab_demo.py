"""``overlay demo``'s pair phase around ``overlay.lab.takeover``'s lab and kill: skipped with one
line without moto, a call not kept counted as a failure. The phase itself (real processes) runs
in ``./run demo``; ``tests/chaos/test_overlay_pairs.py`` runs the same lab and kill."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io

import pytest
import trio
from rich.console import Console

from overlay.lab import demo
from overlay.lab.lab import PairTakeover
from overlay.lab.rtp import Received
from overlay.lab.sipp import SippResult
from overlay.lab.takeover import EGRESS, CallMedia, TakeoverRun

KILLED_AT = 10.0
HELD_S = 1.4


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200), out


def _audio(start: float, end: float) -> Received:
    """20 ms packets from ``start`` to ``end`` with a silence over the takeover."""
    times = [start + i * 0.02 for i in range(round((end - start) / 0.02))]
    silent = (KILLED_AT, KILLED_AT + HELD_S + 0.1)
    return Received(
        arrivals=[(i, t) for i, t in enumerate(times) if not silent[0] <= t < silent[1]]
    )


def _run(calls: int, resumed: int) -> TakeoverRun:
    """A run of ``calls`` calls, the first ``resumed`` with audio back after the takeover."""
    media = {
        f"call-{i}": CallMedia(
            _audio(8.0, 16.0 if i < resumed else KILLED_AT),
            _audio(8.0, 16.0 if i < resumed else KILLED_AT),
        )
        for i in range(calls)
    }
    sipp = SippResult(calls, calls, 0, 0, 0, 10.0, 0, stats={})
    return TakeoverRun(
        EGRESS,
        PairTakeover(EGRESS, "use1.1", "use1.2", HELD_S, HELD_S + 0.05),
        KILLED_AT,
        sipp,
        media,
        0,
        calls,
        None,
    )


def test_without_moto_the_pair_phase_is_one_line_and_no_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    find_spec = importlib.util.find_spec

    def without_moto(
        name: str, package: str | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        return None if name == "moto" else find_spec(name, package)

    async def never(net: str) -> TakeoverRun:
        raise AssertionError("the lab must not start without moto")

    monkeypatch.setattr(importlib.util, "find_spec", without_moto)
    monkeypatch.setattr(demo, "_kill_egress_active", never)
    console, out = _console()
    assert trio.run(demo._pair_phase, console, demo.NET) == 0
    (line,) = out.getvalue().splitlines()
    assert "pair phase skipped" in line
    assert "moto" in line


@pytest.mark.parametrize("resumed", [demo.PAIR_CALLS, demo.PAIR_CALLS - 1])
def test_the_pair_phase_counts_the_calls_not_kept(
    monkeypatch: pytest.MonkeyPatch, resumed: int
) -> None:
    async def kill(net: str) -> TakeoverRun:
        return _run(demo.PAIR_CALLS, resumed)

    monkeypatch.setattr(demo, "_kill_egress_active", kill)
    console, out = _console()
    assert trio.run(demo._pair_phase, console, demo.NET) == demo.PAIR_CALLS - resumed
    row = next(line for line in out.getvalue().splitlines() if "egress pair:" in line)
    assert f"{resumed}/{demo.PAIR_CALLS}" in row
    assert f"{HELD_S:.2f} s" in row
    # The silence over the takeover: from the last packet before the kill to the first after
    # held + 100 ms, 1.52 s on every call that came back.
    assert "1520 / 1520 ms" in row


async def _too_slow(net: str) -> TakeoverRun:
    raise trio.TooSlowError


def test_a_pair_phase_that_times_out_fails_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_kill_egress_active", _too_slow)
    console, out = _console()
    assert trio.run(demo._pair_phase, console, demo.NET) == demo.PAIR_CALLS
    assert "timed out" in out.getvalue()
