"""Hop-by-hop SIP across overlay nodes, on proxy cores wired by ``overlay_fabric.Fabric``."""

from __future__ import annotations

from dataclasses import replace

from overlay.sip import MediaRefused, Peer, Refusal, Request, Response, serialize
from tests.unit.overlay_fabric import (
    ADDRESSES,
    EGRESS_ROUTE,
    TO_EGRESS,
    Fabric,
    RecordingMedia,
    in_dialog,
)
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to


def only_request(out: dict[Peer, list[bytes]], peer: Peer) -> Request:
    [data] = out[peer]
    message = parse(data)
    assert isinstance(message, Request)
    return message


def statuses(out: dict[Peer, list[bytes]], peer: Peer = UAC) -> list[int]:
    result = []
    for data in out.get(peer, []):
        message = parse(data)
        assert isinstance(message, Response)
        result.append(message.status)
    return result


def relayed(fabric: Fabric, node: str) -> dict[str, int]:
    return fabric.cores[node].proxy.statistics().relayed


def test_call_crosses_a_transit_that_keeps_no_state() -> None:
    fabric = Fabric()
    out = fabric.inject("ing", UAC, request())
    assert statuses(out) == [100]
    invite = only_request(out, UAS)
    # Only the ingress and the egress add a Via and a Record-Route; the transit is invisible.
    assert [via.host for via in invite.vias] == ["127.0.1.3", "127.0.1.1", "127.0.0.2"]
    assert [via.param("ovl") for via in invite.vias] == ["egr", "ing", None]
    assert invite.headers.values("Record-Route") == [
        "<sip:127.0.1.3:5060;lr;ovl=egr>",
        "<sip:127.0.1.1:5060;lr;ovl=ing>",
    ]
    assert "Route" not in invite.headers
    assert invite.uri == "sip:alice@example.com"
    assert invite.max_forwards == 68  # the ingress and the egress take one; a transit none
    assert "Overlay-Path" not in invite.headers  # the overlay's own, stripped at the egress
    # The egress answered the ingress's Via at its configured address, not the transit's.
    assert "received" not in str(invite.vias[1])
    mid = fabric.cores["mid"].proxy.statistics()
    assert (mid.transactions_client, mid.transactions_server, mid.contexts) == (0, 0, 0)
    assert relayed(fabric, "mid") == {"requests": 1, "responses": 1}  # INVITE, 100 Trying

    out = fabric.inject("egr", UAS, response_to(serialize(invite), 180))
    assert statuses(out) == [180]
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    assert statuses(out) == [200]
    ok = parse(out[UAC][0])
    assert isinstance(ok, Response)
    assert len(ok.vias) == 1

    # The caller's route set is the Record-Route: ACK and BYE follow it through the fabric.
    routes = ["<sip:127.0.1.1:5060;lr;ovl=ing>", "<sip:127.0.1.3:5060;lr;ovl=egr>"]
    ack = only_request(fabric.inject("ing", UAC, in_dialog("ACK", 1, "z9hG4bK-ack", routes)), UAS)
    assert ack.method == "ACK"
    assert "Route" not in ack.headers
    assert relayed(fabric, "mid")["requests"] == 2

    # The path changed: the BYE takes the direct link, the transit sees nothing more.
    fabric.via(None)
    out = fabric.inject("ing", UAC, in_dialog("BYE", 2, "z9hG4bK-bye", routes))
    bye = only_request(out, UAS)
    assert [via.param("ovl") for via in bye.vias] == ["egr", "ing", None]
    out = fabric.inject("egr", UAS, response_to(serialize(bye), 200))
    assert statuses(out) == [200]
    assert relayed(fabric, "mid") == {"requests": 2, "responses": 3}


def test_callee_side_bye_goes_back_through_the_ingress() -> None:
    fabric = Fabric()
    invite = only_request(fabric.inject("ing", UAC, request()), UAS)
    fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    # The callee's route set is the Record-Route in order; its BYE targets the caller's Contact.
    bye = request(
        "BYE",
        uri="sip:bob@127.0.0.2:5061",
        via_host="127.0.0.3:5062",
        branch="z9hG4bK-callee-bye",
        from_tag="callee-tag",
        to_tag="caller-tag",
        cseq=1,
        extra=(
            "Route: <sip:127.0.1.3:5060;lr;ovl=egr>",
            "Route: <sip:127.0.1.1:5060;lr;ovl=ing>",
        ),
    )
    out = fabric.inject("egr", UAS, bye)
    forwarded = only_request(out, UAC)
    assert forwarded.uri == "sip:bob@127.0.0.2:5061"
    assert [via.param("ovl") for via in forwarded.vias] == ["ing", "egr", None]
    assert relayed(fabric, "mid")["requests"] == 2
    out = fabric.inject("ing", UAC, response_to(serialize(forwarded), 200))
    assert statuses(out, UAS) == [200]


def test_trunks_see_only_public_addresses() -> None:
    # Behind 1:1 NAT (an Elastic IP) each edge shows the world its public address, in Via and
    # Record-Route; between the nodes a route names a node by its mark, and the hop goes to
    # the node's own address: a dialog's requests come back through the overlay.
    public = {"ing": "198.51.100.1", "egr": "198.51.100.3"}
    fabric = Fabric(advertise=public)
    invite = only_request(fabric.inject("ing", UAC, request()), UAS)
    record_route = ["<sip:198.51.100.3:5060;lr;ovl=egr>", "<sip:198.51.100.1:5060;lr;ovl=ing>"]
    assert invite.headers.values("Record-Route") == record_route
    assert [via.host for via in invite.vias] == ["198.51.100.3", "198.51.100.1", "127.0.0.2"]
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    assert statuses(out) == [200]
    # The callee's BYE, along the Record-Route in order, and the caller's, reversed.
    callee_bye = request(
        "BYE",
        uri="sip:bob@127.0.0.2:5061",
        via_host="127.0.0.3:5062",
        branch="z9hG4bK-callee-bye",
        from_tag="callee-tag",
        to_tag="caller-tag",
        extra=tuple(f"Route: {route}" for route in record_route),
    )
    to_caller = only_request(fabric.inject("egr", UAS, callee_bye), UAC)
    assert "Route" not in to_caller.headers
    caller_bye = in_dialog("BYE", 2, "z9hG4bK-caller-bye", record_route[::-1])
    to_callee = only_request(fabric.inject("ing", UAC, caller_bye), UAS)
    assert to_callee.uri == "sip:alice@127.0.0.3:5062"
    assert "Route" not in to_callee.headers
    # Every hop between the nodes went to a node's own address, through the transit.
    assert relayed(fabric, "mid")["requests"] == 3
    # Nothing the trunks received names a node's own address.
    for data in [*out[UAC], serialize(invite), serialize(to_caller), serialize(to_callee)]:
        assert b"127.0.1." not in data


def test_pending_invite_is_resent_over_the_new_path_at_once() -> None:
    fabric = Fabric()
    fabric.dead.add("mid")
    assert UAS not in fabric.inject("ing", UAC, request())  # lost with the transit
    assert UAS not in fabric.advance("ing", 0.5)  # and so is Timer A's first copy

    # Link state moved the forward route; the ingress resends without waiting for Timer A.
    fabric.next_hop["ing", "egr"] = "egr"
    assert fabric.retransmit_toward("ing", "egr") == 1
    invite = only_request(fabric.outside, UAS)
    assert invite.top_via.param("ovl") == "egr"

    # The egress's 100 Trying is lost on the way back (the return route still uses the dead
    # transit), so Timer A sends another copy: the egress takes it as a retransmission.
    out = fabric.advance("ing", 1.0)
    assert UAS not in out
    assert fabric.cores["egr"].proxy.statistics().retransmissions_absorbed == 1

    # Once a response reached the ingress, a route change resends nothing.
    fabric.next_hop["egr", "ing"] = "ing"
    fabric.advance("ing", 2.0)
    assert fabric.retransmit_toward("ing", "egr") == 0


def test_retransmissions_rotate_through_the_alternate_paths() -> None:
    """A path that silently loses requests is bypassed by the first retransmission, before
    link state notices anything."""
    fabric = Fabric()
    fabric.paths["egr"] = [["ing", "mid", "egr"], ["ing", "alt", "egr"]]
    fabric.dead.add("mid")
    assert UAS not in fabric.inject("ing", UAC, request())

    out = fabric.advance("ing", 0.5)  # Timer A: the copy goes ing -> alt -> egr
    invite = only_request(out, UAS)
    assert [via.param("ovl") for via in invite.vias] == ["egr", "ing", None]
    assert "Route" not in invite.headers  # the waypoint took its own entry off
    assert relayed(fabric, "alt") == {"requests": 1}
    assert fabric.cores["ing"].proxy.statistics().detoured == 1

    # The egress's answers come back by the egress's own routes (through "mid": lost), so the
    # next copy takes the best path again, then the alternate: one INVITE reached the callee.
    out = fabric.advance("ing", 1.0)
    assert UAS not in out
    out = fabric.advance("ing", 2.0)
    assert UAS not in out
    assert fabric.cores["egr"].proxy.statistics().retransmissions_absorbed == 1
    assert fabric.cores["ing"].proxy.statistics().detoured == 2


def test_unreachable_egress_is_refused_with_503() -> None:
    fabric = Fabric(Refusal(503, "No Route to Egress"))
    out = fabric.inject("ing", UAC, request())
    [_trying, refused] = [parse(data) for data in out[UAC]]
    assert isinstance(refused, Response)
    assert (refused.status, refused.reason) == (503, "No Route to Egress")


def test_transit_leaves_max_forwards_to_the_edges() -> None:
    """Max-Forwards counts SIP hops, and the overlay is one: a transit relays a request with
    Max-Forwards 0 as it is, and the egress, a proxy, answers it 483."""
    fabric = Fabric()
    out = fabric.inject("ing", UAC, request(max_forwards=1))
    assert statuses(out) == [100, 483]
    assert relayed(fabric, "mid") == {"requests": 2, "responses": 2}  # INVITE, ACK; 100, 483
    assert fabric.cores["egr"].proxy.statistics().generated == {483: 1}


def test_response_caught_in_a_microloop_goes_around_it() -> None:
    fabric = Fabric()
    invite = only_request(fabric.inject("ing", UAC, request()), UAS)
    # A transient loop: mid and egr each think the other is the way to ing.
    fabric.next_hop["mid", "ing"] = "egr"
    fabric.next_hop["egr", "ing"] = "mid"
    fabric.hops.clear()
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 180))
    assert statuses(out) == [180]
    assert fabric.cores["mid"].proxy.statistics().anomalies == {"avoided": 1}
    assert fabric.hops == [("egr", "mid", "180"), ("mid", "ing", "180")]  # never back to egr


def test_request_from_outside_naming_a_node_is_proxied_statefully() -> None:
    """Only requests from another node's Via are relayed; anyone else gets a full proxy hop."""
    fabric = Fabric()
    out = fabric.inject("mid", UAC, request(extra=(f"Route: {EGRESS_ROUTE}",)))
    assert statuses(out) == [100]
    invite = only_request(out, UAS)
    assert [via.param("ovl") for via in invite.vias] == ["egr", "mid", None]
    assert fabric.cores["mid"].proxy.statistics().transactions_server == 1


def test_outsider_claiming_to_be_a_node_is_not_believed() -> None:
    """A Via marked as the ingress's, sent from elsewhere: proxied statefully, answered at the
    address it came from, never relayed or answered at the node it names."""
    fabric = Fabric()
    forged = request(
        via_host="127.0.1.1:5060",
        branch="z9hG4bK-forged;ovl=ing",
        extra=(f"Route: {EGRESS_ROUTE}",),
    )
    out = fabric.inject("mid", UAC, forged)
    assert statuses(out) == [100]  # answered to the real source
    assert relayed(fabric, "mid") == {}
    invite = only_request(out, UAS)
    assert [via.param("ovl") for via in invite.vias] == ["egr", "mid", "ing"]
    assert invite.vias[2].param("received") == UAC.host


def media_of(fabric: Fabric, node: str) -> RecordingMedia:
    media = fabric.cores[node].media
    assert isinstance(media, RecordingMedia)
    return media


def test_media_hook_sees_the_edges_and_never_the_transit() -> None:
    fabric = Fabric()
    invite = only_request(fabric.inject("ing", UAC, request()), UAS)
    # The offer entered the overlay at the ingress and left it at the egress.
    assert invite.body == b"ing:entering;egr:leaving;"
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    [ok] = [parse(data) for data in out[UAC]]
    assert isinstance(ok, Response)
    # The answer took the reverse way: into the overlay at the egress, out at the ingress.
    assert ok.body == b"egr:entering;ing:leaving;"
    assert media_of(fabric, "mid").seen == []
    assert ("100", "leaving") not in media_of(fabric, "ing").seen  # its own 100 is not forwarded


def test_media_refusal_answers_the_request() -> None:
    fabric = Fabric()
    media_of(fabric, "ing").refuse = MediaRefused(488, "Not Acceptable Here")
    out = fabric.inject("ing", UAC, request())
    assert statuses(out) == [100, 488]
    assert UAS not in out


def test_generated_final_response_reaches_the_media_hook() -> None:
    """A 408 the ingress makes itself ends the call's media like a forwarded failure would."""
    fabric = Fabric()
    fabric.dead.add("mid")
    fabric.inject("ing", UAC, request())
    fabric.advance("ing", 40.0)  # Timer B
    assert ("408", "leaving") in media_of(fabric, "ing").seen


def test_call_waits_for_a_route_to_its_egress_then_goes() -> None:
    """The shell has no route to the egress yet: the core asks it to resolve the target (it
    waits for a route) and the call goes on once it does."""
    waiting = replace(TO_EGRESS, await_route="egr")
    fabric = Fabric(waiting)
    out = fabric.inject("ing", UAC, request())
    assert statuses(out) == [100]
    assert UAS not in out
    [event] = fabric.cores["ing"].resolve_events()
    assert (event.target.await_route, event.call_id) == ("egr", "call-1@127.0.0.2")
    fabric.cores["ing"].proxy.resolved(event.token, [ADDRESSES["egr"]], 0.0)
    out = fabric.settle()
    assert only_request(out, UAS).top_via.param("ovl") == "egr"


def test_call_that_finds_no_route_in_time_is_refused_503() -> None:
    fabric = Fabric(replace(TO_EGRESS, await_route="egr"))
    fabric.inject("ing", UAC, request())
    [event] = fabric.cores["ing"].resolve_events()
    refusal = Refusal(503, "No Route to Egress")
    fabric.cores["ing"].proxy.resolution_failed(event.token, "no route", 2.5, refusal=refusal)
    out = fabric.settle()
    [refused] = [parse(data) for data in out[UAC]]
    assert isinstance(refused, Response)
    assert (refused.status, refused.reason) == (503, "No Route to Egress")
    assert media_of(fabric, "ing").seen[-1] == ("503", "leaving")  # the call book hears of it


def test_two_members_of_a_pair_forward_a_request_on_the_same_branch() -> None:
    """A BYE the caller retransmits to the standby after a takeover leaves with the branch
    the active used: the next hop absorbs it as a retransmission (no 481)."""
    branches = []
    for _ in range(2):  # the active, then its standby: same node id, separate processes
        fabric = Fabric()
        bye = only_request(
            fabric.inject("ing", UAC, in_dialog("BYE", 2, "z9hG4bK-bye", [EGRESS_ROUTE])),
            UAS,
        )
        branches.append([via.branch for via in bye.vias])
    assert branches[0] == branches[1]
    # Another transaction, or another attempt at this one, gets another branch.
    fabric = Fabric()
    other = only_request(
        fabric.inject("ing", UAC, in_dialog("BYE", 3, "z9hG4bK-bye-2", [EGRESS_ROUTE])), UAS
    )
    assert [via.branch for via in other.vias][:2] != branches[0][:2]
