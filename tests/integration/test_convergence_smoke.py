"""bench/convergence at a tiny size: each half kills a destination and reports it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.sipp, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "convergence"

_SECONDS = r"\d+\.\d{3} s"


def run_bench(args: list[str], *, timeout: float) -> str:
    """Run bench/convergence; its stdout, once it exited 0."""
    done = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _kamailio_installed() -> bool:
    return shutil.which("kamailio") is not None or Path("/usr/sbin/kamailio").is_file()


def test_convergence_dispatcher_smoke() -> None:
    if not _kamailio_installed():
        pytest.skip("kamailio is not installed (apt-get install kamailio)")
    args = [
        "--only", "dispatcher",
        "--kills", "1",
        "--rate", "20",
        "--warmup", "1",
        "--after", "2",
        "--degrade-seconds", "2",
        "--window", "1",
    ]  # fmt: skip
    out = run_bench(args, timeout=30)
    kill_line = rf"^dispatcher kill  1: last new INVITE to it {_SECONDS} after the kill"
    assert re.search(kill_line, out, re.M), out
    assert re.search(rf"^kill: to last call, max +n/a +{_SECONDS} +n/a$", out, re.M), out
    assert re.search(r"^dispatcher degrade: \d+% of the new INVITEs", out, re.M), out


def test_convergence_overlay_smoke() -> None:
    args = [
        "--only", "overlay",
        "--kills", "1",
        "--rate", "20",
        "--warmup", "1.5",
        "--after", "2",
        "--degrade-seconds", "3",
        "--window", "1",
    ]  # fmt: skip
    out = run_bench(args, timeout=90)
    kill_line = (
        rf"^overlay kill  1: every survivor's routes avoid it {_SECONDS} after the kill, "
        rf"last new INVITE toward it {_SECONDS}; 0/\d+ calls failed"
    )
    assert re.search(kill_line, out, re.M), out
    assert re.search(rf"^kill: to avoid, max +{_SECONDS} +n/a +n/a$", out, re.M), out
    # A trial whose route never moved would be counted here, not shown as a 0 s one.
    assert re.search(r"^kill: route never moved \(failed\) +0 +n/a +n/a$", out, re.M), out
    assert re.search(r"^kill: trials dropped \(errors\) +0 +n/a +n/a$", out, re.M), out
    assert re.search(rf"^overlay degrade: 0% of the last 1 s .* rerouted: {_SECONDS}", out, re.M)
