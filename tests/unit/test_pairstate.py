"""Pair state replication, sans-IO: an active's calls carried to a standby's own objects.

The active is the ingress of an overlay fabric (``overlay_fabric``) whose media hook is a call
book in front of a media edge, as on a node; its ``ReplicaLog`` is marked by the call book. The
standby is a fresh call book, dialog book and media edge behind a ``ReplicaStore``. The two
clocks differ, as two members' trio clocks do; the wall clock is set by hand.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from overlay.linkstate import FloodConfig, Flooder, LinkMetrics, Lsa
from overlay.media import (
    AddSession,
    CallMediaState,
    EndReason,
    MediaEdge,
    MediaSessions,
    PortAllocator,
    RemoveSession,
    Side,
)
from overlay.noc import CallRecord, CallRole, CallState, CallTracker
from overlay.pairstate import (
    MAX_BATCH_RECORDS,
    OVER_ON_THE_ACTIVE,
    BadRecord,
    ReplicaLog,
    ReplicaStore,
    ResyncNeeded,
    call_gone_from_message_untrusted,
    call_gone_message,
    call_state_from_message_untrusted,
    call_state_message,
)
from overlay.sip import DialogBook, EdgeDialog, InviteHandover, Peer, Target
from overlay.v1 import pair_pb2
from tests.unit.overlay_fabric import Fabric
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to

EPOCH = bytes(range(16))
OFFER = (
    b"v=0\r\no=caller 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
ANSWER = (
    b"v=0\r\no=callee 7 7 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    b"m=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP = ("Content-Type: application/sdp",)
ROUTES = ["<sip:127.0.1.1:5060;lr;ovl=ing>", "<sip:127.0.1.3:5060;lr;ovl=egr>"]
WALL = 1_700_000_000.0  # the active's wall clock when a test starts
STANDBY_OFFSET = -4321.0  # the standby's trio clock minus the active's


def with_body(data: bytes, body: bytes) -> bytes:
    """A message with Content-Length 0 given ``body`` instead."""
    head = data.replace(b"Content-Length: 0\r\n\r\n", b"")
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def media_edge(node: str, first_id: int) -> MediaEdge:
    ids = itertools.count(first_id)
    sessions = MediaSessions(PortAllocator(20000, 20099), session_ids=lambda: next(ids))
    return MediaEdge(node, f"127.0.2.{first_id % 7 + 1}", sessions)


def call_book(edge: MediaEdge) -> CallTracker:
    return CallTracker(edge, media_sessions=lambda call_id: len(edge.sessions.of_call(call_id)))


class Active:
    """The ingress ``ing`` of a fabric, with its replica log."""

    def __init__(self) -> None:
        self.books: dict[str, tuple[CallTracker, MediaEdge]] = {}
        self.fabric = Fabric(media=self._hook)
        self.core = self.fabric.cores["ing"]
        self.calls, self.edge = self.books["ing"]
        dialogs = self.core.proxy.dialogs
        assert dialogs is not None
        self.dialogs: DialogBook = dialogs
        self.log = ReplicaLog(EPOCH, self.calls, self.dialogs, self.edge)
        self.calls.on_change = self.edge.on_change = self.log.mark

    def _hook(self, node: str) -> CallTracker:
        edge = media_edge(node, 0x1000 if node == "ing" else 0x2000)
        self.books[node] = book, _ = call_book(edge), edge
        return book

    @property
    def now(self) -> float:
        return self.core.now

    def wall(self, after: float = 0.0) -> float:
        return WALL + self.now + after

    def call(self, number: int) -> str:
        """A call from the caller through ing to the callee, answered with SDP and ACKed."""
        call_id = f"call-{number}@127.0.0.2"
        invite_data = request(call_id=call_id, branch=f"z9hG4bK-{number}", extra=SDP, body=OFFER)
        [at_callee] = self.fabric.inject("ing", UAC, invite_data)[UAS]
        ok = with_body(response_to(at_callee, 200, extra=SDP), ANSWER)
        [at_caller] = self.fabric.inject("egr", UAS, ok)[UAC]
        assert parse(at_caller).status == 200  # type: ignore[union-attr]
        self.in_dialog("ACK", call_id, 1)
        return call_id

    def in_dialog(self, method: str, call_id: str, cseq: int) -> None:
        data = request(
            method,
            uri="sip:alice@127.0.0.3:5062",
            call_id=call_id,
            branch=f"z9hG4bK-{method}-{cseq}-{call_id.partition('@')[0]}",
            cseq=cseq,
            to_tag="callee-tag",
            extra=tuple(f"Route: {route}" for route in ROUTES),
        )
        self.fabric.inject("ing", UAC, data)

    def latch(self, call_id: str, source: tuple[str, int]) -> None:
        """The relay latched ``source`` for the call's caller stream (as ``MediaPlane.poll``
        reports it)."""
        [session] = self.edge.sessions.of_call(call_id)
        self.edge.activity(session.session_id, self.now, rtp_latched=source)

    def follow(self, store: ReplicaStore) -> list[pair_pb2.StateBatch]:
        return self.log.follow(store.epoch, store.applied_seq, self.now, self.wall())

    def flush(self) -> pair_pb2.StateBatch | None:
        return self.log.flush(self.now, self.wall())


class Standby:
    """A fresh member of the same node (``ing``), its trio clock far from the active's."""

    def __init__(self) -> None:
        self.edge = media_edge("ing", 0x9000)
        self.calls = call_book(self.edge)
        self.dialogs = DialogBook("ing")
        self.store = ReplicaStore(self.calls, self.dialogs, self.edge)

    def apply(self, batch: pair_pb2.StateBatch, active: Active, lag: float = 0.002) -> None:
        self.store.apply(batch, active.now + STANDBY_OFFSET + lag, batch.sent_at + lag)

    def apply_all(self, batches: list[pair_pb2.StateBatch], active: Active) -> None:
        for batch in batches:
            self.apply(batch, active)


def assert_same_call(active: Active, standby: Standby, call_id: str) -> None:
    """The standby holds what the active holds of the call, its times on its own clock."""
    mine, theirs = active.calls.live(call_id), standby.calls.live(call_id)
    assert mine is not None
    assert theirs is not None
    assert theirs.started == pytest.approx(mine.started + STANDBY_OFFSET)
    assert theirs.answered == pytest.approx(mine.answered + STANDBY_OFFSET)  # type: ignore[operator]
    assert dataclasses.replace(theirs, started=0.0, answered=0.0) == dataclasses.replace(
        mine, started=0.0, answered=0.0
    )
    assert standby.dialogs.get(call_id) == active.dialogs.get(call_id)
    assert standby.edge.call_state(call_id) == active.edge.call_state(call_id)


def test_a_snapshot_then_deltas_carry_a_call_to_its_end() -> None:
    active, standby = Active(), Standby()
    call_id = active.call(1)
    active.latch(call_id, ("192.0.2.7", 40000))
    assert active.flush() is None  # nobody follows: nothing is read
    [snapshot] = active.follow(standby.store)
    assert (snapshot.snapshot_begin, snapshot.snapshot_end) == (True, True)
    assert [record.seq for record in snapshot.records] == [snapshot.first_seq]
    standby.apply(snapshot, active)
    assert_same_call(active, standby, call_id)
    [session] = active.edge.sessions.of_call(call_id)
    # The relay starts the session on the active's ports, latched where the active's did.
    assert standby.edge.commands == [AddSession(session, rtp_latched=("192.0.2.7", 40000))]
    store = standby.store
    assert (store.epoch, store.applied_seq, store.calls) == (EPOCH, snapshot.first_seq, 1)

    # An INFO from the caller changes the call's record; one batch carries it, next in seq.
    standby.edge.commands.clear()
    active.in_dialog("INFO", call_id, 2)
    batch = active.flush()
    assert batch is not None
    next_seq = snapshot.first_seq + 1
    assert (batch.first_seq, [record.seq for record in batch.records]) == (next_seq, [next_seq])
    standby.apply(batch, active)
    assert_same_call(active, standby, call_id)
    assert standby.edge.commands == []  # nothing the relay has changed: it keeps its sockets
    assert active.flush() is None  # nothing marked since

    # The caller hangs up: the call is gone at the standby too, as it ended at the active.
    active.in_dialog("BYE", call_id, 3)
    batch = active.flush()
    assert batch is not None
    assert batch.records[0].HasField("gone")
    standby.apply(batch, active)
    assert standby.calls.live(call_id) is None
    ended = standby.calls.final(call_id)
    assert ended is not None
    assert (ended.state, ended.final_reason) == (CallState.ENDED, "BYE")
    assert standby.dialogs.get(call_id) is None
    assert standby.edge.commands == [RemoveSession(session.session_id)]
    stats = standby.edge.sessions.statistics()
    assert (stats.sessions, stats.ports_in_use, standby.store.calls) == (0, 0, 0)
    assert standby.store.applied_seq == active.log.last_seq == next_seq + 1


def test_a_follower_in_step_gets_no_snapshot_and_one_behind_does() -> None:
    active, standby = Active(), Standby()
    first = active.call(1)
    standby.apply_all(active.follow(standby.store), active)
    assert standby.store.snapshots == 1
    active.log.unfollow()
    # Reconnecting with nothing missed: the stream goes on from where it was.
    assert active.follow(standby.store) == []
    active.log.unfollow()

    # Changes while nobody follows are counted, not read; the follower is owed a snapshot.
    second = active.call(2)
    assert active.flush() is None
    assert active.log.last_seq > standby.store.applied_seq
    batches = active.follow(standby.store)
    assert [len(batch.records) for batch in batches] == [2]
    standby.apply_all(batches, active)
    for call_id in (first, second):
        assert_same_call(active, standby, call_id)
    assert (standby.store.applied_seq, standby.store.snapshots) == (active.log.last_seq, 2)


def test_a_gap_or_another_epoch_forces_a_resync() -> None:
    active, standby = Active(), Standby()
    call_id = active.call(1)
    standby.apply_all(active.follow(standby.store), active)
    active.in_dialog("INFO", call_id, 2)
    lost = active.flush()
    active.in_dialog("INFO", call_id, 3)
    after = active.flush()
    assert lost is not None
    assert after is not None
    with pytest.raises(ResyncNeeded, match=r"records 2\.\.2 missed"):
        standby.apply(after, active)
    # What it holds is whole up to the last seq applied: the follower dials again with it.
    assert (standby.store.epoch, standby.store.applied_seq) == (EPOCH, 1)
    active.log.unfollow()
    standby.apply_all(active.follow(standby.store), active)
    assert_same_call(active, standby, call_id)

    other = ReplicaLog(bytes(16), active.calls, active.dialogs, active.edge)
    other.follow(EPOCH, 0, active.now, active.wall())
    other.mark(call_id)
    batch = other.flush(active.now, active.wall())
    assert batch is not None
    with pytest.raises(ResyncNeeded, match="epoch"):
        standby.apply(batch, active)


def test_a_snapshot_is_applied_as_a_diff() -> None:
    active, standby = Active(), Standby()
    kept, ended = active.call(1), active.call(2)
    standby.apply_all(active.follow(standby.store), active)
    [kept_session] = active.edge.sessions.of_call(kept)
    [ended_session] = active.edge.sessions.of_call(ended)
    active.log.unfollow()
    active.in_dialog("BYE", ended, 2)
    active.flush()
    standby.edge.commands.clear()

    standby.apply_all(active.follow(standby.store), active)
    # The call that goes on keeps its relay session; the one the active ended while nobody
    # followed ends here, its record moved to the history as over at the active.
    assert standby.edge.commands == [RemoveSession(ended_session.session_id)]
    assert_same_call(active, standby, kept)
    assert standby.edge.sessions.get(kept_session.session_id) is not None
    over = standby.calls.final(ended)
    assert over is not None
    assert (over.state, over.final_reason) == (
        CallState.ENDED,
        OVER_ON_THE_ACTIVE,
    )
    assert (standby.store.calls, standby.dialogs.get(ended)) == (1, None)


def test_lag_is_the_wall_clock_since_the_batch_was_sent() -> None:
    active, standby = Active(), Standby()
    active.call(1)
    [snapshot] = active.follow(standby.store)
    standby.apply(snapshot, active, lag=0.0375)
    assert standby.store.lag_ms == pytest.approx(37.5, abs=0.001)
    # The active's times are moved by the wall clock's lag too: the call started as long
    # before the standby's now as it did before the active's.
    record = standby.calls.live("call-1@127.0.0.2")
    assert record is not None
    assert record.started == pytest.approx(STANDBY_OFFSET + 0.0)


def test_many_changed_calls_go_in_bounded_batches() -> None:
    active, standby = Active(), Standby()
    count = MAX_BATCH_RECORDS + 44
    for number in range(count):
        active.calls.restore(
            CallRecord(f"c{number}", CallRole.INGRESS, CallState.TRYING, "", "", "", "egr", 0.0)
        )
    batches = active.follow(standby.store)
    assert [(b.snapshot_begin, b.snapshot_end, len(b.records)) for b in batches] == [
        (True, False, MAX_BATCH_RECORDS),
        (False, True, 44),
    ]
    assert {b.first_seq for b in batches} == {active.log.last_seq}
    standby.apply(batches[0], active)
    assert standby.store.applied_seq == 0  # a snapshot counts once it is whole
    standby.apply(batches[1], active)
    assert (standby.store.calls, standby.store.applied_seq) == (count, active.log.last_seq)

    for number in range(count):
        active.log.mark(f"c{number}")
    first, second = active.flush(), active.flush()
    assert first is not None
    assert second is not None
    assert (len(first.records), len(second.records)) == (MAX_BATCH_RECORDS, 44)
    assert second.first_seq == first.first_seq + MAX_BATCH_RECORDS
    standby.apply(first, active)
    standby.apply(second, active)


def test_a_record_the_standby_cannot_take_forgets_the_epoch() -> None:
    active, standby = Active(), Standby()
    call_id = active.call(1)
    # Something of the standby's own holds the ports the active's session uses.
    standby.edge.sessions.create("squatter", Side.CALLER, 0, 0.0)
    [snapshot] = active.follow(standby.store)
    with pytest.raises(ResyncNeeded, match="not applied"):
        standby.apply(snapshot, active)
    assert standby.store.epoch == b""
    standby.edge.sessions.end_call("squatter", EndReason.BYE)
    active.log.unfollow()
    standby.apply_all(active.follow(standby.store), active)
    assert_same_call(active, standby, call_id)


def test_batches_out_of_order_are_refused() -> None:
    active, standby = Active(), Standby()
    active.call(1)
    [snapshot] = active.follow(standby.store)
    broken = pair_pb2.StateBatch()
    broken.CopyFrom(snapshot)
    broken.records[0].seq += 1
    with pytest.raises(ResyncNeeded, match="out of order"):
        standby.apply(broken, active)
    standby.apply(snapshot, active)
    # A snapshot's next batch must carry its seq; a delta before any snapshot is refused.
    begun = pair_pb2.StateBatch(epoch=EPOCH, first_seq=9, snapshot_begin=True)
    standby.apply(begun, active)
    with pytest.raises(ResyncNeeded, match="broken off"):
        standby.apply(pair_pb2.StateBatch(epoch=EPOCH, first_seq=10), active)
    with pytest.raises(ResyncNeeded, match="no snapshot"):
        Standby().apply(pair_pb2.StateBatch(epoch=EPOCH, first_seq=1), active)


# -- the codec ---------------------------------------------------------------------------------

RECORD = CallRecord(
    call_id="c@h",
    role=CallRole.EGRESS,
    state=CallState.ANSWERED,
    from_uri="sip:bob@example.org",
    to_uri="sip:alice@example.com",
    request_uri="sip:alice@127.0.0.3:5062",
    far_node="ing",
    started=90.0,
    answered=92.5,
    final_status=200,
    final_reason="OK",
    requests=3,
    responses=4,
    had_media=True,
    egress_tries=2,
    setup_extra=1.25,
)
DIALOG = EdgeDialog(
    "c@h", "ing", "<sip:a@x>;tag=1", "<sip:b@y>;tag=2", "sip:a@127.0.9.11", ("<sip:r;lr>",),
    Peer("tcp", "127.0.9.11", 5070), 7,
)  # fmt: skip


def test_records_cross_to_the_other_clock() -> None:
    message = call_state_message(RECORD, DIALOG, None, at=100.0)
    decoded = call_state_from_message_untrusted(
        pair_pb2.CallState.FromString(message.SerializeToString()), at=10.0
    )
    assert decoded.record == dataclasses.replace(RECORD, started=0.0, answered=2.5)
    assert (decoded.dialog, decoded.media) == (DIALOG, None)
    media = CallMediaState("c@h", caller_tag=None, answered=False)
    carried = call_state_message(RECORD, None, media, at=100.0)
    assert call_state_from_message_untrusted(carried, at=100.0).media == media

    final = dataclasses.replace(RECORD, state=CallState.FAILED, answered=None, ended=96.0)
    gone = call_gone_message("c@h", final, at=100.0)
    assert call_gone_from_message_untrusted(gone, at=100.0) == ("c@h", final)
    assert call_gone_from_message_untrusted(call_gone_message("c@h", None, at=1.0), at=1.0) == (
        "c@h",
        None,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.ClearField("record"), "without its record"),
        (lambda m: setattr(m.record, "state", pair_pb2.CallRecord.ENDED), "over record"),
        (lambda m: setattr(m.record, "role", 0), "role 0"),
        (lambda m: setattr(m.record, "started_ago", float("nan")), "time of nan"),
        (lambda m: setattr(m.dialog.peer, "transport", "sctp"), "dialog peer sctp"),
        (lambda m: m.media.forwarding.add(side=pair_pb2.MEDIA_SIDE_CALLER), "port out of range"),
        (lambda m: m.media.origins.add(side=0), "media: media side 0"),
        (lambda m: setattr(m, "call_id", ""), "without a Call-ID"),
    ],
)
def test_records_that_do_not_fit_are_refused(change: object, reason: str) -> None:
    message = call_state_message(RECORD, DIALOG, CallMediaState("c@h"), at=100.0)
    change(message)  # type: ignore[operator]
    with pytest.raises(BadRecord, match=reason):
        call_state_from_message_untrusted(message, at=0.0)


def test_a_call_book_marks_every_message_and_change() -> None:
    marked: list[str] = []
    active = Active()
    active.calls.on_change = marked.append
    call_id = active.call(1)
    # INVITE, 200, ACK: each message and each record change.
    assert set(marked) == {call_id}
    assert len(marked) >= 3
    marked.clear()
    active.in_dialog("BYE", call_id, 2)
    assert marked
    assert set(marked) == {call_id}
    # A record that changes without a message (a timeout found on reading) is marked too.
    active.calls.restore(
        dataclasses.replace(RECORD, call_id="quiet", state=CallState.TRYING, answered=None)
    )
    assert marked[-1] == "quiet"
    marked.clear()
    assert active.calls.active(RECORD.started + 1000.0) == 0
    assert marked == ["quiet"]


def test_an_epoch_is_sixteen_bytes() -> None:
    active = Active()
    with pytest.raises(ValueError, match="16 bytes"):
        ReplicaLog(b"short", active.calls, None, None)


def test_the_media_edge_marks_what_changes_without_a_message() -> None:
    marked: list[str] = []
    active = Active()
    call_id = active.call(1)
    active.edge.on_change = marked.append
    [session] = active.edge.sessions.of_call(call_id)
    active.edge.activity(session.session_id, 1.0, rtp_latched=("192.0.2.7", 40000))
    active.edge.activity(session.session_id, 2.0, rtp_latched=("192.0.2.7", 40000))
    assert marked == [call_id]  # a new source, then only more packets from it
    active.edge.handle_timer(active.now + 10_000.0)
    assert marked == [call_id, call_id]
    assert active.edge.call_state(call_id) == CallMediaState(call_id)


INVITE = InviteHandover(
    call_id="c@h",
    server_key=("z9hG4bK-1", "127.0.0.2", "5061", "INVITE"),
    server_peer=Peer("udp", "127.0.0.2", 5061),
    request=b"INVITE sip:a@x SIP/2.0\r\n\r\n",
    last_response=b"SIP/2.0 180 Ringing\r\n\r\n",
    last_status=180,
    forward=b"INVITE sip:a@x SIP/2.0\r\n\r\n",
    media="entering",
    from_overlay=False,
    far_node="",
    egress="use1-a",
    route="<sip:127.0.9.1:5060;lr;ovl=use1-a>",
    alternates=(
        Target("127.0.9.2", 5060, "udp", route="<sip:127.0.9.2:5060;lr;ovl=b>", egress="b"),
    ),
    next_hops=(),
    attempts=1,
    egress_tries=1,
    branch=b"INVITE sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x\r\n\r\n",
    branch_peer=Peer("udp", "127.0.9.1", 5060),
    provisional=True,
    replied=False,
    cancelled=False,
    timer_c_left=170.5,
)  # fmt: skip


def test_invites_at_the_edge_go_with_their_call() -> None:
    message = call_state_message(RECORD, None, None, at=100.0, invites=(INVITE,))
    decoded = call_state_from_message_untrusted(
        pair_pb2.CallState.FromString(message.SerializeToString()), at=10.0
    )
    assert decoded.invites == (INVITE,)
    unanswered = dataclasses.replace(INVITE, last_response=None, branch=None, branch_peer=None,
                                     timer_c_left=None, egress=None, route=None)  # fmt: skip
    message = call_state_message(RECORD, None, None, at=1.0, invites=(unanswered,))
    assert call_state_from_message_untrusted(message, at=1.0).invites == (unanswered,)
    message.invites[0].media = "sideways"
    with pytest.raises(BadRecord, match="media direction"):
        call_state_from_message_untrusted(message, at=1.0)


def test_the_mesh_link_state_follows_the_calls_to_the_standby() -> None:
    """The standby's flooder takes the active's LSAs: a takeover starts with its routes, and
    its own next LSA outnumbers the one the active last flooded as this node."""
    active, standby = Active(), Standby()
    links = Flooder("ing", "r", "", FloodConfig(), initial_seq=50, now=0.0)
    links.receive_lsa("egr", Lsa("egr", 7, 0.0, "r2", "", (LinkMetrics("ing", True, 9.0),)), 0.0)
    active.log.links = links.lsdb
    kept = Flooder("ing", "r", "", FloodConfig(), initial_seq=10, now=0.0)
    standby.store.take_lsa = kept.adopt
    standby.apply_all(active.follow(standby.store), active)  # a snapshot: every LSA
    assert kept.lsdb.seq("egr") == 7
    assert kept.followed is not None
    assert kept.followed.seq == 51
    links.receive_lsa("egr", Lsa("egr", 8, 0.0, "r2", "", ()), active.now)
    batch = active.flush()
    assert batch is not None
    assert [record.WhichOneof("body") for record in batch.records] == ["lsa"]  # only what changed
    standby.apply(batch, active)
    assert kept.lsdb.seq("egr") == 8
    assert active.flush() is None
    kept.set_epoch(b"e", 2.0)  # the takeover's first LSA
    own = kept.lsdb.peek("ing")
    assert own is not None
    assert own.seq == 52
