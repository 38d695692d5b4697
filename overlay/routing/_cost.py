"""The cost of a link and of a path, in milliseconds (pure, no I/O, no clock).

The cost of the directed edge u→v is computed from u's measurements of the link (the edge
attributes of the graph built by ``build_graph``)::

    cost(u→v) = rtt_ms
              + jitter_weight      * jitter_ms
              + loss_penalty_ms    * loss_ratio    * 100    (per percent of probes lost)
              + retrans_penalty_ms * retrans_ratio * 100    (per percent of SIP retransmissions)
              + admin_cost                                  (operator's extra cost, ms)
              + hop_penalty_ms                              (every edge, so every extra hop)
              + avoid_penalty_ms   when u is in one of ``avoid_regions`` (and is not the source)

and the cost of a path is the sum over its edges. ``RoutingPolicy`` holds the parameters; its
defaults (jitter x1, 20 ms per percent of loss, 10 ms per percent of retransmissions, 20 ms per
hop, 1000 ms per avoided transit node) make the reference topology behave as DESIGN.md wants:

* healthy, us-west-2 → us-east-1 goes direct: 68 + 20 = 88 ms, against 50 + 20 + 12 + 20 =
  102 ms through us-east-2 (62 ms of round trip, but one more relay and one more failure point);
* with 5% loss and 100 ms more delay on the direct link it costs 168 + 100 + 20 = 288 ms, and
  the detour through us-east-2 (102 ms) takes over.

Transit rules, and why they are on the edges *leaving* a node: a node is transit on a path
exactly when the path leaves it again, so a penalty on its outgoing edges is paid once per
transit use and never by a path that ends there (an avoided or draining node stays reachable as
a destination at its normal cost). Edges leaving a **draining** node are hidden (the weight is
``None``, which networkx reads as "no edge", STYLE.md §8). Edges leaving a node in an **avoided
region** carry ``avoid_penalty_ms``: avoided regions are used as transit only when nothing else
is left.

The source is exempt from both. Every simple path from the source uses exactly one edge leaving
it, so the exemption lowers all of the source's path costs by the same amount and changes none of
its choices; without it a draining node could not route its own traffic, and a node in an
avoided region would see every cost inflated by the penalty (which would also inflate the
proportional hysteresis). The weights therefore depend on the source only through the source's
own edges; ``overlay.routing._routes`` relies on that for loop freedom.

Bad numbers from the network do not break the computation: a link never costs less than
``hop_penalty_ms`` (negative metrics can lower its cost to that floor, no further) and a cost that
is not a finite number (NaN, infinity) hides the edge. ``hop_penalty_ms`` must be positive:
Dijkstra needs non-negative weights, and hop-by-hop forwarding needs the distance to the
destination to strictly decrease at every hop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields
from typing import Any

import networkx as nx

#: A networkx weight callable: ``(u, v, edge_attributes) -> cost in ms``, or ``None`` to hide
#: the edge.
WeightFunction = Callable[[str, str, Mapping[str, Any]], float | None]


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """The parameters of the cost function, the hysteresis and the alternates.

    Attributes:
        jitter_weight: ms of cost per ms of jitter.
        loss_penalty_ms: ms of cost per percent of probe loss (``loss_ratio`` 0.01).
        retrans_penalty_ms: ms of cost per percent of SIP retransmissions.
        hop_penalty_ms: ms added to every edge (relay work, one more failure point); must be
            positive.
        avoid_regions: regions used as transit only as a last resort.
        avoid_penalty_ms: ms added to every edge leaving a node in an avoided region (other
            than the source).
        hysteresis_ms: a working path is kept while it costs at most
            ``max(hysteresis_ms, hysteresis_ratio * best)`` more than the best path (and while
            keeping it cannot loop, see ``overlay.routing._routes``).
        hysteresis_ratio: see ``hysteresis_ms``.
        alternates: how many ranked alternate paths a route offers.

    Raises:
        ValueError: a value is out of range (named in the message).
    """

    jitter_weight: float = 1.0
    loss_penalty_ms: float = 20.0
    retrans_penalty_ms: float = 10.0
    hop_penalty_ms: float = 20.0
    avoid_regions: AbstractSet[str] = frozenset()
    avoid_penalty_ms: float = 1000.0
    hysteresis_ms: float = 10.0
    hysteresis_ratio: float = 0.15
    alternates: int = 2

    def __post_init__(self) -> None:
        # Accept any iterable of region names, store it immutably.
        object.__setattr__(self, "avoid_regions", frozenset(self.avoid_regions))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float | int) and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RoutingPolicy.{f.name} must be finite and >= 0, not {value!r}")
        if not self.hop_penalty_ms > 0:
            raise ValueError("RoutingPolicy.hop_penalty_ms must be > 0")

    def hysteresis_margin(self, best_cost: float) -> float:
        """How much more than ``best_cost`` a working path may cost and still be kept (ms)."""
        return max(self.hysteresis_ms, self.hysteresis_ratio * best_cost)


def link_cost(attributes: Mapping[str, Any], policy: RoutingPolicy) -> float | None:
    """The cost of one edge from its metrics, without the transit rules (ms).

    Args:
        attributes: the edge's metrics (``rtt_ms``, ``jitter_ms``, ``loss_ratio``,
            ``retrans_ratio``, ``admin_cost``; a missing one counts as 0).
        policy: the cost parameters.

    Returns:
        The cost in ms, at least ``policy.hop_penalty_ms``; ``None`` when it is not a finite
        number (the edge is unusable).

    Examples:
        >>> from overlay.routing import RoutingPolicy, link_cost
        >>> link_cost({"rtt_ms": 68.0}, RoutingPolicy())
        88.0
        >>> link_cost({"rtt_ms": 168.0, "loss_ratio": 0.05}, RoutingPolicy())
        288.0
    """
    get = attributes.get
    cost: float = (
        get("rtt_ms", 0.0)
        + policy.jitter_weight * get("jitter_ms", 0.0)
        + policy.loss_penalty_ms * 100.0 * get("loss_ratio", 0.0)
        + policy.retrans_penalty_ms * 100.0 * get("retrans_ratio", 0.0)
        + get("admin_cost", 0.0)
        + policy.hop_penalty_ms
    )
    # One comparison covers the usual case; NaN fails it too.
    if policy.hop_penalty_ms <= cost < math.inf:
        return cost
    if not math.isfinite(cost):
        return None
    return policy.hop_penalty_ms  # negative metrics: the floor


def _link_parts(
    attributes: Mapping[str, Any], policy: RoutingPolicy
) -> tuple[float, float, float, float, float, float]:
    # The terms of link_cost, in its order (so that they add up to the same float).
    get = attributes.get
    return (
        get("rtt_ms", 0.0),
        policy.jitter_weight * get("jitter_ms", 0.0),
        policy.loss_penalty_ms * 100.0 * get("loss_ratio", 0.0),
        policy.retrans_penalty_ms * 100.0 * get("retrans_ratio", 0.0),
        get("admin_cost", 0.0),
        policy.hop_penalty_ms,
    )


def weight_function(graph: nx.DiGraph, policy: RoutingPolicy, source: str) -> WeightFunction:
    """The networkx weight callable for paths computed from ``source``.

    Args:
        graph: the topology; node attributes ``region`` and ``draining`` (missing: no region,
            not draining) are read once, here.
        policy: the cost parameters.
        source: the node the paths start from; exempt from the transit rules.

    Returns:
        ``weight(u, v, attributes)``: ``link_cost`` plus ``avoid_penalty_ms`` when u is in an
        avoided region, or ``None`` (edge hidden) when u is draining or a metric is not finite.

    Examples:
        >>> import networkx as nx
        >>> from overlay.routing import RoutingPolicy, weight_function
        >>> graph = nx.DiGraph()
        >>> graph.add_node("use2", region="us-east-2", draining=True)
        >>> graph.add_edge("usw2", "use2", rtt_ms=50.0)
        >>> graph.add_edge("use2", "use1", rtt_ms=12.0)
        >>> weight = weight_function(graph, RoutingPolicy(), "usw2")
        >>> weight("usw2", "use2", graph["usw2"]["use2"])
        70.0
        >>> weight("use2", "use1", graph["use2"]["use1"]) is None
        True
        >>> avoid = RoutingPolicy(avoid_regions={"us-east-2"})
        >>> weight_function(graph, avoid, "use2")("use2", "use1", graph["use2"]["use1"])
        32.0
    """
    hidden = frozenset(
        node
        for node, draining in graph.nodes(data="draining", default=False)
        if draining and node != source
    )
    avoided: frozenset[str] = frozenset()
    if policy.avoid_regions:
        avoided = frozenset(
            node
            for node, region in graph.nodes(data="region")
            if region in policy.avoid_regions and node != source
        )
    avoid_penalty_ms = policy.avoid_penalty_ms
    jitter_weight = policy.jitter_weight
    loss_ms_per_ratio = policy.loss_penalty_ms * 100.0
    retrans_ms_per_ratio = policy.retrans_penalty_ms * 100.0
    hop_penalty_ms = policy.hop_penalty_ms
    inf = math.inf

    def weight(u: str, v: str, attributes: Mapping[str, Any]) -> float | None:
        if u in hidden:
            return None
        # link_cost inlined, same terms in the same order (so the same float): this runs once
        # per edge per Dijkstra, 90,000 times per route computation on a 300-node mesh.
        cost: float | None
        try:
            raw: float = (
                attributes["rtt_ms"]
                + jitter_weight * attributes["jitter_ms"]
                + loss_ms_per_ratio * attributes["loss_ratio"]
                + retrans_ms_per_ratio * attributes["retrans_ratio"]
                + attributes["admin_cost"]
                + hop_penalty_ms
            )
        except KeyError:  # a graph made by hand may leave metrics out
            cost = link_cost(attributes, policy)
        else:
            cost = raw if hop_penalty_ms <= raw < inf else link_cost(attributes, policy)
        if cost is not None and u in avoided:
            cost += avoid_penalty_ms
        return cost

    return weight


def path_cost(graph: nx.DiGraph, path: Sequence[str], weight: WeightFunction) -> float | None:
    """The cost of ``path`` under ``weight`` (ms), summed from the first edge on.

    Returns:
        The cost, or ``None`` when the path is not usable: a node or edge is missing from
        ``graph`` or ``weight`` hides an edge. A path of one node costs 0.
    """
    cost = 0.0
    succ = graph.succ
    for u, v in itertools.pairwise(path):
        attributes = succ.get(u, {}).get(v) if u in graph else None
        if attributes is None:
            return None
        edge = weight(u, v, attributes)
        if edge is None:
            return None
        cost += edge
    return cost


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """A path's cost split into its parts (ms), for explaining a route.

    ``loss_ms`` and ``retrans_ms`` are the penalties, ``hop_ms`` the per-hop penalties (and the
    rare top-up to the floor of ``link_cost``), ``policy_ms`` the avoided-region penalties.
    """

    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_ms: float = 0.0
    retrans_ms: float = 0.0
    admin_ms: float = 0.0
    hop_ms: float = 0.0
    policy_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """The sum of the parts: the path's cost."""
        return (
            self.rtt_ms
            + self.jitter_ms
            + self.loss_ms
            + self.retrans_ms
            + self.admin_ms
            + self.hop_ms
            + self.policy_ms
        )


def cost_breakdown(graph: nx.DiGraph, path: Iterable[str], policy: RoutingPolicy) -> CostBreakdown:
    """Split the cost of ``path`` (computed from its first node) into its parts.

    Args:
        graph: the topology the path was computed on.
        path: node ids, source first.
        policy: the cost parameters.

    Returns:
        The parts; their ``total_ms`` is the path's cost.

    Raises:
        ValueError: the path is not usable in ``graph`` (a link is missing, a transit node is
            draining, a metric is not a finite number).

    Examples:
        >>> import networkx as nx
        >>> from overlay.routing import RoutingPolicy, cost_breakdown
        >>> graph = nx.DiGraph()
        >>> graph.add_edge("usw2", "use2", rtt_ms=50.0, jitter_ms=2.0, loss_ratio=0.01)
        >>> graph.add_edge("use2", "use1", rtt_ms=12.0)
        >>> parts = cost_breakdown(graph, ["usw2", "use2", "use1"], RoutingPolicy())
        >>> parts.rtt_ms, parts.jitter_ms, parts.loss_ms, parts.hop_ms, parts.total_ms
        (62.0, 2.0, 20.0, 40.0, 124.0)
    """
    totals = [0.0] * 7
    for link in link_breakdowns(graph, path, policy):
        for i, part in enumerate(_parts_of(link)):
            totals[i] += part
    return CostBreakdown(*totals)


def link_breakdowns(
    graph: nx.DiGraph, path: Iterable[str], policy: RoutingPolicy
) -> list[CostBreakdown]:
    """The cost of each link of ``path`` (computed from its first node), split into its parts.

    Raises:
        ValueError: as ``cost_breakdown``.

    Examples:
        >>> import networkx as nx
        >>> from overlay.routing import RoutingPolicy, link_breakdowns
        >>> graph = nx.DiGraph()
        >>> graph.add_node("use2", region="us-east-2")
        >>> graph.add_edge("usw2", "use2", rtt_ms=50.0, loss_ratio=0.01)
        >>> graph.add_edge("use2", "use1", rtt_ms=12.0)
        >>> avoid = RoutingPolicy(avoid_regions={"us-east-2"})
        >>> [(link.loss_ms, link.policy_ms, link.total_ms)
        ...  for link in link_breakdowns(graph, ["usw2", "use2", "use1"], avoid)]
        [(20.0, 0.0, 90.0), (0.0, 1000.0, 1032.0)]
    """
    nodes = list(path)
    links = []
    for u, v in itertools.pairwise(nodes):
        if not graph.has_edge(u, v):
            raise ValueError(f"no link {u}→{v}")
        attributes = graph[u][v]
        transit = u != nodes[0]
        if transit and graph.nodes[u].get("draining", False):
            raise ValueError(f"{u} is draining: not usable as transit")
        if link_cost(attributes, policy) is None:
            raise ValueError(f"link {u}→{v} has a metric that is not a finite number")
        rtt, jitter, loss, retrans, admin, hop = parts = _link_parts(attributes, policy)
        if sum(parts) < policy.hop_penalty_ms:  # the floor of link_cost applied
            hop += policy.hop_penalty_ms - sum(parts)
        avoided = transit and graph.nodes[u].get("region") in policy.avoid_regions
        links.append(
            CostBreakdown(
                rtt, jitter, loss, retrans, admin, hop, policy.avoid_penalty_ms if avoided else 0.0
            )
        )
    return links


def _parts_of(parts: CostBreakdown) -> tuple[float, ...]:
    return (
        parts.rtt_ms,
        parts.jitter_ms,
        parts.loss_ms,
        parts.retrans_ms,
        parts.admin_ms,
        parts.hop_ms,
        parts.policy_ms,
    )
