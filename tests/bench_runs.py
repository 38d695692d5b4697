"""Running a benchmark script of bench/ from a test, as a user would: a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(
    name: str, args: Sequence[str], *, timeout: float, exits: Collection[int] = (0,)
) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<name> args``; fails the test (with its output) unless it exits with one of
    ``exits``."""
    done = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode in exits, done.stdout + done.stderr
    return done
