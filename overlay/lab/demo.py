"""``overlay demo``: the four-region lab carrying SIPp calls through degradation, a dead region
and healing.

SIPp places calls from us-west-2 to a SIPp UAS behind us-east-1 in every phase: healthy (the
direct link), the direct link degraded (delay and loss), the transit region then in use killed
with kill -9, and every fault cleared. Each fault strikes while calls are being set up and torn
down. The table shows, per phase, the calls, the path us-west-2 uses to us-east-1 at its end and
how long after the fault that path changed.

A last phase kills the active of an egress pair mid-call: the two-region lab with pairs
(``overlay.lab.takeover``), a few calls carrying RTP both ways, and the table shows the
takeover's time, each call's longest audio gap and the calls kept. It needs moto's server as the
pairs' EC2 API; moto is a test dependency, so without it the phase is skipped with a line
saying so. The exit status is non-zero when any call failed or was not kept.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from overlay.grpc import Role
from overlay.lab.lab import EGRESS, INGRESS, Lab, open_lab
from overlay.lab.sipp import SippResult
from overlay.lab.takeover import TakeoverRun, kill_mid_call, open_takeover_lab
from overlay.lab.topology import REGIONS, lab_member_names

NET = "127.0.10"
DIRECT = [INGRESS, EGRESS]
# Below the detection time (300 ms RTT): the link stays up and the cost function moves calls.
DEGRADE_DELAY_MS = 60.0
DEGRADE_LOSS = 0.05
REROUTE_WITHIN_S = 15.0
# The pair phase: small, so that the demo stays quick. The hold covers placing the calls, the
# standby following them, the kill (up to 0.5 s later) and the takeover (about 1.5 s), and
# leaves a few seconds of audio after it.
PAIR_CALLS = 20
PAIR_RATE = 20.0
PAIR_HOLD_S = 6.0
PAIR_SEED = 0  # the kill's moment
#: The pair lab's first address in the demo's /24 (net.31 …): clear of the nodes, SIPp and
#: the members of ``overlay lab --pairs``.
PAIR_FIRST_HOST = 31


def lab_hosts(net: str = NET) -> tuple[dict[str, str], str, str]:
    """Node id → address (net.1 …), and the UAS's and the UAC's addresses (net.11, net.12)."""
    nodes = {node_id: f"{net}.{index}" for index, (node_id, _) in enumerate(REGIONS, start=1)}
    return nodes, f"{net}.11", f"{net}.12"


def member_hosts(net: str = NET) -> dict[str, str]:
    """With pairs, each member's own address (net.21 …): its gRPC, metrics and health."""
    return {name: f"{net}.{index}" for index, name in enumerate(lab_member_names(), start=21)}


@dataclass
class PhaseResult:
    name: str
    calls: SippResult
    path: list[str]
    reroute_s: float | None


async def run_demo(
    calls: int, rate: float, hold_ms: int, net: str = NET, *, pair: bool = True
) -> int:
    """Run the demo, with ``pair`` the pair phase too (when moto is installed); returns the
    process exit code (0 when every call completed and every call of the pair phase was
    kept)."""
    console = Console()
    if not console.is_terminal:
        console.width = 110  # a log file or CI: no need to wrap the table at 80 columns
    nodes, uas_host, uac_host = lab_hosts(net)
    console.print(
        f"[bold]overlay demo[/]: {len(nodes)} regions, SIPp caller {uac_host} → {INGRESS} … "
        f"{EGRESS} → SIPp callee {uas_host}; {calls} calls at {rate:g}/s per phase"
    )
    with console.status("starting the lab (one process per region)…"):
        async with open_lab(nodes, uas_host=uas_host, uac_host=uac_host) as lab:
            await lab.wait_all_links_up(within=REROUTE_WITHIN_S)
            await lab.wait_path(INGRESS, EGRESS, lambda p: p == DIRECT, within=REROUTE_WITHIN_S)
            results = await _phases(lab, console, calls=calls, rate=rate, hold_ms=hold_ms)
    console.print(_table(results))
    console.print(
        f"degraded: +{DEGRADE_DELAY_MS:g} ms and {DEGRADE_LOSS:.0%} loss each way on "
        f"{INGRESS}-{EGRESS}; killed: kill -9 of the node then carrying the calls; time to "
        f"reroute: from the fault to {INGRESS}'s new path"
    )
    failed = sum(result.calls.calls_attempted - result.calls.calls_successful for result in results)
    failed += sum(calls - result.calls.calls_attempted for result in results)
    if pair:
        failed += await _pair_phase(console, net)
    if failed:
        console.print(f"[red]{failed} calls did not complete or were not kept[/]")
        return 1
    console.print("[green]every call completed[/]")
    return 0


async def _phases(
    lab: Lab, console: Console, *, calls: int, rate: float, hold_ms: int
) -> list[PhaseResult]:
    results: list[PhaseResult] = []

    async def phase(name: str, event: Callable[[], Awaitable[float | None]]) -> None:
        console.log(f"phase: {name}")
        placed, reroute = await lab.calls_during(event, calls=calls, rate=rate, hold_ms=hold_ms)
        results.append(PhaseResult(name, placed, await lab.path(INGRESS, EGRESS), reroute))

    async def nothing() -> None:
        return None

    async def degrade() -> float:
        await lab.degrade(INGRESS, EGRESS, delay_ms=DEGRADE_DELAY_MS, loss_ratio=DEGRADE_LOSS)
        return await _reroute(lab, lambda p: p != DIRECT)

    async def kill_transit() -> float:
        transit = (await lab.path(INGRESS, EGRESS))[1:-1]
        for node_id in transit:
            lab.kill(node_id)
        return await _reroute(lab, lambda p: bool(p) and not set(transit) & set(p))

    async def heal() -> float:
        await lab.heal()
        return await _reroute(lab, lambda p: p == DIRECT)

    await phase("healthy", nothing)
    await phase("direct link degraded", degrade)
    await phase("transit region killed", kill_transit)
    await phase("faults cleared", heal)
    return results


async def _reroute(lab: Lab, accept: Callable[[list[str]], bool]) -> float:
    _, took = await lab.wait_path(INGRESS, EGRESS, accept, within=REROUTE_WITHIN_S)
    return took


async def _pair_phase(console: Console, net: str) -> int:
    """The egress pair's active killed mid-call, its table printed; returns the calls not kept
    (0 when the phase is skipped: moto is not installed)."""
    if importlib.util.find_spec("moto") is None:
        console.print(
            "pair phase skipped: it needs moto's server as the pairs' EC2 API, and moto (a test "
            "dependency) is not installed: pip install 'moto[server]'"
        )
        return 0
    console.log(f"phase: egress pair's active killed mid-call ({PAIR_CALLS} calls with RTP)")
    try:
        run = await _kill_egress_active(net)
    except trio.TooSlowError:
        console.print(
            "[red]pair phase: timed out (calls not answered, no audio, no takeover or the calls "
            "not ended in time)[/]"
        )
        return PAIR_CALLS
    console.print(_pair_table(run))
    console.print(
        f"the two-region lab with pairs: kill -9 of the active of {EGRESS}'s pair (node and HA "
        "agent) mid-call; takeover: from the kill to the standby holding the address; audio "
        "gap: each call's longest silence, the worse direction; kept: audio back both ways and "
        "the BYE answered"
    )
    return PAIR_CALLS - len(run.kept())


async def _kill_egress_active(net: str) -> TakeoverRun:
    """``overlay.lab.takeover``'s lab and kill, on addresses of the demo's /24 from
    ``PAIR_FIRST_HOST`` on."""
    numbers = itertools.count(PAIR_FIRST_HOST)
    with tempfile.TemporaryDirectory(prefix="overlay-demo-pair-") as workdir:
        async with open_takeover_lab(
            lambda: f"{net}.{next(numbers)}", calls=PAIR_CALLS, workdir=Path(workdir)
        ) as lab:
            return await kill_mid_call(
                lab,
                EGRESS,
                calls=PAIR_CALLS,
                rate=PAIR_RATE,
                hold_s=PAIR_HOLD_S,
                rng=random.Random(PAIR_SEED),
            )


def _pair_table(run: TakeoverRun) -> Table:
    table = Table(title=f"calls {INGRESS} → {EGRESS} with RTP, every node a pair")
    table.add_column("phase")
    for column in ("calls", "takeover", "audio gap p50 / max", "calls kept"):
        table.add_column(column, justify="right")
    gaps = [max(media.gaps()) for media in run.calls.values()]
    table.add_row(
        "egress pair: active killed mid-call",
        str(len(run.calls)),
        f"{run.takeover.held_s:.2f} s",
        f"{statistics.median(gaps) * 1000:.0f} / {max(gaps) * 1000:.0f} ms" if gaps else "-",
        f"{len(run.kept())}/{PAIR_CALLS}",
    )
    return table


def _table(results: list[PhaseResult]) -> Table:
    table = Table(title=f"calls {INGRESS} → {EGRESS} through the overlay")
    table.add_column("phase")
    for column in ("attempted", "completed", "failed"):
        table.add_column(column, justify="right")
    table.add_column("path in use")
    table.add_column("time to reroute", justify="right")
    for result in results:
        calls = result.calls
        table.add_row(
            result.name,
            str(calls.calls_attempted),
            str(calls.calls_successful),
            str(calls.calls_failed),
            " → ".join(result.path) or "none",
            "-" if result.reroute_s is None else f"{result.reroute_s * 1000:.0f} ms",
        )
    return table


async def run_lab(net: str = NET, *, pairs: bool = False) -> None:
    """Start the lab (with ``pairs``, every node as an active/standby pair) and keep it running
    until cancelled (Ctrl-C)."""
    console = Console()
    nodes, uas_host, uac_host = lab_hosts(net)
    hosts = {**nodes, **(member_hosts(net) if pairs else {})}
    async with open_lab(hosts, uas_host=uas_host, uac_host=uac_host, pairs=pairs) as lab:
        await lab.wait_all_links_up(within=REROUTE_WITHIN_S)
        console.print(_pairs_table(lab) if pairs else _nodes_table(lab))
        if pairs:
            console.print(
                "Each node is a pair: whichever member holds its address (the hold file its HA "
                "agents keep, through moto's EC2 API) serves it; kill -9 the holder's node and "
                "agent, and the other member takes over in about 1.5 s."
            )
        assert lab.uas is not None
        console.print(
            f"SIPp callee: udp:{lab.uas.host}:{lab.uas.port} behind {EGRESS}; calls enter at "
            f"{INGRESS} (e.g. sipp -sf uac_rr.xml {nodes[INGRESS]}:5060). Ctrl-C stops the lab."
        )
        assert lab.pki is not None
        noc = lab.pki.client("noc", Role.OPERATOR)
        console.print(
            f"NOC: overlayctl --target {lab.nodes[INGRESS].grpc_target} --ca {noc.ca} "
            f"--cert {noc.cert} --key {noc.key} links   (an operator certificate of the lab's CA)",
            soft_wrap=True,
        )
        await trio.sleep_forever()


def _nodes_table(lab: Lab) -> Table:
    table = Table(title="overlay lab: the reference topology")
    for column in ("node", "region", "SIP", "gRPC (Control)", "pid"):
        table.add_column(column)
    for node in lab.nodes.values():
        table.add_row(
            node.node_id,
            node.region,
            f"udp:{node.host}:5060",
            node.grpc_target,
            str(lab.processes[node.node_id].pid),
        )
    return table


def _pairs_table(lab: Lab) -> Table:
    table = Table(title="overlay lab: the reference topology, every node a pair")
    columns = ("node", "address", "member", "own address", "node pid", "agent pid")
    for column in columns:
        table.add_column(column)
    for node in lab.nodes.values():
        pair = lab.pairs[node.node_id]
        for name, member in pair.members.items():
            table.add_row(
                node.node_id,
                node.host,
                name + (" (holds)" if name == pair.holder() else ""),
                member.host,
                str(pair.nodes[name].pid),
                str(pair.agents[name].process.pid),
            )
    table.caption = (
        "address: the node's (SIP :5060, gRPC :7000, media), served by the member that holds "
        "it; own address: the member's gRPC :7000, metrics :9100, /ready :9101"
    )
    return table
