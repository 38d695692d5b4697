"""Route explanations on the reference topology (overlay.noc._explain): the chosen path
with its cost per link and term, and every other first hop with the reason it lost."""

from __future__ import annotations

import pytest

from overlay.linkstate import LinkMetrics, Lsa
from overlay.noc import Candidate, RouteExplanation, Verdict, explain_route
from overlay.routing import CostBreakdown, RouteTable, RoutingPolicy, compute_routes

REGIONS = {"usw2": "us-west-2", "usw1": "us-west-1", "use2": "us-east-2", "use1": "us-east-1"}
_RTT = {("usw2", "usw1"): 22.0, ("usw2", "use2"): 50.0, ("usw2", "use1"): 68.0,
        ("usw1", "use2"): 52.0, ("usw1", "use1"): 62.0, ("use2", "use1"): 12.0}  # fmt: skip
RTT = {**_RTT, **{(v, u): ms for (u, v), ms in _RTT.items()}}
PEERS = ("usw1", "use2", "use1")


def lsa(node: str, seq: int = 1, *, draining: bool = False, **links: LinkMetrics) -> Lsa:
    metrics = tuple(
        links.get(peer, LinkMetrics(peer, True, RTT[node, peer]))
        for peer in sorted(REGIONS)
        if peer != node
    )
    return Lsa(node, seq, 0.0, REGIONS[node], REGIONS[node] + "a", metrics, draining)


def healthy() -> dict[str, Lsa]:
    return {node: lsa(node) for node in REGIONS}


def explain(
    lsdb: dict[str, Lsa],
    destination: str = "use1",
    previous: RouteTable | None = None,
    policy: RoutingPolicy | None = None,
) -> RouteExplanation:
    table, _ = compute_routes(lsdb, "usw2", policy or RoutingPolicy(), previous, now=0.0)
    return explain_route(table, destination, PEERS, lsdb)


def summary(candidate: Candidate) -> tuple[str, Verdict, tuple[str, ...], float]:
    return candidate.first_hop, candidate.verdict, candidate.path, round(candidate.cost_ms, 1)


def test_healthy_direct_link_wins_and_the_detours_cost_more():
    explanation = explain(healthy())
    chosen = explanation.chosen
    assert chosen is not None
    assert summary(chosen) == ("use1", Verdict.CHOSEN, ("usw2", "use1"), 88.0)
    assert chosen.reason == "the cheapest path: the direct link"
    assert [summary(c) for c in explanation.rejected] == [
        ("use2", Verdict.HIGHER_COST, ("usw2", "use2", "use1"), 102.0),
        ("usw1", Verdict.HIGHER_COST, ("usw2", "usw1", "use1"), 124.0),
    ]
    assert explanation.rejected[0].reason == "14.0 ms more than the chosen path"
    assert explanation.hysteresis_margin_ms == pytest.approx(13.2)  # 15% of 88 ms


def test_degraded_direct_link_explained_term_by_term():
    lsdb = healthy()
    lsdb["usw2"] = lsa("usw2", 2, use1=LinkMetrics("use1", True, 168.0, 2.0, loss_ratio=0.05))
    explanation = explain(lsdb)
    assert explanation.chosen is not None
    assert explanation.chosen.path == ("usw2", "use2", "use1")
    assert [link.parts for link in explanation.chosen.links] == [
        CostBreakdown(rtt_ms=50.0, hop_ms=20.0),
        CostBreakdown(rtt_ms=12.0, hop_ms=20.0),
    ]
    direct = next(c for c in explanation.rejected if c.first_hop == "use1")
    assert summary(direct) == ("use1", Verdict.HIGHER_COST, ("usw2", "use1"), 290.0)
    (link,) = direct.links
    assert (link.from_node, link.to_node) == ("usw2", "use1")
    assert link.parts == CostBreakdown(rtt_ms=168.0, jitter_ms=2.0, loss_ms=100.0, hop_ms=20.0)
    assert direct.reason == "188.0 ms more than the chosen path"


def test_hysteresis_keeps_the_current_path_and_says_so():
    lsdb = healthy()
    before, _ = compute_routes(lsdb, "usw2", RoutingPolicy(), None, now=0.0)
    # The direct link gets 22 ms worse: the detour is 8 ms cheaper, within the margin (15.3 ms).
    lsdb["usw2"] = lsa("usw2", 2, use1=LinkMetrics("use1", True, 90.0))
    explanation = explain(lsdb, previous=before)
    assert explanation.chosen is not None
    assert summary(explanation.chosen) == ("use1", Verdict.CHOSEN, ("usw2", "use1"), 110.0)
    assert "kept" in explanation.chosen.reason
    detour = explanation.rejected[0]
    assert summary(detour) == ("use2", Verdict.WITHIN_HYSTERESIS, ("usw2", "use2", "use1"), 102.0)
    assert detour.reason == (
        "8.0 ms cheaper, within the hysteresis margin of 15.3 ms: the current path is kept"
    )


@pytest.mark.parametrize(
    ("reporter", "reason"),
    [
        ("usw2", "usw2 reports its link to use2 down"),
        ("use2", "use2 reports its link to usw2 down"),
    ],
)
def test_a_down_link_is_a_rejected_first_hop_naming_who_reports_it(reporter: str, reason: str):
    lsdb = healthy()
    other = "use2" if reporter == "usw2" else "usw2"
    lsdb[reporter] = lsa(reporter, 2, **{other: LinkMetrics(other, False)})
    explanation = explain(lsdb)
    down = next(c for c in explanation.rejected if c.first_hop == "use2")
    assert (down.verdict, down.reason, down.path, down.cost_ms) == (
        Verdict.LINK_DOWN,
        reason,
        (),
        0.0,
    )


def test_draining_neighbour_is_no_transit_and_a_node_gone_from_the_lsdb_is_down():
    lsdb = healthy()
    lsdb["use2"] = lsa("use2", 2, draining=True)
    del lsdb["usw1"]
    explanation = explain(lsdb)
    verdicts = {c.first_hop: (c.verdict, c.reason) for c in explanation.rejected}
    assert verdicts == {
        "use2": (Verdict.DRAINING, "use2 is draining: not used as transit"),
        "usw1": (Verdict.LINK_DOWN, "usw1 is not in the link-state database"),
    }


def test_unreachable_destination_lists_why_every_first_hop_fails():
    lsdb = healthy()
    down = LinkMetrics("use2", False)
    lsdb["usw1"], lsdb["use1"] = lsa("usw1", 2, use2=down), lsa("use1", 2, use2=down)
    lsdb["usw2"] = lsa("usw2", 2, use2=down)
    explanation = explain(lsdb, "use2")
    assert explanation.chosen is None
    assert {c.first_hop: c.verdict for c in explanation.rejected} == {
        "use1": Verdict.NO_PATH,
        "use2": Verdict.LINK_DOWN,
        "usw1": Verdict.NO_PATH,
    }
    assert explanation.no_route.startswith("no usable path: ")
    assert "use1 has no path to use2 that avoids usw2" in explanation.no_route


def test_unknown_destination_and_this_node():
    assert explain(healthy(), "eu1").no_route == "eu1 is not in the link-state database"
    assert explain(healthy(), "usw2").no_route == "this node itself"


def test_avoided_transit_region_shows_as_a_policy_term():
    policy = RoutingPolicy(avoid_regions={"us-east-2"})
    lsdb = healthy()
    lsdb["usw2"] = lsa("usw2", 2, use1=LinkMetrics("use1", True, 168.0, loss_ratio=0.05))
    explanation = explain(lsdb, policy=policy)
    assert explanation.chosen is not None
    assert explanation.chosen.path == ("usw2", "usw1", "use1")
    via_use2 = next(c for c in explanation.rejected if c.first_hop == "use2")
    assert [link.parts.policy_ms for link in via_use2.links] == [0.0, 1000.0]
    assert via_use2.cost_ms == pytest.approx(1102.0)
