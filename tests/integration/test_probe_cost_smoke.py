"""bench/probe_cost at a tiny size: a two-node mesh with and without liveness echoes, each
node's CPU read from /proc over a second."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.sipp]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "probe_cost"


def test_probe_cost_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "2", "--seconds", "1", "--settle", "0.5"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^\s+2\s+1\s+(on|off)\s+(\d+\.\d)$", done.stdout, re.MULTILINE)
    assert [mode for mode, _ in rows] == ["on", "off"], done.stdout
    # An idle node costs something, and less than a core.
    assert all(0 < float(cost) < 1000 for _, cost in rows), done.stdout
