"""bench/sip_core_cpu.py at a tiny size, in both modes: it drives its calls through the node's
signalling path and prints the µs of CPU per call."""

from __future__ import annotations

import re

import pytest

from tests.bench_runs import run_bench


@pytest.mark.parametrize("mode", ["core", "pump"])
def test_sip_core_cpu_smoke(mode: str) -> None:
    done = run_bench(
        "sip_core_cpu.py", ["--calls", "50", "--runs", "1", "--mode", mode], timeout=120
    )
    assert re.search(
        rf"^{mode}: median \d+\.\d µs of CPU per call .*1 runs of 50 calls\)$",
        done.stdout,
        re.MULTILINE,
    ), done.stdout
