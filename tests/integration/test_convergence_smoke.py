"""bench/convergence at a tiny size: each half kills a destination, then impairs a path, and
reports both; the dispatcher at both of its fr_timers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.bench_runs import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.sipp, pytest.mark.slow]

_SECONDS = r"\d+\.\d{3} s"


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
        "--ds-train", "1",
        "--seed", "7",
    ]  # fmt: skip
    out = run_bench("convergence", args, timeout=90).stdout
    # The kill trials at both fr_timers, in the same run.
    for fr in ("300 ms", "1 s"):
        kill_line = rf"^dispatcher {fr} kill  1: last new INVITE to it {_SECONDS} after the kill"
        assert re.search(kill_line, out, re.M), out
        assert re.search(rf"^dispatcher {fr} degrade: \+100 ms and 5% loss each way", out, re.M)
    assert re.search(r"^dispatcher: impairment relay seed 7 ", out, re.M), out
    assert re.search(r"relay seed 7: to it \d+ forwarded, \d+ dropped; from it \d+", out), out
    # Both dispatcher columns, the ratio column empty without the overlay.
    row = rf"^kill: to last call, max +n/a +{_SECONDS} +n/a +{_SECONDS}$"
    assert re.search(row, out, re.M), out
    moved = r"(\d+\.\d{3} s|never moved)"
    assert re.search(rf"^degrade: to move off the path +n/a +{moved} +n/a +{moved}$", out, re.M)
    assert re.search(r"^degrade: moves off / back +n/a +\d+ / \d+ +n/a +\d+ / \d+$", out, re.M)
    assert re.search(r"^degrade: share on it, last window +n/a +\d+% +n/a +\d+%$", out, re.M)


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
    out = run_bench("convergence", args, timeout=90).stdout
    kill_line = (
        rf"^overlay kill  1: every survivor's routes avoid it {_SECONDS} after the kill, "
        rf"last new INVITE toward it {_SECONDS}; 0/\d+ calls failed"
    )
    assert re.search(kill_line, out, re.M), out
    assert re.search(rf"^kill: to avoid, max +{_SECONDS} +n/a +n/a +n/a$", out, re.M), out
    # A trial whose route never moved would be counted here, not shown as a 0 s one.
    assert re.search(r"^kill: route never moved \(failed\) +0 +n/a +n/a +n/a$", out, re.M), out
    assert re.search(r"^kill: trials dropped \(errors\) +0 +n/a +n/a +n/a$", out, re.M), out
    degrade_line = (
        rf"^overlay degrade: \+100 ms and 5% loss each way: calls off the impaired path "
        rf"{_SECONDS} after it began, moves off / back 1 / 0, 0% of the new INVITEs"
    )
    assert re.search(degrade_line, out, re.M), out
    assert re.search(rf"^degrade: to move off the path +{_SECONDS} +n/a +n/a +n/a$", out, re.M)
    assert re.search(r"^degrade: moves off / back +1 / 0 +n/a +n/a +n/a$", out, re.M), out
