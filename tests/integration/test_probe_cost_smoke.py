"""bench/probe_cost at a tiny size: a two-node mesh with and without liveness echoes, each
node's CPU read from /proc over a second."""

from __future__ import annotations

import re

import pytest

from tests.bench_runs import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.sipp]


def test_probe_cost_smoke() -> None:
    done = run_bench(
        "probe_cost", ["--sizes", "2", "--seconds", "1", "--settle", "0.5"], timeout=180
    )
    rows = re.findall(r"^\s+2\s+1\s+(on|off)\s+(\d+\.\d)$", done.stdout, re.MULTILINE)
    assert [mode for mode, _ in rows] == ["on", "off"], done.stdout
    # An idle node costs something, and less than a core.
    assert all(0 < float(cost) < 1000 for _, cost in rows), done.stdout
