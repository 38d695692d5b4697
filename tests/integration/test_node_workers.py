"""A node with two worker processes sharing its sockets."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from overlay.lab.node_process import node_config, open_node
from overlay.lab.sipp import open_uas, run_uac

pytestmark = [pytest.mark.integration, pytest.mark.sipp]

NODE_PORT = 5060


def worker_pids(parent: int) -> list[int]:
    """Children of the node's supervisor process, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry))
    return children


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie that nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.trio
@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario"), [("uas", "uac_rr"), ("uas_ring_noanswer", "uac_cancel")]
)
async def test_calls_through_two_workers(
    loopback_host: Callable[[], str], uas_scenario: str, uac_scenario: str
) -> None:
    node_host, uas_host, uac_host = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host, scenario=uas_scenario) as uas:
        config = node_config(
            host=node_host, port=NODE_PORT, target=f"{uas.host}:{uas.port}", workers=2
        )
        async with open_node(config, host=node_host, port=NODE_PORT) as node:
            assert len(worker_pids(node.pid)) == 2
            result = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario=uac_scenario,
                calls=300,
                rate=150,
                max_seconds=30,
            )
    assert (result.calls_successful, result.calls_failed) == (300, 0), result


@pytest.mark.trio
async def test_a_dead_worker_stops_the_node(loopback_host: Callable[[], str]) -> None:
    node_host = loopback_host()
    config = node_config(host=node_host, port=NODE_PORT, target="127.0.0.9:5060", workers=2)
    async with open_node(config, host=node_host, port=NODE_PORT) as node:
        workers = worker_pids(node.pid)
        os.kill(workers[0], signal.SIGKILL)
        with trio.fail_after(10):
            await node.process.wait()
        assert node.process.returncode == 1
        assert "worker died" in node.log()
        assert worker_pids(node.pid) == []


@pytest.mark.trio
async def test_sigterm_stops_every_worker(loopback_host: Callable[[], str]) -> None:
    node_host = loopback_host()
    config = node_config(host=node_host, port=NODE_PORT, target="127.0.0.9:5060", workers=2)
    async with open_node(config, host=node_host, port=NODE_PORT) as node:
        workers = worker_pids(node.pid)
        node.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await node.process.wait()
        assert node.process.returncode == 0, node.log()
        assert not any(alive(pid) for pid in workers)


@pytest.mark.trio
async def test_a_dead_supervisor_takes_its_workers_with_it(
    loopback_host: Callable[[], str],
) -> None:
    # The supervisor killed outright (an OOM kill): no orphan keeps serving the shared sockets,
    # which a restarted node must bind again.
    node_host = loopback_host()
    config = node_config(host=node_host, port=NODE_PORT, target="127.0.0.9:5060", workers=2)
    async with open_node(config, host=node_host, port=NODE_PORT) as node:
        workers = worker_pids(node.pid)
        assert len(workers) == 2
        node.process.kill()
        with trio.fail_after(10):
            await node.process.wait()
            while any(alive(pid) for pid in workers):  # noqa: ASYNC110 - other processes
                await trio.sleep(0.05)
    async with open_node(config, host=node_host, port=NODE_PORT) as again:
        assert len(worker_pids(again.pid)) == 2
