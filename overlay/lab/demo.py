"""``overlay demo``: one node with SIPp as caller and callee through it, over UDP and TCP.

Until the four-region overlay exists, the demo shows the foundation it is built on: a node
process proxying real SIP calls. It prints one row per transport and exits non-zero when any
call failed.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from overlay.lab.node_process import NODE_PORT, place_calls_through_node

NODE_HOST, UAS_HOST, UAC_HOST = "127.0.10.1", "127.0.10.2", "127.0.10.3"


async def run_demo(calls: int, rate: float) -> int:
    """Run the demo; returns the process exit code (0 when every call completed)."""
    console = Console()
    console.print(
        f"[bold]overlay demo[/]: SIPp UAC {UAC_HOST} → node {NODE_HOST}:{NODE_PORT} → "
        f"SIPp UAS {UAS_HOST}, {calls} calls at {rate:g} calls/s per transport"
    )
    table = Table(title="calls through one overlay node")
    for column in ("transport", "attempted", "completed", "failed", "retransmissions", "calls/s"):
        table.add_column(column, justify="right")
    failed = 0
    for transport in ("udp", "tcp"):
        with console.status(f"placing {calls} calls over {transport.upper()}…"):
            result = await place_calls_through_node(
                node_host=NODE_HOST,
                uas_host=UAS_HOST,
                uac_host=UAC_HOST,
                calls=calls,
                rate=rate,
                transport=transport,
            )
        failed += calls - result.calls_successful
        table.add_row(
            transport.upper(),
            str(result.calls_attempted),
            str(result.calls_successful),
            str(result.calls_failed),
            str(result.retransmissions),
            f"{result.rate:.0f}",
        )
    console.print(table)
    if failed:
        console.print(f"[red]{failed} calls did not complete[/]")
        return 1
    console.print("[green]every call completed[/]")
    return 0
