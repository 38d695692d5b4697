"""The ``[security]`` section of the node schema (docs/internal/config.md, docs/security.md)."""

from __future__ import annotations

import math

from ._lines import Path
from ._model import (
    DenyAction,
    LimitAction,
    Network,
    SecuritySection,
    TrunkLimit,
)
from ._overload import refuse_moved
from ._reader import (
    Invalid,
    Reader,
    Table,
    choice,
    integer,
    kind,
    network,
    seconds,
    string,
)

_KEYS = (
    "allow",
    "deny_action",
    "rate",
    "burst",
    "limit_action",
    "retry_after",
    "block_time",
    "window",
    "sweep_users",
    "max_failures",
    "max_limited",
    "scanner_user_agents",
    "overload_backlog",
    "trunks",
)
_DENY_ACTIONS: dict[str, DenyAction] = {"drop": "drop", "reject": "reject"}
_LIMIT_ACTIONS: dict[str, LimitAction] = {"reject": "reject", "drop": "drop"}
_deny_action = choice(_DENY_ACTIONS)
_limit_action = choice(_LIMIT_ACTIONS)
_burst = integer(1, 1_000_000)
_retry_after = integer(1, 86400)
_threshold = integer(0, 1_000_000)  # 0 turns the detector off


def security(value: object, path: Path) -> SecuritySection:
    """Read ``[security]``; every key is optional (an empty table turns the defaults on)."""
    table = Table(value, path, _KEYS)
    d = SecuritySection()
    table.get("overload_backlog", refuse_moved, 0.0)  # moved to [overload]
    rate = table.get("rate", _rate, d.rate)
    burst = table.get("burst", _burst, d.burst)
    return SecuritySection(
        allow=table.get("allow", _networks, d.allow),
        deny_action=table.get("deny_action", _deny_action, d.deny_action),
        rate=rate,
        burst=burst,
        limit_action=table.get("limit_action", _limit_action, d.limit_action),
        retry_after=table.get("retry_after", _retry_after, d.retry_after),
        block_time=table.get("block_time", seconds, d.block_time),
        window=table.get("window", seconds, d.window),
        sweep_users=table.get("sweep_users", _threshold, d.sweep_users),
        max_failures=table.get("max_failures", _threshold, d.max_failures),
        max_limited=table.get("max_limited", _threshold, d.max_limited),
        scanner_user_agents=table.get("scanner_user_agents", _user_agents, d.scanner_user_agents),
        trunks=table.get("trunks", _trunks(rate, burst), ()),
    )


def _rate(value: object, path: Path) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Invalid(path, f"must be a number of requests per second, not {kind(value)}")
    if not math.isfinite(value) or value <= 0:
        raise Invalid(path, f"must be a finite number of requests per second > 0, got {value}")
    return float(value)


def _networks(value: object, path: Path) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of networks (address/prefix), not {kind(value)}")
    return tuple(network(item, (*path, index)) for index, item in enumerate(value))


def _user_agents(value: object, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of strings, not {kind(value)}")
    fragments = []
    for index, item in enumerate(value):
        text = string(item, (*path, index))
        if not text.strip() or not text.isprintable():
            raise Invalid((*path, index), f"must be a non-empty printable string, got {text!r}")
        fragments.append(text.strip().lower())
    return tuple(fragments)


def _trunks(rate: float, burst: int) -> Reader[tuple[TrunkLimit, ...]]:
    """A reader of ``[[security.trunks]]`` whose rate and burst default to the section's."""

    def read(value: object, path: Path) -> tuple[TrunkLimit, ...]:
        if not isinstance(value, list):
            raise Invalid(
                path, f"must be an array of tables ([[security.trunks]]), not {kind(value)}"
            )
        trunks: list[TrunkLimit] = []
        for index, entry in enumerate(value):
            table = Table(entry, (*path, index), ("cidr", "rate", "burst"))
            trunk = TrunkLimit(
                cidr=table.require("cidr", network),
                rate=table.get("rate", _rate, rate),
                burst=table.get("burst", _burst, burst),
            )
            if any(other.cidr == trunk.cidr for other in trunks):
                raise Invalid((*path, index, "cidr"), f"duplicate trunk network {trunk.cidr}")
            trunks.append(trunk)
        return tuple(trunks)

    return read
