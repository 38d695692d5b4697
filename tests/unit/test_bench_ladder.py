"""bench/_ladder.py: the rung rule, "≥" for a side that passed the top rung, ratios as bounds,
and the worst second of a hold run read from SIPp's per-second statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _ladder import (
    Clean,
    Second,
    format_clean,
    format_ratio,
    run_failure,
    seconds_from_stat_csv,
    worst_seconds,
)

from overlay.lab.sipp import SippResult


@pytest.mark.parametrize(
    ("clean", "shown"),
    [
        (Clean(3000), "3000 calls/s"),
        (Clean(8000, open=True), "≥ 8000 calls/s"),
        (Clean(None), "none (lowest rung failed)"),
    ],
)
def test_format_clean(clean: Clean, shown: str) -> None:
    assert format_clean(clean) == shown


@pytest.mark.parametrize(
    ("numerator", "denominator", "shown"),
    [
        (Clean(1500), Clean(2000), "0.75"),
        # The numerator passed the top rung: its limit, and so the ratio, may be higher.
        (Clean(8000, open=True), Clean(4500), "≥ 1.78"),
        # The denominator passed it: the ratio may be lower.
        (Clean(3000), Clean(8000, open=True), "≤ 0.38"),
        (Clean(8000, open=True), Clean(8000, open=True), "n/a (both passed the top rung)"),
        (Clean(None), Clean(2000), "n/a"),
        (Clean(1500), Clean(None), "n/a"),
    ],
)
def test_format_ratio(numerator: Clean, denominator: Clean, shown: str) -> None:
    assert format_ratio(numerator, denominator) == shown


def result(
    *,
    attempted: int = 1000,
    successful: int = 1000,
    failed: int = 0,
    retransmissions: int = 0,
    elapsed_s: float = 10.0,
    returncode: int = 0,
) -> SippResult:
    return SippResult(
        calls_attempted=attempted,
        calls_successful=successful,
        calls_failed=failed,
        retransmissions=retransmissions,
        unexpected_messages=0,
        elapsed_s=elapsed_s,
        returncode=returncode,
        stats={},
    )


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({}, ""),
        ({"retransmissions": 9}, ""),
        ({"retransmissions": 10}, "1.00% retrans"),
        ({"successful": 998, "failed": 2, "returncode": 1}, "2 failed"),
        ({"attempted": 900, "successful": 900, "returncode": 1}, "900 of 1000 calls attempted"),
        # 10 s of calls at 100/s: done within 10 / 0.9 + 1 s passes, later fails.
        ({"elapsed_s": 12.0}, ""),
        ({"elapsed_s": 12.5}, "took 12.5 s (80 cps)"),
        ({"returncode": 99}, "SIPp exit status 99"),
    ],
)
def test_run_failure(kwargs: dict[str, int], why: str) -> None:
    assert run_failure(result(**kwargs), 100, 10.0) == why


HEADER = "StartTime;CurrentTime;OutgoingCall(C);SuccessfulCall(C);FailedCall(C);Retransmissions(C);"
START = "2026-12-07\t17:41:32.000000\t1000.000000"


def row(at: float, placed: int, ok: int, failed: int, retrans: int) -> str:
    return f"{START};2026-12-07\t17:41:33\t{1000 + at:.6f};{placed};{ok};{failed};{retrans};"


def test_worst_seconds_from_stat_csv() -> None:
    text = "\n".join(
        [
            HEADER,
            row(0.0, 0, 0, 0, 0),
            row(1.0, 100, 95, 0, 0),  # the ramp: left out of "fewest completed"
            row(2.0, 200, 195, 0, 3),
            row(3.0, 300, 240, 0, 40),  # a stall: most retransmissions, fewest completed
            row(4.0, 400, 400, 1, 42),
            row(5.0, 400, 400, 1, 42),  # placing had ended
            row(5.2, 400, 400, 1, 42),  # SIPp's last row at exit, a fraction of a second
        ]
    )
    periods = seconds_from_stat_csv(text)
    assert [p.end_s for p in periods] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 5.2])
    assert periods[2] == Second(
        end_s=periods[2].end_s, placed=300, completed=45, failed=0, retransmissions=37
    )
    worst, slowest = worst_seconds(periods, calls=400)
    assert worst is periods[2]
    assert slowest is periods[2]


def test_worst_seconds_without_periods() -> None:
    assert seconds_from_stat_csv(HEADER) == []
    assert worst_seconds([], calls=10) == (None, None)
