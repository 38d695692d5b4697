"""``overlay demo``: the four-region lab carrying SIPp calls through degradation, a dead region
and healing.

SIPp places calls from us-west-2 to a SIPp UAS behind us-east-1 in every phase: healthy (the
direct link), the direct link degraded (delay and loss), the transit region then in use killed
with kill -9, and every fault cleared. Each fault strikes while calls are being set up and torn
down. The table shows, per phase, the calls, the path us-west-2 uses to us-east-1 at its end and
how long after the fault that path changed; the exit status is non-zero when any call failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from rich.console import Console
from rich.table import Table

from overlay.grpc import Role
from overlay.lab.lab import EGRESS, INGRESS, Lab, open_lab
from overlay.lab.sipp import SippResult
from overlay.lab.topology import REGIONS, lab_member_names

NET = "127.0.10"
DIRECT = [INGRESS, EGRESS]
# Below the detection time (300 ms RTT): the link stays up and the cost function moves calls.
DEGRADE_DELAY_MS = 60.0
DEGRADE_LOSS = 0.05
REROUTE_WITHIN_S = 15.0


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


async def run_demo(calls: int, rate: float, hold_ms: int, net: str = NET) -> int:
    """Run the demo; returns the process exit code (0 when every call completed)."""
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
    if failed:
        console.print(f"[red]{failed} calls did not complete[/]")
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
