"""bench/false_alarm at a tiny size: two nodes through the impairment relays, links up, none
taken down, and the figures the bench prints."""

from __future__ import annotations

import re

import pytest

from tests.bench_runs import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_false_alarm_smoke() -> None:
    out = run_bench("false_alarm", ["--seconds", "3", "--seed", "7"], timeout=120).stdout
    assert "loss 2.0% each way, SIP and media; seed 7; 3 s" in out
    for node, peer in (("fa-a", "fa-b"), ("fa-b", "fa-a")):
        line = re.search(rf"^{node}: link to {peer} UP; 0 link events.*$", out, re.MULTILINE)
        assert line, out
        # The round trip the probes measured is the impairment's (330 ms), give or take the
        # relays' own scheduling.
        rtt = re.search(r"rtt (\d+) ms", line.group(0))
        assert rtt, line.group(0)
        assert 320 <= int(rtt.group(1)) <= 400, line.group(0)
        assert re.search(r"liveness echoes [1-9]\d* sent", line.group(0)), line.group(0)
    assert re.search(r"impairment media: to fa-b [1-9]\d* forwarded", out), out
    assert out.rstrip().endswith("PASS: no link down in 3 s"), out
