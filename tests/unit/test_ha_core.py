"""HaCore: when the HA agent takes over, driven by hand-set `now` (no trio, no boto3)."""

from __future__ import annotations

import itertools
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.ha import (
    AddressView,
    HaAgentConfig,
    HaCore,
    HaEvent,
    HaState,
    HaStateError,
    Holder,
    HolderChanged,
    HolderCheck,
    PeerAlive,
    PeerDead,
    Takeover,
    TakeoverSkipped,
    classify,
)

E = TypeVar("E", bound=HaEvent)

INTERVAL = 0.5  # heartbeat interval of the simulated shell
DEAD_AFTER = 3
HOLD_DOWN = 10.0
API_CHECK = 5.0


class Pair:
    """The shell's job done by hand: a fake clock, a fake EC2 API, heartbeats every INTERVAL.

    Every HolderCheck is answered with ``holder`` and every Takeover succeeds at once (and makes
    the address ours), unless ``answer`` is False: then they wait in ``pending``.
    """

    def __init__(
        self, holder: Holder = Holder.PEER, *, answer: bool = True, up: bool = True
    ) -> None:
        self.now = 0.0
        self.holder = holder
        self.answer = answer
        self.core = HaCore(
            0.0, dead_after=DEAD_AFTER, hold_down=HOLD_DOWN, api_check_interval=API_CHECK
        )
        self.events: list[tuple[float, HaEvent]] = []
        self.pending: list[HaEvent] = []
        self.api_moves = 0
        self.advance(0.0)
        if up:  # the peer's node answered once: no start-up hold-down
            self.core.heartbeat_succeeded(0.0)

    def pump(self) -> None:
        while (event := self.core.next_event()) is not None:
            self.events.append((self.now, event))
            assert event.reason, event
            if not isinstance(event, HolderCheck | Takeover):
                continue
            if not self.answer:
                self.pending.append(event)
            elif isinstance(event, HolderCheck):
                self.core.holder_observed(self.holder, self.now)
            else:
                assert self.core.peer_dead  # never a takeover from a live peer
                self.api_moves += 1
                self.holder = Holder.OURS
                self.core.takeover_succeeded(self.now, 0.02)

    def advance(self, seconds: float) -> None:
        """Let time pass, firing the core's timers on the way."""
        until = self.now + seconds
        while (deadline := self.core.get_timer()) is not None and deadline <= until:
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self.pump()
        self.now = until

    def beat(self, ok: bool) -> None:
        """One heartbeat interval, ending with the peer's answer (or its absence)."""
        self.advance(INTERVAL)
        if ok:
            self.core.heartbeat_succeeded(self.now)
        else:
            self.core.heartbeat_failed(self.now, "UNAVAILABLE: connection refused")
        self.pump()

    def beats(self, pattern: str, repeat: int = 1) -> None:
        """``"+"`` an answer, ``"-"`` a miss, e.g. ``beats("--+", 10)``."""
        for _ in range(repeat):
            for mark in pattern:
                self.beat(mark == "+")

    def of_type(self, kind: type[E]) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


# --- who holds the address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eip", "ips", "holder"),
    [
        ("eni-a", {"eni-a"}, Holder.OURS),
        ("eni-b", {"eni-b"}, Holder.PEER),
        (None, set(), Holder.NOBODY),
        ("eni-a", {"eni-b"}, Holder.SPLIT),  # a takeover cut short after the EIP moved
        ("eni-b", {"eni-a", "eni-b"}, Holder.SPLIT),  # ... or after the IP was assigned
        ("eni-a", set(), Holder.SPLIT),
        (None, {"eni-b"}, Holder.SPLIT),
        ("eni-c", {"eni-a"}, Holder.OTHER),
        ("eni-a", {"eni-a", "eni-c"}, Holder.OTHER),
    ],
)
def test_classify(eip: str | None, ips: set[str], holder: Holder):
    assert classify(AddressView(eip, frozenset(ips)), "eni-a", "eni-b") is holder


# --- heartbeats ------------------------------------------------------------------------------


def test_first_reading_at_start_then_periodic():
    pair = Pair(Holder.PEER)
    assert [e for _, e in pair.of_type(HolderCheck)] == [HolderCheck("periodic check")]
    assert pair.core.statistics().holder is Holder.PEER
    assert pair.core.get_timer() == API_CHECK
    pair.beats("+", 20)  # 10 s
    assert [t for t, _ in pair.of_type(HolderCheck)] == [0.0, 5.0, 10.0]


def test_peer_alive_never_takes_over():
    pair = Pair(Holder.PEER)
    pair.beats("+", 400)  # 200 s
    stats = pair.core.statistics()
    assert pair.api_moves == 0
    assert not pair.of_type(Takeover)
    assert not pair.of_type(PeerDead)
    assert stats.state is HaState.WATCHING
    assert stats.heartbeats_ok == 1 + 400  # the one Pair starts with
    assert stats.api_checks == 41
    assert (stats.takeovers, stats.peer_deaths, stats.heartbeats_missed) == (0, 0, 0)


def test_misses_that_are_not_consecutive_never_kill_the_peer():
    pair = Pair(Holder.PEER)
    pair.beats("--+", 100)
    stats = pair.core.statistics()
    assert stats.heartbeats_missed == 200
    assert stats.peer_deaths == 0
    assert pair.api_moves == 0


def test_dead_after_consecutive_misses_then_takeover():
    pair = Pair(Holder.PEER)
    pair.beats("+")
    last_answer = pair.now
    pair.beats("--")
    assert not pair.of_type(PeerDead)
    assert pair.core.statistics().consecutive_misses == 2
    pair.beats("-")
    dead_at = last_answer + DEAD_AFTER * INTERVAL
    [(t_dead, dead)] = pair.of_type(PeerDead)
    assert (t_dead, dead.misses) == (dead_at, DEAD_AFTER)
    assert "connection refused" in dead.reason
    # The API is asked before moving, and the move follows its answer at once.
    kinds = [type(e) for t, e in pair.events if t == dead_at]
    assert kinds == [PeerDead, HolderCheck, Takeover]
    stats = pair.core.statistics()
    assert stats.takeovers == 1
    assert pair.api_moves == 1
    assert stats.state is HaState.PEER_DEAD
    assert stats.holder is Holder.OURS
    assert stats.last_takeover_duration == 0.02
    assert stats.last_failover_time == pytest.approx(DEAD_AFTER * INTERVAL)
    assert stats.hold_down_until == dead_at + HOLD_DOWN
    # Staying dead changes nothing: the address is ours.
    pair.beats("-", 100)
    assert pair.api_moves == 1
    assert pair.core.statistics().peer_deaths == 1


def test_already_ours_means_no_api_move():
    """The active sees its standby die: it holds the address and must not move it to itself."""
    pair = Pair(Holder.OURS)
    pair.beats("+++---")
    [(_, skipped)] = pair.of_type(TakeoverSkipped)
    assert skipped.reason == "the address is already ours"
    assert not pair.of_type(Takeover)
    assert pair.api_moves == 0
    stats = pair.core.statistics()
    assert (stats.peer_deaths, stats.takeovers, stats.takeovers_skipped) == (1, 0, 1)
    assert stats.state is HaState.PEER_DEAD
    pair.beats("-", 40)  # periodic readings while dead stay silent
    assert len(pair.of_type(TakeoverSkipped)) == 1
    assert pair.api_moves == 0


def test_stranger_holding_the_address_is_left_alone():
    pair = Pair(Holder.OTHER)
    pair.beats("---")
    [(_, skipped)] = pair.of_type(TakeoverSkipped)
    assert "neither ours nor the peer's" in skipped.reason
    assert pair.api_moves == 0
    # Once it is released and the peer is still dead, the next periodic reading takes it.
    pair.holder = Holder.NOBODY
    pair.beats("-", 10)
    assert pair.api_moves == 1


# --- hold-down -------------------------------------------------------------------------------


def test_a_peer_that_never_answered_gets_a_hold_down_from_the_start():
    """Both members boot together: the standby's agent may run before the active's node."""
    pair = Pair(Holder.PEER, up=False)
    pair.beats("---")  # not up yet
    [(_, skipped)] = pair.of_type(TakeoverSkipped)
    assert skipped.reason.startswith("hold-down for ")
    pair.beats("+")  # up: the hold-down ends with its first answer, no recovery's starts
    [(_, alive)] = pair.of_type(PeerAlive)
    assert alive.hold_down_until == pair.now
    pair.beats("---")  # a real death, at once after
    assert pair.api_moves == 1


def test_a_peer_that_never_comes_up_is_taken_over_after_the_hold_down():
    pair = Pair(Holder.PEER, up=False)
    pair.beats("-", int(HOLD_DOWN / INTERVAL) - 1)
    assert pair.api_moves == 0
    pair.beats("--")
    assert pair.api_moves == 1
    [(at, _)] = pair.of_type(Takeover)
    assert at == HOLD_DOWN


def test_flapping_after_takeover_moves_at_most_once_per_hold_down():
    """The peer dies, we take over, it comes back, the address is moved back to it, it flaps."""
    pair = Pair(Holder.PEER)
    pair.beats("---")
    [(first, _)] = pair.of_type(Takeover)
    pair.beats("+")
    [(_, alive)] = pair.of_type(PeerAlive)
    assert alive.hold_down_until == pair.now + HOLD_DOWN
    pair.holder = Holder.PEER  # failback
    pair.advance(API_CHECK)
    pair.beats("----+", 6)  # dies six times in 15 s; every comeback restarts the hold-down
    stats = pair.core.statistics()
    assert stats.peer_deaths == 7
    assert stats.takeovers == 1
    assert stats.takeovers_held_down == 6
    held = [e.reason for _, e in pair.of_type(TakeoverSkipped)]
    assert len(held) == 6
    assert all(reason.startswith("hold-down for ") for reason in held)
    # Dead for good: the address moves when the hold-down of the last comeback is over, without
    # waiting for a periodic reading.
    last_back = pair.now
    pair.beats("-", 30)
    [_, (second, _)] = pair.of_type(Takeover)
    assert second == last_back + HOLD_DOWN
    assert second - first >= HOLD_DOWN


def test_peer_back_during_the_reading_starts_a_hold_down():
    pair = Pair(Holder.PEER)
    pair.answer = False
    pair.beats("---")
    assert len(pair.pending) == 1
    assert pair.core.statistics().state is HaState.VERIFYING
    assert pair.core.get_timer() is None  # nothing to do until the API answers
    pair.beats("+")  # back before the API answered
    back = pair.now
    pair.core.holder_observed(Holder.PEER, pair.now)
    pair.pump()
    assert pair.core.statistics().state is HaState.WATCHING
    assert not pair.of_type(Takeover)
    assert pair.core.statistics().hold_down_until == back + HOLD_DOWN
    # Dies again right away: held down; decided again when the hold-down ends.
    pair.answer = True
    pair.beats("---")
    assert pair.core.statistics().takeovers_held_down == 1
    pair.beats("-", 30)
    [(moved, _)] = pair.of_type(Takeover)
    assert moved == back + HOLD_DOWN
    checks = [e.reason for t, e in pair.of_type(HolderCheck) if t == moved]
    assert checks == ["the peer is still dead: who holds the address?"]


def test_address_taken_by_the_peer_through_nobody_is_not_snatched_back_at_once():
    """The move seen half done (the EIP between the ENIs), then done: taken all the same."""
    pair = Pair(Holder.OURS)
    pair.beats("+")
    pair.holder = Holder.NOBODY
    pair.advance(API_CHECK)
    pair.holder = Holder.PEER
    pair.advance(API_CHECK)
    stats = pair.core.statistics()
    assert stats.taken_by_peer == 1
    assert stats.hold_down_until is not None
    pair.beats("---")
    assert pair.api_moves == 0
    assert pair.core.statistics().takeovers_held_down == 1


def test_address_taken_by_the_peer_is_not_snatched_back_at_once():
    """A partition: the peer cannot hear us, takes the address; we cannot hear it either."""
    pair = Pair(Holder.OURS)
    pair.beats("+")
    pair.holder = Holder.PEER
    pair.advance(API_CHECK)
    taken_at = pair.now - (pair.now % API_CHECK)
    [(_, changed)] = [(t, e) for t, e in pair.of_type(HolderChanged) if e.before is Holder.OURS]
    assert changed.after is Holder.PEER
    stats = pair.core.statistics()
    assert stats.taken_by_peer == 1
    assert stats.hold_down_until == taken_at + HOLD_DOWN
    pair.beats("---")
    assert pair.api_moves == 0
    assert pair.core.statistics().takeovers_held_down == 1
    pair.beats("-", 20)
    assert pair.api_moves == 1


@settings(max_examples=200, deadline=None)
@given(
    beats=st.lists(st.booleans(), max_size=300),
    failback=st.booleans(),
)
def test_takeovers_are_spaced_by_the_hold_down_and_need_a_dead_peer(
    beats: list[bool], failback: bool
):
    """Any heartbeat sequence; with ``failback`` the address returns to the peer after every
    takeover (the worst case: every death could move it)."""
    pair = Pair(Holder.PEER)
    times: list[float] = []
    for ok in beats:
        pair.beat(ok)
        moves = [t for t, _ in pair.of_type(Takeover)]  # Pair.pump checks the peer was dead
        if len(moves) > len(times):
            times = moves
            if failback:
                pair.holder = Holder.PEER
    assert all(b - a >= HOLD_DOWN for a, b in itertools.pairwise(times))
    if not failback:
        assert len(times) <= 1


# --- the EC2 API failing ---------------------------------------------------------------------


def test_api_failures_are_retried_after_the_check_interval():
    pair = Pair(Holder.PEER)
    pair.answer = False
    pair.beats("---")
    dead_at = pair.now
    pair.pending.clear()
    pair.core.holder_check_failed(pair.now, "EndpointConnectionError")
    pair.pump()
    [(_, skipped)] = pair.of_type(TakeoverSkipped)
    assert "cannot read who holds the address" in skipped.reason
    assert pair.core.get_timer() == dead_at + API_CHECK
    pair.beats("-", 10)
    [check] = pair.pending
    assert isinstance(check, HolderCheck)
    pair.pending.clear()
    pair.core.holder_observed(Holder.PEER, pair.now)
    pair.pump()
    [move] = pair.pending
    assert isinstance(move, Takeover)
    pair.pending.clear()
    failed_at = pair.now
    pair.core.takeover_failed(pair.now, "UnauthorizedOperation")
    stats = pair.core.statistics()
    assert (stats.takeover_failures, stats.takeovers, stats.holder) == (1, 0, None)
    assert pair.core.get_timer() == failed_at + API_CHECK
    pair.answer = True
    pair.beats("-", 10)
    stats = pair.core.statistics()
    assert (stats.takeover_failures, stats.takeovers, stats.api_errors) == (1, 1, 1)


def test_takeover_declined_by_the_last_reading_is_not_a_takeover():
    pair = Pair(Holder.PEER)
    pair.answer = False
    pair.beats("---")
    pair.core.holder_observed(Holder.PEER, pair.now)
    pair.pump()
    assert pair.core.statistics().state is HaState.TAKING_OVER
    pair.core.takeover_declined(Holder.OURS, pair.now)
    stats = pair.core.statistics()
    assert (stats.takeovers, stats.takeovers_skipped, stats.holder) == (0, 1, Holder.OURS)
    assert stats.state is HaState.PEER_DEAD


def test_peer_back_during_takeover_leaves_it_running():
    pair = Pair(Holder.PEER)
    pair.answer = False
    pair.beats("---")
    pair.core.holder_observed(Holder.PEER, pair.now)
    pair.beats("+")
    assert pair.core.statistics().state is HaState.TAKING_OVER
    pair.core.takeover_succeeded(pair.now, 0.05)
    assert pair.core.statistics().state is HaState.WATCHING
    assert pair.core.statistics().takeovers == 1


# --- misuse ----------------------------------------------------------------------------------


def test_out_of_order_calls_raise_and_change_nothing():
    core = HaCore(0.0, dead_after=3, hold_down=1.0, api_check_interval=1.0)
    with pytest.raises(HaStateError, match="takeover_succeeded"):
        core.takeover_succeeded(0.0, 0.1)
    core.handle_timer(0.0)  # asks for a reading
    core.holder_observed(Holder.PEER, 0.0)
    with pytest.raises(HaStateError, match="without a HolderCheck"):
        core.holder_observed(Holder.PEER, 0.1)
    stats = core.statistics()
    assert (stats.takeovers, stats.api_checks, stats.state) == (0, 1, HaState.WATCHING)


@pytest.mark.parametrize(
    "settings_",
    [
        {"dead_after": 0, "hold_down": 1.0, "api_check_interval": 1.0},
        {"dead_after": 3, "hold_down": -1.0, "api_check_interval": 1.0},
        {"dead_after": 3, "hold_down": 1.0, "api_check_interval": 0.0},
    ],
)
def test_bad_settings_are_refused(settings_: dict[str, float]):
    with pytest.raises(ValueError, match="must"):
        HaCore(0.0, **settings_)  # type: ignore[arg-type]


GOOD_CONFIG = {
    "region": "us-west-2",
    "own_eni_id": "eni-a",
    "peer_eni_id": "eni-b",
    "floating_private_ip": "10.0.1.100",
    "allocation_id": "eipalloc-1",
    "peer_grpc_target": "10.0.1.11:7000",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peer_eni_id": "eni-a"}, "both"),
        ({"floating_private_ip": "10.0.1"}, "does not appear to be an IPv4 or IPv6 address"),
        ({"peer_grpc_target": "10.0.1.11"}, "host:port"),
        ({"heartbeat_interval": 0.0}, "heartbeat_interval must be positive"),
        ({"api_check_interval": -1.0}, "api_check_interval must be positive"),
        ({"dead_after": 0}, "dead_after must be at least 1"),
        ({"hold_down": -0.5}, "hold_down must not be negative"),
    ],
)
def test_agent_config_is_checked(change: dict[str, object], message: str):
    HaAgentConfig(**GOOD_CONFIG)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        HaAgentConfig(**{**GOOD_CONFIG, **change})  # type: ignore[arg-type]
