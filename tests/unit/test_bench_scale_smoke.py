"""bench/scale at a tiny size: it runs, prints its table and the target line, exits 0."""

from __future__ import annotations

from tests.bench_runs import run_bench


def test_bench_scale_smoke() -> None:
    done = run_bench("scale", ["--sizes", "10", "--recomputes", "2"], timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["nodes", "edges"], done.stdout
    row = lines[1].split()
    assert row[:2] == ["10", "90"], done.stdout  # a full mesh of 10 nodes: 90 directed edges
    # One link changed: both ends flood their LSA to the 9 others, nobody relays (healthy mesh).
    assert row[-1] == "18", done.stdout
    assert lines[-1].startswith("10 nodes recompute ≤ 150 ms: PASS"), done.stdout


def test_bench_scale_refuses_bad_sizes() -> None:
    done = run_bench("scale", ["--sizes", "ten"], timeout=60, exits=(2,))
    assert "not a comma-separated list of sizes" in done.stderr
