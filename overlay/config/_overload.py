"""The ``[overload]`` section of the node schema (docs/internal/config.md, docs/overload.md)."""

from __future__ import annotations

from ._lines import Path
from ._model import OverloadSection
from ._reader import Invalid, Table, boolean, integer, seconds

_KEYS = ("enabled", "backlog", "unknown_backlog", "retry_after")
_retry_after = integer(1, 86400)
#: What ``[security] overload_backlog`` (where overload control lived before) is refused with.
MOVED = (
    "moved to [overload] backlog: overload control is on for every node, with or without"
    " [security] (docs/overload.md)"
)


def overload(value: object, path: Path) -> OverloadSection:
    """Read ``[overload]``; every key is optional (the defaults are on for every node)."""
    table = Table(value, path, _KEYS)
    d = OverloadSection()
    section = OverloadSection(
        enabled=table.get("enabled", boolean, d.enabled),
        backlog=table.get("backlog", seconds, d.backlog),
        unknown_backlog=table.get("unknown_backlog", seconds, d.unknown_backlog),
        retry_after=table.get("retry_after", _retry_after, d.retry_after),
    )
    if section.unknown_backlog > section.backlog:
        reason = (
            f"must be <= backlog ({section.backlog:g} s): unknown sources are shed before new calls"
        )
        if table.has("unknown_backlog"):
            raise Invalid((*path, "unknown_backlog"), reason)
        raise Invalid(
            (*path, "backlog"),
            f"must be >= unknown_backlog ({section.unknown_backlog:g} s, its default): set"
            " unknown_backlog too",
        )
    return section


def refuse_moved(value: object, path: Path) -> float:
    """``[security] overload_backlog``: refused, naming where it went."""
    raise Invalid(path, MOVED)
