"""overlay.routing.CallRouter: the dialplan, the egress of an overlay call and the refusals of
a draining node, without a trio loop; and what the proxy core does with a refusal."""

from __future__ import annotations

from overlay.config import DialplanRule, StaticTarget
from overlay.linkstate import LinkMetrics, Lsa
from overlay.routing import (
    CallRouter,
    Dialplan,
    DrainState,
    RouteView,
    RoutingPolicy,
    order_egress,
)
from overlay.routing import compute_routes as routes_of
from overlay.sip import (
    CallRefused,
    Peer,
    Refusal,
    Request,
    Response,
    SipUri,
    Target,
    parse_message_untrusted,
    parse_uri_untrusted,
)
from tests.unit.sip_helpers import UAC, ProxyHarness, parse, request

SELF = "ingress"
PEERS = {
    "egress-a": Peer("udp", "127.0.9.1", 5060),
    "egress-b": Peer("udp", "127.0.9.2", 5060),
}
TRUNK = StaticTarget("127.0.8.1", 5070)


def lsdb(up: set[str], draining: set[str] = frozenset()) -> dict[str, Lsa]:
    """The ingress linked to every egress in ``up`` (both ways); ``draining`` advertise so."""
    links = tuple(LinkMetrics(node, True, 10.0) for node in sorted(up))
    lsas = {SELF: Lsa(SELF, 1, 0.0, "r1", "", links)}
    for node in PEERS:
        back = (LinkMetrics(SELF, True, 10.0),) if node in up else ()
        lsas[node] = Lsa(node, 1, 0.0, "r2", "", back, draining=node in draining)
    return lsas


def router(
    *,
    up: set[str] = frozenset(PEERS),
    draining_peers: set[str] = frozenset(),
    drain: DrainState | None = None,
    route_wait: bool = False,
    egress: tuple[str, ...] = ("egress-a",),
    strip: bool = False,
) -> CallRouter:
    view = RouteView(SELF, PEERS)
    view.table, _ = routes_of(lsdb(up, draining_peers), SELF, RoutingPolicy(), None, 0.0)
    rules = [DialplanRule(TRUNK, user_prefix="+1", strip_prefix=strip, egress=egress)]
    return CallRouter(SELF, Dialplan(rules), view, drain or DrainState(), route_wait=route_wait)


def locate(router: CallRouter, **fields: object) -> Target | Refusal | None:
    message = parse_message_untrusted(request(uri="sip:+14155550100@example.com", **fields))
    assert isinstance(message, Request)
    uri = parse_uri_untrusted(message.uri)
    assert isinstance(uri, SipUri)
    return router.locate(message, uri)


def test_a_call_goes_to_its_egress_node_which_applies_the_target_itself() -> None:
    target = locate(router())
    assert target == Target(
        "127.0.9.1", 5060, "udp", route="<sip:127.0.9.1:5060;lr;ovl=egress-a>", egress="egress-a"
    )


def test_a_call_carries_the_rules_other_egress_nodes_as_its_fail_over_set() -> None:
    target = locate(router(egress=tuple(PEERS)))
    assert isinstance(target, Target)
    assert {target.egress, *(alternate.egress for alternate in target.alternates)} == set(PEERS)
    assert all(not alternate.alternates for alternate in target.alternates)
    # An unreachable or draining egress is not in it.
    for quiet in (
        router(egress=tuple(PEERS), up={"egress-b"}),
        router(egress=tuple(PEERS), draining_peers={"egress-a"}),
    ):
        target = locate(quiet)
        assert isinstance(target, Target)
        assert (target.egress, target.alternates) == ("egress-b", ())


def test_the_fail_over_set_takes_a_regions_nodes_before_the_next_regions() -> None:
    regions = {"usw2-a": "us-west-2", "use1-a": "us-east-1", "use1-b": "us-east-1"}
    for call in range(50):
        order = order_egress(
            ("use1-a", "usw2-a", "use1-b"), f"call-{call}", SELF, lambda _n: True, regions.get
        )
        assert sorted(order[:2]) == ["use1-a", "use1-b"]
        assert order[2] == "usw2-a"
    # Within a region calls spread over its nodes; this node, when it is one, takes them all.
    firsts = {
        order_egress(("use1-a", "use1-b"), f"call-{n}", SELF, lambda _n: True, regions.get)[0]
        for n in range(50)
    }
    assert firsts == {"use1-a", "use1-b"}
    assert order_egress(("use1-a", SELF), "c", SELF, lambda _n: True) == [SELF]


def test_a_call_leaves_here_when_this_node_is_one_of_the_egress_nodes() -> None:
    target = locate(router(egress=(SELF, "egress-a"), strip=True))
    assert target == Target("127.0.8.1", 5070, None, "sip", "sip:4155550100@example.com")


def test_no_rule_is_no_target() -> None:
    message = parse_message_untrusted(request(uri="sip:alice@example.com"))
    assert isinstance(message, Request)
    uri = parse_uri_untrusted(message.uri)
    assert isinstance(uri, SipUri)
    assert router().locate(message, uri) is None


def test_calls_spread_over_the_egress_nodes_and_avoid_an_unreachable_one() -> None:
    both = router(egress=tuple(PEERS))
    targets = [locate(both, call_id=f"c{i}@h") for i in range(40)]
    assert {t.route for t in targets if isinstance(t, Target)} == {  # rendezvous hashing
        "<sip:127.0.9.1:5060;lr;ovl=egress-a>",
        "<sip:127.0.9.2:5060;lr;ovl=egress-b>",
    }
    assert locate(both, call_id="c7@h") == targets[7]  # a retransmission lands alike
    only_b = router(egress=tuple(PEERS), up={"egress-b"})
    for i in range(10):
        target = locate(only_b, call_id=f"c{i}@h")
        assert isinstance(target, Target)
        assert target.route == "<sip:127.0.9.2:5060;lr;ovl=egress-b>"


def test_a_draining_node_refuses_new_calls_only() -> None:
    drain = DrainState(draining=True, retry_after_s=120)
    draining = router(drain=drain)
    assert locate(draining) == Refusal(503, "Draining", 120)
    assert isinstance(locate(draining, to_tag="callee"), Target)  # in a dialog: goes on
    assert isinstance(locate(draining, method="OPTIONS"), Target)


def test_a_draining_egress_takes_no_new_call_but_keeps_its_dialogs() -> None:
    drained = router(draining_peers={"egress-a"})
    assert locate(drained) == Refusal(503, "Egress Draining")
    assert isinstance(locate(drained, to_tag="callee"), Target)
    # Another egress of the rule takes the new calls meanwhile.
    both = router(egress=tuple(PEERS), draining_peers={"egress-a"})
    target = locate(both)
    assert isinstance(target, Target)
    assert target.route == "<sip:127.0.9.2:5060;lr;ovl=egress-b>"


def test_an_unreachable_egress_is_refused_or_waited_for() -> None:
    assert locate(router(up=set())) == Refusal(503, "No Route to Egress")
    waiting = locate(router(up=set(), route_wait=True))
    assert isinstance(waiting, Target)
    assert waiting.await_route == "egress-a"
    assert waiting.route == "<sip:127.0.9.1:5060;lr;ovl=egress-a>"


def test_choose_says_why_there_is_no_egress() -> None:
    assert router().choose(("egress-a",), "", new_call=True) == "egress-a"
    assert router(draining_peers={"egress-a"}).choose(("egress-a",), "", new_call=True) == (
        Refusal(503, "Egress Draining")
    )
    assert router(up=set()).choose(("egress-a",), "", new_call=True) == (
        Refusal(503, "No Route to Egress")
    )


def test_the_core_answers_a_refused_call_and_reports_it() -> None:
    drain = DrainState(draining=True, retry_after_s=60)
    harness = ProxyHarness(locate=router(drain=drain).locate)
    sent = harness.send(UAC, request(uri="sip:+14155550100@example.com"))
    final = parse(sent[UAC][-1])
    assert isinstance(final, Response)
    assert (final.status, final.reason) == (503, "Draining")
    assert final.headers.get("Retry-After") == "60"
    assert harness.proxy.next_event() == CallRefused("call-1@127.0.0.2", 503, "Draining")
    assert harness.proxy.next_event() is None


def test_a_refused_request_that_is_no_new_call_is_not_reported() -> None:
    harness = ProxyHarness(locate=router(up=set()).locate)
    sent = harness.send(UAC, request("OPTIONS", uri="sip:+14155550100@example.com"))
    final = parse(sent[UAC][-1])
    assert isinstance(final, Response)
    assert (final.status, final.reason) == (503, "No Route to Egress")
    assert harness.proxy.next_event() is None
