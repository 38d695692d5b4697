"""A pair member in takeover grace, as its peers advertise and route it: a destination on its
last path, never a transit, the last choice for new calls; and its LSA on the wire."""

from __future__ import annotations

import dataclasses

import pytest

from overlay.config import DialplanRule, StaticTarget
from overlay.linkstate import FloodConfig, Flooder, LinkMetrics, Lsa
from overlay.linkstate._codec import BadLsa, lsa_from_message_untrusted, lsa_to_message
from overlay.routing import (
    CallRouter,
    Dialplan,
    DrainState,
    RouteView,
    RoutingPolicy,
    build_graph,
    compute_routes,
)
from overlay.sip import Peer, Request, SipUri, Target, parse_message_untrusted, parse_uri_untrusted
from tests.unit.sip_helpers import request


def link(neighbor: str, *, grace: bool = False, rtt: float = 10.0) -> LinkMetrics:
    return LinkMetrics(neighbor, True, rtt, grace=grace)


def lsdb(graced_by: set[str]) -> dict[str, Lsa]:
    """A full mesh of a, b and the pair member x, where the nodes in ``graced_by`` hold x in
    grace (x itself, dead, still advertises its old links up)."""
    names = ("a", "b", "x")
    return {
        node: Lsa(
            node,
            1,
            0.0,
            "r-" + node,
            "",
            tuple(
                link(other, grace=other == "x" and node in graced_by)
                for other in names
                if other != node
            ),
            takeover_grace_s=4.0 if node == "x" else 0.0,
        )
        for node in names
    }


def test_a_node_in_grace_is_a_destination_but_never_a_transit() -> None:
    graph = build_graph(lsdb({"a", "b"}))
    assert graph.has_edge("a", "x")
    assert graph.has_edge("b", "x")
    assert not graph.has_edge("x", "a")
    assert not graph.has_edge("x", "b")
    assert graph.nodes["x"]["grace"]
    table, _ = compute_routes(graph, "a", RoutingPolicy(), None, 0.0)
    assert table.paths["x"].nodes == ("a", "x")  # media and in-dialog requests keep flowing


def test_one_peer_losing_a_pair_member_does_not_put_it_in_grace_for_everyone() -> None:
    graph = build_graph(lsdb({"a"}))
    assert not graph.nodes["x"].get("grace", False)
    assert graph.has_edge("x", "b")  # b still hears x: a path may cross it toward b
    assert not graph.has_edge("x", "a")


def test_new_calls_go_to_an_egress_in_grace_only_when_no_other_can_take_them() -> None:
    peers = {"x": Peer("udp", "127.0.9.1", 5060), "b": Peer("udp", "127.0.9.2", 5060)}
    view = RouteView("a", peers)
    view.table, _ = compute_routes(lsdb({"a", "b"}), "a", RoutingPolicy(), None, 0.0)
    assert view.in_grace("x")
    assert not view.in_grace("b")
    rule = DialplanRule(StaticTarget("127.0.8.1", 5070), egress=("x", "b"))
    router = CallRouter("a", Dialplan([rule]), view, DrainState(), route_wait=False)
    assert router.egress_order(("x", "b"), "any-call", new_call=True) == ["b", "x"]
    assert router.egress_order(("x",), "any-call", new_call=True) == ["x"]
    message = parse_message_untrusted(request(uri="sip:alice@example.com"))
    assert isinstance(message, Request)
    uri = parse_uri_untrusted(message.uri)
    assert isinstance(uri, SipUri)
    target = router.locate(message, uri)
    assert isinstance(target, Target)
    assert (target.egress, [t.egress for t in target.alternates]) == ("b", ["x"])


def test_grace_crosses_the_wire() -> None:
    lsa = lsdb({"a"})["a"]
    assert lsa_from_message_untrusted(lsa_to_message(lsa)) == lsa
    assert lsa_from_message_untrusted(lsa_to_message(lsdb(set())["x"])).takeover_grace_s == 4.0


def test_a_bad_grace_is_refused() -> None:
    for bad in (-1.0, float("nan"), 61.0):
        message = lsa_to_message(lsdb(set())["x"])
        message.takeover_grace_s = bad
        with pytest.raises(BadLsa, match="takeover_grace_s"):
            lsa_from_message_untrusted(message)


def test_the_call_state_epoch_crosses_the_wire_and_a_new_one_is_advertised() -> None:
    lsa = dataclasses.replace(lsdb(set())["x"], state_epoch=b"\x01" * 16)
    assert lsa_from_message_untrusted(lsa_to_message(lsa)).state_epoch == b"\x01" * 16
    message = lsa_to_message(lsa)
    message.state_epoch = b"\x00" * 33
    with pytest.raises(BadLsa, match="state_epoch"):
        lsa_from_message_untrusted(message)
    flooder = Flooder("x", "r", "", FloodConfig(), initial_seq=1, now=0.0, state_epoch=b"a")
    before = flooder.lsdb.get("x", 0.0)
    flooder.set_epoch(b"b", 1.0)  # a standby that took over keeps its active's epoch
    after = flooder.lsdb.get("x", 1.0)
    assert before is not None
    assert after is not None
    assert (before.state_epoch, after.state_epoch) == (b"a", b"b")
    assert after.seq == before.seq + 1
