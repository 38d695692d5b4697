"""Media sessions of an edge node: ids, lookups, ending calls, inactivity timeouts with a hand-set
``now``, and no leaked ports whatever the order sessions end in."""

from __future__ import annotations

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
    Side,
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
    """Random interleavings of everything that creates, changes or ends sessions; at every
    step the ports in use are exactly two per live session, and at the end none is left."""

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

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), reason=st.sampled_from(EndReason))
    def end_one(self, data: st.DataObject, reason: EndReason) -> None:
        session_id = data.draw(st.sampled_from(sorted(self.live)))
        assert self.sessions.end(session_id, reason) is not None
        del self.live[session_id]

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
            del self.live[session.session_id]
        next_timer = self.sessions.get_timer()
        assert next_timer is None or next_timer > self.now

    @invariant()
    def no_leak(self) -> None:
        stats = self.sessions.statistics()
        assert stats.sessions == len(self.live)
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
        assert (stats.sessions, stats.calls, stats.ports_in_use) == (0, 0, 0)
        assert stats.created == sum(stats.ended.values())
        assert self.sessions.get_timer() is None


TestSessionsMachine = SessionsMachine.TestCase
TestSessionsMachine.settings = settings(
    max_examples=200, stateful_step_count=60, derandomize=True, deadline=None
)
