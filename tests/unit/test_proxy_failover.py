"""A call that moves on before its final answer: a silent next hop past ``fr``, an egress that
answers 408 or 503, an egress the mesh loses; the late answers of the branch left behind."""

from __future__ import annotations

from dataclasses import replace

from overlay.sip import EgressFailedOver, Peer, Request, Response, Target, serialize
from overlay.sip._transaction import Kind
from tests.unit.overlay_fabric import TO_EGRESS, Fabric
from tests.unit.sip_helpers import UAC, UAS, UAS2, ProxyHarness, parse, request, response_to

TO_ALT = Target("127.0.1.4", 5060, "udp", route="<sip:127.0.1.4:5060;lr;ovl=alt>", egress="alt")
TRUNKS = Target("trunk.example.com")


def statuses(out: dict[Peer, list[bytes]], peer: Peer = UAC) -> list[int]:
    found = [parse(data) for data in out.get(peer, [])]
    return [message.status for message in found if isinstance(message, Response)]


def requests(out: dict[Peer, list[bytes]], peer: Peer) -> list[Request]:
    found = [parse(data) for data in out.get(peer, [])]
    return [message for message in found if isinstance(message, Request)]


def failovers(h: ProxyHarness) -> list[EgressFailedOver]:
    events = []
    while (event := h.proxy.next_event()) is not None:
        if isinstance(event, EgressFailedOver):
            events.append(event)
    return events


def two_egresses(**cores: Target) -> Fabric:
    """``ing`` sends calls to ``egr`` first, then ``alt``; ``egr`` reaches UAS, ``alt`` UAS2."""
    fabric = Fabric(replace(TO_EGRESS, alternates=(TO_ALT,)))
    fabric.via(None)
    fabric.cores["alt"].targets[""] = Target(UAS2.host, UAS2.port)
    for node, target in cores.items():
        fabric.cores[node].targets[""] = target
    return fabric


def lose(fabric: Fabric, node: str, lost: str) -> None:
    """``node``'s mesh loses every route to ``lost``."""
    fabric.cut.add(frozenset((node, lost)))
    fabric.next_hop.pop((node, lost), None)
    fabric.dead.add(lost)
    fabric.cores[node].proxy.overlay_nodes_lost({lost}, fabric.cores[node].now)


def settled(h: ProxyHarness) -> None:
    """Every timer run out: nothing left behind."""
    h.advance(3600.0)
    stats = h.proxy.statistics()
    assert (stats.transactions_client, stats.transactions_server, stats.contexts) == (0, 0, 0)


def test_a_dead_egress_costs_the_call_fr_then_the_next_egress_answers() -> None:
    fabric = two_egresses()
    fabric.dead.add("egr")
    ing = fabric.cores["ing"]
    assert statuses(fabric.inject("ing", UAC, request())) == [100]
    out = fabric.advance("ing", 0.99)
    assert not requests(out, UAS2)
    out = fabric.advance("ing", 0.01)
    [invite] = requests(out, UAS2)
    assert failovers(ing) == [EgressFailedOver("call-1@127.0.0.2", "egr", "alt", "no answer", 2)]
    # The abandoned branch no longer retransmits toward the dead node.
    to_dead = sum(1 for _, hop, label in fabric.hops if hop == "egr" and label == "INVITE")
    fabric.advance("ing", 10.0)
    assert sum(1 for _, hop, label in fabric.hops if hop == "egr" and label == "INVITE") == to_dead
    out = fabric.inject("alt", UAS2, response_to(serialize(invite), 200))
    assert statuses(out) == [200]  # one call, answered
    assert ing.proxy.statistics().failovers == {"no answer": 1}
    for node in ("ing", "alt"):
        settled(fabric.cores[node])


def test_an_egress_that_refuses_with_408_or_503_hands_the_call_on() -> None:
    for status in (408, 503):
        fabric = two_egresses()
        [invite] = requests(fabric.inject("ing", UAC, request()), UAS)
        out = fabric.inject("egr", UAS, response_to(serialize(invite), status))
        assert statuses(out) == []  # not the caller's business yet
        [moved] = requests(out, UAS2)
        assert moved.call_id == invite.call_id
        assert [event.cause for event in failovers(fabric.cores["ing"])] == [str(status)]
        out = fabric.inject("alt", UAS2, response_to(serialize(moved), 180))
        assert statuses(out) == [180]
        out = fabric.inject("alt", UAS2, response_to(serialize(moved), 200))
        assert statuses(out) == [200]


def test_when_every_egress_failed_the_caller_gets_one_error() -> None:
    fabric = two_egresses()
    out = fabric.inject("ing", UAC, request())
    [first] = requests(out, UAS)
    out = fabric.inject("egr", UAS, response_to(serialize(first), 503))
    [second] = requests(out, UAS2)
    out = fabric.inject("alt", UAS2, response_to(serialize(second), 503))
    assert statuses(out) == [500]  # §16.7 step 6 at the overlay's edge, once
    for node in ("ing", "egr", "alt"):
        settled(fabric.cores[node])


def test_an_egress_lost_before_any_answer_hands_the_call_on() -> None:
    fabric = two_egresses()
    ing = fabric.cores["ing"]
    fabric.dead.add("egr")  # it dies with the INVITE: no 100 ever comes back
    fabric.inject("ing", UAC, request())
    lose(fabric, "ing", "egr")
    [moved] = requests(fabric.settle(), UAS2)
    assert [event.cause for event in failovers(ing)] == ["egress lost"]
    out = fabric.inject("alt", UAS2, response_to(serialize(moved), 200))
    assert statuses(out) == [200]
    # A call with no egress left is left to its timers: the node may come back.
    fabric = two_egresses()
    fabric.inject("ing", UAC, request())
    fabric.cores["ing"].proxy.overlay_nodes_lost({"alt"}, 0.0)
    assert not failovers(fabric.cores["ing"])


def test_a_call_ringing_through_a_lost_egress_is_refused_not_merged() -> None:
    """The callee has the INVITE from the lost egress: the same request from another egress
    would be a merged request (RFC 3261 §8.2.2.2), and its answer has no way back. The caller
    gets 503 once the node has stayed lost for far_edge_wait, to try elsewhere at once."""
    fabric = two_egresses()
    ing = fabric.cores["ing"]
    [invite] = requests(fabric.inject("ing", UAC, request()), UAS)
    assert statuses(fabric.inject("egr", UAS, response_to(serialize(invite), 180))) == [180]
    lose(fabric, "ing", "egr")
    assert not failovers(ing)
    assert not fabric.advance("ing", 0.99).get(UAS2)
    out = fabric.advance("ing", 0.01)
    assert statuses(out) == [503]
    assert parse(out[UAC][0]).reason == "Egress Lost"  # type: ignore[union-attr]
    settled(ing)


def test_a_call_ringing_through_an_egress_that_restarted_is_refused_at_once() -> None:
    fabric = two_egresses()
    ing = fabric.cores["ing"]
    [invite] = requests(fabric.inject("ing", UAC, request()), UAS)
    fabric.inject("egr", UAS, response_to(serialize(invite), 180))
    ing.proxy.overlay_nodes_lost({"egr"}, ing.now, restarted=True)
    out = fabric.settle()
    assert statuses(out) == [503]
    assert parse(out[UAC][0]).reason == "Egress egr Restarted"  # type: ignore[union-attr]


def test_a_silent_trunk_costs_fr_not_timer_b() -> None:
    h = ProxyHarness(targets={"": TRUNKS})
    h.send(UAC, request())
    [event] = h.resolve_events()
    out = h.resolved(event.token, [UAS, UAS2])
    assert len(out[UAS]) == 1
    out = h.advance(1.0)
    [invite] = requests(out, UAS2)
    assert len(out[UAS]) == 1  # the last retransmission before fr; none after
    assert not h.advance(5.0).get(UAS)
    out = h.send(UAS2, response_to(serialize(invite), 200))
    assert statuses(out) == [200]
    assert h.proxy.statistics().drops["next hop silent past fr"] == 1
    settled(h)


def test_fr_waits_for_nothing_once_the_next_hop_said_100_and_is_off_with_one_hop() -> None:
    h = ProxyHarness(targets={"": TRUNKS})
    h.send(UAC, request())
    [event] = h.resolve_events()
    out = h.resolved(event.token, [UAS, UAS2])
    h.send(UAS, response_to(out[UAS][0], 100))
    assert not h.advance(10.0).get(UAS2)
    # One next hop, nowhere to go: Timer B decides, as RFC 3261 says.
    h = ProxyHarness()
    h.send(UAC, request())
    assert statuses(h.advance(31.9)) == []
    assert statuses(h.advance(0.2)) == [408]


def test_an_abandoned_branch_is_cancelled_once_it_rings() -> None:
    h = ProxyHarness(targets={"": TRUNKS})
    h.send(UAC, request())
    [event] = h.resolve_events()
    first = h.resolved(event.token, [UAS, UAS2])[UAS][0]
    second = requests(h.advance(1.0), UAS2)[0]
    out = h.send(UAS, response_to(first, 180))
    [cancel] = requests(out, UAS)
    assert cancel.method == "CANCEL"
    assert statuses(out) == []  # the caller hears the branch it is on, not this one
    assert not h.send(UAS, response_to(first, 180)).get(UAS)  # one CANCEL
    out = h.send(UAS, response_to(first, 487))
    assert [r.method for r in requests(out, UAS)] == ["ACK"]
    out = h.send(UAS2, response_to(serialize(second), 200))
    assert statuses(out) == [200]
    settled(h)


def test_a_late_answer_of_an_abandoned_branch_wins_and_cancels_the_other() -> None:
    h = ProxyHarness(targets={"": TRUNKS})
    h.send(UAC, request())
    [event] = h.resolve_events()
    first = h.resolved(event.token, [UAS, UAS2])[UAS][0]
    second = requests(h.advance(1.0), UAS2)[0]
    h.send(UAS2, response_to(serialize(second), 180))
    out = h.send(UAS, response_to(first, 200, to_tag="late"))
    assert statuses(out) == [200]
    [cancel] = requests(out, UAS2)
    assert cancel.method == "CANCEL"
    assert h.proxy.statistics().late_answers == 1
    assert statuses(h.send(UAS2, response_to(serialize(second), 487))) == []
    settled(h)


def test_an_abandoned_invite_ends_quietly_and_is_counted() -> None:
    h = ProxyHarness(targets={"": TRUNKS})
    h.send(UAC, request())
    [event] = h.resolve_events()
    out = h.resolved(event.token, [UAS, UAS2])
    h.advance(1.0)
    settled(h)
    ended = h.proxy.transactions.statistics().ended
    assert ended[Kind.INVITE_CLIENT, "abandoned"] == 1
    assert out[UAS]


def test_the_egress_keeps_503_toward_the_ingress_and_500_toward_a_caller() -> None:
    fabric = two_egresses(egr=TRUNKS)
    fabric.cores["ing"].targets[""] = TO_EGRESS  # no alternates: the error goes to the caller
    fabric.inject("ing", UAC, request())
    egr = fabric.cores["egr"]
    [event] = egr.resolve_events()
    egr.proxy.resolved(event.token, [UAS], egr.now)
    out = fabric.settle()
    [invite] = requests(out, UAS)
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 503))
    assert statuses(out) == [500]
    assert ("egr", "ing", "503") in fabric.hops
