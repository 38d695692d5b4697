"""Starting and stopping the proxies the benchmarks measure: Kamailio, or any SIP proxy process.

Shared by bench/sip_cps and bench/convergence (imported as ``_kamailio`` with bench/ on sys.path).

* A proxy runs in its own session (``start_new_session``), so its process group holds only it
  and its workers; it is stopped by PID: SIGTERM, then SIGKILL of that group after a bound, and
  always reaped, also on cancellation (Kamailio's children would outlive a SIGKILLed main
  process otherwise).
* A proxy is "up" once it answers a UDP ``OPTIONS`` with ``Max-Forwards: 0``: RFC 3261 16.3
  step 3 makes any proxy answer it itself (483, or 200 for OPTIONS), so the probe never reaches a
  destination or counts as a call.
* Kamailio takes its parameters as ``-A NAME=value`` defines (each overrides an ``#!ifndef``
  default in the config); its output (stderr, ``-E``) goes to ``<workdir>/kamailio.log``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import trio

from overlay.lab.sipp import free_port

__all__ = [
    "PROXY_PORT",
    "ProxyStartError",
    "kamailio_binary",
    "kamailio_module_dir",
    "log_tail",
    "proxy_port",
    "run_proxy",
    "start_kamailio",
]

PROXY_PORT = 5060
READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


class ProxyStartError(RuntimeError):
    """The proxy process exited or never answered the readiness probe."""


def proxy_port(host: str) -> int:
    """5060 unless something already holds it on that address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, PROXY_PORT))
        except OSError:
            return free_port(host)
    return PROXY_PORT


def options_max_forwards_0(host: str, port: int, local: tuple[str, int], n: int) -> bytes:
    """OPTIONS with Max-Forwards 0: any RFC 3261 proxy answers it itself (16.3 step 3: 483, or
    200 for OPTIONS), so the probe never reaches, or counts as a call at, the destination."""
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-bench-{os.getpid()}-{n}\r\n"
        "Max-Forwards: 0\r\n"
        f"From: <sip:bench@{local[0]}>;tag=bench{n}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: bench-probe-{os.getpid()}-{n}@{local[0]}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def wait_answers(proc: trio.Process, addr: tuple[str, int], probe_host: str) -> None:
    """Return once ``addr`` answers a UDP OPTIONS probe with any SIP response.

    Raises:
        ProxyStartError: the process exited, or READY_TIMEOUT_S passed.
    """
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind((probe_host, 0))
        local = sock.getsockname()
        with trio.move_on_after(READY_TIMEOUT_S):
            for n in range(1, 10_000):
                if proc.poll() is not None:
                    raise ProxyStartError(f"exited with status {proc.returncode}")
                await sock.sendto(options_max_forwards_0(*addr, local, n), addr)
                with trio.move_on_after(0.1):
                    data = await sock.recv(65535)
                    if data.startswith(b"SIP/2.0 "):
                        return
    raise ProxyStartError(f"no answer to OPTIONS on udp:{addr[0]}:{addr[1]}")


async def stop_group(proc: trio.Process) -> None:
    """SIGTERM the proxy, SIGKILL its process group after a bound, always reap."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE_S):
                await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@contextlib.asynccontextmanager
async def run_proxy(
    args: Sequence[str], listen: tuple[str, int], log_path: Path, probe_host: str
) -> AsyncIterator[None]:
    """Start a proxy, wait until it answers, stop it by PID when the block ends."""
    with log_path.open("wb") as log:
        proc = await trio.lowlevel.open_process(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            start_new_session=True,
        )
    try:
        try:
            await wait_answers(proc, listen, probe_host)
        except ProxyStartError as exc:
            tail = log_tail(log_path)
            raise ProxyStartError(f"{args[0]} {exc}\n--- its output ---\n{tail}") from None
        yield
    finally:
        await stop_group(proc)


def log_tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.access(p, os.X_OK)),
        None,
    )


def kamailio_module_dir() -> Path | None:
    """Where tm.so is: Debian's multiarch dir first, then the usual others."""
    candidates = [
        *sorted(Path("/usr/lib").glob("*/kamailio/modules")),
        Path("/usr/lib64/kamailio/modules"),
        Path("/usr/lib/kamailio/modules"),
        Path("/usr/local/lib64/kamailio/modules"),
        Path("/usr/local/lib/kamailio/modules"),
    ]
    return next((d for d in candidates if (d / "tm.so").is_file()), None)


@contextlib.asynccontextmanager
async def start_kamailio(
    config: Path,
    listen: tuple[str, int],
    workdir: Path,
    *,
    defines: Mapping[str, str] | None = None,
    shm_mb: int | None = None,
) -> AsyncIterator[Path]:
    """Run ``kamailio -f config`` on ``udp:listen`` until the block ends; yields its log path.

    Args:
        config: the .cfg file; ``LISTEN`` is passed as a define, ``defines`` add others
            (values verbatim: a string define needs its own quotes, ``'"sip:..."'``).
        workdir: pid file, runtime dir, working dir and ``kamailio.log``.
        shm_mb: ``-m`` (shared memory in MB); Kamailio's default when None.

    Raises:
        ProxyStartError: Kamailio is not installed, exited, or never answered.
    """
    binary = kamailio_binary()
    if binary is None:
        raise ProxyStartError("kamailio is not installed (apt-get install kamailio)")
    args = [
        binary,
        "-f", str(config),
        "-DD", "-E",  # foreground, log to stderr (our log file)
        "-P", str(workdir / "kamailio.pid"),
        "-Y", str(workdir),
        "-w", str(workdir),
        "-A", f"LISTEN=udp:{listen[0]}:{listen[1]}",
    ]  # fmt: skip
    for name, value in (defines or {}).items():
        args += ["-A", f"{name}={value}"]
    if shm_mb is not None:
        args += ["-m", str(shm_mb)]
    modules = kamailio_module_dir()
    if modules is not None:
        args += ["-L", str(modules)]
    log_path = workdir / "kamailio.log"
    async with run_proxy(args, listen, log_path, probe_host=listen[0]):
        yield log_path
