"""Run SIPp from trio, for integration tests, the demo and bench/sip_cps.

SIPp is driven as a child process and read back through its statistics CSV (``-trace_stat``),
never through its screen: the screen goes to /dev/null, the last CSV row is the result.

Theory of operation
-------------------
* Every SIPp run is bounded in time twice: by SIPp's own ``-timeout`` (a UAC) and by a trio
  deadline a little later, after which the process is killed.  Calls are bounded by ``-m``.
* SIPp needs an explicit local port for a UAS (``-p``).  Port 0 means "pick one": a port that is
  free for both UDP and TCP on that host is found by binding and releasing it.  The UAC gets one
  too, so it never lands on 5060 next to a proxy on the same address.
* A UAS is "ready" once its process owns a socket bound to the port (read from
  /proc/net/{udp,tcp}[6] and /proc/<pid>/fd).  Probing it with SIP instead would count a call.
* The control socket (``-ci``) and media sockets (``-mi``) are bound to the same host as the SIP
  socket, so nothing listens outside the loopback address it was given.
* A SIPp child is stopped by PID: SIGTERM, then SIGKILL after a bound, and always reaped, even
  when the caller is cancelled.

SIPp's exit status: 0 all calls succeeded, 1 some failed, 97 stopped by command, 99 no call
processed, 255/254 fatal (bad scenario, cannot bind).  ``SippResult`` keeps it as ``returncode``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import trio

from overlay.lab._process import stop_process
from overlay.sip import host_reference

__all__ = [
    "SCENARIO_DIR",
    "SippError",
    "SippResult",
    "SippUas",
    "free_port",
    "open_uas",
    "parse_stat_csv",
    "run_uac",
    "scenario_path",
    "sipp_binary",
]

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"
# SIPp's embedded scenarios this harness accepts by name (``-sn``).
_BUILTIN_SCENARIOS: Final = frozenset({"uac", "uas"})
_SCENARIO_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TRANSPORT_FLAG: Final = {"udp": "u1", "tcp": "t1"}
_BUFF_SIZE: Final = 4_194_304
# After SIPp's own -timeout, how long before the harness kills it.
_KILL_GRACE_S: Final = 10.0
# Between SIGTERM and SIGKILL.  SIPp writes its final CSV row on SIGTERM.
_READY_TIMEOUT_S: Final = 10.0
_READY_POLL_S: Final = 0.01
_STDERR_TAIL: Final = 4000
_TCP_LISTEN: Final = "0A"


class SippError(RuntimeError):
    """SIPp could not run or produced no statistics (bad scenario, port in use, killed early)."""


@dataclass(frozen=True)
class SippResult:
    """What one SIPp process did, from the last row of its statistics CSV.

    ``stats`` is that whole row keyed by column name (``TotalCallCreated``, ``SuccessfulCall(C)``,
    ``FailedCall(C)``, ``Retransmissions(C)``, ``CurrentCall``, ...), for anything not lifted
    into a field.  The ``(C)`` columns are cumulative over the run.
    """

    calls_attempted: int
    calls_successful: int
    calls_failed: int
    retransmissions: int
    unexpected_messages: int
    elapsed_s: float
    returncode: int
    stats: dict[str, str] = field(compare=False)
    stderr: str = field(default="", compare=False)

    @property
    def rate(self) -> float:
        """Successful calls per second over SIPp's own elapsed time."""
        return self.calls_successful / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def retransmission_ratio(self) -> float:
        """Retransmissions per attempted call, the bench's "< 1%" criterion."""
        return self.retransmissions / self.calls_attempted if self.calls_attempted else 0.0

    @classmethod
    def from_stats(
        cls, stats: dict[str, str], *, returncode: int, fallback_elapsed_s: float, stderr: str = ""
    ) -> SippResult:
        """Build a result from a parsed CSV row (see ``parse_stat_csv``)."""
        elapsed = _elapsed_from_row(stats)
        return cls(
            calls_attempted=_int(stats, "TotalCallCreated"),
            calls_successful=_int(stats, "SuccessfulCall(C)"),
            calls_failed=_int(stats, "FailedCall(C)"),
            retransmissions=_int(stats, "Retransmissions(C)"),
            unexpected_messages=_int(stats, "FailedUnexpectedMessage(C)"),
            elapsed_s=elapsed if elapsed is not None else fallback_elapsed_s,
            returncode=returncode,
            stats=stats,
            stderr=stderr,
        )


def parse_stat_csv(text: str) -> dict[str, str]:
    """Return the last data row of a SIPp ``-trace_stat`` file as ``{column: value}``.

    SIPp writes a ';'-separated header line (with a trailing ';'), then one row per ``-fd``
    period and a final row at exit.  Time columns hold "date<TAB>time<TAB>epoch".

    Raises:
        SippError: the text has no header or no data row.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise SippError("SIPp statistics file has no data row")
    header = lines[0].rstrip(";").split(";")
    row = lines[-1].rstrip(";").split(";")
    return dict(zip(header, row, strict=False))


def _int(stats: dict[str, str], column: str) -> int:
    try:
        return int(stats[column])
    except KeyError:
        raise SippError(f"SIPp statistics have no column {column!r}") from None
    except ValueError:
        raise SippError(f"SIPp statistics column {column!r} is {stats[column]!r}") from None


def _epoch(value: str) -> float | None:
    try:
        return float(value.split("\t")[-1])
    except ValueError:
        return None


def _elapsed_from_row(stats: dict[str, str]) -> float | None:
    # ElapsedTime(C) is whole seconds only; StartTime/CurrentTime carry microsecond epochs.
    start = _epoch(stats.get("StartTime", ""))
    now = _epoch(stats.get("CurrentTime", ""))
    if start is None or now is None or now < start:
        return None
    return now - start


def scenario_path(name: str) -> Path:
    """Path of ``overlay/lab/scenarios/<name>.xml``.

    Raises:
        FileNotFoundError: no such scenario; the message lists the ones there are.
    """
    if not _SCENARIO_NAME.fullmatch(name):
        raise ValueError(f"bad scenario name {name!r}")
    path = SCENARIO_DIR / f"{name}.xml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.xml")))
        raise FileNotFoundError(f"no SIPp scenario {name!r} in {SCENARIO_DIR} (have: {known})")
    return path


def sipp_binary() -> str:
    """The SIPp executable on PATH.

    Raises:
        RuntimeError: SIPp is not installed, with how to install it.
    """
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError(
            "SIPp is not installed (no 'sipp' on PATH). Install it with "
            "'apt-get install sip-tester' (Debian/Ubuntu) or build it from "
            "https://github.com/SIPp/sipp; the harness is tested with SIPp 3.6.1."
        )
    return path


def _scenario_args(scenario: str | Path) -> list[str]:
    """SIPp's arguments for a built-in name, a name in overlay/lab/scenarios, or an XML path."""
    if isinstance(scenario, Path):
        if not scenario.is_file():
            raise FileNotFoundError(f"no SIPp scenario file {scenario}")
        return ["-sf", str(scenario)]
    if scenario in _BUILTIN_SCENARIOS:
        return ["-sn", scenario]
    return ["-sf", str(scenario_path(scenario))]


def _transport_args(transport: str) -> list[str]:
    try:
        return ["-t", _TRANSPORT_FLAG[transport]]
    except KeyError:
        raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def free_port(host: str, *, attempts: int = 50) -> int:
    """A port free for both UDP and TCP on ``host`` right now (bind and release).

    SIPp takes one number for its SIP socket whatever the transport, and a later run on the
    same port may use the other transport, so both must be free.
    """
    family = _family(host)
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        continue
                    raise
                return port
    raise SippError(f"no port free for both UDP and TCP on {host} after {attempts} tries")


def _proc_net_hex(host: str, port: int) -> str:
    packed = ipaddress.ip_address(host).packed
    # /proc/net prints each 32-bit word of the address in host (little-endian) byte order.
    words = "".join(packed[i : i + 4][::-1].hex() for i in range(0, len(packed), 4))
    return f"{words.upper()}:{port:04X}"


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _owns_bound_socket(pid: int, host: str, port: int, transport: str) -> bool:
    """True once process ``pid`` has a socket bound to host:port (listening, for TCP)."""
    six = "6" if _family(host) == socket.AF_INET6 else ""
    table = Path(f"/proc/net/{transport}{six}")
    wanted = _proc_net_hex(host, port)
    inodes: set[str] = set()
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        cols = line.split()
        if len(cols) < 10 or cols[1] != wanted:
            continue
        if transport == "tcp" and cols[3] != _TCP_LISTEN:
            continue
        inodes.add(cols[9])
    return bool(inodes & _socket_inodes(pid))


@dataclass
class _Run:
    """Files of one SIPp run: in ``keep_in`` (kept, for SIPp's own traces to be read after the
    run), or in a private temporary directory removed afterwards."""

    workdir: Path
    stat_file: Path
    stderr_file: Path
    kept: bool = False

    @classmethod
    def create(cls, keep_in: Path | None = None) -> _Run:
        workdir = keep_in or Path(tempfile.mkdtemp(prefix="overlay-sipp-"))
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, workdir / "stat.csv", workdir / "stderr.txt", kept=keep_in is not None)

    def open_stderr(self) -> IO[bytes]:
        return self.stderr_file.open("wb")

    def stderr_tail(self) -> str:
        try:
            data = self.stderr_file.read_bytes()
        except OSError:
            return ""
        return data[-_STDERR_TAIL:].decode("utf-8", "replace")

    def stats(self) -> dict[str, str] | None:
        try:
            return parse_stat_csv(self.stat_file.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SippError):
            return None

    def remove(self) -> None:
        if not self.kept:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _common_args(local_host: str, port: int, transport: str, run: _Run) -> list[str]:
    return [
        "-i", local_host,
        "-ci", local_host,
        "-mi", local_host,
        "-p", str(port),
        *_transport_args(transport),
        "-nostdin",
        "-buff_size", str(_BUFF_SIZE),
        "-trace_stat", "-stf", str(run.stat_file), "-fd", "1",
    ]  # fmt: skip


def _result(run: _Run, returncode: int, elapsed_s: float) -> SippResult:
    stats = run.stats()
    stderr = run.stderr_tail()
    if stats is None:
        raise SippError(f"SIPp exited with status {returncode} and no statistics:\n{stderr}")
    return SippResult.from_stats(
        stats, returncode=returncode, fallback_elapsed_s=elapsed_s, stderr=stderr
    )


async def _spawn(args: list[str], run: _Run) -> trio.Process:
    stderr = run.open_stderr()
    try:
        return await trio.lowlevel.open_process(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # SIPp's screen; the CSV is what we read
            stderr=stderr,
            cwd=run.workdir,
        )
    finally:
        stderr.close()


async def run_uac(
    target: tuple[str, int],
    *,
    local_host: str,
    scenario: str | Path = "uac",
    calls: int,
    rate: float,
    transport: str = "udp",
    service: str = "service",
    max_seconds: float,
    extra_args: Sequence[str] = (),
    keep_in: Path | None = None,
) -> SippResult:
    """Place ``calls`` calls at ``rate`` calls/s to ``target`` and return SIPp's statistics.

    Args:
        target: where SIPp sends every request (a proxy, or a UAS directly).
        local_host: SIPp's own address (127.0.0.x); its port is picked free.
        scenario: "uac" (SIPp's built-in), the name of an XML in overlay/lab/scenarios, or a
            Path to any scenario file.
        calls: ``-m``: SIPp exits after this many calls.
        rate: ``-r`` calls per second (``-rp 1000``); at most ``max(16, 4*rate)`` at once.
        service: user part of the Request-URI (``-s``).
        max_seconds: SIPp's ``-timeout``; reaching it is an error (``-timeout_error``).
        extra_args: appended last, so they can override the defaults (e.g. ``-l``, ``-d``).
        keep_in: run SIPp in this directory and keep its files (the statistics and whatever
            ``-trace_*`` options write there); one directory per SIPp.

    Returns:
        The last statistics row; failures are in the counts and ``returncode``, not raised.

    Raises:
        SippError: SIPp wrote no statistics (bad scenario or arguments; ``stderr`` says why).
        RuntimeError: SIPp is not installed.

    Resource handling: SIPp is stopped and reaped before this returns, also on cancellation.
    """
    if calls < 1 or rate <= 0 or max_seconds <= 0:
        raise ValueError("calls, rate and max_seconds must be positive")
    binary = sipp_binary()
    run = _Run.create(keep_in)
    try:
        args = [
            binary,
            f"{host_reference(target[0])}:{target[1]}",
            *_scenario_args(scenario),
            *_common_args(local_host, free_port(local_host), transport, run),
            "-s", service,
            "-m", str(calls),
            "-r", f"{rate:g}",
            "-rp", "1000",
            "-l", str(max(16, math.ceil(rate * 4))),
            "-timeout", f"{max_seconds:g}s",
            "-timeout_error",
            *extra_args,
        ]  # fmt: skip
        started = trio.current_time()
        proc = await _spawn(args, run)
        try:
            with trio.move_on_after(max_seconds + _KILL_GRACE_S):
                await proc.wait()
        finally:
            await stop_process(proc)
        assert proc.returncode is not None
        return _result(run, proc.returncode, trio.current_time() - started)
    finally:
        run.remove()


class SippUas:
    """A running SIPp UAS (from ``open_uas``): where it listens, and its result once stopped."""

    def __init__(self, host: str, port: int, proc: trio.Process) -> None:
        self.host = host
        self.port = port
        self._proc = proc
        self._result: SippResult | None = None

    @property
    def pid(self) -> int:
        """PID of the SIPp process."""
        return self._proc.pid

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to send to."""
        return (self.host, self.port)

    def result(self) -> SippResult:
        """SIPp's statistics, available after the ``open_uas`` block has exited.

        Raises:
            RuntimeError: the UAS is still running.
        """
        if self._result is None:
            raise RuntimeError("the SIPp UAS is still running; read result() after the block")
        return self._result


@contextlib.asynccontextmanager
async def open_uas(
    local_host: str,
    *,
    port: int = 0,
    scenario: str | Path = "uas",
    transport: str = "udp",
    extra_args: Sequence[str] = (),
    max_seconds: float = 900.0,
    keep_in: Path | None = None,
) -> AsyncIterator[SippUas]:
    """Run a SIPp UAS on ``local_host`` for the duration of the block.

    Yields once SIPp owns its SIP socket, so a caller can send to it at once.  On exit SIPp is
    stopped (SIGTERM, then SIGKILL) and reaped, and ``uas.result()`` holds its statistics.

    It answers OPTIONS (and INFO, NOTIFY, UPDATE) 200 by itself (``-aa``), as a trunk answers
    the probes of the nodes that send it calls (``[trunks]``); SIPp counts each such request
    in ``calls_attempted`` (and in no failure), so a UAS behind a node sees more "calls" than
    were placed.

    Args:
        local_host: address to listen on (127.0.0.x).
        port: SIP port; 0 picks one free for both UDP and TCP.
        scenario: "uas" (SIPp's built-in: 180 then 200), an XML name in overlay/lab/scenarios,
            or a Path to any scenario file.
        extra_args: appended last (e.g. ``-m 50`` to stop after 50 calls).
        max_seconds: SIPp's ``-timeout``: an upper bound on its life if the block never ends.
        keep_in: as for ``run_uac``.

    Raises:
        SippError: SIPp exited or did not bind within 10 s (``stderr`` says why).
    """
    binary = sipp_binary()
    run = _Run.create(keep_in)
    try:
        port = port or free_port(local_host)
        args = [
            binary,
            *_scenario_args(scenario),
            *_common_args(local_host, port, transport, run),
            "-timeout", f"{max_seconds:g}s",
            "-aa",
            *extra_args,
        ]  # fmt: skip
        started = trio.current_time()
        proc = await _spawn(args, run)
        uas = SippUas(local_host, port, proc)
        try:
            await _wait_bound(proc, local_host, port, transport, run)
            yield uas
        finally:
            await stop_process(proc)
        assert proc.returncode is not None
        uas._result = _result(run, proc.returncode, trio.current_time() - started)
    finally:
        run.remove()


async def _wait_bound(proc: trio.Process, host: str, port: int, transport: str, run: _Run) -> None:
    # No event exists for "SIPp has bound"; poll /proc briefly, bounded.
    with trio.move_on_after(_READY_TIMEOUT_S):
        while True:
            if proc.returncode is not None or proc.poll() is not None:
                raise SippError(
                    f"SIPp UAS exited with status {proc.returncode} before listening on "
                    f"{host}:{port}:\n{run.stderr_tail()}"
                )
            if _owns_bound_socket(proc.pid, host, port, transport):
                return
            await trio.sleep(_READY_POLL_S)
    raise SippError(f"SIPp UAS did not bind {transport}:{host}:{port} within {_READY_TIMEOUT_S} s")
