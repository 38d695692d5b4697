"""bench/sip_cps at a tiny size: both proxies start, carry calls and the ratio is printed."""

from __future__ import annotations

import re

import pytest

from tests.bench_runs import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.sipp, pytest.mark.slow]


def test_sip_cps_smoke() -> None:
    done = run_bench("sip_cps", ["--rates", "50", "--seconds", "2", "--runs", "1"], timeout=300)
    last = done.stdout.strip().splitlines()[-1]
    # One rung, passed by both: each limit is at or above it, and the ratio is unknown.
    assert "overlay ≥ 50 calls/s" in last, done.stdout
    assert "kamailio ≥ 50 calls/s" in last, done.stdout
    assert "ratio overlay/kamailio = n/a (both passed the top rung)" in last, done.stdout


def test_overlay_cps_smoke() -> None:
    """Both chains carry every call of one rung and of a short hold run at that rung's rate."""
    args = ["--rates", "20", "--seconds", "2", "--runs", "1", "--hold", "2"]
    # Pass or fail is the machine's; that both chains started and carried the calls is not.
    done = run_bench("overlay_cps", args, timeout=300, exits=(0, 1))
    out = done.stdout
    for side in ("overlay", "kamailio"):
        assert re.search(rf"^ *{side} @ +20/s run 1: 40/40 ok, 0 failed", out, re.M), out
        assert re.search(rf"^hold: {side} 40/40 ok, 0 failed", out, re.M), out
    assert re.search(r"^overlay: node A -> node B, workers = [12] per node", out, re.M), out
    assert re.search(r"^kamailio: K1 -> K2, children=2 each", out, re.M), out
    # Each table has its one rung: 1 run of 2 s, 40 calls, none failed.
    assert len(re.findall(r"^ +20 +1 +2 +40 +0 ", out, re.M)) == 2, out
    assert re.search(r"^highest clean rate: overlay .*; ratio overlay/kamailio = ", out, re.M), out
    if "refused workers=2" in out:  # until the nodes take workers > 1 with [[peers]]
        assert "overlay nodes refused workers=2: sip.workers" in out, out


def test_soak_smoke() -> None:
    # The verdict depends on the machine (stalls); that the chain carried the calls does not.
    done = run_bench(
        "soak",
        ["--rate", "20", "--minutes", "0.1", "--report-seconds", "3"],
        timeout=300,
        exits=(0, 1),
    )
    assert "calls   pass       120/120 succeeded, 0 failed" in done.stdout, done.stdout
    assert "memory  not judged" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("verdict: "), done.stdout


def test_takeover_smoke() -> None:
    done = run_bench("takeover", ["--trials", "1", "--calls", "4", "--rate", "10"], timeout=300)
    # Replicated, the calls are kept; without, the standby has none of them.
    assert re.search(r"^calls kept +4/4 +0/4$", done.stdout, re.MULTILINE), done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("ratios replicated/not:"), done.stdout
