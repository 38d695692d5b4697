"""Two overlay nodes offered far more calls than they can carry keep their link: the ingress
sheds the excess with 503, and link state never takes the load for a dead neighbour.

Real node processes with the default link-state timers (probes every 100 ms, down after 300 ms
of silence), a SIPp caller far above the chain's capacity (the machine's other processes only
make it busier), a SIPp callee behind the egress; bench/soak --shed runs the same for minutes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from overlay.lab.node_process import open_node
from overlay.lab.sipp import open_uas, run_uac
from tests.mesh_helpers import mesh_config, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.sipp]

#: Calls/s offered: twice what the chain of two one-worker nodes carries cleanly on a 2-core
#: machine (anchors.md: 750 to 1,000 calls/s).
OFFERED = 1500
SECONDS = 6
DEFAULT_TIMERS = "probe_interval = 0.1\nprobe_multiplier = 3\nhold_down = 2.0"
OVERLOAD = """
[security]
max_failures = 0
max_limited = 0

[[security.trunks]]
cidr = "127.0.0.0/8"
rate = 1000000
burst = 1000000
"""


@pytest.mark.trio
async def test_overloaded_chain_keeps_its_link_and_sheds_the_excess(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    a, b, uas_host, uac_host = (loopback_host() for _ in range(4))
    async with open_uas(uas_host, scenario="uas_no180") as uas:
        ingress = mesh_config(
            "load-a",
            a,
            "load-b",
            b,
            region="lab",
            linkstate=DEFAULT_TIMERS,
            extra=f'{OVERLOAD}\n[[dialplan]]\ntarget = "{uas.host}:{uas.port}"\n'
            'egress = ["load-b"]\n',
        )
        egress = mesh_config(
            "load-b",
            b,
            "load-a",
            a,
            region="lab",
            linkstate=DEFAULT_TIMERS,
            extra=f'\n[[dialplan]]\ntarget = "{uas.host}:{uas.port}"\n',
        )
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with (
            open_node(egress, host=b, port=5060, workdir=tmp_path / "b") as node_b,
            open_node(ingress, host=a, port=5060, workdir=tmp_path / "a") as node_a,
        ):
            await wait_for(
                lambda: "link up" in node_a.log() and "link up" in node_b.log(), within=15.0
            )
            result = await run_uac(
                (a, 5060),
                local_host=uac_host,
                scenario="uac_rr",
                calls=OFFERED * SECONDS,
                rate=OFFERED,
                max_seconds=SECONDS + 60,
            )
            await trio.sleep(0.5)  # anything the load set off has been logged
            logs = {"ingress": node_a.log(), "egress": node_b.log()}
    for name, text in logs.items():
        downs = [line for line in text.splitlines() if "link down" in line]
        assert not downs, f"{name} took its neighbour for dead: {downs}"
        assert not re.search(r"route changed.*unreachable", text), name
    assert "overload: refusing new calls" in logs["ingress"], "the load never overloaded it"
    assert result.calls_successful > 0, result
    assert result.calls_attempted == OFFERED * SECONDS, result
