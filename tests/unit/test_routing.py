"""overlay.routing route computation: graph, best paths, hysteresis, loop freedom, alternates.

Every scenario is the four-region reference topology of DESIGN.md (node ids usw2, usw1, use2,
use1) unless it says otherwise; ``Net`` edits it as a game day would and hands out LSDBs.
"""

from __future__ import annotations

import dataclasses
import doctest
import gc
import math
import random
import weakref

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import overlay.routing._routes
from overlay.linkstate import LinkMetrics, Lsa
from overlay.routing import (
    NoRoute,
    Path,
    Route,
    RouteTable,
    RoutingPolicy,
    build_graph,
    compute_routes,
)

REGIONS = {"usw2": "us-west-2", "usw1": "us-west-1", "use2": "us-east-2", "use1": "us-east-1"}
REFERENCE_RTT_MS = {
    ("usw2", "usw1"): 22.0,
    ("usw2", "use2"): 50.0,
    ("usw2", "use1"): 68.0,
    ("usw1", "use2"): 52.0,
    ("usw1", "use1"): 62.0,
    ("use2", "use1"): 12.0,
}
POLICY = RoutingPolicy()


class Net:
    """Every node's view of its links; ``lsdb()`` is what every node then holds."""

    def __init__(
        self,
        rtt_ms: dict[tuple[str, str], float] = REFERENCE_RTT_MS,
        regions: dict[str, str] = REGIONS,
    ) -> None:
        self.regions = dict(regions)
        self.links: dict[tuple[str, str], LinkMetrics] = {}
        for (u, v), ms in rtt_ms.items():
            self.links[u, v] = LinkMetrics(v, True, ms)
            self.links[v, u] = LinkMetrics(u, True, ms)
        self.draining: set[str] = set()
        self.seq = 0

    def set(self, u: str, v: str, **changes: object) -> None:
        """Both ends measure the same change (a degraded or repaired link)."""
        self.report(u, v, **changes)
        self.report(v, u, **changes)

    def report(self, u: str, v: str, **changes: object) -> None:
        """Only u's view of its link to v changes."""
        self.links[u, v] = dataclasses.replace(self.links[u, v], **changes)  # type: ignore[arg-type]

    def cut(self, u: str, v: str) -> None:
        self.set(u, v, up=False)

    def kill(self, node: str) -> None:
        """Its neighbours stop hearing it; its own last LSA still says every link is up."""
        for u, v in list(self.links):
            if v == node:
                self.report(u, v, up=False)

    def lsdb(self) -> dict[str, Lsa]:
        self.seq += 1
        return {
            node: Lsa(
                node,
                self.seq,
                0.0,
                region,
                region + "a",
                tuple(
                    sorted(
                        (link for (u, _), link in self.links.items() if u == node),
                        key=lambda link: link.neighbor,
                    )
                ),
                node in self.draining,
            )
            for node, region in self.regions.items()
        }


def test_doctest_examples() -> None:
    result = doctest.testmod(overlay.routing._routes)
    assert result.attempted > 0
    assert result.failed == 0


# --- graph ----------------------------------------------------------------------------------


def test_graph_has_sorted_nodes_metrics_and_node_attributes() -> None:
    net = Net()
    net.set("usw2", "use1", jitter_ms=2.0, loss_ratio=0.01)
    net.report("usw2", "use1", rtt_ms=70.0)
    net.draining.add("use2")
    graph = build_graph(net.lsdb())
    assert list(graph) == ["use1", "use2", "usw1", "usw2"]
    assert graph.number_of_edges() == 12
    assert graph["usw2"]["use1"] == {
        "rtt_ms": 70.0,
        "jitter_ms": 2.0,
        "loss_ratio": 0.01,
        "retrans_ratio": 0.0,
        "admin_cost": 0.0,
    }
    assert graph["use1"]["usw2"]["rtt_ms"] == 68.0  # each direction: its tail's measurements
    assert graph.nodes["use2"] == {"region": "us-east-2", "az": "us-east-2a", "draining": True}


def test_graph_is_what_the_public_networkx_api_builds() -> None:
    net = Net()
    net.cut("usw1", "use2")
    net.report("use1", "usw2", up=False)
    net.report("usw2", "use1", jitter_ms=1.5, loss_ratio=0.01, retrans_ratio=0.02, admin_cost=7.0)
    lsdb = net.lsdb()
    graph = build_graph(lsdb)
    expected = nx.DiGraph()
    for origin in sorted(lsdb):
        lsa = lsdb[origin]
        expected.add_node(origin, region=lsa.region, az=lsa.az, draining=lsa.draining)
    for origin in sorted(lsdb):
        for link in lsdb[origin].links:
            back = lsdb[link.neighbor].link(origin)
            if link.up and back is not None and back.up:
                # build_graph inlines measurements(): this checks that the two agree.
                expected.add_edge(origin, link.neighbor, **link.measurements())
    assert nx.utils.graphs_equal(graph, expected)
    assert list(graph.nodes(data=True)) == list(expected.nodes(data=True))
    assert list(graph.edges(data=True)) == list(expected.edges(data=True))
    for node in graph:
        assert list(graph.pred[node]) == list(expected.pred[node])
    assert nx.utils.graphs_equal(graph.reverse(), expected.reverse())
    assert graph["usw2"]["use2"] is graph.pred["use2"]["usw2"]


def test_graph_keeps_a_link_only_when_both_ends_report_it_up() -> None:
    net = Net()
    net.report("use1", "usw2", up=False)  # one side only
    net.links["usw2", "ghost"] = LinkMetrics("ghost", True, 5.0)  # no LSA from ghost
    net.links["usw1", "usw1"] = LinkMetrics("usw1", True, 1.0)  # a link to itself
    graph = build_graph(net.lsdb())
    assert not graph.has_edge("usw2", "use1")
    assert not graph.has_edge("use1", "usw2")
    assert "ghost" not in graph
    assert not graph.has_edge("usw1", "usw1")
    assert graph.has_edge("usw2", "use2")


def test_graph_or_lsdb_give_the_same_routes() -> None:
    lsdb = Net().lsdb()
    from_lsdb, _ = compute_routes(lsdb, "usw2", POLICY, None, 1.0)
    from_graph, _ = compute_routes(build_graph(lsdb), "usw2", POLICY, None, 1.0)
    assert from_lsdb.paths == from_graph.paths
    assert nx.is_frozen(from_graph.graph)


# --- best paths -----------------------------------------------------------------------------


def test_healthy_reference_topology_goes_direct() -> None:
    table, changes = compute_routes(Net().lsdb(), "usw2", POLICY, None, 5.0)
    assert table.paths == {
        "use1": Path(("usw2", "use1"), 88.0),
        "use2": Path(("usw2", "use2"), 70.0),
        "usw1": Path(("usw2", "usw1"), 42.0),
    }
    assert table.next_hops() == {"use1": "use1", "use2": "use2", "usw1": "usw1"}
    assert (table.node_id, table.version, table.computed_at) == ("usw2", 1, 5.0)
    assert [(c.destination, c.old_path, c.reason) for c in changes] == [
        ("use1", None, "new destination"),
        ("use2", None, "new destination"),
        ("usw1", None, "new destination"),
    ]


def test_degraded_direct_link_moves_to_a_detour() -> None:
    net = Net()
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    route = table.route("use1")
    assert (route.path, route.cost, route.next_hop) == (("usw2", "use2", "use1"), 102.0, "use2")
    [change] = changes
    assert (change.destination, change.old_path, change.new_path) == (
        "use1",
        ("usw2", "use1"),
        ("usw2", "use2", "use1"),
    )
    assert change.reason == (
        "cost 88.0 → 288.0 ms; detour via use2 102.0 ms is better by more than the hysteresis"
    )


def test_dead_node_is_avoided_at_once_despite_its_stale_lsa() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    assert table.next_hop("use1") == "use2"
    net.kill("use2")
    lsdb = net.lsdb()
    assert all(link.up for link in lsdb["use2"].links)  # what the dead node last said
    assert build_graph(lsdb).degree("use2") == 0
    table, changes = compute_routes(lsdb, "usw2", POLICY, table, 2.0)
    assert table.route("use1").path == ("usw2", "usw1", "use1")
    assert "use2" not in table.paths
    assert [(c.destination, c.new_path, c.reason) for c in changes] == [
        ("use1", ("usw2", "usw1", "use1"), "link usw2→use2 down"),
        ("use2", None, "unreachable (link usw2→use2 down)"),
    ]
    with pytest.raises(NoRoute) as caught:
        table.next_hop("use2")
    assert (caught.value.destination, caught.value.reason) == ("use2", "no path")


def test_draining_node_is_no_transit_but_still_a_destination() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    assert table.next_hop("use1") == "use2"
    net.draining.add("use2")
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    assert table.route("use1").path == ("usw2", "usw1", "use1")
    assert table.route("use2").path == ("usw2", "use2")
    assert table.route("use2").cost == 70.0
    assert [c.reason for c in changes] == ["use2 is draining"]
    for destination in table.paths:
        for path in table.alternates(destination):
            assert "use2" not in path.nodes[1:-1]
    # A draining node still routes its own traffic.
    own, _ = compute_routes(net.lsdb(), "use2", POLICY, None, 2.0)
    assert own.route("use1").path == ("use2", "use1")
    assert own.route("use1").cost == 32.0


def test_destination_behind_a_draining_node_only_is_unreachable() -> None:
    net = Net()
    net.cut("usw2", "use1")
    net.cut("usw1", "use1")
    net.draining.add("use2")
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    assert set(table.paths) == {"use2", "usw1"}
    with pytest.raises(NoRoute, match="no route to use1: no path"):
        table.next_hop("use1")


def test_avoided_region_is_transit_only_as_a_last_resort() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    avoid = RoutingPolicy(avoid_regions={"us-east-2"})
    table, _ = compute_routes(net.lsdb(), "usw2", avoid, None, 1.0)
    assert table.route("use1").path == ("usw2", "usw1", "use1")
    assert table.route("use2").cost == 70.0  # as a destination it costs what it costs
    # Avoiding both transit regions, the degraded direct link beats them.
    both = RoutingPolicy(avoid_regions={"us-east-2", "us-west-1"})
    table, _ = compute_routes(net.lsdb(), "usw2", both, None, 1.0)
    assert table.route("use1").path == ("usw2", "use1")
    # With no direct link left, an avoided region carries the traffic.
    net.cut("usw2", "use1")
    net.cut("usw1", "use1")
    table, _ = compute_routes(net.lsdb(), "usw2", avoid, None, 1.0)
    assert table.route("use1").path == ("usw2", "use2", "use1")
    assert table.route("use1").cost == 1102.0


def test_node_in_an_avoided_region_sees_its_real_costs() -> None:
    avoid = RoutingPolicy(avoid_regions={"us-east-2"})
    table, _ = compute_routes(Net().lsdb(), "use2", avoid, None, 1.0)
    assert table.route("use1").cost == 32.0
    assert table.route("usw2").cost == 70.0


def test_unreachable_destination() -> None:
    net = Net()
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    for peer in ("usw2", "usw1", "use2"):
        net.cut(peer, "use1")
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    assert [(c.destination, c.old_path, c.new_path, c.reason) for c in changes] == [
        ("use1", ("usw2", "use1"), None, "unreachable (link usw2→use1 down)")
    ]
    assert "use1" not in table.paths
    assert "use1" not in table.routes
    for lookup in (table.next_hop, table.route, table.alternates):
        with pytest.raises(NoRoute) as caught:
            lookup("use1")
        assert caught.value.reason == "no path"
    with pytest.raises(NoRoute, match="no route to nowhere: unknown node"):
        table.next_hop("nowhere")
    with pytest.raises(NoRoute, match="no route to usw2: this node"):
        table.next_hop("usw2")
    assert isinstance(caught.value, LookupError)


def test_node_leaving_the_lsdb_becomes_unreachable_then_returns() -> None:
    net = Net()
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    lsdb = net.lsdb()
    del lsdb["use1"]
    table, changes = compute_routes(lsdb, "usw2", POLICY, table, 2.0)
    assert [c.reason for c in changes] == ["unreachable (use1 left the link-state DB)"]
    with pytest.raises(NoRoute) as caught:
        table.next_hop("use1")
    assert caught.value.reason == "unknown node"
    net.cut("usw2", "use1")
    net.cut("usw1", "use1")
    net.cut("use2", "use1")
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 3.0)
    assert changes == []  # known again, still unreachable
    net.set("use2", "use1", up=True)
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 4.0)
    assert [(c.destination, c.reason) for c in changes] == [("use1", "reachable again")]


def test_this_node_missing_from_its_lsdb_has_no_routes() -> None:
    net = Net()
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    lsdb = net.lsdb()
    del lsdb["usw2"]
    table, changes = compute_routes(lsdb, "usw2", POLICY, table, 2.0)
    assert table.paths == {}
    assert {c.reason for c in changes} == {"unreachable (this node is not in the link-state DB)"}


# --- hysteresis -----------------------------------------------------------------------------


def noisy_recomputes(policy: RoutingPolicy) -> list[tuple[str, ...]]:
    """100 recomputes of a mesh whose direct path (100 ms) and detour (102 ms) are close.

    Every link's RTT varies by up to ±5% at each recompute. Returns the path to use1 after
    each recompute.
    """
    rtt = dict(REFERENCE_RTT_MS)
    rtt["usw2", "use1"] = 80.0
    net = Net(rtt)
    rng = random.Random(0)
    table = None
    paths = []
    for step in range(100):
        for (u, v), ms in rtt.items():
            net.set(u, v, rtt_ms=ms * rng.uniform(0.95, 1.05))
        table, _ = compute_routes(net.lsdb(), "usw2", policy, table, float(step))
        paths.append(table.route("use1").path)
    return paths


def test_noise_does_not_flap_the_route() -> None:
    paths = noisy_recomputes(POLICY)
    assert len(set(paths)) == 1
    # The test has teeth: without hysteresis the same noise flips the best path.
    flapping = noisy_recomputes(RoutingPolicy(hysteresis_ms=0.0, hysteresis_ratio=0.0))
    assert len(set(flapping)) == 2


def test_noise_keeps_the_version() -> None:
    rtt = dict(REFERENCE_RTT_MS)
    rtt["usw2", "use1"] = 80.0
    net = Net(rtt)
    rng = random.Random(0)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 0.0)
    for step in range(1, 100):
        for (u, v), ms in rtt.items():
            net.set(u, v, rtt_ms=ms * rng.uniform(0.95, 1.05))
        table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, float(step))
        assert changes == []
        assert table.version == 1
        assert table.computed_at == float(step)


def test_path_within_hysteresis_is_kept_then_left_when_clearly_worse() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    assert table.route("use1").path == ("usw2", "use2", "use1")
    # Direct recovers to 95 ms: the detour (102 ms) is within 15% of it and is kept.
    net.set("usw2", "use1", rtt_ms=75.0, loss_ratio=0.0)
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    assert changes == []
    assert table.version == 1
    assert table.route("use1").path == ("usw2", "use2", "use1")
    assert table.route("use1").cost == 102.0
    # Fully healthy, direct is 88 ms: more than 15% (13.2 ms) better than 102 ms.
    net.set("usw2", "use1", rtt_ms=68.0)
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 3.0)
    assert table.route("use1").path == ("usw2", "use1")
    assert table.version == 2
    assert [c.reason for c in changes] == [
        "cost 102.0 → 102.0 ms; direct path 88.0 ms is better by more than the hysteresis"
    ]


def test_clearly_better_path_is_taken_even_when_the_old_one_did_not_change() -> None:
    rtt = dict(REFERENCE_RTT_MS)
    rtt["usw2", "use1"] = 90.0  # 110 ms, the detour is 102 ms
    net = Net(rtt)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    assert table.next_hop("use1") == "use2"
    net.set("usw2", "use2", rtt_ms=20.0)  # the detour drops to 72 ms
    net.set("usw2", "use1", rtt_ms=60.0)  # direct to 80 ms: better than the old 102, not 72
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    assert table.route("use1").path == ("usw2", "use2", "use1")
    # From a direct path, a 30% better detour is taken.
    net.set("usw2", "use2", rtt_ms=50.0)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 3.0)
    assert table.next_hop("use1") == "use1"
    net.set("usw2", "use2", rtt_ms=15.0)
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 4.0)
    assert table.route("use1").path == ("usw2", "use2", "use1")
    assert table.route("use1").cost == 67.0
    assert "better by more than the hysteresis" in changes[0].reason


def test_broken_kept_path_is_replaced_at_once() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    net.set("usw2", "use1", rtt_ms=75.0, loss_ratio=0.0)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    assert table.route("use1").path == ("usw2", "use2", "use1")  # kept by hysteresis
    net.cut("use2", "use1")
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 3.0)
    assert table.route("use1").path == ("usw2", "use1")
    assert [c.reason for c in changes] == ["link use2→use1 down"]


def test_version_increments_only_on_change() -> None:
    net = Net()
    lsdb = net.lsdb()
    table, _ = compute_routes(lsdb, "usw2", POLICY, None, 1.0)
    assert table.version == 1
    table, changes = compute_routes(lsdb, "usw2", POLICY, table, 2.0)
    assert (table.version, changes) == (1, [])
    net.set("usw2", "use1", rtt_ms=70.0)  # a cost change, same paths
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 3.0)
    assert (table.version, changes, table.route("use1").cost) == (1, [], 90.0)
    net.cut("usw2", "use1")
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 4.0)
    assert (table.version, len(changes)) == (2, 1)
    net.set("usw2", "use1", up=True, rtt_ms=50.0)  # clearly better than the detour
    table, changes = compute_routes(net.lsdb(), "usw2", POLICY, table, 5.0)
    assert (table.version, len(changes)) == (3, 1)


# --- loop freedom ---------------------------------------------------------------------------


def test_sticky_paths_of_two_nodes_cannot_point_at_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """a and b each keep an old path through the other; hysteresis alone would keep both.

    a-b is 1 ms, a-d and b-d 130 ms. a chose a→b→d while a-d was degraded, b chose b→a→d
    while b-d was; once both are healthy each old path (171 ms) is within the 15% margin of
    the direct one (150 + 22.5 ms), and keeping both would send a's traffic to b and b's to a.
    """
    rtt = {("a", "b"): 1.0, ("a", "d"): 130.0, ("b", "d"): 130.0}
    regions = {"a": "r1", "b": "r2", "d": "r3"}

    def lsdb_with(**degraded: float) -> dict[str, Lsa]:
        net = Net(rtt, regions)
        for node, rtt_ms in degraded.items():
            net.set(node, "d", rtt_ms=rtt_ms)
        return net.lsdb()

    old_a, _ = compute_routes(lsdb_with(a=400.0), "a", POLICY, None, 1.0)
    old_b, _ = compute_routes(lsdb_with(b=400.0), "b", POLICY, None, 2.0)
    assert old_a.route("d").path == ("a", "b", "d")
    assert old_b.route("d").path == ("b", "a", "d")
    healthy = lsdb_with()
    best = 150.0
    assert best + POLICY.hysteresis_margin(best) >= 171.0  # hysteresis alone would keep both

    table_a, changes_a = compute_routes(healthy, "a", POLICY, old_a, 3.0)
    table_b, changes_b = compute_routes(healthy, "b", POLICY, old_b, 3.0)
    assert (table_a.next_hop("d"), table_b.next_hop("d")) == ("d", "d")
    assert "keeping it could loop" in changes_a[0].reason
    assert "keeping it could loop" in changes_b[0].reason

    # Without the feasibility condition they would loop.
    monkeypatch.setattr(overlay.routing._routes, "_FEASIBILITY_SLACK_MS", -math.inf)
    table_a, _ = compute_routes(healthy, "a", POLICY, old_a, 3.0)
    table_b, _ = compute_routes(healthy, "b", POLICY, old_b, 3.0)
    assert (table_a.next_hop("d"), table_b.next_hop("d")) == ("b", "a")


def test_kept_detour_satisfies_the_feasibility_condition() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    net.set("usw2", "use1", rtt_ms=75.0, loss_ratio=0.0)
    lsdb = net.lsdb()
    table, _ = compute_routes(lsdb, "usw2", POLICY, table, 2.0)
    assert table.next_hop("use1") == "use2"
    neighbour, _ = compute_routes(lsdb, "use2", POLICY, None, 2.0)
    assert neighbour.route("use1").cost < 95.0  # closer than this node's best (direct, 95)


NODES = [f"n{i}" for i in range(8)]
POLICIES = [
    RoutingPolicy(),
    # Small hop penalties, wide hysteresis: old paths are kept often, loops are tempting.
    RoutingPolicy(hop_penalty_ms=1.0, hysteresis_ms=50.0, hysteresis_ratio=0.5),
    RoutingPolicy(hop_penalty_ms=0.5, hysteresis_ratio=2.0),
    RoutingPolicy(hop_penalty_ms=0.5, hysteresis_ratio=2.0, avoid_regions={"r1"}),
]

KINDS = ("rtt",) * 6 + ("cut", "restore", "one_side_down", "drain")


def random_change(net: Net, rng: random.Random) -> None:
    """One random change: a link's metrics, a link cut or restored, one side down, a drain."""
    kind = rng.choice(KINDS)
    if kind == "drain":
        net.draining ^= {rng.choice(sorted(net.regions))}
        return
    links = sorted(net.links)
    if not links:
        return
    u, v = rng.choice(links)
    if kind == "rtt":
        net.set(u, v, rtt_ms=rng.uniform(1.0, 200.0), loss_ratio=rng.choice((0.0, 0.0, 0.05)))
    elif kind == "cut":
        net.cut(u, v)
    elif kind == "restore":
        net.set(u, v, up=True)
    else:
        net.report(u, v, up=False)


def assert_next_hops_reach(tables: dict[str, RouteTable | None]) -> None:
    for source, table in tables.items():
        assert table is not None
        for destination in table.paths:
            hop, visited = source, [source]
            while hop != destination:
                next_table = tables[hop]
                assert next_table is not None
                hop = next_table.next_hop(destination)  # never NoRoute on the way
                assert hop not in visited, f"loop {[*visited, hop]} toward {destination}"
                visited.append(hop)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    size=st.integers(4, 8),
    density=st.floats(0.6, 1.0),
    policy=st.sampled_from(POLICIES),
    steps=st.integers(20, 40),
    in_sync=st.floats(0.1, 0.4),
    seed=st.integers(0, 2**32 - 1),
)
def test_following_next_hops_never_loops(
    size: int, density: float, policy: RoutingPolicy, steps: int, in_sync: float, seed: int
) -> None:
    """Random topologies and random sequences of changes (drawn from ``seed``).

    After each change some nodes recompute and the others lag behind, as nodes that have not
    received the new LSA yet, so each node's previous table comes from its own history. With
    probability ``in_sync`` (and always at the end) every node recomputes on the same LSDB;
    then following next hops from any node must reach every destination it has a route to.
    With the feasibility check of ``compute_routes`` taken out, these examples find a loop.
    """
    rng = random.Random(seed)
    nodes = NODES[:size]
    rtt = {
        (u, v): rng.uniform(1.0, 150.0)
        for i, u in enumerate(nodes)
        for v in nodes[i + 1 :]
        if rng.random() < density
    }
    net = Net(rtt, {node: f"r{i % 3}" for i, node in enumerate(nodes)})
    tables: dict[str, RouteTable | None] = dict.fromkeys(nodes)
    for step in range(steps):
        random_change(net, rng)
        graph = build_graph(net.lsdb())
        everyone = step == steps - 1 or rng.random() < in_sync
        for node in nodes:
            if everyone or rng.random() < 0.5:
                tables[node], _ = compute_routes(graph, node, policy, tables[node], float(step))
        if everyone:
            assert_next_hops_reach(tables)


# --- alternates -----------------------------------------------------------------------------


def test_alternates_are_ranked_and_start_with_other_first_hops() -> None:
    net = Net()
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    assert table.alternates("use1") == (
        Path(("usw2", "use2", "use1"), 102.0),
        Path(("usw2", "usw1", "use1"), 124.0),
    )
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    # Chosen: via use2 (102). Next cheapest paths: via usw1 (124), usw1→use2 (146),
    # use2→usw1 (224), direct (288). The first hops usw1 and use1 come first.
    route = table.route("use1")
    assert route.alternates == (
        Path(("usw2", "usw1", "use1"), 124.0),
        Path(("usw2", "use1"), 288.0),
    )
    three, _ = compute_routes(net.lsdb(), "usw2", RoutingPolicy(alternates=3), None, 3.0)
    assert [path.nodes for path in three.alternates("use1")] == [
        ("usw2", "usw1", "use1"),
        ("usw2", "use1"),
        ("usw2", "usw1", "use2", "use1"),
    ]
    none, _ = compute_routes(net.lsdb(), "usw2", RoutingPolicy(alternates=0), None, 3.0)
    assert none.alternates("use1") == ()


def test_alternates_of_a_kept_path_include_the_best_path() -> None:
    net = Net()
    net.set("usw2", "use1", rtt_ms=168.0, loss_ratio=0.05)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, None, 1.0)
    net.set("usw2", "use1", rtt_ms=75.0, loss_ratio=0.0)
    table, _ = compute_routes(net.lsdb(), "usw2", POLICY, table, 2.0)
    assert table.route("use1").path == ("usw2", "use2", "use1")
    assert table.alternates("use1")[0] == Path(("usw2", "use1"), 95.0)


def test_routes_mapping_is_lazy_and_cached() -> None:
    table, _ = compute_routes(Net().lsdb(), "usw2", POLICY, None, 1.0)
    assert list(table.routes) == ["use1", "use2", "usw1"]
    assert len(table.routes) == 3
    assert "use1" in table.routes
    assert "usw2" not in table.routes
    route = table.routes["use1"]
    assert isinstance(route, Route)
    assert table.route("use1") is route
    assert route.alternates == table.alternates("use1")
    with pytest.raises(KeyError):
        table.routes["nowhere"]
    assert "3 destinations" in repr(table.routes)


def test_only_direct_path_has_no_alternates() -> None:
    net = Net({("a", "b"): 10.0}, {"a": "r1", "b": "r2"})
    table, _ = compute_routes(net.lsdb(), "a", POLICY, None, 1.0)
    assert table.route("b") == Route("b", ("a", "b"), 30.0, ())


# --- the table ------------------------------------------------------------------------------


def test_table_is_freed_by_reference_counting() -> None:
    """The node makes full garbage collections rare: a cycle would keep old graphs alive."""
    table, changes = compute_routes(Net().lsdb(), "usw2", POLICY, None, 1.0)
    for destination in table.paths:
        table.route(destination)
    graph = table.graph
    # networkx's own DiGraph caches these views, which refer back to the graph: a cycle.
    views = [graph.edges, graph.out_edges, graph.in_edges, graph.degree, graph.in_degree]
    views += [graph.out_degree, graph.nodes, graph.succ, graph.pred]
    assert graph.number_of_edges() == 12
    assert sorted(graph.edges) == sorted(graph.edges())
    del graph, views
    table_ref, graph_ref = weakref.ref(table), weakref.ref(table.graph)
    gc.disable()
    try:
        del table, changes
        assert table_ref() is None
        assert graph_ref() is None
    finally:
        gc.enable()


def test_table_made_by_hand() -> None:
    table = RouteTable("usw2", 7, 0.0, {"use1": Path(("usw2", "use2", "use1"), 102.0)})
    assert table.next_hop("use1") == "use2"
    assert table.alternates("use1") == ()
    with pytest.raises(NoRoute, match="unknown node"):
        table.next_hop("use2")
    with pytest.raises(ValueError, match="does not lead from usw2 to use1"):
        RouteTable("usw2", 1, 0.0, {"use1": Path(("usw1", "use1"), 62.0)})
    with pytest.raises(ValueError, match="does not lead"):
        RouteTable("usw2", 1, 0.0, {"use1": Path(("usw2",), 0.0)})


def test_table_paths_cannot_be_changed() -> None:
    source = {"use1": Path(("usw2", "use1"), 88.0)}
    table = RouteTable("usw2", 1, 0.0, source)
    source.clear()
    assert table.next_hop("use1") == "use1"
    with pytest.raises(TypeError):
        table.paths["use2"] = Path(("usw2", "use2"), 70.0)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.version = 2  # type: ignore[misc]


def test_previous_table_of_another_node_is_refused() -> None:
    table, _ = compute_routes(Net().lsdb(), "usw2", POLICY, None, 1.0)
    with pytest.raises(ValueError, match="usw2's, not usw1's"):
        compute_routes(Net().lsdb(), "usw1", POLICY, table, 2.0)
