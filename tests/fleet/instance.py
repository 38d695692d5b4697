"""An instance of the fabric: its network namespace, its own layer over the host's files, and
the services its user data enabled.

Booting does what cloud-init and systemd do on the overlay's AMI, closely enough for the
overlay's units:

* A holder process (``sleep``) keeps the instance's mount namespace, made by ``unshare`` inside
  its network namespace: ``/etc``, ``/opt`` and ``/var`` are overlayfs over the host's with
  upper layers in the instance's directory of the run, ``/run`` a fresh tmpfs. What the
  instance writes there lands in its layer, never on the host. ``/tmp`` is the host's.
* ``/opt/overlay`` is, in the layer, a link to the project's virtualenv: it stands in for the
  AMI's install of the appliance (``/opt/overlay/bin/overlay``, ``/opt/overlay/bin/python``);
  the bake itself is tested elsewhere.
* The user data runs as root with bash, a stand-in ``systemctl`` first on its PATH that records
  its calls. The units ``enable --now`` (or ``start``) named are then read from the layer's
  ``/etc/systemd/system`` and started as ``_units`` describes, in their order, each command a
  process in the instance's namespaces with its output in ``<unit>.log`` of the instance's
  directory. A ``Type=notify`` unit gets a ``NOTIFY_SOCKET`` the fabric reads for ``READY=1``.
* Services run as root, whatever ``User=`` says; nothing restarts them (``kill`` is an
  instance's death).

Every process of the instance gets the instance's environment: the AWS endpoint, dummy
credentials and its region, standing in for the endpoint resolution, the instance profile and
the metadata service of EC2.
"""

from __future__ import annotations

import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tests.fleet._netns import Process, kill_in, spawn
from tests.fleet._units import Unit, parse_unit, start_order, units_to_start

#: The project's virtualenv, made by ./run: the appliance the instances run.
VENV = Path(__file__).resolve().parents[2] / ".venv"
#: The host directories an instance sees through a layer of its own.
LAYERED = ("/etc", "/opt", "/var")
UNIT_DIR = "/etc/systemd/system"

_SYSTEMCTL = """#!/bin/sh
# The fabric's systemctl: it records the call; the fabric starts the units after the user data.
printf '%s\\n' "$*" >>{calls}
"""


class BootError(RuntimeError):
    """An instance did not boot as asked: its layer, its user data or a unit failed. The
    message names the step and carries the end of its log."""


class Instance:
    """A running EC2 instance of the fleet, mirrored: see the module docstring.

    Attributes:
        id, region, vpc, eni, private_ip, tags: as EC2 describes it (``eni`` and
            ``private_ip``: its primary network interface's).
        netns: its network namespace (interface ``ens5`` in it).
        veth: the gateway's end of ``ens5``.
        directory: its part of the run: logs, user data, the layer.
        env: the environment of its processes.
    """

    def __init__(
        self,
        *,
        id: str,
        region: str,
        vpc: str,
        eni: str,
        private_ip: str,
        tags: Mapping[str, str],
        netns: str,
        veth: str,
        directory: Path,
        env: Mapping[str, str],
        track: Callable[[Process], None],
    ) -> None:
        self.id = id
        self.region = region
        self.vpc = vpc
        self.eni = eni
        self.private_ip = private_ip
        self.tags = dict(tags)
        self.netns = netns
        self.veth = veth
        self.directory = directory
        self.env = dict(env)
        self._track = track
        self._lock = threading.RLock()
        self._holder: Process | None = None
        self._processes: list[Process] = []
        self._main: dict[str, Process] = {}
        self._notify: dict[str, _Notify] = {}

    @property
    def booted(self) -> bool:
        return self._holder is not None

    def layer(self, path: str) -> Path:
        """Where the instance's file ``path`` (under /etc, /opt or /var) is on the host once the
        instance has written it: in its own layer."""
        pure = PurePosixPath(path)
        top = f"/{pure.parts[1]}" if pure.is_absolute() and len(pure.parts) > 1 else ""
        if top not in LAYERED:
            raise ValueError(f"{path}: not under {', '.join(LAYERED)}")
        return self.directory / "layer" / top[1:] / "upper" / pure.relative_to(top)

    def boot(
        self,
        user_data: bytes,
        *,
        files: Mapping[str, str | bytes] | None = None,
        timeout: float = 60.0,
    ) -> list[str]:
        """Mount the instance's layer, run ``user_data``, start the units it enabled.

        Args:
            files: path -> contents written into the layer first (under /etc, /opt or /var):
                what the operator installs apart from user data, e.g. TLS files.
            timeout: the bound of each step (the layer, the user data, each unit's commands).

        Returns:
            The units started, in their order.

        Raises:
            BootError: booted already, or a step failed; what started keeps running.
        """
        with self._lock:
            if self._holder is not None:
                raise BootError(f"{self.id}: booted already")
            self._make_layer(files or {})
            self._holder = self._mount(timeout)
            bin_dir = self.directory / "bin"
            bin_dir.mkdir()
            calls = self.directory / "systemctl.calls"
            calls.touch()
            systemctl = bin_dir / "systemctl"
            systemctl.write_text(_SYSTEMCTL.format(calls=shlex.quote(str(calls))))
            systemctl.chmod(0o755)
            script = self.directory / "user-data"
            script.write_bytes(user_data)
            env = {**self.env, "PATH": f"{bin_dir}:{self.env['PATH']}"}
            self._complete(self.popen(["bash", str(script)], name="user-data", env=env), timeout)
            return self.start(*units_to_start(calls.read_text()), timeout=timeout)

    def start(self, *units: str, timeout: float = 60.0) -> list[str]:
        """Start ``units`` (written in the layer's /etc/systemd/system), as ``systemctl start``
        would: see the module docstring. A unit ordered after a started ``Type=notify`` unit
        waits for its ``READY=1``.

        Returns:
            The units started, in their order.

        Raises:
            BootError: not booted, a unit file is missing or not runnable, a command failed.
        """
        with self._lock:
            if self._holder is None:
                raise BootError(f"{self.id}: not booted")
            ordered = start_order([self._unit(name) for name in units])
            for unit in ordered:
                for before in sorted(unit.after & self._notify.keys()):
                    self.wait_ready(before, timeout)
                self._start_unit(unit, min(timeout, unit.timeout_start_s))
            return [unit.name for unit in ordered]

    def wait_ready(self, unit: str, timeout: float) -> None:
        """Return once the ``Type=notify`` ``unit`` has said ``READY=1``.

        Raises:
            BootError: it is not a started notify unit, or its process ended first.
            TimeoutError: not ready within ``timeout`` seconds.
        """
        notify = self._notify.get(unit)
        if notify is None:
            raise BootError(f"{self.id}: {unit} is not a started Type=notify unit")
        process = self._main[unit]
        deadline = time.monotonic() + timeout
        while not notify.ready:
            if process.popen.poll() is not None:
                raise BootError(
                    f"{self.id}: {unit} exited ({process.popen.returncode}) before READY=1:\n"
                    f"{process.tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.id}: {unit} not ready in {timeout} s:\n{process.tail()}")
            notify.receive(min(remaining, 0.1))

    def popen(
        self,
        argv: list[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> Process:
        """Start ``argv`` in the instance (its mount namespace too once booted), with the
        instance's environment (or ``env``), output to ``<name>.log`` unless redirected."""
        holder = self._holder
        if holder is None:
            enter = ["ip", "netns", "exec", self.netns]
        else:
            enter = ["nsenter", f"--target={holder.popen.pid}", "--mount", "--net", "--"]
        process = spawn(
            [*enter, *argv],
            where=self.id,
            name=name,
            log=self.directory / f"{name}.log",
            env=self.env if env is None else env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        with self._lock:
            self._processes.append(process)
        self._track(process)
        return process

    def kill(self) -> None:
        """SIGKILL every process of the instance (its layer stays mounted): a dead instance."""
        with self._lock:
            holder = self._holder
            for process in self._processes:
                if process is not holder:
                    process.kill()
            kill_in(self.netns, spare=set() if holder is None else {holder.popen.pid})
            for process in self._processes:
                if process is not holder:
                    process.reap()

    def close(self) -> None:
        """Kill everything of the instance, its holder too."""
        with self._lock:
            self.kill()
            if self._holder is not None:
                self._holder.kill()
                self._holder.reap()
            for notify in self._notify.values():
                notify.close()

    # --- boot steps ----------------------------------------------------------------------

    def _make_layer(self, files: Mapping[str, str | bytes]) -> None:
        for top in LAYERED:
            self.layer(top).mkdir(parents=True)
            (self.layer(top).parent / "work").mkdir()
        self.layer("/opt/overlay").symlink_to(VENV)
        for path, content in files.items():
            target = self.layer(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)

    def _mount(self, timeout: float) -> Process:
        """The holder of the instance's mount namespace, once its mounts are made."""
        mounts = [
            f"mount -t overlay overlay -o lowerdir={top},upperdir={shlex.quote(str(upper))},"
            f"workdir={shlex.quote(str(upper.parent / 'work'))} {top}"
            for top in LAYERED
            for upper in [self.layer(top)]
        ]
        script = " && ".join(
            [
                *mounts,
                "mount -t tmpfs -o mode=0755 tmpfs /run",
                "echo mounted",
                "exec sleep infinity",
            ]
        )
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private"]
        holder = spawn(
            [*argv, "sh", "-c", script],
            where=self.id,
            name="holder",
            log=self.directory / "holder.log",
            env=self.env,
            stdout=subprocess.PIPE,
        )
        self._track(holder)
        assert holder.popen.stdout is not None
        with holder.popen.stdout as out:
            said = out.readline() if select.select([out], [], [], timeout)[0] else b""
        if said != b"mounted\n":
            holder.kill()
            holder.reap()
            raise BootError(f"{self.id}: mounting its layer failed:\n{holder.tail()}")
        return holder

    def _complete(self, process: Process, timeout: float, *, ignore_failure: bool = False) -> None:
        """Wait for a step to end; BootError if it fails (unless ignored) or outlasts
        ``timeout``."""
        try:
            code = process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.reap()
            raise BootError(
                f"{self.id}: {process.name} still running after {timeout} s:\n{process.tail()}"
            ) from None
        if code != 0 and not ignore_failure:
            raise BootError(f"{self.id}: {process.name} failed ({code}):\n{process.tail()}")

    def _unit(self, name: str) -> Unit:
        path = self.layer(f"{UNIT_DIR}/{name}")
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise BootError(f"{self.id}: {name}: no unit file in the instance's layer") from None
        return parse_unit(name, text)

    def _start_unit(self, unit: Unit, timeout: float) -> None:
        assert self._holder is not None
        env = {**self.env, **unit.environment}
        if unit.runtime_directories:
            root = Path(f"/proc/{self._holder.popen.pid}/root")
            for directory in unit.runtime_directories:
                (root / "run" / directory).mkdir(parents=True, exist_ok=True)
            env["RUNTIME_DIRECTORY"] = ":".join(f"/run/{d}" for d in unit.runtime_directories)
        for command in unit.exec_start_pre:
            process = self.popen(list(command.argv), name=unit.name, env=env)
            self._complete(process, timeout, ignore_failure=command.ignore_failure)
        if unit.type == "oneshot":
            for command in unit.exec_start:
                process = self.popen(list(command.argv), name=unit.name, env=env)
                self._complete(process, timeout, ignore_failure=command.ignore_failure)
            return
        if unit.type == "notify":
            old = self._notify.pop(unit.name, None)
            if old is not None:
                old.close()
            notify = _Notify(self.directory / f"{unit.name}.notify")
            self._notify[unit.name] = notify
            env["NOTIFY_SOCKET"] = str(notify.path)
        self._main[unit.name] = self.popen(list(unit.exec_start[0].argv), name=unit.name, env=env)


class _Notify:
    """A unit's ``NOTIFY_SOCKET``: a datagram socket in the run's directory, which the
    instance sees (a path, unlike an abstract socket, is not bound to a network namespace)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ready = False
        path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))

    def receive(self, timeout: float) -> None:
        """Read what the unit said within ``timeout`` seconds."""
        self._socket.settimeout(timeout)
        try:
            data = self._socket.recv(4096)
        except TimeoutError:
            return
        if "READY=1" in data.decode(errors="replace").splitlines():
            self.ready = True

    def close(self) -> None:
        self._socket.close()
