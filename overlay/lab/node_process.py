"""Run an overlay node as its own OS process, for the demo, the lab, tests and benchmarks.

The node is started as ``python -m overlay node --config FILE`` and is ready once it answers a
SIP OPTIONS sent to its own address (the same probe a SIP peer would use), or, for a pair's
standby that binds no SIP socket yet, once the caller's own test says so; nothing waits on a
fixed sleep. It is stopped by PID: SIGTERM, then SIGKILL after a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from overlay.lab._process import stop_process
from overlay.lab.sipp import SippResult, open_uas, run_uac

READY_TIMEOUT_S = 20.0
NODE_PORT = 5060  # the lab gives every node its own address, so the standard port is free


@dataclass
class NodeProcess:
    """A running node: its SIP address, its process and where its log goes."""

    host: str
    port: int
    process: trio.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the node's process and the SIP workers it forked (its process group, its
        own since it started), as its machine dying would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def options_probe(host: str, port: int, *, call_id: str = "overlay-probe") -> bytes:
    """An OPTIONS request addressed to the SIP element at host:port itself."""
    lines = [
        f"OPTIONS sip:{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:9;branch=z9hG4bK-{call_id}-{os.getpid()};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@{host}>;tag=probe",
        f"To: <sip:{host}:{port}>",
        f"Call-ID: {call_id}-{os.getpid()}",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def wait_answers_options(host: str, port: int, *, within: float, every: float = 0.2) -> None:
    """Return once a SIP element on UDP host:port answers OPTIONS, sent ``every`` seconds until
    one is answered; raise TimeoutError after ``within`` seconds."""
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    with sock, trio.fail_after(within):
        await sock.bind((host, 0))
        attempt = 0
        while True:
            attempt += 1
            await sock.sendto(options_probe(host, port, call_id=f"probe{attempt}"), (host, port))
            with trio.move_on_after(every):
                data = await sock.recv(65535)
                if data.startswith(b"SIP/2.0 "):
                    return


def set_niceness(pid: int, niceness: int) -> None:
    """Give every thread of process ``pid`` the scheduling ``niceness`` (Linux: per thread).

    The lab runs every node on one machine; a node started while the others carry calls gets
    its start-up burst (imports, TLS, gRPC, the first link-state exchange: about a second of a
    core) at a low priority, as if it had a machine of its own, then its normal priority back.
    Lowering a niceness needs privileges: without them the node keeps the one it has.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return
    for tid in threads:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)


@asynccontextmanager
async def open_node(
    config_text: str,
    *,
    host: str,
    port: int,
    workdir: Path | None = None,
    niceness: int = 0,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[NodeProcess]:
    """Start a node from ``config_text`` (TOML) whose UDP listener is host:port.

    Its config and log go in ``workdir``, kept afterwards and appended to by a node started
    there again (a restart keeps one log), or else in a temporary directory removed on exit.
    It starts with ``niceness`` (see ``set_niceness``). It is ready once it answers OPTIONS at
    host:port, or, with ``ready``, once that returns (a pair's standby binds no SIP socket).

    Raises:
        RuntimeError: the node exited or was not ready within READY_TIMEOUT_S; the message
            carries its log.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overlay-node-")))
        config = workdir / "node.toml"
        config.write_text(config_text)
        log_path = workdir / "node.log"
        nice = ["nice", "-n", str(niceness)] if niceness else []  # nice(1) execs: same PID
        with log_path.open("ab") as log_file:
            process = await trio.lowlevel.open_process(
                [*nice, sys.executable, "-m", "overlay", "node", "--config", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a group of its own: kill() takes its workers too
            )
        node = NodeProcess(host, port, process, log_path)
        try:
            try:
                async with trio.open_nursery() as nursery:

                    async def exited() -> None:
                        await process.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(exited)
                    with trio.fail_after(READY_TIMEOUT_S):
                        if ready is None:
                            await wait_answers_options(host, port, within=READY_TIMEOUT_S)
                        else:
                            await ready()
                    nursery.cancel_scope.cancel()
            except trio.TooSlowError:
                raise RuntimeError(f"node was not ready; log:\n{node.log()}") from None
            if process.returncode is not None:
                raise RuntimeError(f"node exited with {process.returncode}; log:\n{node.log()}")
            yield node
        finally:
            await stop_process(process)


def node_config(
    *,
    host: str,
    port: int,
    target: str,
    transports: tuple[str, ...] = ("udp", "tcp"),
    t1: float = 0.5,
    extra: str = "",
    dialplan_transport: str | None = None,
    workers: int = 1,
) -> str:
    """A one-node TOML config that sends every call to ``target``."""
    listen = ", ".join(f'"{t}:{host}:{port}"' for t in transports)
    transport = f'transport = "{dialplan_transport}"\n' if dialplan_transport else ""
    return (
        f'[node]\nnode_id = "lab-{host.replace(".", "-")}"\nregion = "lab"\n\n'
        f"[sip]\nlisten = [{listen}]\nworkers = {workers}\n\n[sip.timers]\nt1 = {t1}\n\n"
        f'{extra}\n[[dialplan]]\ntarget = "{target}"\n{transport}'
    )


async def place_calls_through_node(
    *,
    node_host: str,
    uas_host: str,
    uac_host: str,
    calls: int,
    rate: float,
    uas_scenario: str = "uas",
    uac_scenario: str = "uac_rr",
    transport: str = "udp",
    t1: float = 0.5,
    workers: int = 1,
    max_seconds: float | None = None,
) -> SippResult:
    """SIPp caller → a fresh node process → SIPp callee; returns the caller's statistics."""
    async with open_uas(uas_host, scenario=uas_scenario, transport=transport) as uas:
        config = node_config(
            host=node_host,
            port=NODE_PORT,
            target=f"{uas.host}:{uas.port}",
            dialplan_transport=transport,
            t1=t1,
            workers=workers,
        )
        async with open_node(config, host=node_host, port=NODE_PORT):
            return await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario=uac_scenario,
                calls=calls,
                rate=rate,
                transport=transport,
                max_seconds=max_seconds if max_seconds is not None else calls / rate + 30,
            )
