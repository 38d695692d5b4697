"""Network namespaces, veth links, NAT and the processes inside them, through iproute2,
iptables and nsenter. Every command and every wait here is bounded in time, and a process is
only ever signalled by the PID (process group) the fabric got when it started it, or found in a
namespace the fabric made."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

COMMAND_TIMEOUT_S = 10.0
#: How long a killed process may take to be reaped.
REAP_TIMEOUT_S = 5.0


class CommandError(RuntimeError):
    """A command the fabric ran failed; the message names it and carries its stderr."""


def run(argv: list[str], *, stdin: str | None = None) -> str:
    """``argv`` to completion; its stdout.

    Raises:
        CommandError: it failed or did not finish in COMMAND_TIMEOUT_S.
    """
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise CommandError(f"{shlex.join(argv)}: no end in {COMMAND_TIMEOUT_S} s") from error
    if done.returncode != 0:
        given = f" <<{stdin.strip()!r}" if stdin else ""
        raise CommandError(f"{shlex.join(argv)}{given}: {done.stderr.strip()}")
    return done.stdout


def ip(netns: str | None, *commands: str) -> None:
    """iproute2 ``commands`` in ``netns`` (``None``: the root namespace), one process for all."""
    where = [] if netns is None else ["-n", netns]
    run(["ip", *where, "-batch", "-"], stdin="".join(f"{command}\n" for command in commands))


def route_changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """The iproute2 commands that turn the routes ``current`` into ``wanted`` (destination ->
    what follows it in ``route replace``: "via ... dev ...")."""
    commands = [f"route del {destination}" for destination in current.keys() - wanted.keys()]
    commands += [
        f"route replace {destination} {spec}"
        for destination, spec in wanted.items()
        if current.get(destination) != spec
    ]
    return commands


def namespaces() -> list[str]:
    """Every network namespace ``ip netns`` knows, by name."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def root_links() -> list[str]:
    """The names of the root namespace's interfaces."""
    return [
        line.split(": ")[1].split("@")[0]
        for line in run(["ip", "-o", "link", "show"]).splitlines()
        if ": " in line
    ]


def add_namespace(name: str, sysctls: Mapping[str, str]) -> None:
    """A new network namespace with its loopback up and ``sysctls`` set in it."""
    run(["ip", "netns", "add", name])
    ip(name, "link set lo up")
    run(["ip", "netns", "exec", name, "sysctl", "-qw", *(f"{k}={v}" for k, v in sysctls.items())])


def delete_namespace(name: str) -> None:
    """Remove ``name`` (its interfaces go with it, their veth peers too); gone already is fine."""
    if name in namespaces():
        run(["ip", "netns", "delete", name])


def pids(netns: str) -> set[int]:
    """The processes in ``netns`` now."""
    if netns not in namespaces():
        return set()
    return {int(pid) for pid in run(["ip", "netns", "pids", netns]).split()}


def kill_in(netns: str, *, spare: set[int]) -> None:
    """SIGKILL every process left in ``netns`` but ``spare``: what the fabric's processes
    started there (all of the namespace's processes descend from them)."""
    for pid in pids(netns) - spare:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def load_nat(netns: str, rules: list[str]) -> None:
    """Replace the nat table of ``netns`` (the fabric owns all of it) with ``rules``."""
    chains = [
        f":{chain} ACCEPT [0:0]" for chain in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
    ]
    table = "\n".join(["*nat", *chains, *rules, "COMMIT", ""])
    run(["ip", "netns", "exec", netns, "iptables-restore"], stdin=table)


_CLONE_NEWNET = 0x40000000
_NETLINK_NETFILTER = 12
#: (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE; without a tuple it deletes them all.
_CT_DELETE = (1 << 8) | 2
_NLM_F_REQUEST_ACK = 0x1 | 0x4


def flush_conntrack(netns: str) -> None:
    """Forget the IPv4 connections ``netns`` tracks, so that every flow is NATed again by the
    current rules (an entry keeps the mapping it was made with). There is no conntrack tool
    here: one ctnetlink message, from a socket opened in ``netns`` by a short-lived thread
    (``setns`` moves only the calling thread)."""
    opened: list[socket.socket] = []
    failure: list[OSError] = []

    def open_inside() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                failure.append(OSError(ctypes.get_errno(), f"setns {netns}"))
                return
            opened.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER))
        finally:
            os.close(fd)

    thread = threading.Thread(target=open_inside, name=f"setns {netns}")
    thread.start()
    thread.join(COMMAND_TIMEOUT_S)
    if failure or not opened:
        raise CommandError(f"conntrack flush in {netns}: {failure or 'no socket'}")
    with opened[0] as sock:
        sock.settimeout(COMMAND_TIMEOUT_S)
        header = struct.pack("=IHHII", 20, _CT_DELETE, _NLM_F_REQUEST_ACK, 1, 0)
        sock.send(header + struct.pack("=BBH", socket.AF_INET, 0, 0))
        answer = sock.recv(4096)
    error = struct.unpack_from("=i", answer, 16)[0]
    if error not in (0, -2):  # -ENOENT: nothing was tracked
        raise CommandError(f"conntrack flush in {netns}: {os.strerror(-error)}")


@dataclass
class Process:
    """A process the fabric started: where (an instance id, ``"inet"``, ``"aws"`` or a VPC
    id), what for, and the file its output goes to unless the caller took it."""

    where: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL its process group, unless it has been reaped (its PID may be reused)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Wait for it to end, at most REAP_TIMEOUT_S."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(REAP_TIMEOUT_S)

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log."""
        return tail(self.log, lines)


def tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 65536))
            data = file.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def spawn(
    argv: list[str],
    *,
    where: str,
    name: str,
    log: Path,
    env: Mapping[str, str],
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> Process:
    """Start ``argv`` in a session (and so a process group) of its own; its output goes to
    ``log`` (appended) unless ``stdout`` / ``stderr`` say otherwise."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as file:
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=file if stdout is None else stdout,
            stderr=(subprocess.STDOUT if stdout is None else file) if stderr is None else stderr,
            env=dict(env),
            start_new_session=True,
        )
    return Process(where, name, popen, log)
