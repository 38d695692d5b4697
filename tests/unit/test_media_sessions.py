"""Media sessions of an edge node: ids, lookups, ending calls, inactivity timeouts with a hand-set
``now``, and no leaked ports whatever the order sessions end in."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from overlay.media import (
    EndReason,
    MediaSession,
    MediaSessions,
    OverlaySession,
    PortAllocator,
    PortPair,
    PortsExhausted,
    PortTaken,
    SessionState,
    Side,
    worker_session_ids,
)
from overlay.sip import LocalProtocolError


def _sessions(pairs: int = 50, **options: float) -> MediaSessions:
    rng = random.Random(0)
    return MediaSessions(
        PortAllocator(20000, 20000 + 2 * pairs - 1),
        session_ids=lambda: rng.getrandbits(64),
        **options,
    )


def test_create_and_look_up():
    sessions = _sessions()
    audio = sessions.create("c1", Side.CALLER, 0, 0.0, endpoint=("192.0.2.10", 6000))
    video = sessions.create("c1", Side.CALLER, 1, 0.0, rtcp_mux=True)
    callee = sessions.create("c1", Side.CALLEE, 0, 1.0)
    assert audio.ports == PortPair(20000, 20001)
    assert video.ports == PortPair(20002, None)
    assert audio.endpoint == ("192.0.2.10", 6000)
    assert audio.created == 0.0
    assert len({audio.session_id, video.session_id, callee.session_id}) == 3
    assert sessions.get(video.session_id) == video
    assert sessions.by_leg("c1", Side.CALLEE, 0) == callee
    assert sessions.by_leg("c1", Side.CALLEE, 1) is None
    assert sessions.by_leg("c2", Side.CALLER, 0) is None
    assert sessions.of_call("c1") == [audio, video, callee]
    assert sessions.of_call("c2") == []
    assert list(sessions) == [audio, video, callee]
    assert len(sessions) == 3
    stats = sessions.statistics()
    assert (stats.sessions, stats.calls, stats.created, stats.ports_in_use) == (3, 1, 3, 6)


def test_session_ids_are_seeded_and_never_zero():
    ids = iter([0, 5, 5, (1 << 64), 7])
    sessions = MediaSessions(PortAllocator(20000, 20099), session_ids=lambda: next(ids))
    assert sessions.create("c", Side.CALLER, 0, 0.0).session_id == 5
    # 5 is in use and 2**64 is out of range: both skipped.
    assert sessions.create("c", Side.CALLER, 1, 0.0).session_id == 7


def test_session_id_factory_that_never_works():
    sessions = MediaSessions(PortAllocator(20000, 20099), session_ids=lambda: 0)
    with pytest.raises(RuntimeError, match="no usable media session id"):
        sessions.create("c", Side.CALLER, 0, 0.0)
    assert sessions.statistics().ports_in_use == 0


def test_default_ids_are_random_64_bit():
    sessions = MediaSessions(PortAllocator(20000, 20099))
    ids = {sessions.create("c", Side.CALLER, index, 0.0).session_id for index in range(20)}
    assert len(ids) == 20
    assert all(0 < value < 1 << 64 for value in ids)


def test_workers_of_one_node_never_draw_the_same_id() -> None:
    # One relay takes every worker's sessions: worker i of n draws ids equal to i modulo n.
    books = [
        MediaSessions(PortAllocator(20000, 20999), session_ids=worker_session_ids(index, 3))
        for index in range(3)
    ]
    for index, book in enumerate(books):
        ids = [book.create("c", Side.CALLER, stream, 0.0).session_id for stream in range(20)]
        assert all(0 < value < 1 << 64 and value % 3 == index for value in ids)
    with pytest.raises(ValueError, match="worker 3 is not one of 3"):
        worker_session_ids(3, 3)


def test_refusals():
    sessions = _sessions()
    sessions.create("c", Side.CALLER, 0, 0.0)
    with pytest.raises(LocalProtocolError, match="exists"):
        sessions.create("c", Side.CALLER, 0, 0.0)
    with pytest.raises(LocalProtocolError, match="out of range"):
        sessions.create("c", Side.CALLER, 64, 0.0)
    with pytest.raises(ValueError, match="positive"):
        MediaSessions(PortAllocator(20000, 20099), timeout=0)


def test_exhausted_ports_create_nothing():
    sessions = _sessions(pairs=1)
    sessions.create("c1", Side.CALLER, 0, 0.0)
    with pytest.raises(PortsExhausted):
        sessions.create("c2", Side.CALLER, 0, 0.0)
    stats = sessions.statistics()
    assert (stats.sessions, stats.calls, stats.created, stats.ports_exhausted) == (1, 1, 1, 1)
    assert sessions.by_leg("c2", Side.CALLER, 0) is None


def test_remote_endpoint_and_rtcp_mux():
    sessions = _sessions()
    session = sessions.create("c", Side.CALLER, 0, 0.0, rtcp_mux=True)
    remote = OverlaySession("use1", 0x1234)
    updated = sessions.set_remote(session.session_id, remote)
    assert updated is not None
    assert updated.remote == remote
    updated = sessions.set_endpoint(session.session_id, ("2001:db8::1", 4000))
    assert updated is not None
    assert updated == sessions.get(session.session_id)
    assert (updated.endpoint, updated.remote) == (("2001:db8::1", 4000), remote)
    # The answer declined rtcp-mux: the reserved RTCP port comes into use.
    updated = sessions.set_rtcp_mux(session.session_id, False)
    assert updated is not None
    assert updated.ports == PortPair(20000, 20001)
    assert session.ports == PortPair(20000, None)  # snapshots do not change
    sessions.end_call("c", EndReason.BYE)
    assert sessions.set_remote(session.session_id, remote) is None
    assert sessions.set_endpoint(session.session_id, None) is None
    assert sessions.set_rtcp_mux(session.session_id, True) is None


@pytest.mark.parametrize("reason", list(EndReason))
def test_end_call_frees_everything(reason: EndReason):
    sessions = _sessions()
    created = [sessions.create("c", side, index, 0.0) for side in Side for index in range(2)]
    other = sessions.create("d", Side.CALLER, 0, 0.0)
    assert sessions.end_call("c", reason) == created
    assert sessions.end_call("c", reason) == []  # a retransmitted BYE
    assert sessions.of_call("c") == []
    assert all(sessions.get(session.session_id) is None for session in created)
    stats = sessions.statistics()
    assert stats.ended[reason.value] == 4
    assert sum(stats.ended.values()) == 4
    assert (stats.sessions, stats.calls, stats.ports_in_use) == (1, 1, 2)
    assert sessions.get(other.session_id) == other


def test_end_one_stream():
    sessions = _sessions()
    audio = sessions.create("c", Side.CALLER, 0, 0.0)
    video = sessions.create("c", Side.CALLER, 1, 0.0)
    assert sessions.end(video.session_id, EndReason.REMOVED) == video
    assert sessions.end(video.session_id, EndReason.REMOVED) is None
    assert sessions.of_call("c") == [audio]
    assert sessions.statistics().ended["removed"] == 1
    # The stream may come back in a later re-offer.
    again = sessions.create("c", Side.CALLER, 1, 5.0)
    assert again.session_id != video.session_id


def test_setup_then_inactivity_timeout():
    sessions = _sessions(timeout=60.0, setup_timeout=300.0)
    assert sessions.get_timer() is None
    session = sessions.create("c", Side.CALLER, 0, 0.0)
    # Ringing without early media is normal: only the setup timeout applies.
    assert sessions.get_timer() == 300.0
    assert sessions.expire(299.0) == []
    sessions.confirm_call("c", 10.0)
    assert sessions.get_timer() == 70.0
    assert sessions.touch(session.session_id, 50.0)
    assert sessions.get_timer() == 110.0
    assert sessions.touch(session.session_id, 40.0)  # an older reading moves nothing back
    assert sessions.get_timer() == 110.0
    assert sessions.expire(109.9) == []
    assert sessions.expire(110.0) == [session]
    assert sessions.get_timer() is None
    stats = sessions.statistics()
    assert (stats.ended["timeout"], stats.sessions, stats.ports_in_use) == (1, 0, 0)
    assert not sessions.touch(session.session_id, 111.0)


def test_unanswered_call_times_out_after_setup_timeout():
    sessions = _sessions(timeout=60.0, setup_timeout=300.0)
    session = sessions.create("c", Side.CALLEE, 0, 0.0)
    assert sessions.expire(299.0) == []
    assert sessions.expire(300.0) == [session]


def test_expire_in_deadline_order():
    sessions = _sessions(timeout=10.0, setup_timeout=10.0)
    first = sessions.create("a", Side.CALLER, 0, 0.0)
    second = sessions.create("b", Side.CALLER, 0, 1.0)
    third = sessions.create("c", Side.CALLER, 0, 2.0)
    sessions.touch(first.session_id, 5.0)
    assert sessions.get_timer() == 11.0
    assert sessions.expire(100.0) == [second, third, first]


def test_confirm_covers_streams_added_later_and_unknown_calls():
    sessions = _sessions(timeout=60.0, setup_timeout=300.0)
    sessions.confirm_call("nope", 0.0)
    sessions.create("c", Side.CALLER, 0, 0.0)
    sessions.confirm_call("c", 0.0)
    added = sessions.create("c", Side.CALLER, 1, 30.0)
    assert sessions.expire(60.0)[0].index == 0
    assert sessions.get_timer() == 90.0
    assert sessions.expire(90.0) == [added]


def test_heap_stays_bounded_under_churn():
    sessions = _sessions(pairs=20, timeout=60.0, setup_timeout=300.0)
    for call in range(5000):
        call_id = f"call-{call}"
        sessions.create(call_id, Side.CALLER, 0, float(call))
        sessions.confirm_call(call_id, float(call))
        sessions.end_call(call_id, EndReason.BYE)
        assert sessions.statistics().timers_pending <= 64 + 2
    assert sessions.get_timer() is None


def test_thousands_of_sessions_in_random_order():
    rng = random.Random(1)
    sessions = _sessions(pairs=3000, timeout=60.0, setup_timeout=120.0)
    live_calls: list[str] = []
    now = 0.0
    calls = itertools.count()
    for _ in range(20000):
        now += rng.random()
        action = rng.random()
        if action < 0.45 or not live_calls:
            call_id = f"call-{next(calls)}"
            try:
                for index in range(rng.randint(1, 3)):
                    sessions.create(call_id, rng.choice(list(Side)), index, now)
            except PortsExhausted:
                pass
            if sessions.of_call(call_id):
                live_calls.append(call_id)
        elif action < 0.8:
            call_id = live_calls.pop(rng.randrange(len(live_calls)))
            sessions.end_call(call_id, rng.choice(list(EndReason)))
        elif action < 0.9:
            sessions.confirm_call(rng.choice(live_calls), now)
        else:
            for session in list(sessions)[: rng.randint(0, 50)]:
                sessions.touch(session.session_id, now)
        for session in sessions.expire(now):
            if not sessions.of_call(session.call_id) and session.call_id in live_calls:
                live_calls.remove(session.call_id)
        assert sessions.statistics().ports_in_use == 2 * len(sessions)
    for call_id in live_calls:
        sessions.end_call(call_id, EndReason.BYE)
    stats = sessions.statistics()
    assert (stats.sessions, stats.calls, stats.ports_in_use) == (0, 0, 0)
    assert stats.created == sum(stats.ended.values())
    assert sessions.get_timer() is None


class SessionsMachine(RuleBasedStateMachine):
    """Random interleavings of everything that creates, changes, restores, promotes or ends
    sessions; at every step the ports in use are exactly two per live session, foreign sessions
    never expire, and at the end none is left."""

    def __init__(self) -> None:
        super().__init__()
        ids = random.Random(7)
        self.sessions = MediaSessions(
            PortAllocator(20000, 20000 + 2 * 40 - 1),
            timeout=30.0,
            setup_timeout=90.0,
            session_ids=lambda: ids.getrandbits(3) if ids.random() < 0.2 else ids.getrandbits(64),
        )
        self.now = 0.0
        self.live: dict[int, MediaSession] = {}
        self.foreign: set[int] = set()

    @rule(
        call=st.integers(0, 15),
        side=st.sampled_from(Side),
        index=st.integers(0, 3),
        mux=st.booleans(),
    )
    def create(self, call: int, side: Side, index: int, mux: bool) -> None:
        call_id = f"call-{call}"
        if self.sessions.by_leg(call_id, side, index) is not None:
            with pytest.raises(LocalProtocolError):
                self.sessions.create(call_id, side, index, self.now)
            return
        try:
            session = self.sessions.create(call_id, side, index, self.now, rtcp_mux=mux)
        except PortsExhausted:
            assert len(self.live) == 40
            return
        self.live[session.session_id] = session

    @rule(call=st.integers(0, 15), reason=st.sampled_from(EndReason))
    def end_call(self, call: int, reason: EndReason) -> None:
        for session in self.sessions.end_call(f"call-{call}", reason):
            assert self.live.pop(session.session_id).call_id == session.call_id
            self.foreign.discard(session.session_id)

    @precondition(lambda self: bool(self.live))
    @rule(
        data=st.data(),
        port=st.integers(6000, 6010),
        latched=st.booleans(),
        confirmed=st.booleans(),
    )
    def restore_changed(
        self, data: st.DataObject, port: int, latched: bool, confirmed: bool
    ) -> None:
        session_id = data.draw(st.sampled_from(sorted(self.live)))
        session = dataclasses.replace(self.live[session_id], endpoint=("192.0.2.1", port))
        source = ("203.0.113.1", port) if latched else None
        assert self.sessions.restore(SessionState(session, confirmed, source)) == session
        assert self.sessions.snapshot(session.call_id)[0].confirmed is confirmed
        self.live[session_id] = session
        self.foreign.add(session_id)

    @rule(
        session_id=st.integers(1, 2**64 - 1),
        call=st.integers(0, 15),
        side=st.sampled_from(Side),
        index=st.integers(0, 3),
        slot=st.integers(0, 39),
        mux=st.booleans(),
    )
    def restore_new(
        self, session_id: int, call: int, side: Side, index: int, slot: int, mux: bool
    ) -> None:
        rtp = 20000 + 2 * slot
        session = MediaSession(
            session_id, f"call-{call}", side, index, PortPair(rtp, None if mux else rtp + 1), 0.0
        )
        if session_id in self.live:
            return
        if self.sessions.by_leg(session.call_id, side, index) is not None:
            with pytest.raises(LocalProtocolError):
                self.sessions.restore(SessionState(session))
        elif rtp in {live.ports.rtp for live in self.live.values()}:
            with pytest.raises(PortTaken):
                self.sessions.restore(SessionState(session))
        else:
            self.sessions.restore(SessionState(session))
            self.live[session_id] = session
            self.foreign.add(session_id)

    @rule()
    def promote(self) -> None:
        promoted = self.sessions.promote(self.now)
        assert {session.session_id for session in promoted} == self.foreign
        self.foreign.clear()

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), reason=st.sampled_from(EndReason))
    def end_one(self, data: st.DataObject, reason: EndReason) -> None:
        session_id = data.draw(st.sampled_from(sorted(self.live)))
        assert self.sessions.end(session_id, reason) is not None
        del self.live[session_id]
        self.foreign.discard(session_id)

    @rule(call=st.integers(0, 15))
    def confirm(self, call: int) -> None:
        self.sessions.confirm_call(f"call-{call}", self.now)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), mux=st.booleans())
    def touch_and_flip_mux(self, data: st.DataObject, mux: bool) -> None:
        session_id = data.draw(st.sampled_from(sorted(self.live)))
        assert self.sessions.touch(session_id, self.now)
        updated = self.sessions.set_rtcp_mux(session_id, mux)
        assert updated is not None
        self.live[session_id] = updated

    @rule(seconds=st.floats(0.0, 100.0))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        timer = self.sessions.get_timer()
        expired = self.sessions.expire(self.now)
        if timer is None or timer > self.now:
            assert expired == []
        for session in expired:
            assert session.session_id not in self.foreign
            del self.live[session.session_id]
        next_timer = self.sessions.get_timer()
        assert next_timer is None or next_timer > self.now

    @invariant()
    def no_leak(self) -> None:
        stats = self.sessions.statistics()
        assert stats.sessions == len(self.live)
        assert stats.foreign == len(self.foreign)
        assert stats.created + stats.restored == sum(stats.ended.values()) + stats.sessions
        assert stats.ports_in_use == 2 * len(self.live)
        assert stats.timers_pending <= 2 * len(self.live) + 64 + 1
        rtp_ports = [session.ports.rtp for session in self.sessions]
        assert len(set(rtp_ports)) == len(rtp_ports)
        assert {session.session_id for session in self.sessions} == set(self.live)
        assert all(0 < session_id < 1 << 64 for session_id in self.live)

    def teardown(self) -> None:
        for call in range(16):
            self.sessions.end_call(f"call-{call}", EndReason.BYE)
        stats = self.sessions.statistics()
        assert (stats.sessions, stats.calls, stats.ports_in_use, stats.foreign) == (0, 0, 0, 0)
        assert stats.created + stats.restored == sum(stats.ended.values())
        assert self.sessions.get_timer() is None


TestSessionsMachine = SessionsMachine.TestCase
TestSessionsMachine.settings = settings(
    max_examples=200, stateful_step_count=60, derandomize=True, deadline=None
)


# -- pair replication: snapshot, restore, foreign sessions, promote ---------------------------

REMOTE = OverlaySession("egr", 0xE0E0)


def _answered_call(sessions: MediaSessions) -> list[MediaSession]:
    """A call with a caller stream (latched on RTP and RTCP), an rtcp-mux callee stream with a
    remote and an endpoint, and a second caller stream that latched nothing; answered at 5.0."""
    audio = sessions.create("c", Side.CALLER, 0, 0.0, endpoint=("192.0.2.10", 6000))
    muxed = sessions.create("c", Side.CALLEE, 0, 1.0, rtcp_mux=True)
    sessions.create("c", Side.CALLER, 1, 2.0)
    sessions.set_remote(muxed.session_id, REMOTE)
    sessions.set_endpoint(muxed.session_id, ("198.51.100.7", 7000))
    assert sessions.set_latched(audio.session_id, ("203.0.113.1", 40000), ("203.0.113.1", 40001))
    assert sessions.set_latched(muxed.session_id, ("198.51.100.7", 7000), None)
    sessions.confirm_call("c", 5.0)
    return sessions.of_call("c")


def test_snapshot_restored_into_a_fresh_book_gives_the_same_state():
    active = _sessions()
    _answered_call(active)
    other = active.create("d", Side.CALLER, 0, 3.0)
    snapshot = active.snapshot("c")
    assert [state.session for state in snapshot] == active.of_call("c")
    assert [state.confirmed for state in snapshot] == [True] * 3
    assert [(s.rtp_latched, s.rtcp_latched) for s in snapshot] == [
        (("203.0.113.1", 40000), ("203.0.113.1", 40001)),
        (("198.51.100.7", 7000), None),
        (None, None),
    ]
    assert active.snapshot("d") == (SessionState(other),)
    assert active.snapshot("unknown") == ()

    standby = MediaSessions(PortAllocator(20000, 20099), session_ids=lambda: 1)
    restored = [standby.restore(state) for state in snapshot]
    assert restored == active.of_call("c")
    assert standby.snapshot("c") == snapshot
    assert standby.of_call("c") == active.of_call("c")
    for session in restored:
        assert standby.get(session.session_id) == session
        assert standby.by_leg("c", session.side, session.index) == session
    stats = standby.statistics()
    assert (stats.sessions, stats.calls, stats.created, stats.restored, stats.foreign) == (
        3,
        1,
        0,
        3,
        3,
    )
    assert stats.ports_in_use == 6
    # The ports are the active's: a new session here gets the next free pair.
    assert standby.create("e", Side.CALLER, 0, 0.0).ports == PortPair(20006, 20007)


def test_restoring_the_same_snapshot_again_changes_nothing():
    active = _sessions()
    _answered_call(active)
    snapshot = active.snapshot("c")
    standby = _sessions()
    for state in snapshot:
        standby.restore(state)
    before = standby.statistics()
    for state in snapshot:
        standby.restore(state)
    assert standby.snapshot("c") == snapshot
    assert standby.statistics() == before


def test_restoring_a_changed_snapshot_updates_the_session_in_place():
    active = _sessions()
    audio, muxed, _video = _answered_call(active)
    standby = _sessions()
    for state in active.snapshot("c"):
        standby.restore(state)
    # On the active: a re-offer moves the caller's endpoint, its relay latches elsewhere, and
    # the callee's answer declines rtcp-mux.
    active.set_endpoint(audio.session_id, ("192.0.2.99", 6100))
    active.set_latched(audio.session_id, ("203.0.113.9", 41000), None)
    active.set_rtcp_mux(muxed.session_id, False)
    changed = active.snapshot("c")
    for state in changed:
        standby.restore(state)
    assert standby.snapshot("c") == changed
    assert standby.get(muxed.session_id) == active.get(muxed.session_id)
    stats = standby.statistics()
    assert (stats.sessions, stats.restored, stats.ports_in_use) == (3, 3, 6)


def test_foreign_sessions_do_not_expire_until_promoted():
    active = _sessions(timeout=60.0, setup_timeout=300.0)
    _answered_call(active)
    active.create("ringing", Side.CALLER, 0, 0.0)
    standby = _sessions(timeout=60.0, setup_timeout=300.0)
    for call_id in ("c", "ringing"):
        for state in active.snapshot(call_id):
            standby.restore(state)
    assert standby.get_timer() is None
    assert standby.expire(1e9) == []
    for session in standby:
        assert standby.touch(session.session_id, 1e9)  # known, but no clock to move
    standby.confirm_call("c", 1e9)  # a 2xx retransmission seen by the standby: no clock either
    assert standby.get_timer() is None
    assert standby.statistics().timers_pending == 0

    promoted = standby.promote(1000.0)
    assert promoted == list(standby)
    assert standby.promote(2000.0) == []  # nothing foreign left
    stats = standby.statistics()
    assert (stats.foreign, stats.timers_pending) == (0, 4)
    # The answered call's sessions end after `timeout` of silence from the takeover, the
    # ringing one after `setup_timeout`; a touch after promotion counts again.
    assert standby.get_timer() == 1060.0
    ringing = standby.by_leg("ringing", Side.CALLER, 0)
    assert ringing is not None
    audio, muxed, video = standby.of_call("c")
    assert standby.touch(video.session_id, 1030.0)
    assert standby.expire(1060.0) == [audio, muxed]
    assert standby.expire(1090.0) == [video]
    assert standby.expire(1299.0) == []
    assert standby.expire(1300.0) == [ringing]
    assert standby.statistics().ended["timeout"] == 4


def test_an_own_session_restored_becomes_foreign():
    sessions = _sessions(timeout=60.0, setup_timeout=300.0)
    session = sessions.create("c", Side.CALLER, 0, 0.0)
    assert sessions.get_timer() == 300.0
    sessions.restore(SessionState(session))
    assert sessions.get_timer() is None
    assert sessions.statistics().foreign == 1
    assert sessions.expire(1e9) == []
    sessions.promote(10.0)
    assert sessions.get_timer() == 310.0


def test_foreign_sessions_end_like_any_other():
    active = _sessions()
    _answered_call(active)
    standby = _sessions()
    for state in active.snapshot("c"):
        standby.restore(state)
    first = standby.of_call("c")[0]
    assert standby.end(first.session_id, EndReason.REPLICA) == first
    assert len(standby.end_call("c", EndReason.REPLICA)) == 2
    assert standby.of_call("c") == []
    stats = standby.statistics()
    assert (stats.sessions, stats.foreign, stats.ports_in_use, stats.ended["replica"]) == (
        0,
        0,
        0,
        3,
    )
    assert stats.restored == sum(stats.ended.values())
    assert not standby.touch(first.session_id, 0.0)
    assert not standby.set_latched(first.session_id, None, None)
    assert standby.promote(0.0) == []


def test_restore_refusals_change_nothing():
    active = _sessions()
    audio, muxed, _video = _answered_call(active)
    [audio_state, muxed_state, _] = active.snapshot("c")
    standby = MediaSessions(PortAllocator(20000, 20099), session_ids=itertools.count(1).__next__)
    standby.restore(audio_state)
    squatter = standby.create("other", Side.CALLER, 0, 0.0)
    assert squatter.ports.rtp == muxed.ports.rtp  # the callee stream's ports are taken here
    before = (standby.statistics(), list(standby), standby.snapshot("c"))

    def moved(**changes: object) -> SessionState:
        return dataclasses.replace(
            audio_state,
            session=dataclasses.replace(audio_state.session, **changes),  # type: ignore[arg-type]
        )

    refusals: list[tuple[type[Exception], str, SessionState]] = [
        (PortTaken, "20002/20003 is in use", muxed_state),
        (
            ValueError,
            "not the RTP port",
            moved(session_id=0x77, index=5, ports=PortPair(30000, 30001)),
        ),
        (LocalProtocolError, "another leg", moved(index=3)),
        (LocalProtocolError, "holds other ports", moved(ports=PortPair(20010, 20011))),
        (LocalProtocolError, "not an RTP/RTCP pair", moved(ports=PortPair(20000, 20003))),
        (LocalProtocolError, "exists for caller stream 0", moved(session_id=0x77)),
        (LocalProtocolError, "index 64 out of range", moved(session_id=0x77, index=64)),
        (LocalProtocolError, "id 0 out of range", moved(session_id=0)),
        (LocalProtocolError, "no RTCP source", moved(ports=PortPair(20000, None))),
    ]
    for error, message, state in refusals:
        with pytest.raises(error, match=message):
            standby.restore(state)
    assert (standby.statistics(), list(standby), standby.snapshot("c")) == before
    assert audio.session_id in {s.session_id for s in standby}


def test_set_latched_records_what_the_relay_latched():
    sessions = _sessions()
    session = sessions.create("c", Side.CALLER, 0, 0.0)
    source = ("203.0.113.1", 40000)
    assert sessions.set_latched(session.session_id, source, None)
    assert not sessions.set_latched(session.session_id, source, None)  # unchanged
    assert sessions.set_latched(session.session_id, source, ("203.0.113.1", 40001))
    assert sessions.snapshot("c")[0].rtcp_latched == ("203.0.113.1", 40001)
    # Under rtcp-mux there is no RTCP port: its source is dropped, and none can be recorded.
    sessions.set_rtcp_mux(session.session_id, True)
    assert sessions.snapshot("c")[0].rtcp_latched is None
    with pytest.raises(LocalProtocolError, match="no RTCP source"):
        sessions.set_latched(session.session_id, source, ("203.0.113.1", 40001))
    assert sessions.set_latched(session.session_id, None, None)
    assert sessions.snapshot("c") == (SessionState(sessions.of_call("c")[0]),)
    assert not sessions.set_latched(0x1234, source, None)  # unknown session


def test_a_restored_answer_moves_the_own_sessions_deadlines_of_its_call():
    sessions = _sessions(timeout=60.0, setup_timeout=300.0)
    own = sessions.create("c", Side.CALLER, 0, 0.0)
    restored = MediaSession(0x77, "c", Side.CALLEE, 0, PortPair(20010, 20011), 0.0)
    sessions.restore(SessionState(restored, confirmed=True))
    assert sessions.get_timer() == 60.0
    assert sessions.expire(60.0) == [own]
    sessions.restore(SessionState(restored, confirmed=False))
    assert sessions.snapshot("c") == (SessionState(restored),)
