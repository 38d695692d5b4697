"""A call whose far edge is lost ends cleanly at the edge that survives: a BYE to its own party
with an RFC 3326 Reason, built from the dialog book (RFC 3261 §12.2.1.1), and local answers to
the party's later in-dialog requests."""

from __future__ import annotations

from overlay.sip import Peer, Request, Response, serialize
from overlay.sip._dialogs import DialogBook
from overlay.sip._media_hook import MediaDirection
from tests.unit.overlay_fabric import Fabric, RecordingMedia, in_dialog
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to

ROUTES = ["<sip:127.0.1.1:5060;lr;ovl=ing>", "<sip:127.0.1.3:5060;lr;ovl=egr>"]


def only(out: dict[Peer, list[bytes]], peer: Peer) -> Request | Response:
    [data] = out[peer]
    return parse(data)


def answered_call() -> Fabric:
    """A call from UAC through ing (→ mid →) egr to UAS, answered and ACKed."""
    fabric = Fabric()
    invite = only(fabric.inject("ing", UAC, request()), UAS)
    assert isinstance(invite, Request)
    ok = only(fabric.inject("egr", UAS, response_to(serialize(invite), 200)), UAC)
    assert isinstance(ok, Response)
    assert ok.status == 200
    return fabric


def lose(fabric: Fabric, node: str, lost: str) -> None:
    """``node``'s mesh loses every route to ``lost``."""
    fabric.cut.add(frozenset((node, lost)))
    fabric.next_hop.pop((node, lost), None)
    fabric.dead.add(lost)
    fabric.cores[node].proxy.overlay_nodes_lost({lost}, fabric.cores[node].now)


def test_the_ingress_ends_a_call_whose_egress_is_lost_toward_the_caller() -> None:
    fabric = answered_call()
    ing = fabric.cores["ing"]
    assert ing.proxy.statistics().dialogs == 1
    lose(fabric, "ing", "egr")
    assert UAC not in fabric.advance("ing", 0.99)  # far_edge_wait: a reroute may repair it
    bye = only(fabric.advance("ing", 0.01), UAC)
    assert isinstance(bye, Request)
    assert (bye.method, bye.uri) == ("BYE", "sip:bob@127.0.0.2:5061")  # the caller's Contact
    assert bye.headers.get("To") == "<sip:bob@example.org>;tag=caller-tag"
    assert bye.headers.get("From") == "<sip:alice@example.com>;tag=callee-tag"
    assert bye.headers.get("Reason") == 'Q.850;cause=41;text="far edge egr lost"'
    assert bye.cseq.number == 1
    assert "Route" not in bye.headers  # no proxy between the caller and the ingress
    assert isinstance(ing.media, RecordingMedia)
    assert ing.media.seen[-1] == ("BYE", "leaving")  # the call book and media plane see it
    assert fabric.settle() == {}
    assert not fabric.inject("ing", UAC, response_to(serialize(bye), 200))  # absorbed
    # The caller's own BYE, crossing ours, is answered here; anything else gets 481.
    out = fabric.inject("ing", UAC, in_dialog("BYE", 2, "z9hG4bK-bye", ROUTES))
    assert [parse(data).status for data in out[UAC]] == [200]  # type: ignore[union-attr]
    out = fabric.inject("ing", UAC, in_dialog("INVITE", 3, "z9hG4bK-reinvite", ROUTES))
    assert [parse(data).status for data in out[UAC]] == [100, 481]  # type: ignore[union-attr]
    stats = ing.proxy.statistics()
    assert (stats.calls_ended, stats.dialogs) == (1, 0)


def test_the_egress_ends_toward_the_callee_above_the_far_partys_last_cseq() -> None:
    fabric = answered_call()
    fabric.inject("ing", UAC, in_dialog("ACK", 1, "z9hG4bK-ack", ROUTES))
    reinvite = only(fabric.inject("ing", UAC, in_dialog("INVITE", 5, "z9hG4bK-re", ROUTES)), UAS)
    assert isinstance(reinvite, Request)
    fabric.inject("egr", UAS, response_to(serialize(reinvite), 200))
    lose(fabric, "egr", "ing")
    bye = only(fabric.advance("egr", 1.0), UAS)
    assert isinstance(bye, Request)
    assert (bye.uri, bye.cseq.number) == ("sip:alice@127.0.0.3:5062", 6)
    assert bye.headers.get("To") == "<sip:alice@example.com>;tag=callee-tag"
    assert bye.headers.get("From") == "<sip:bob@example.org>;tag=caller-tag"
    assert bye.headers.get("Reason") == 'Q.850;cause=41;text="far edge ing lost"'


def test_a_far_edge_back_within_the_wait_keeps_its_calls() -> None:
    fabric = answered_call()
    ing = fabric.cores["ing"]
    ing.proxy.overlay_nodes_lost({"egr"}, ing.now)  # the fabric still has a path to it
    assert UAC not in fabric.advance("ing", 5.0)
    assert ing.proxy.statistics().dialogs == 1
    # A BYE ends the entry: nothing is left to end later.
    fabric.inject("ing", UAC, in_dialog("BYE", 2, "z9hG4bK-bye", ROUTES))
    assert ing.proxy.statistics().dialogs == 0


def test_the_route_set_toward_the_callee_is_the_record_route_above_ours_reversed() -> None:
    book = DialogBook("egr")
    invite = parse(request())
    assert isinstance(invite, Request)
    answer = parse(
        response_to(
            request(),
            200,
            extra=(
                "Record-Route: <sip:127.0.9.19;lr>, <sip:127.0.9.18;lr>",
                "Record-Route: <sip:127.0.1.3:5060;lr;ovl=egr>",
                "Record-Route: <sip:127.0.1.1:5060;lr;ovl=ing>",
            ),
        )
    )
    assert isinstance(answer, Response)
    book.answered(
        invite,
        answer,
        MediaDirection.LEAVING,
        far_node="ing",
        invite_peer=UAC,
        answer_peer=Peer("udp", "127.0.9.18", 5060),
    )
    dialog = book.get("call-1@127.0.0.2")
    assert dialog is not None
    assert dialog.route_set == ("<sip:127.0.9.18;lr>", "<sip:127.0.9.19;lr>")
    assert dialog.peer == Peer("udp", "127.0.9.18", 5060)
    assert book.toward("ing") == ["call-1@127.0.0.2"]
    assert book.end("call-1@127.0.0.2", 0.0) == dialog
    assert book.ended("call-1@127.0.0.2", 31.9)
    assert not book.ended("call-1@127.0.0.2", 32.0)  # the tombstone lingers 32 s


def test_the_book_is_bounded() -> None:
    book = DialogBook("ing", max_dialogs=2)
    for n in range(3):
        invite = parse(request(call_id=f"c{n}"))
        answer = parse(response_to(request(call_id=f"c{n}"), 200))
        assert isinstance(invite, Request)
        assert isinstance(answer, Response)
        book.answered(
            invite,
            answer,
            MediaDirection.ENTERING,
            far_node="egr",
            invite_peer=UAC,
            answer_peer=UAS,
        )
    assert (len(book), book.evicted, book.toward("egr")) == (2, 1, ["c1", "c2"])


def test_a_restored_entry_is_the_actives() -> None:
    """Pair replication's standby takes the active's entries as they are."""
    fabric = answered_call()
    active = fabric.cores["ing"].proxy.dialogs
    assert active is not None
    dialog = active.get("call-1@127.0.0.2")
    assert dialog is not None
    standby = DialogBook("ing", max_dialogs=1)
    standby.restore(dialog)
    standby.restore(dialog)
    assert (standby.get(dialog.call_id), len(standby), standby.evicted) == (dialog, 1, 0)
    standby.forget(dialog.call_id)
    assert len(standby) == 0


def test_a_far_edge_back_without_its_calls_ends_them_at_once() -> None:
    fabric = answered_call()
    ing = fabric.cores["ing"]
    ing.proxy.overlay_nodes_lost({"egr"}, ing.now, restarted=True)
    bye = only(fabric.settle(), UAC)
    assert isinstance(bye, Request)
    assert bye.headers.get("Reason") == 'Q.850;cause=41;text="far edge egr restarted"'


def test_a_far_edge_that_still_answers_probes_keeps_its_calls_until_it_falls_silent() -> None:
    """A blip (a stall of the far node) takes its links down, and the hold-down keeps its
    route away for seconds: it is alive, so its calls are not ended, only looked at again."""
    fabric = answered_call()
    ing = fabric.cores["ing"]
    fabric.cut.add(frozenset(("ing", "egr")))
    fabric.next_hop.pop(("ing", "egr"))
    ing.proxy.overlay_nodes_lost({"egr"}, ing.now)  # no route, but it answers probes
    assert UAC not in fabric.advance("ing", 3.0)
    assert ing.proxy.statistics().dialogs == 1
    fabric.silent.add("egr")  # now it is gone
    bye = only(fabric.advance("ing", 1.0), UAC)
    assert isinstance(bye, Request)
    assert bye.headers.get("Reason") == 'Q.850;cause=41;text="far edge egr lost"'
