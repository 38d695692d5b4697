"""The NOC's view of a node, without I/O: the call book, events, route explanations and link
overrides (DESIGN.md "Control"; the Control service that serves them is ``overlay.shell.control``).
"""

from ._calls import CallRecord, CallRole, CallState, CallTracker
from ._events import (
    KINDS,
    CallFailed,
    DrainChanged,
    Event,
    EventSink,
    FaultInjected,
    FaultsCleared,
    LinkChanged,
    OverrideCleared,
    OverrideSet,
    Published,
    RouteChanged,
    SourcesUnblocked,
    kind,
    summary,
)
from ._explain import Candidate, LinkCost, RouteExplanation, Verdict, explain_route
from ._overrides import MAX_OVERRIDE_S, LinkOverride, LinkOverrides, new_override

__all__ = [
    "KINDS",
    "MAX_OVERRIDE_S",
    "CallFailed",
    "CallRecord",
    "CallRole",
    "CallState",
    "CallTracker",
    "Candidate",
    "DrainChanged",
    "Event",
    "EventSink",
    "FaultInjected",
    "FaultsCleared",
    "LinkChanged",
    "LinkCost",
    "LinkOverride",
    "LinkOverrides",
    "OverrideCleared",
    "OverrideSet",
    "Published",
    "RouteChanged",
    "RouteExplanation",
    "SourcesUnblocked",
    "Verdict",
    "explain_route",
    "kind",
    "new_override",
    "summary",
]
