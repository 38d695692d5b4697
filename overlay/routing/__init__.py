"""Routing: the dialplan and where each call goes, route tables computed from the
link-state DB, and the probed health of the trunks calls leave to."""

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
from ._dialplan import Dialplan, DialplanMatch, choose_egress, order_egress
from ._routes import (
    NoRoute,
    Path,
    Route,
    RouteChange,
    RouteTable,
    build_graph,
    compute_routes,
)
from ._trunks import TRUNK_MARK, TrunkHealth, TrunkStateChanged, TrunkStatistics, trunk_name
from ._view import MAX_PATHS, RouteView

__all__ = [
    "DEFAULT_RETRY_AFTER_S",
    "MAX_PATHS",
    "TRUNK_MARK",
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
    "TrunkHealth",
    "TrunkStateChanged",
    "TrunkStatistics",
    "WeightFunction",
    "build_graph",
    "choose_egress",
    "compute_routes",
    "cost_breakdown",
    "link_breakdowns",
    "link_cost",
    "order_egress",
    "path_cost",
    "trunk_name",
    "weight_function",
]
