"""overlay.routing cost function: the formula, the transit rules, bad metrics, the breakdown."""

from __future__ import annotations

import doctest
import math
import random

import networkx as nx
import pytest

import overlay.routing._cost
from overlay.routing import (
    CostBreakdown,
    RoutingPolicy,
    cost_breakdown,
    link_cost,
    path_cost,
    weight_function,
)

METRICS = ("rtt_ms", "jitter_ms", "loss_ratio", "retrans_ratio", "admin_cost")


def metrics(rtt_ms: float = 0.0, **others: float) -> dict[str, float]:
    """Edge attributes as build_graph makes them: every metric present."""
    attributes = dict.fromkeys(METRICS, 0.0)
    attributes.update(rtt_ms=rtt_ms, **others)
    return attributes


def reference_graph(**regions_and_draining: object) -> nx.DiGraph:
    """The four regions, both directions of every link, reference RTTs, no impairment."""
    graph = nx.DiGraph()
    for node, region in [
        ("use1", "us-east-1"),
        ("use2", "us-east-2"),
        ("usw1", "us-west-1"),
        ("usw2", "us-west-2"),
    ]:
        graph.add_node(node, region=region, az=region + "a", draining=False)
    for u, v, rtt in [
        ("usw2", "usw1", 22.0),
        ("usw2", "use2", 50.0),
        ("usw2", "use1", 68.0),
        ("usw1", "use2", 52.0),
        ("usw1", "use1", 62.0),
        ("use2", "use1", 12.0),
    ]:
        graph.add_edge(u, v, **metrics(rtt))
        graph.add_edge(v, u, **metrics(rtt))
    return graph


def test_doctest_examples() -> None:
    result = doctest.testmod(overlay.routing._cost)
    assert result.attempted > 0
    assert result.failed == 0


def test_defaults_are_the_documented_ones() -> None:
    policy = RoutingPolicy()
    assert policy.jitter_weight == 1.0
    assert policy.loss_penalty_ms == 20.0
    assert policy.retrans_penalty_ms == 10.0
    assert policy.hop_penalty_ms == 20.0
    assert policy.avoid_regions == frozenset()
    assert policy.avoid_penalty_ms == 1000.0
    assert policy.hysteresis_ms == 10.0
    assert policy.hysteresis_ratio == 0.15
    assert policy.alternates == 2


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (metrics(68.0), 68.0 + 20.0),
        (metrics(68.0, jitter_ms=4.0), 68.0 + 4.0 + 20.0),
        (metrics(68.0, loss_ratio=0.01), 68.0 + 20.0 + 20.0),  # 20 ms per percent
        (metrics(68.0, loss_ratio=0.05), 68.0 + 100.0 + 20.0),
        (metrics(68.0, retrans_ratio=0.02), 68.0 + 20.0 + 20.0),  # 10 ms per percent
        (metrics(68.0, admin_cost=35.0), 68.0 + 35.0 + 20.0),
        ({"rtt_ms": 12.0}, 32.0),  # missing metrics count as 0
        ({}, 20.0),
    ],
)
def test_link_cost_formula(attributes: dict[str, float], expected: float) -> None:
    assert link_cost(attributes, RoutingPolicy()) == pytest.approx(expected)


def test_link_cost_parameters() -> None:
    policy = RoutingPolicy(
        jitter_weight=2.0, loss_penalty_ms=5.0, retrans_penalty_ms=3.0, hop_penalty_ms=1.0
    )
    attributes = metrics(10.0, jitter_ms=3.0, loss_ratio=0.1, retrans_ratio=0.2, admin_cost=7.0)
    assert link_cost(attributes, policy) == pytest.approx(10 + 6 + 50 + 60 + 7 + 1)


def test_reference_topology_direct_when_healthy_detour_when_degraded() -> None:
    policy = RoutingPolicy()
    direct = link_cost(metrics(68.0), policy)
    detour = link_cost(metrics(50.0), policy) + link_cost(metrics(12.0), policy)  # type: ignore[operator]
    assert (direct, detour) == (88.0, 102.0)
    degraded = link_cost(metrics(168.0, loss_ratio=0.05), policy)
    assert degraded == 288.0
    assert degraded > detour


@pytest.mark.parametrize(
    "attributes",
    [
        metrics(math.nan),
        metrics(math.inf),
        metrics(10.0, jitter_ms=-math.inf),
        metrics(10.0, loss_ratio=math.nan),
    ],
)
def test_non_finite_metrics_hide_the_edge(attributes: dict[str, float]) -> None:
    assert link_cost(attributes, RoutingPolicy()) is None
    graph = nx.DiGraph()
    graph.add_edge("a", "b", **attributes)
    assert weight_function(graph, RoutingPolicy(), "a")("a", "b", graph["a"]["b"]) is None


def test_negative_metrics_cannot_go_below_the_hop_penalty() -> None:
    assert link_cost(metrics(-500.0), RoutingPolicy()) == 20.0
    assert link_cost(metrics(30.0, admin_cost=-20.0), RoutingPolicy()) == 30.0


def test_weight_equals_link_cost_exactly() -> None:
    rng = random.Random(0)
    policy = RoutingPolicy(jitter_weight=1.5)
    for _ in range(200):
        attributes = {name: rng.uniform(-1.0, 1.0) * rng.choice((1, 150)) for name in METRICS}
        if rng.random() < 0.3:
            del attributes[rng.choice(METRICS)]
        graph = nx.DiGraph()
        graph.add_edge("a", "b", **attributes)
        weight = weight_function(graph, policy, "a")
        assert weight("a", "b", graph["a"]["b"]) == link_cost(attributes, policy)


def test_draining_node_is_hidden_as_transit_not_as_source() -> None:
    graph = reference_graph()
    graph.nodes["use2"]["draining"] = True
    weight = weight_function(graph, RoutingPolicy(), "usw2")
    assert weight("use2", "use1", graph["use2"]["use1"]) is None  # leaving it: transit
    assert weight("usw2", "use2", graph["usw2"]["use2"]) == 70.0  # entering it: destination
    own = weight_function(graph, RoutingPolicy(), "use2")
    assert own("use2", "use1", graph["use2"]["use1"]) == 32.0


def test_avoided_region_penalty_on_edges_leaving_transit_nodes() -> None:
    graph = reference_graph()
    policy = RoutingPolicy(avoid_regions={"us-east-2"})
    weight = weight_function(graph, policy, "usw2")
    assert weight("usw2", "use2", graph["usw2"]["use2"]) == 70.0
    assert weight("use2", "use1", graph["use2"]["use1"]) == 32.0 + 1000.0
    assert path_cost(graph, ["usw2", "use2"], weight) == 70.0  # destination: no penalty
    assert path_cost(graph, ["usw2", "use2", "use1"], weight) == 1102.0
    # The source itself is exempt: its costs are not inflated.
    own = weight_function(graph, policy, "use2")
    assert path_cost(graph, ["use2", "use1"], own) == 32.0


def test_path_cost_of_unusable_paths() -> None:
    graph = reference_graph()
    graph.remove_edge("usw2", "use1")
    weight = weight_function(graph, RoutingPolicy(), "usw2")
    assert path_cost(graph, ["usw2", "use1"], weight) is None
    assert path_cost(graph, ["usw2", "nowhere"], weight) is None
    assert path_cost(graph, ["nowhere", "usw2"], weight) is None
    assert path_cost(graph, ["usw2"], weight) == 0.0
    assert path_cost(graph, ["usw2", "usw1", "use1"], weight) == 42.0 + 82.0


def test_cost_breakdown_parts() -> None:
    graph = reference_graph()
    graph["usw2"]["use2"].update(jitter_ms=3.0, loss_ratio=0.02, retrans_ratio=0.01)
    graph["use2"]["use1"].update(admin_cost=5.0)
    policy = RoutingPolicy(avoid_regions={"us-east-2"})
    path = ["usw2", "use2", "use1"]
    parts = cost_breakdown(graph, path, policy)
    assert parts == CostBreakdown(
        rtt_ms=62.0,
        jitter_ms=3.0,
        loss_ms=40.0,
        retrans_ms=10.0,
        admin_ms=5.0,
        hop_ms=40.0,
        policy_ms=1000.0,
    )
    weight = weight_function(graph, policy, "usw2")
    assert parts.total_ms == pytest.approx(path_cost(graph, path, weight))


def test_cost_breakdown_floor_goes_to_hop() -> None:
    graph = nx.DiGraph()
    graph.add_edge("a", "b", **metrics(-50.0))
    parts = cost_breakdown(graph, ["a", "b"], RoutingPolicy())
    assert parts.rtt_ms == -50.0
    assert parts.total_ms == pytest.approx(20.0)


def test_cost_breakdown_refuses_unusable_paths() -> None:
    graph = reference_graph()
    with pytest.raises(ValueError, match="no link usw2→nowhere"):
        cost_breakdown(graph, ["usw2", "nowhere"], RoutingPolicy())
    graph.nodes["use2"]["draining"] = True
    with pytest.raises(ValueError, match="use2 is draining"):
        cost_breakdown(graph, ["usw2", "use2", "use1"], RoutingPolicy())
    assert cost_breakdown(graph, ["usw2", "use2"], RoutingPolicy()).total_ms == 70.0
    graph["usw2"]["use1"]["rtt_ms"] = math.nan
    with pytest.raises(ValueError, match="not a finite number"):
        cost_breakdown(graph, ["usw2", "use1"], RoutingPolicy())
    assert cost_breakdown(graph, [], RoutingPolicy()) == CostBreakdown()


@pytest.mark.parametrize(
    "changes",
    [
        {"hop_penalty_ms": 0.0},
        {"hop_penalty_ms": -1.0},
        {"jitter_weight": -1.0},
        {"loss_penalty_ms": math.nan},
        {"avoid_penalty_ms": math.inf},
        {"hysteresis_ratio": -0.1},
        {"alternates": -1},
    ],
)
def test_policy_refuses_bad_values(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RoutingPolicy"):
        RoutingPolicy(**changes)  # type: ignore[arg-type]


def test_policy_stores_avoid_regions_immutably() -> None:
    policy = RoutingPolicy(avoid_regions=["us-east-2"])  # type: ignore[arg-type]
    assert policy.avoid_regions == frozenset({"us-east-2"})


def test_hysteresis_margin() -> None:
    policy = RoutingPolicy()
    assert policy.hysteresis_margin(40.0) == 10.0  # the absolute floor
    assert policy.hysteresis_margin(200.0) == pytest.approx(30.0)  # 15%
