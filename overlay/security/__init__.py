"""SIP edge security, sans-IO: per-source ACL, rate limits, scanner blocking, overload shedding.

``edge_guard(config)`` builds the ``EdgeGuard`` a node gives its proxy core as the core's
``Admission`` (docs/security.md). No sockets and no clock: time comes in as ``now``.
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
from ._overload import Overload
from ._prefix import PrefixMap, parse_source

__all__ = [
    "ALL_SOURCES",
    "FAILURE_STATUSES",
    "MAX_SOURCES",
    "SWEEP_METHODS",
    "BlockReason",
    "BlockedSource",
    "EdgeGuard",
    "GuardEvent",
    "GuardStatistics",
    "Overload",
    "OverloadEnded",
    "OverloadStarted",
    "PrefixMap",
    "SourceBlocked",
    "SourceUnblocked",
    "edge_guard",
    "parse_source",
    "source_key",
]
