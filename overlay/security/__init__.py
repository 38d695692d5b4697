"""SIP edge security and overload control, sans-IO.

``edge_guard(config)`` builds the ``EdgeGuard`` of ``[security]`` (per-source ACL, rate limits,
scanner blocking; docs/security.md); ``overload_control(config, inner)`` the ``Overload`` every
node has (``[overload]``; docs/overload.md), in front of the guard if there is one: that is
the proxy core's ``Admission``. No sockets and no clock: time comes in as ``now``.
"""

from ._events import (
    BlockReason,
    GuardEvent,
    OverloadEnded,
    OverloadStarted,
    SourceBlocked,
    SourceUnblocked,
)
from ._guard import (
    ALL_SOURCES,
    FAILURE_STATUSES,
    MAX_SOURCES,
    SWEEP_METHODS,
    BlockedSource,
    EdgeGuard,
    GuardStatistics,
    edge_guard,
    source_key,
)
from ._overload import (
    COUNTED_METHODS,
    EPISODE_QUIET,
    NEVER_SHED,
    SHARE_STEP,
    START_TICKS,
    TARGET,
    TICK,
    Overload,
    OverloadStatistics,
    overload_control,
    shed_class,
)
from ._prefix import PrefixMap, parse_source

__all__ = [
    "ALL_SOURCES",
    "COUNTED_METHODS",
    "EPISODE_QUIET",
    "FAILURE_STATUSES",
    "MAX_SOURCES",
    "NEVER_SHED",
    "SHARE_STEP",
    "START_TICKS",
    "SWEEP_METHODS",
    "TARGET",
    "TICK",
    "BlockReason",
    "BlockedSource",
    "EdgeGuard",
    "GuardEvent",
    "GuardStatistics",
    "Overload",
    "OverloadEnded",
    "OverloadStarted",
    "OverloadStatistics",
    "PrefixMap",
    "SourceBlocked",
    "SourceUnblocked",
    "edge_guard",
    "overload_control",
    "parse_source",
    "shed_class",
    "source_key",
]
