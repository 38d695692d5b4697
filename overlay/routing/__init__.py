"""Routing: the dialplan, and route tables computed from the link-state DB."""

from overlay.config import DialplanRule, DnsTarget, StaticTarget

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

__all__ = [
    "CostBreakdown",
    "Dialplan",
    "DialplanMatch",
    "DialplanRule",
    "DnsTarget",
    "NoRoute",
    "Path",
    "Route",
    "RouteChange",
    "RouteTable",
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
