"""The call book of the overlay's edges (overlay.noc._calls.CallTracker), on proxy cores wired
by the unit-test fabric: an ingress, a transit and an egress, a caller and a callee."""

from __future__ import annotations

import dataclasses

from overlay.noc import CallFailed, CallRecord, CallRole, CallState, CallTracker
from overlay.sip import MediaHook, MediaRefused
from tests.unit.overlay_fabric import Fabric, RecordingMedia
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to


class Edges:
    """A fabric whose every core's hook is a CallTracker in front of a RecordingMedia."""

    def __init__(self, media_sessions: int | None = None, max_calls: int = 100) -> None:
        self.trackers: dict[str, CallTracker] = {}
        self.media: dict[str, RecordingMedia] = {}
        self.failed: list[CallFailed] = []
        self.sessions = media_sessions

        def hook(node: str) -> MediaHook:
            self.media[node] = RecordingMedia(node)
            self.trackers[node] = CallTracker(
                self.media[node],
                media_sessions=None if media_sessions is None else lambda _: self.sessions or 0,
                on_failed=self.failed.append,
                history=2,
                max_calls=max_calls,
            )
            return self.trackers[node]

        self.fabric = Fabric(media=hook)

    def invite(self, call_id: str = "call-1@127.0.0.2") -> bytes:
        """Send an INVITE into the ingress; returns it as the callee got it."""
        invite = request("INVITE", call_id=call_id, branch=f"z9hG4bK-{call_id.replace('@', '-')}")
        out = self.fabric.inject("ing", UAC, invite)
        (at_callee,) = out[UAS]
        return at_callee

    def answer(self, invite: bytes, status: int) -> list[bytes]:
        """The callee answers; returns what reached the caller."""
        return self.fabric.inject("egr", UAS, response_to(invite, status))[UAC]

    def calls(self, node: str, *, ended: bool = False) -> list[CallRecord]:
        core = self.fabric.cores[node]
        return self.trackers[node].calls(core.now, include_ended=ended)


def test_a_call_through_the_overlay_is_booked_at_both_edges_only():
    edges = Edges()
    invite = edges.invite()
    (ingress,) = edges.calls("ing")
    assert (ingress.role, ingress.state, ingress.far_node) == (
        CallRole.INGRESS,
        CallState.TRYING,
        "egr",
    )
    assert (ingress.from_uri, ingress.to_uri) == ("sip:bob@example.org", "sip:alice@example.com")
    assert edges.calls("mid") == []  # a transit relays without state
    edges.answer(invite, 180)
    (egress,) = edges.calls("egr")
    assert (egress.role, egress.state, egress.far_node) == (
        CallRole.EGRESS,
        CallState.RINGING,
        "ing",
    )
    edges.fabric.cores["egr"].now += 1.5
    (ok,) = edges.answer(invite, 200)
    (egress,) = edges.calls("egr")
    assert (egress.state, egress.final_status, egress.answered) == (CallState.ANSWERED, 200, 1.5)
    assert edges.calls("ing")[0].state is CallState.ANSWERED
    # The media plane saw every message the tracker saw, unchanged.
    assert edges.media["ing"].seen == [
        ("INVITE", "entering"),
        ("180", "leaving"),
        ("200", "leaving"),
    ]

    route_set = tuple(f"Route: {rr}" for rr in parse(ok).headers.get_all("Record-Route"))
    bye = request(
        "BYE", call_id="call-1@127.0.0.2", to_tag="callee-tag", cseq=2, branch="z9hG4bK-bye",
        extra=route_set,
    )  # fmt: skip
    edges.fabric.inject("ing", UAC, bye)
    assert edges.calls("ing") == []
    (ended,) = edges.calls("ing", ended=True)
    assert (ended.state, ended.final_status, ended.final_reason) == (CallState.ENDED, 200, "BYE")
    assert ended.requests == 2  # INVITE and BYE crossed the edge here
    assert edges.failed == []


def test_a_failed_call_is_reported_and_a_cancelled_one_is_not():
    edges = Edges()
    busy = edges.invite("busy@h")
    edges.answer(busy, 486)
    assert edges.calls("ing") == []
    assert edges.calls("ing", ended=True)[0].state is CallState.FAILED
    assert edges.failed == [
        CallFailed("busy@h", "ing", 486, "Reason"),  # the egress saw it first
        CallFailed("busy@h", "egr", 486, "Reason"),
    ]
    edges.failed.clear()
    cancelled = edges.invite("gone@h")
    edges.answer(cancelled, 487)
    assert edges.calls("ing", ended=True)[0].state is CallState.CANCELLED
    assert edges.failed == []


def test_a_refused_offer_fails_the_call():
    edges = Edges()
    edges.media["ing"].refuse = MediaRefused(488, "Not Acceptable Here")
    edges.fabric.inject("ing", UAC, request("INVITE", call_id="bad@h"))
    (failed,) = edges.calls("ing", ended=True)
    assert (failed.state, failed.final_status) == (CallState.FAILED, 488)
    assert edges.failed == [CallFailed("bad@h", "egr", 488, "Not Acceptable Here")]


def test_calls_do_not_stay_forever():
    edges = Edges(media_sessions=1)
    edges.invite("silent@h")  # never answered
    answered = edges.invite("talking@h")
    edges.answer(answered, 200)
    ingress = edges.fabric.cores["ing"]
    ingress.now += 201  # past the setup timeout
    assert [c.call_id for c in edges.calls("ing")] == ["talking@h"]
    edges.sessions = 0  # the media plane ended its sessions (inactivity)
    assert edges.calls("ing") == []
    ended = edges.calls("ing", ended=True)
    assert [(c.call_id, c.final_reason) for c in ended] == [
        ("talking@h", "media timed out"),
        ("silent@h", "no final response"),
    ]
    assert edges.trackers["ing"].active(ingress.now) == 0


def test_the_book_is_bounded():
    edges = Edges(max_calls=2)
    for n in range(3):
        edges.invite(f"c{n}@h")
    tracker = edges.trackers["ing"]
    assert [c.call_id for c in edges.calls("ing")] == ["c2@h", "c1@h"]
    assert tracker.evicted == 1
    assert tracker.get("c1@h", 0.0) is not None
    assert tracker.get("c0@h", 0.0) is None


# -- pair replication: live on the active, restore on the standby -----------------------------


def test_records_restored_on_a_standby_give_the_same_book():
    edges = Edges()
    answered = edges.invite("answered@h")
    edges.answer(answered, 200)
    edges.invite("ringing@h")
    active = edges.trackers["ing"]
    now = edges.fabric.cores["ing"].now
    standby = CallTracker(on_failed=edges.failed.append)
    for record in reversed(active.calls(now)):  # oldest first, as the active booked them
        live = active.live(record.call_id)
        assert live == record
        standby.restore(live)
        standby.restore(live)  # twice changes nothing
    assert standby.calls(now) == active.calls(now)
    assert standby.live("answered@h") == active.live("answered@h")
    assert standby.live("unknown@h") is None

    # The call ends on the active: its over record moves the standby's to the history, once.
    edges.fabric.cores["ing"].now += 1.0
    route_set = ("Route: <sip:127.0.1.1:5060;lr;ovl=ing>", "Route: <sip:127.0.1.3:5060;lr;ovl=egr>")
    bye = request(
        "BYE", call_id="answered@h", to_tag="callee-tag", cseq=2, branch="z9hG4bK-bye2",
        extra=route_set,
    )  # fmt: skip
    edges.fabric.inject("ing", UAC, bye)
    assert active.live("answered@h") is None
    [ended] = [r for r in active.calls(now, include_ended=True) if r.call_id == "answered@h"]
    assert ended.state is CallState.ENDED
    standby.restore(ended)
    standby.restore(ended)
    assert standby.calls(now, include_ended=True) == active.calls(now, include_ended=True)
    assert edges.failed == []  # restoring raises no event


def test_live_reads_without_expiring():
    tracker = CallTracker(setup_timeout=10.0)
    record = CallRecord("c@h", CallRole.INGRESS, CallState.TRYING, "", "", "", "egr", 0.0)
    tracker.restore(record)
    assert tracker.live("c@h") == record  # past its setup timeout, still as it was
    assert tracker.get("c@h", 11.0) is not None  # get expires it first
    assert tracker.live("c@h") is None
    assert tracker.calls(11.0, include_ended=True)[0].final_reason == "no final response"


def test_restored_calls_keep_the_book_bounded():
    tracker = CallTracker(max_calls=2)
    records = [
        CallRecord(f"c{n}@h", CallRole.EGRESS, CallState.RINGING, "", "", "", "ing", float(n))
        for n in range(3)
    ]
    for record in records:
        tracker.restore(record)
    assert [c.call_id for c in tracker.calls(3.0)] == ["c2@h", "c1@h"]
    assert tracker.evicted == 1
    # An update of a live call takes no room.
    tracker.restore(dataclasses.replace(records[1], state=CallState.ANSWERED, answered=3.0))
    assert tracker.evicted == 1
    assert tracker.live("c1@h") is not None
    # An over record of a call not live here is ignored.
    tracker.restore(dataclasses.replace(records[0], state=CallState.ENDED, ended=4.0))
    assert tracker.calls(4.0, include_ended=True) == tracker.calls(4.0)


def test_a_call_ended_by_its_surviving_edge_says_why_in_the_book():
    edges = Edges()
    edges.answer(edges.invite(), 200)
    fabric = edges.fabric
    fabric.cut.add(frozenset(("ing", "egr")))
    fabric.next_hop.pop(("ing", "egr"))
    fabric.dead.add("egr")
    fabric.cores["ing"].proxy.overlay_nodes_lost({"egr"}, 0.0)
    fabric.advance("ing", 1.0)
    (record,) = edges.calls("ing", ended=True)
    assert (record.state, record.final_reason) == (CallState.ENDED, "BYE (far edge egr lost)")


def test_a_failed_over_call_names_its_new_egress_and_the_time_lost():
    edges = Edges()
    edges.invite()
    tracker = edges.trackers["ing"]
    tracker.failed_over("call-1@127.0.0.2", "alt", 2, 1.25)
    (record,) = edges.calls("ing")
    assert (record.far_node, record.egress_tries, record.setup_extra) == ("alt", 2, 1.25)
    tracker.failed_over("unknown@h", "alt", 2, 1.0)  # a call not here: nothing happens
    assert len(edges.calls("ing")) == 1
