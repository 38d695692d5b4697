"""Why a route is what it is (the Control service's ExplainRoute), from a route table alone.

The route table (``overlay.routing.RouteTable``) holds the chosen path to every destination and
the graph and policy it was computed with. To explain the choice to a person, every *first hop*
is a candidate: for each neighbour n of this node, the best path that leaves through n is this
node's link to n plus n's cheapest way on to the destination without coming back, priced with
this node's own weights (the same cost function, transit rules and draining as the route
computation). One reverse Dijkstra from the destination, on the graph without this node, gives
every neighbour's way on at once, so explaining costs about one route computation whatever the
mesh size.

Each candidate that is not the chosen path gets a verdict and a sentence:

* LINK_DOWN: the link to that neighbour is not in the graph (down at either end) or unusable;
* DRAINING: the neighbour is draining, so it is not used as transit;
* NO_PATH: the neighbour has no way on without this node;
* WITHIN_HYSTERESIS: it is cheaper than the chosen path, but not by more than the hysteresis
  margin, so the current path is kept (a noisy link must not make routes flap);
* HIGHER_COST: it costs more.

Costs come with their parts per link (``overlay.routing.link_breakdowns``), so "why is the
direct path 288 ms" has an answer: 168 ms of round trip, 100 ms of loss penalty, 20 ms of hop.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import networkx as nx

from overlay.linkstate import Lsa
from overlay.routing import (
    CostBreakdown,
    RouteTable,
    WeightFunction,
    link_breakdowns,
    path_cost,
    weight_function,
)

# Costs that differ by less than this are equal (floating sums of the same terms).
_EPSILON_MS = 1e-6


class Verdict(enum.Enum):
    CHOSEN = "CHOSEN"
    HIGHER_COST = "HIGHER_COST"
    WITHIN_HYSTERESIS = "WITHIN_HYSTERESIS"
    LINK_DOWN = "LINK_DOWN"
    DRAINING = "DRAINING"
    NO_PATH = "NO_PATH"


@dataclass(frozen=True, slots=True)
class LinkCost:
    """One link of a path and its cost split into the cost function's terms."""

    from_node: str
    to_node: str
    parts: CostBreakdown


@dataclass(frozen=True, slots=True)
class Candidate:
    """A way to the destination through one first hop, and what became of it.

    ``path``, ``cost_ms`` and ``links`` are empty for a candidate that is not usable.
    """

    first_hop: str
    verdict: Verdict
    reason: str
    path: tuple[str, ...] = ()
    cost_ms: float = 0.0
    links: tuple[LinkCost, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteExplanation:
    """The explanation of one node's route to ``destination``.

    Attributes:
        source: the node whose route it is.
        destination: the destination node.
        chosen: the path in the route table, or ``None`` when there is no route.
        rejected: every other first hop (and a better path through the chosen first hop, if
            the hysteresis keeps an older one), usable ones cheapest first.
        hysteresis_margin_ms: how much cheaper than the chosen path another must be to replace
            it at the next computation.
        version: the route table's version.
        no_route: why there is no route (``chosen`` is ``None``), for people.
    """

    source: str
    destination: str
    chosen: Candidate | None
    rejected: tuple[Candidate, ...]
    hysteresis_margin_ms: float
    version: int
    no_route: str = ""


def explain_route(
    table: RouteTable,
    destination: str,
    neighbors: Collection[str] = (),
    lsdb: Mapping[str, Lsa] | None = None,
) -> RouteExplanation:
    """Explain ``table``'s route to ``destination``; see the module docstring.

    Args:
        table: the node's current route table.
        destination: the node to explain the route to (not the table's own node).
        neighbors: the node's configured peers: a peer whose link is not in the graph at all is
            listed as LINK_DOWN (the graph alone would not mention it).
        lsdb: the link-state database the table was computed from, to say which end reports
            a link down.

    Returns:
        The explanation. A destination the table does not know gives ``chosen`` ``None`` and
        the reason in ``no_route``.
    """
    source = table.node_id
    graph = table.graph
    policy = table.policy
    chosen_path = table.paths.get(destination)
    margin = 0.0
    if destination not in graph:
        return RouteExplanation(
            source, destination, None, (), margin, table.version,
            no_route=f"{destination} is not in the link-state database",
        )  # fmt: skip
    if destination == source:
        return RouteExplanation(
            source, destination, None, (), margin, table.version, no_route="this node itself"
        )
    weight = weight_function(graph, policy, source)
    onward, onward_paths = _ways_on(graph, weight, source, destination)
    chosen = None
    if chosen_path is not None:
        chosen = _candidate(table, chosen_path.nodes, Verdict.CHOSEN, "")
    first_hops = sorted(set(neighbors) | (set(graph.succ.get(source, {})) - {source}))
    rejected = []
    for hop in first_hops:
        candidate = _via(table, weight, hop, destination, onward, onward_paths, chosen, lsdb or {})
        if candidate is not None:
            rejected.append(candidate)
    usable = sorted((c for c in rejected if c.path), key=lambda c: (c.cost_ms, c.path))
    unusable = [c for c in rejected if not c.path]
    if chosen is not None:
        # As the route computation: the margin is relative to the best path's cost.
        margin = policy.hysteresis_margin(min(c.cost_ms for c in [chosen, *usable]))
        usable = [_within(c, chosen, margin) for c in usable]
    no_route = ""
    if chosen is None:
        no_route = "no usable path"
        if not usable and unusable:
            no_route = "no usable path: " + "; ".join(c.reason for c in unusable)
    else:
        kept = any(c.verdict is Verdict.WITHIN_HYSTERESIS for c in usable)
        chosen = dataclasses.replace(chosen, reason=_chosen_reason(chosen.path, kept, margin))
    return RouteExplanation(
        source,
        destination,
        chosen,
        tuple(usable + unusable),
        margin,
        table.version,
        no_route,
    )


def _ways_on(
    graph: nx.DiGraph, weight: WeightFunction, source: str, destination: str
) -> tuple[Mapping[str, float], Mapping[str, list[str]]]:
    """Every node's cheapest cost and path to ``destination`` that avoid ``source``."""
    others = nx.subgraph_view(graph, filter_node=lambda node: node != source)
    reverse = nx.reverse_view(others)
    # On the reversed graph an edge v→u is the original u→v: price it as such.
    distances, paths = nx.single_source_dijkstra(
        reverse, destination, weight=lambda v, u, attributes: weight(u, v, attributes)
    )
    return distances, {node: list(reversed(path)) for node, path in paths.items()}


def _via(
    table: RouteTable,
    weight: WeightFunction,
    hop: str,
    destination: str,
    onward: Mapping[str, float],
    onward_paths: Mapping[str, list[str]],
    chosen: Candidate | None,
    lsdb: Mapping[str, Lsa],
) -> Candidate | None:
    """The candidate through first hop ``hop``, or ``None`` when it is the chosen path."""
    source = table.node_id
    graph = table.graph
    link = graph.succ.get(source, {}).get(hop)
    if link is None:
        return Candidate(hop, Verdict.LINK_DOWN, _why_down(source, hop, lsdb))
    if weight(source, hop, link) is None:
        return Candidate(
            hop, Verdict.LINK_DOWN, f"link {source}→{hop} has a metric that is not a number"
        )
    if hop == destination:
        path: tuple[str, ...] = (source, hop)
    elif graph.nodes[hop].get("draining", False):
        return Candidate(hop, Verdict.DRAINING, f"{hop} is draining: not used as transit")
    elif hop not in onward:
        return Candidate(
            hop, Verdict.NO_PATH, f"{hop} has no path to {destination} that avoids {source}"
        )
    else:
        path = (source, *onward_paths[hop])
    if chosen is not None and path == chosen.path:
        return None
    cost = path_cost(graph, path, weight)
    assert cost is not None  # every edge was priced on the way here
    if chosen is None:
        return _candidate(table, path, Verdict.HIGHER_COST, "usable, but not chosen")
    difference = chosen.cost_ms - cost
    if difference > _EPSILON_MS:
        return _candidate(table, path, Verdict.WITHIN_HYSTERESIS, "")  # see _within
    return _candidate(
        table, path, Verdict.HIGHER_COST, f"{-difference:.1f} ms more than the chosen path"
    )


def _within(candidate: Candidate, chosen: Candidate, margin: float) -> Candidate:
    """A cheaper candidate, with the reason the route computation kept the chosen path."""
    if candidate.verdict is not Verdict.WITHIN_HYSTERESIS:
        return candidate
    difference = chosen.cost_ms - candidate.cost_ms
    return dataclasses.replace(
        candidate,
        reason=f"{difference:.1f} ms cheaper, within the hysteresis margin of {margin:.1f} ms: "
        "the current path is kept",
    )


def _why_down(source: str, hop: str, lsdb: Mapping[str, Lsa]) -> str:
    """Why the link source→hop is not in the graph, from the two ends' LSAs."""
    if hop not in lsdb:
        return f"{hop} is not in the link-state database"
    for origin, other in ((source, hop), (hop, source)):
        lsa = lsdb.get(origin)
        link = None if lsa is None else lsa.link(other)
        if link is None or not link.up:
            return f"{origin} reports its link to {other} down"
    return f"link {source}→{hop} is down"


def _candidate(
    table: RouteTable, path: tuple[str, ...], verdict: Verdict, reason: str
) -> Candidate:
    links = link_breakdowns(table.graph, path, table.policy)
    cost = 0.0
    for part in links:
        cost += part.total_ms
    return Candidate(
        path[1],
        verdict,
        reason,
        path,
        cost,
        tuple(
            LinkCost(u, v, part)
            for (u, v), part in zip(itertools.pairwise(path), links, strict=True)
        ),
    )


def _chosen_reason(path: tuple[str, ...], kept: bool, margin: float) -> str:
    if kept:
        return (
            f"the current path, kept: it still works and no other is cheaper by more than "
            f"the hysteresis margin ({margin:.1f} ms)"
        )
    if len(path) == 2:
        return "the cheapest path: the direct link"
    return f"the cheapest path, via {'→'.join(path[1:-1])}"
