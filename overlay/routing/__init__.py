"""Routing: the dialplan and where each call goes, and route tables computed from the
link-state DB."""

from overlay.config import DialplanRule, DnsTarget, StaticTarget

from ._calls import DEFAULT_RETRY_AFTER_S, CallRouter, DrainState
from ._cost import (
    CostBreakdown,
    RoutingPolicy,
    WeightFunction,
    cost_breakdown,
    link_breakdowns,
    link_cost,
    path_cost,
    weight_function,
)
from ._dialplan import Dialplan, DialplanMatch, choose_egress
from ._routes import (
    NoRoute,
    Path,
    Route,
    RouteChange,
    RouteTable,
    build_graph,
    compute_routes,
)
from ._view import MAX_PATHS, RouteView

__all__ = [
    "DEFAULT_RETRY_AFTER_S",
    "MAX_PATHS",
    "CallRouter",
    "CostBreakdown",
    "Dialplan",
    "DialplanMatch",
    "DialplanRule",
    "DnsTarget",
    "DrainState",
    "NoRoute",
    "Path",
    "Route",
    "RouteChange",
    "RouteTable",
    "RouteView",
    "RoutingPolicy",
    "StaticTarget",
    "WeightFunction",
    "build_graph",
    "choose_egress",
    "compute_routes",
    "cost_breakdown",
    "link_breakdowns",
    "link_cost",
    "path_cost",
    "weight_function",
]
