"""systemd units, as much of them as the fabric runs: which units a boot starts, in which order,
and each one's command lines.

Honoured: ``Type=`` (``simple``, ``exec`` and ``notify`` are started, ``oneshot`` runs to
completion), ``ExecStartPre=`` and ``ExecStart=`` with systemd's ``-`` prefix (a failure is
ignored) and its ``+``, ``!``, ``!!`` and ``:`` prefixes stripped (everything runs as root and
nothing is expanded), ``Environment=``, ``RuntimeDirectory=``, ``After=`` and ``Requires=``
between the units started together, ``TimeoutStartSec=`` in seconds. Everything else is
ignored, notably ``Restart=`` (a killed service stays dead), ``WatchdogSec=`` (no
``WATCHDOG_USEC`` is given), ``User=`` and ``Group=`` (the host has no such users) and the
sandboxing settings. Command lines are split as a POSIX shell splits words (``shlex``), which
is what systemd's quoting amounts to for the units here; ``$VAR`` is not expanded.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

#: systemd's default TimeoutStartSec.
DEFAULT_TIMEOUT_S = 90.0
STARTED_TYPES = ("simple", "exec", "notify")


class UnitError(ValueError):
    """A unit the fabric cannot run as systemd would; the message names the unit."""


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    ignore_failure: bool


@dataclass(frozen=True)
class Unit:
    name: str
    type: str
    exec_start_pre: tuple[Command, ...]
    exec_start: tuple[Command, ...]
    environment: dict[str, str]
    runtime_directories: tuple[str, ...]
    #: The units this one starts after (``After=`` and ``Requires=``).
    after: frozenset[str]
    timeout_start_s: float


def parse_unit(name: str, text: str) -> Unit:
    """The unit file ``name`` from its text.

    Raises:
        UnitError: a line is not ``key=value``, the type is one the fabric does not run, or a
            started unit has not exactly one ``ExecStart=``.
    """
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise UnitError(f"{name}: not a setting: {line!r}")
        assigned = settings.setdefault((section, key.strip()), [])
        if value.strip():
            assigned.append(value.strip())
        else:
            assigned.clear()  # an empty assignment resets the list, as in systemd

    def values(section: str, key: str) -> list[str]:
        return settings.get((section, key), [])

    kind = (values("Service", "Type") or ["simple"])[-1]
    exec_start = tuple(_command(name, value) for value in values("Service", "ExecStart"))
    if kind not in (*STARTED_TYPES, "oneshot"):
        raise UnitError(f"{name}: Type={kind} is not run by the fabric")
    if kind != "oneshot" and len(exec_start) != 1:
        raise UnitError(f"{name}: Type={kind} needs exactly one ExecStart=")
    environment = {}
    for value in values("Service", "Environment"):
        for word in shlex.split(value):
            key, _, setting = word.partition("=")
            environment[key] = setting
    timeouts = values("Service", "TimeoutStartSec")
    return Unit(
        name=name,
        type=kind,
        exec_start_pre=tuple(_command(name, v) for v in values("Service", "ExecStartPre")),
        exec_start=exec_start,
        environment=environment,
        runtime_directories=tuple(
            directory
            for value in values("Service", "RuntimeDirectory")
            for directory in value.split()
        ),
        after=frozenset(
            unit
            for key in ("After", "Requires")
            for value in values("Unit", key)
            for unit in value.split()
        ),
        timeout_start_s=float(timeouts[-1].removesuffix("s")) if timeouts else DEFAULT_TIMEOUT_S,
    )


def _logical_lines(text: str) -> list[str]:
    """Lines without comments, a trailing backslash joining a line to the next."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def _command(unit: str, value: str) -> Command:
    flags = ""
    while value and value[0] in "-+!:@":
        flags, value = flags + value[0], value[1:]
    if "@" in flags:
        raise UnitError(f"{unit}: the @ prefix (argv[0] apart) is not run by the fabric")
    argv = tuple(shlex.split(value))
    if not argv:
        raise UnitError(f"{unit}: an empty command line")
    return Command(argv, ignore_failure="-" in flags)


def units_to_start(calls: str) -> list[str]:
    """The units a boot's ``systemctl`` calls (one per line) started: those of ``enable --now``,
    ``start`` and ``restart``, in order, each once; a name without a suffix is a service."""
    names: list[str] = []
    for line in calls.splitlines():
        words = line.split()
        if not words:
            continue
        verb, arguments = words[0], words[1:]
        if verb in ("start", "restart") or (verb == "enable" and "--now" in arguments):
            for word in arguments:
                unit = word if "." in word else f"{word}.service"
                if not word.startswith("-") and unit not in names:
                    names.append(unit)
    return names


def start_order(units: Sequence[Unit]) -> list[Unit]:
    """``units`` with each one after those it names in ``After=``/``Requires=``; otherwise in
    the order given.

    Raises:
        UnitError: the units order each other in a cycle.
    """
    names = {unit.name for unit in units}
    ordered: list[Unit] = []
    placed: set[str] = set()
    while len(ordered) < len(units):
        for unit in units:
            if unit.name not in placed and (unit.after & names) <= placed:
                ordered.append(unit)
                placed.add(unit.name)
                break
        else:
            left = sorted(names - placed)
            raise UnitError(f"an ordering cycle among {', '.join(left)}")
    return ordered
