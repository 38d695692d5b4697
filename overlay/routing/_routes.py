"""Route tables: best paths, hysteresis and ranked alternates from the link-state DB.

Pure code: the LSDB, the previous table and ``now`` go in, a new table and the list of route
changes come out. ``now`` is only recorded (``RouteTable.computed_at``).

Theory of operation
-------------------

**Graph.** ``build_graph`` turns the LSDB into a networkx DiGraph, origins in sorted order so
that every node that holds the same LSDB builds the same graph and breaks ties alike. The edge
u→v exists only when u reports v up *and* v reports u up (OSPF's two-way check): a dead node's
last LSA still says its links are up, but its neighbours report them down, so it drops out of
the graph as soon as their LSAs arrive, long before its own LSA ages out. Edge attributes are
u's measurements; node attributes are ``region``, ``az`` and ``draining``.

**Best paths.** One ``single_source_dijkstra`` from this node, weighted by
``weight_function`` (``_cost.py``: link cost, hop penalty, draining nodes hidden as transit,
avoided regions penalised as transit), gives the best path and its cost to every destination
at once. That one Dijkstra is what keeps a 300-node full mesh fast (``bench/scale``).

**Hysteresis.** A path that still works is kept unless the best path is clearly better: the
previous path to a destination is kept when every edge of it is still present and usable and
its current cost is at most ``best + max(hysteresis_ms, hysteresis_ratio * best)``. A path that
no longer works (a link down, a node gone, a transit node draining) is replaced at once.

**Loop freedom.** Forwarding is hop by hop: every node sends to *its own* next hop toward the
destination. Write D_x for node x's best distance to destination d (its Dijkstra result) and
assume all nodes hold the same LSDB and policy (each with its own previous table). Two facts:

1. The weights seen by two nodes differ only on their own outgoing edges (the source is exempt
   from the transit rules), and x's weights are never lower than N's on any path that starts at
   N and does not come back to x. So for any path p from N to d, D_N ≤ cost_x(p).
2. Every edge costs at least ``hop_penalty_ms`` > 0.

A node that forwards on its best path x→N→…→d therefore has
D_x = w(x, N) + cost_x(N→…→d) ≥ w(x, N) + D_N > D_N. A node that keeps an older path
x→N→…→d is only allowed to when the rest of that path, priced with x's current weights, is
shorter than x's own best distance: cost_x(N→…→d) < D_x. By fact 1, D_N ≤ cost_x(N→…→d) < D_x.
Either way the next hop is strictly closer to d than x is (each by its own measure, D), so
following next hops from any node visits nodes with strictly decreasing D: no node can come
twice, and there is no loop. The check costs a sum over the kept path, nothing more: no Dijkstra
from the neighbour (one reverse Dijkstra per destination would be 300 Dijkstras at 300 nodes).

This is EIGRP's feasibility condition with the kept path's remainder as the upper bound of the
neighbour's distance. What it costs: a kept path must cost less than D_x + w(x, N), so the
hysteresis is at most the cost of the kept path's first hop. With the defaults (15% margin,
every hop at least 20 ms) that is the tighter bound only for best paths above w(x, N) / 0.15,
e.g. above 200 ms with a 30 ms first hop; there the better path is taken and the change says
why ("keeping it could loop"). While the
LSDBs of the nodes disagree (during flooding) no next-hop table is loop-free; as with OSPF,
two nodes may point at each other until the LSDBs agree. The proxy core closes that gap: every
relayed message carries the nodes it has crossed, and a node whose next hop is one of them
sends it along ``path_avoiding`` instead (``overlay.sip._proxy``, "Loop freedom").

**Alternates** (``Route.alternates``) are what the proxy tries, source-routed, when the next hop
fails, so paths with a different first hop come first. They are the first paths of
``shortest_simple_paths`` (Yen's k shortest paths) with the same weights, computed **on
demand**, once per destination per table: Yen's algorithm costs several Dijkstras per path, far
too much to run for all 299 destinations of a 300-node mesh on every change, and a node needs
alternates only for the few destinations it is sending to when a hop fails. The table keeps its
graph (frozen) for that. ``RouteTable.paths`` and ``next_hop`` never compute them.

**Versions.** ``RouteTable.version`` increases by one exactly when a destination's path
appears, disappears or changes (the changes are returned as ``RouteChange`` records). A
recomputation that changes no path keeps the version: the paths are the same, their costs and
the graph behind the alternates are those of the latest computation.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx
from networkx.classes.reportviews import (
    DiDegreeView,
    InDegreeView,
    InEdgeView,
    OutDegreeView,
    OutEdgeView,
)

from overlay.linkstate import LinkMetrics, Lsa

from ._cost import RoutingPolicy, WeightFunction, path_cost, weight_function

# Keeping an old path requires its remainder to be shorter than this node's best distance; the
# slack keeps that strict whatever the rounding of the two sums: far above the rounding error of
# a sum of a few costs in ms, far below any difference that matters.
_FEASIBILITY_SLACK_MS = 1e-6
# Yen's algorithm is asked for this many candidates per alternate wanted, so that paths with
# another first hop can be preferred over cheaper ones that share the chosen first hop.
_CANDIDATES_PER_ALTERNATE = 3


class NoRoute(LookupError):
    """This node has no route to ``destination``.

    Attributes:
        destination: the node asked for.
        reason: ``"unknown node"`` (not in the link-state DB), ``"no path"`` (known, but
            unreachable from here) or ``"this node"`` (the table's own node).
    """

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"no route to {destination}: {reason}")
        self.destination = destination
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Path:
    """A path: node ids from the source to the destination, and its cost in ms."""

    nodes: tuple[str, ...]
    cost: float


@dataclass(frozen=True, slots=True)
class Route:
    """The route to one destination.

    Attributes:
        destination: the destination node id.
        path: node ids, this node first, ``destination`` last.
        cost: the cost of ``path`` in ms.
        alternates: other paths to try when the next hop fails, best first: paths whose first
            hop differs from ``path``'s (and from the alternates' before them) come first.
    """

    destination: str
    path: tuple[str, ...]
    cost: float
    alternates: tuple[Path, ...] = ()

    @property
    def next_hop(self) -> str:
        """The node to forward to: ``path[1]``."""
        return self.path[1]


@dataclass(frozen=True, slots=True)
class RouteChange:
    """The path to ``destination`` changed.

    ``old_path`` is ``None`` for a destination that just became reachable, ``new_path`` for one
    that just became unreachable; ``reason`` says why, for people (logs, events): e.g. ``"link
    usw2→use1 down"``, ``"cost 88.0 → 288.0 ms; detour via use2 102.0 ms is better by more than
    the hysteresis"``, ``"new destination"``, ``"unreachable (no path)"``.
    """

    destination: str
    old_path: tuple[str, ...] | None
    new_path: tuple[str, ...] | None
    reason: str


@dataclass(frozen=True, eq=False)
class RouteTable:
    """One node's routes, immutable: readers swap in a new table, never edit one.

    Attributes:
        node_id: the node the paths start from.
        version: increases by one with every change of a path (see ``compute_routes``).
        computed_at: the ``now`` of the computation, in seconds.
        paths: the chosen path to every reachable destination (this node excluded).
        graph: the frozen topology the paths were computed on; alternates are computed from it.
        policy: the policy the paths were computed with.

    ``compute_routes`` makes tables; building one by hand (tests, a static setup) needs only
    the first four fields (without a graph there are no alternates).

    Raises:
        ValueError: a path does not go from ``node_id`` to its destination.
    """

    node_id: str
    version: int
    computed_at: float
    paths: Mapping[str, Path]
    graph: nx.DiGraph = field(default_factory=lambda: nx.freeze(_Topology()), repr=False)
    policy: RoutingPolicy = field(default_factory=RoutingPolicy, repr=False)
    _routes: _Routes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        paths = MappingProxyType(dict(self.paths))
        for destination, path in paths.items():
            nodes = path.nodes
            if len(nodes) < 2 or nodes[0] != self.node_id or nodes[-1] != destination:
                raise ValueError(f"path {nodes} does not lead from {self.node_id} to {destination}")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "_routes", _Routes(self.node_id, paths, self.graph, self.policy))

    @property
    def routes(self) -> Mapping[str, Route]:
        """Every route, by destination; a route's alternates are computed when it is first read.

        Iterating over all the values therefore runs Yen's algorithm for every destination:
        cheap on the reference topology, seconds on a 300-node mesh.
        """
        return self._routes

    def next_hop(self, destination: str) -> str:
        """The node to forward to toward ``destination`` (the packet path's lookup).

        Raises:
            NoRoute: no route (``reason`` says whether the node is unknown or unreachable).
        """
        path = self.paths.get(destination)
        if path is None:
            raise self._no_route(destination)
        return path.nodes[1]

    def route(self, destination: str) -> Route:
        """The route to ``destination``, with its alternates.

        Raises:
            NoRoute: no route (``reason`` says whether the node is unknown or unreachable).
        """
        if destination not in self.paths:
            raise self._no_route(destination)
        return self._routes[destination]

    def alternates(self, destination: str) -> tuple[Path, ...]:
        """``route(destination).alternates``.

        Raises:
            NoRoute: no route to ``destination``.
        """
        return self.route(destination).alternates

    def next_hops(self) -> dict[str, str]:
        """Destination → next hop, for every reachable destination (for the fastpath)."""
        return {destination: path.nodes[1] for destination, path in self.paths.items()}

    def path_avoiding(self, destination: str, avoid: Collection[str]) -> tuple[str, ...] | None:
        """The best path to ``destination`` that crosses none of ``avoid``, or ``None``.

        For a message that has already crossed the nodes in ``avoid``: while the nodes' tables
        disagree, following this node's next hop could send it back to one of them (a
        microloop). One Dijkstra on the table's graph with those nodes hidden, computed on
        demand: the packet path asks only when its next hop is one of them.

        Examples:
            >>> from overlay.routing import RouteTable, compute_routes
            >>> import networkx as nx
            >>> graph = nx.DiGraph()
            >>> for u, v, rtt in [("a", "b", 10.0), ("b", "e", 10.0), ("a", "c", 30.0),
            ...                   ("c", "e", 30.0)]:
            ...     graph.add_edge(u, v, rtt_ms=rtt)
            ...     graph.add_edge(v, u, rtt_ms=rtt)
            >>> table, _ = compute_routes(graph, "b", RoutingPolicy(), None, now=0.0)
            >>> table.path_avoiding("e", {"a"})
            ('b', 'e')
            >>> table.path_avoiding("e", {"e"}) is None
            True
            >>> table.path_avoiding("c", {"a", "e"}) is None
            True
        """
        hidden = frozenset(avoid) - {self.node_id}
        graph = self.graph
        if destination in hidden or destination not in graph or self.node_id not in graph:
            return None
        weight = weight_function(graph, self.policy, self.node_id)

        def avoiding(u: str, v: str, attributes: Mapping[str, Any]) -> float | None:
            return None if v in hidden else weight(u, v, attributes)

        try:
            path = nx.dijkstra_path(graph, self.node_id, destination, weight=avoiding)
        except (nx.NodeNotFound, nx.NetworkXNoPath):
            return None
        return tuple(path)

    def _no_route(self, destination: str) -> NoRoute:
        if destination == self.node_id:
            return NoRoute(destination, "this node")
        if destination in self.graph:
            return NoRoute(destination, "no path")
        return NoRoute(destination, "unknown node")


class _Routes(Mapping[str, Route]):
    """``RouteTable.routes``: builds each Route, alternates included, on first access.

    Holds what it needs, not the table, so that a table is freed by reference counting alone
    (the node keeps full garbage collections rare: a cycle would keep old graphs alive).
    """

    __slots__ = ("_cache", "_graph", "_node_id", "_paths", "_policy")

    def __init__(
        self, node_id: str, paths: Mapping[str, Path], graph: nx.DiGraph, policy: RoutingPolicy
    ) -> None:
        self._node_id = node_id
        self._paths = paths
        self._graph = graph
        self._policy = policy
        self._cache: dict[str, Route] = {}

    def __getitem__(self, destination: str) -> Route:
        route = self._cache.get(destination)
        if route is None:
            path = self._paths[destination]
            alternates = _alternates(self._graph, self._policy, self._node_id, path)
            # Two threads may both compute it; they get equal routes.
            route = self._cache.setdefault(
                destination, Route(destination, path.nodes, path.cost, alternates)
            )
        return route

    def __contains__(self, destination: object) -> bool:
        return destination in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"<routes of {self._node_id} to {len(self._paths)} destinations>"


def build_graph(lsdb: Mapping[str, Lsa]) -> nx.DiGraph:
    """The topology of an LSDB, as a networkx DiGraph.

    Args:
        lsdb: origin node id → its newest LSA.

    Returns:
        A new graph: one node per origin (attributes ``region``, ``az``, ``draining``,
        ``grace``), added in sorted order; an edge u→v when u reports v up and v reports u up,
        with u's metrics (``LinkMetrics.measurements()``) as attributes, except when v reports
        u in takeover grace (``LinkMetrics.grace``: u fell silent). A node its peers hold in
        grace so keeps its edges in (it stays a destination) and loses its edges out (no path
        crosses it); it is ``grace`` when no peer reports it plainly up.

    Examples:
        >>> from overlay.linkstate import LinkMetrics, Lsa
        >>> from overlay.routing import build_graph
        >>> lsdb = {
        ...     "use1": Lsa("use1", 7, 0.0, "us-east-1", "us-east-1a",
        ...                 (LinkMetrics("use2", True, 12.0), LinkMetrics("usw2", False))),
        ...     "use2": Lsa("use2", 3, 0.0, "us-east-2", "us-east-2a",
        ...                 (LinkMetrics("use1", True, 13.0), LinkMetrics("usw2", True, 50.0))),
        ...     "usw2": Lsa("usw2", 9, 0.0, "us-west-2", "us-west-2a",
        ...                 (LinkMetrics("use1", True, 68.0), LinkMetrics("use2", True, 50.0))),
        ... }
        >>> graph = build_graph(lsdb)
        >>> sorted(graph.edges)  # use1 reports its link to usw2 down: gone both ways
        [('use1', 'use2'), ('use2', 'use1'), ('use2', 'usw2'), ('usw2', 'use2')]
        >>> graph["use2"]["use1"]["rtt_ms"], graph["use1"]["use2"]["rtt_ms"]
        (13.0, 12.0)
    """
    origins = sorted(lsdb)
    # Neighbours reported up, in each LSA's order (sorted by neighbour, per the LSA contract).
    up = {
        origin: {link.neighbor: link for link in lsdb[origin].links if link.up}
        for origin in origins
    }
    nodes: dict[str, dict[str, object]] = {}
    graced: set[str] = set()
    plainly_up: set[str] = set()
    for origin in origins:
        lsa = lsdb[origin]
        nodes[origin] = {"region": lsa.region, "az": lsa.az, "draining": lsa.draining}
        for neighbor, link in up[origin].items():
            (graced if link.grace else plainly_up).add(neighbor)
    for origin in graced - plainly_up:
        if origin in nodes:
            nodes[origin]["grace"] = True
    succ: dict[str, dict[str, dict[str, float]]] = {origin: {} for origin in origins}
    pred: dict[str, dict[str, dict[str, float]]] = {origin: {} for origin in origins}
    no_links: dict[str, LinkMetrics] = {}
    for u in origins:
        out = succ[u]
        for v, link in up[u].items():
            back = up.get(v, no_links).get(u)
            if back is not None and not back.grace and u != v:
                # LinkMetrics.measurements() inlined: a call per edge would cost some 5% of the
                # build (89,700 edges at 300 nodes); a unit test checks that the two agree.
                # Only floats: the garbage collector does not track these dicts.
                out[v] = pred[v][u] = {
                    "rtt_ms": link.rtt_ms,
                    "jitter_ms": link.jitter_ms,
                    "loss_ratio": link.loss_ratio,
                    "retrans_ratio": link.retrans_ratio,
                    "admin_cost": link.admin_cost,
                }
    return _digraph(nodes, succ, pred)


class _Topology(nx.DiGraph):  # type: ignore[misc]  # networkx has no type information
    """A DiGraph whose edge and degree views are not cached on the graph.

    networkx caches ``G.edges``, ``G.degree`` and their in/out variants on the graph
    (``functools.cached_property``), and each of those views refers back to the graph: a graph
    that has been asked for one is a reference cycle, freed only by the cyclic garbage
    collector. The node makes full collections rare, so a table's graph (tens of MB at 300
    nodes) would outlive the table. Here each access makes a new view, as networkx < 3 did.
    """

    edges = out_edges = property(OutEdgeView)
    in_edges = property(InEdgeView)
    degree = property(DiDegreeView)
    in_degree = property(InDegreeView)
    out_degree = property(OutDegreeView)


def _digraph(
    nodes: dict[str, dict[str, object]],
    succ: dict[str, dict[str, dict[str, float]]],
    pred: dict[str, dict[str, dict[str, float]]],
) -> nx.DiGraph:
    """A DiGraph holding ready-made node and adjacency dicts, in their order.

    The same graph as ``add_nodes_from`` + ``add_edges_from`` would build (a unit test checks
    it, order included), in about half the time: those check and copy every edge one by one,
    which on a 300-node mesh (89,700 edges) was 85 of a 120 ms recompute. It fills the dicts
    networkx documents as a DiGraph's data structure (node dict, successor and predecessor
    adjacency dicts sharing each edge's attribute dict) through their private names.
    """
    graph = _Topology()
    graph._node.update(nodes)
    graph._succ.update(succ)  # graph._adj is the same dict
    graph._pred.update(pred)
    return graph


def compute_routes(
    topology: nx.DiGraph | Mapping[str, Lsa],
    self_id: str,
    policy: RoutingPolicy,
    previous: RouteTable | None,
    now: float,
) -> tuple[RouteTable, list[RouteChange]]:
    """Compute this node's route table.

    Args:
        topology: the LSDB (origin → newest LSA), or a graph made by ``build_graph`` (the
            table keeps it and freezes it: do not change it afterwards).
        self_id: this node's id.
        policy: the cost, hysteresis and alternates parameters.
        previous: the table this one replaces (its paths are kept while they work and are not
            clearly worse, see the module notes), or ``None`` for the first computation.
        now: the current time in seconds; only recorded as ``computed_at``.

    Returns:
        The new table and the path changes since ``previous``, sorted by destination. The
        version is 1 for the first table, then ``previous.version`` plus one when there are
        changes, or unchanged when there are none.

    Raises:
        ValueError: ``previous`` is another node's table.

    Examples:
        The reference topology, healthy:

        >>> from overlay.linkstate import LinkMetrics, Lsa
        >>> from overlay.routing import RoutingPolicy, compute_routes
        >>> rtt_ms = {("usw2", "usw1"): 22.0, ("usw2", "use2"): 50.0, ("usw2", "use1"): 68.0,
        ...           ("usw1", "use2"): 52.0, ("usw1", "use1"): 62.0, ("use2", "use1"): 12.0}
        >>> rtt_ms.update({(v, u): ms for (u, v), ms in list(rtt_ms.items())})
        >>> regions = {"usw2": "us-west-2", "usw1": "us-west-1",
        ...            "use2": "us-east-2", "use1": "us-east-1"}
        >>> def lsa(node, seq=1, **changes):  # changes: neighbour -> LinkMetrics
        ...     links = tuple(changes.get(peer, LinkMetrics(peer, True, rtt_ms[node, peer]))
        ...                   for peer in sorted(regions) if peer != node)
        ...     return Lsa(node, seq, 0.0, regions[node], regions[node] + "a", links)
        >>> lsdb = {node: lsa(node) for node in regions}
        >>> table, changes = compute_routes(lsdb, "usw2", RoutingPolicy(), None, now=100.0)
        >>> table.route("use1").path, table.route("use1").cost
        (('usw2', 'use1'), 88.0)
        >>> [path.nodes for path in table.alternates("use1")]
        [('usw2', 'use2', 'use1'), ('usw2', 'usw1', 'use1')]
        >>> table.version, changes[0].reason
        (1, 'new destination')

        The direct link degrades (5% loss, 100 ms more): calls move through us-east-2.

        >>> lsdb["usw2"] = lsa("usw2", 2, use1=LinkMetrics("use1", True, 168.0, loss_ratio=0.05))
        >>> table, changes = compute_routes(lsdb, "usw2", RoutingPolicy(), table, now=101.0)
        >>> table.next_hop("use1"), table.version
        ('use2', 2)
        >>> [(change.destination, change.new_path) for change in changes]
        [('use1', ('usw2', 'use2', 'use1'))]
        >>> print(changes[0].reason)
        cost 88.0 → 288.0 ms; detour via use2 102.0 ms is better by more than the hysteresis

        us-east-2 dies: its neighbours report it down; its last LSA still says up.

        >>> down = LinkMetrics("use2", False)
        >>> lsdb["usw1"], lsdb["use1"] = lsa("usw1", 2, use2=down), lsa("use1", 2, use2=down)
        >>> lsdb["usw2"] = lsa("usw2", 3, use2=down,
        ...                    use1=LinkMetrics("use1", True, 168.0, loss_ratio=0.05))
        >>> table, changes = compute_routes(lsdb, "usw2", RoutingPolicy(), table, now=102.0)
        >>> for change in changes:
        ...     print(change.destination, change.new_path, change.reason)
        use1 ('usw2', 'usw1', 'use1') link usw2→use2 down
        use2 None unreachable (link usw2→use2 down)
    """
    if previous is not None and previous.node_id != self_id:
        raise ValueError(f"previous table is {previous.node_id}'s, not {self_id}'s")
    graph = topology if isinstance(topology, nx.DiGraph) else build_graph(topology)
    nx.freeze(graph)
    weight = weight_function(graph, policy, self_id)
    distances: Mapping[str, float] = {}
    best_paths: Mapping[str, list[str]] = {}
    if self_id in graph:
        distances, best_paths = nx.single_source_dijkstra(graph, self_id, weight=weight)

    old_paths: Mapping[str, Path] = {} if previous is None else previous.paths
    paths: dict[str, Path] = {}
    why: dict[str, str] = {}
    for destination in sorted(distances):
        if destination == self_id:
            continue
        best = Path(tuple(best_paths[destination]), distances[destination])
        old = old_paths.get(destination)
        if old is None or old.nodes == best.nodes:
            paths[destination] = best
            continue
        kept, reason = _keep_or_replace(graph, weight, policy, old, best)
        paths[destination] = kept
        if reason is not None:
            why[destination] = reason

    changes: list[RouteChange] = []
    for destination in sorted(old_paths.keys() | paths.keys()):
        old = old_paths.get(destination)
        new = paths.get(destination)
        if old is not None and new is not None and old.nodes == new.nodes:
            continue
        if old is None:
            assert new is not None
            known = previous is not None and destination in previous.graph
            reason = "reachable again" if known else "new destination"
        elif new is None:
            reason = f"unreachable ({_why_gone(graph, weight, self_id, old)})"
        else:
            reason = why[destination]
        changes.append(
            RouteChange(
                destination,
                None if old is None else old.nodes,
                None if new is None else new.nodes,
                reason,
            )
        )

    version = 1
    if previous is not None:
        version = previous.version + 1 if changes else previous.version
    table = RouteTable(self_id, version, now, paths, graph, policy)
    return table, changes


def _keep_or_replace(
    graph: nx.DiGraph, weight: WeightFunction, policy: RoutingPolicy, old: Path, best: Path
) -> tuple[Path, str | None]:
    """The path to use when ``old`` is not the best path: old (repriced) or best, and why."""
    edges = _edge_costs(graph, weight, old.nodes)
    if isinstance(edges, str):
        return best, edges
    cost = 0.0
    for edge in edges:  # summed in Dijkstra's order, so an unchanged path costs the same
        cost += edge
    if cost > best.cost + policy.hysteresis_margin(best.cost):
        return best, (
            f"cost {old.cost:.1f} → {cost:.1f} ms; {_describe(best)} is better by more than "
            "the hysteresis"
        )
    remainder = sum(edges[1:])
    if remainder + _FEASIBILITY_SLACK_MS >= best.cost:
        return best, (
            f"cost {old.cost:.1f} → {cost:.1f} ms; keeping it could loop (next hop "
            f"{old.nodes[1]} is {remainder:.1f} ms from {old.nodes[-1]} on it, not less than "
            f"the best {best.cost:.1f} ms); {_describe(best)}"
        )
    return Path(old.nodes, cost), None


def _edge_costs(
    graph: nx.DiGraph, weight: WeightFunction, nodes: Sequence[str]
) -> list[float] | str:
    """The cost of each edge of ``nodes``, or why the path does not work."""
    costs: list[float] = []
    for u, v in itertools.pairwise(nodes):
        for node in (u, v):
            if node not in graph:
                return f"{node} left the link-state DB"
        attributes = graph.succ[u].get(v)
        if attributes is None:
            return f"link {u}→{v} down"
        cost = weight(u, v, attributes)
        if cost is None:
            if graph.nodes[u].get("draining", False):
                return f"{u} is draining"
            return f"link {u}→{v} has a metric that is not a number"
        costs.append(cost)
    return costs


def _why_gone(graph: nx.DiGraph, weight: WeightFunction, self_id: str, old: Path) -> str:
    if self_id not in graph:
        return "this node is not in the link-state DB"
    destination = old.nodes[-1]
    if destination not in graph:
        return f"{destination} left the link-state DB"
    reason = _edge_costs(graph, weight, old.nodes)
    return reason if isinstance(reason, str) else "no path"


def _describe(path: Path) -> str:
    if len(path.nodes) == 2:
        return f"direct path {path.cost:.1f} ms"
    return f"detour via {'→'.join(path.nodes[1:-1])} {path.cost:.1f} ms"


def _alternates(
    graph: nx.DiGraph, policy: RoutingPolicy, source: str, chosen: Path
) -> tuple[Path, ...]:
    """Up to ``policy.alternates`` paths other than ``chosen``, new first hops first."""
    if policy.alternates <= 0:
        return ()
    weight = weight_function(graph, policy, source)
    limit = 1 + policy.alternates * _CANDIDATES_PER_ALTERNATE
    try:
        candidates = list(
            itertools.islice(
                nx.shortest_simple_paths(graph, source, chosen.nodes[-1], weight=weight), limit
            )
        )
    except (nx.NodeNotFound, nx.NetworkXNoPath):
        return ()
    first_hops = {chosen.nodes[1]}
    preferred: list[Path] = []
    others: list[Path] = []
    for candidate in candidates:
        nodes = tuple(candidate)
        cost = path_cost(graph, nodes, weight)
        if nodes == chosen.nodes or cost is None:
            continue
        if nodes[1] in first_hops:
            others.append(Path(nodes, cost))
        else:
            first_hops.add(nodes[1])
            preferred.append(Path(nodes, cost))
    return tuple((preferred + others)[: policy.alternates])
