"""``overlay node`` under a service manager: READY=1 once it answers SIP, a watchdog fed from
its event loop, STOPPING=1 on SIGTERM (sd_notify over a Unix datagram socket, as systemd
passes it with Type=notify and WatchdogSec=)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from overlay.lab.node_process import wait_answers_options

pytestmark = pytest.mark.integration


@pytest.mark.trio
async def test_node_says_ready_feeds_its_watchdog_and_says_stopping(
    tmp_path: Path, loopback_host: Callable[[], str]
) -> None:
    host = loopback_host()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nnode_id = "sd"\nregion = "lab"\n[sip]\nlisten = ["udp:{host}:5060"]\n'
    )
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind(str(tmp_path / "notify"))
    environ = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "overlay", "node", "--config", str(config)],
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(30):
            assert await manager.recv(64) == b"READY=1"
            await wait_answers_options(host, 5060, within=5)  # ready: it serves
            pings = [await manager.recv(64) for _ in range(3)]  # every 0.2 s
            assert pings == [b"WATCHDOG=1"] * 3
            process.send_signal(signal.SIGTERM)
            while (state := await manager.recv(64)) == b"WATCHDOG=1":
                pass
            assert state == b"STOPPING=1"
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        manager.close()
