"""``overlay node`` as a pair member that holds the pair's address by file (``[pair] hold =
"file"``, the lab's mode): as the standby it serves gRPC at its own address and binds nothing of
the pair's; when the hold file names it, it binds its SIP sockets, its relay and gRPC at the
pair's address in one sweep; when the file names the other member, it exits with code 3.

The node's one peer is never started: the member's own behaviour does not depend on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from grpc_health.v1 import health_pb2

from overlay.grpc import open_grpc_bridge
from overlay.lab.node_process import wait_answers_options

pytestmark = pytest.mark.integration

CHECK_INTERVAL = 0.05
#: From the file naming the member to SIP answered at the pair's address: a check interval,
#: the sweep (a few ms) and the OPTIONS round trip, with room for a loaded machine.
JOIN_WITHIN_S = 2.0


def member_config(floating: str, own: str, peer: str, hold_file: Path) -> str:
    return f"""\
[node]
node_id = "use1"
region = "us-east-1"
[sip]
listen = ["udp:{floating}:5060", "tcp:{floating}:5060"]
[grpc]
listen = "{own}:7000"
insecure = true
[media]
address = "{floating}"
overlay = "{floating}:7100"
port_first = 21200
port_last = 21209
[log]
format = "json"
[[peers]]
node_id = "usw2"
region = "us-west-2"
sip = "{peer}:5060"
grpc = "{peer}:7000"
media = "{peer}:7100"
[pair]
address = "{floating}"
hold = "file"
hold_file = "{hold_file}"
member = "use1.2"
check_interval = {CHECK_INTERVAL}
"""


def free(host: str, port: int, kind: socket.SocketKind) -> bool:
    """Whether nothing holds ``host:port`` (a bind succeeds; released at once)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


async def serving(target: str) -> bool:
    async with open_grpc_bridge() as bridge:
        response = await bridge.unary(
            target,
            "/grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest(service=""),
            health_pb2.HealthCheckRequest.SerializeToString,
            health_pb2.HealthCheckResponse.FromString,
            timeout=2.0,
        )
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.trio
async def test_a_file_held_standby_binds_in_one_sweep_when_it_holds_and_stops_when_it_loses(
    tmp_path: Path, loopback_host: Callable[[], str]
) -> None:
    floating, own, peer = loopback_host(), loopback_host(), loopback_host()
    hold_file = tmp_path / "use1.hold"
    config = tmp_path / "node.toml"
    config.write_text(member_config(floating, own, peer, hold_file))
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind(str(tmp_path / "notify"))
    log_path = tmp_path / "node.log"
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "overlay", "node", "--config", str(config)],
            env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify")),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.fail_after(30):
            while await manager.recv(64) != b"READY=1":
                pass
        assert await serving(f"{own}:7000")
        for port, kind in (
            (5060, socket.SOCK_DGRAM),
            (5060, socket.SOCK_STREAM),
            (7100, socket.SOCK_DGRAM),
            (7000, socket.SOCK_STREAM),
        ):
            assert free(floating, port, kind), f"the standby holds {floating}:{port}"

        hold_file.write_text("use1.2\n")
        held_at = trio.current_time()
        await wait_answers_options(floating, 5060, within=JOIN_WITHIN_S)
        joined_s = trio.current_time() - held_at
        assert await serving(f"{floating}:7000")
        assert not free(floating, 7100, socket.SOCK_DGRAM)
        [sweep] = [
            line
            for line in map(json.loads, log_path.read_text().splitlines())
            if line.get("event") == "pair address held: bound in one sweep"
        ]
        assert (sweep["sip_sockets"], sweep["relay_sessions"]) == (2, 0)
        print(
            f"bind sweep {sweep['sweep_ms']} ms; SIP answered within {joined_s * 1000:.0f} ms "
            "(probed every 0.2 s)"
        )

        hold_file.write_text("use1.1\n")  # the other member took over
        with trio.fail_after(5):
            assert await process.wait() == 3
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        manager.close()
