"""bench/scale at a tiny size: it runs, prints its table and the target line, exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale"


def test_bench_scale_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "10", "--recomputes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["nodes", "edges"], done.stdout
    row = lines[1].split()
    assert row[:2] == ["10", "90"], done.stdout  # a full mesh of 10 nodes: 90 directed edges
    # One link changed: both ends flood their LSA to the 9 others, nobody relays (healthy mesh).
    assert row[-1] == "18", done.stdout
    assert lines[-1].startswith("10 nodes recompute ≤ 150 ms: PASS"), done.stdout


def test_bench_scale_refuses_bad_sizes() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "ten"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not a comma-separated list of sizes" in done.stderr
