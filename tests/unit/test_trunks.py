"""TrunkHealth: OPTIONS probes to trunks, their verdicts and the order of next hops, driven by a
hand-set `now` (sans-IO, STYLE.md §5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from overlay.config import TrunksSection
from overlay.linkstate import LinkState
from overlay.routing import TrunkHealth, TrunkStateChanged, trunk_name
from overlay.sip import (
    Listener,
    Peer,
    Request,
    make_response,
    parse_message_untrusted,
    serialize,
    steering_owner,
)

CONFIG = TrunksSection()  # 0.25 s x 4: down after 1.0 s of silence, hold-down 5 s
INTERVAL = CONFIG.probe_interval
DETECTION = CONFIG.detection_time
RTT = 0.02
LISTENERS = (Listener("udp", "127.0.0.1", 5060), Listener("tcp", "127.0.0.1", 5060))
A = Peer("udp", "127.0.1.1", 5060)
B = Peer("udp", "127.0.1.2", 5060)
C = Peer("udp", "127.0.1.3", 5070)

#: How a simulated trunk answers the probe sent at ``now``: a status, or ``None`` (silence).
Answer = Callable[[Peer, float], int | None]


def health(config: TrunksSection = CONFIG, **kwargs: int) -> TrunkHealth:
    return TrunkHealth(
        "usw2-a", config, listeners=LISTENERS, user_agent="overlay/test", now=0.0, **kwargs
    )


def answer_bytes(probe: bytes, status: int) -> bytes:
    request = parse_message_untrusted(probe)
    assert isinstance(request, Request)
    return serialize(make_response(request, status, to_tag="trunk"))


@dataclass
class Run:
    """A TrunkHealth driven through its own timer, with trunks that answer after ``RTT``."""

    trunks: TrunkHealth
    answer: Answer
    now: float = 0.0
    changes: list[tuple[float, Peer, LinkState]] = field(default_factory=list)
    _pending: list[tuple[float, bytes, Peer]] = field(default_factory=list)

    def until(self, end: float) -> None:
        trunks = self.trunks
        while True:
            timer = trunks.get_timer()
            due = [at for at, _, _ in self._pending]
            if timer is not None:
                due.append(timer)
            if not due or min(due) > end:
                self.now = end
                return
            self.now = now = min(due)
            for item in [p for p in self._pending if p[0] <= now]:
                self._pending.remove(item)
                assert trunks.receive_answer_untrusted(item[1], item[2], now)
            trunks.handle_timer(now)
            for data, peer in trunks.datagrams_to_send(now):
                status = self.answer(peer, now)
                if status is not None:
                    self._pending.append((now + RTT, answer_bytes(data, status), peer))
            while (event := trunks.next_event()) is not None:
                self.changes.append((now, event.statistics.trunk, event.statistics.state))

    def first(self, peer: Peer, state: LinkState, *, after: float = 0.0) -> float:
        return next(t for t, p, s in self.changes if p == peer and s is state and t >= after)


def answering(status: int = 200, *, silent: Sequence[tuple[float, float]] = ()) -> Answer:
    """Answers ``status``, except to probes sent within one of the ``silent`` intervals."""

    def answer(peer: Peer, now: float) -> int | None:
        return None if any(a <= now < b for a, b in silent) else status

    return answer


def started(answer: Answer, *peers: Peer, config: TrunksSection = CONFIG) -> Run:
    trunks = health(config)
    trunks.set_trunks({"sip:carrier.example": peers}, 0.0)
    return Run(trunks, answer)


# -- up and down ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "silent_from"),
    [
        ("never answers", 0.0),
        ("falls silent once up", 3.0),
        ("falls silent between probes", 3.1),
    ],
)
def test_down_within_the_detection_time(case: str, silent_from: float) -> None:
    run = started(answering(silent=[(silent_from, 99.0)]), A)
    run.until(silent_from + DETECTION + 2 * INTERVAL)
    down = run.first(A, LinkState.DOWN)
    assert silent_from + DETECTION - INTERVAL <= down <= silent_from + DETECTION + INTERVAL, case
    assert run.trunks.order([A, B], down) == [B, A]


def test_a_new_trunk_is_up_after_multiplier_answers() -> None:
    run = started(answering(), A)
    run.until(2.0)
    # Probes at 0, 0.25, 0.5 and 0.75, each answered RTT later.
    assert run.changes == [(pytest.approx(3 * INTERVAL + RTT), A, LinkState.UP)]
    (stats,) = run.trunks.statistics(run.now)
    assert (stats.state, stats.last_status, stats.targets) == (
        LinkState.UP,
        200,
        ("sip:carrier.example",),
    )
    assert stats.rtt_ms == pytest.approx(RTT * 1e3)
    assert stats.probes_sent == 9
    assert stats.loss_ratio == 0.0


@pytest.mark.parametrize(
    ("case", "silent", "ever_up"),
    [
        ("was up: healthy for hold_down", (3.0, 5.0), True),
        ("never up: multiplier answers in a row", (0.0, 5.0), False),
    ],
)
def test_back_up_after_hold_down(case: str, silent: tuple[float, float], ever_up: bool) -> None:
    run = started(answering(silent=[silent]), A)
    run.until(20.0)
    resumed = silent[1] + RTT  # the first answer after the silence
    down = run.first(A, LinkState.DOWN)
    up = run.first(A, LinkState.UP, after=down)
    wait = CONFIG.hold_down if ever_up else (CONFIG.probe_multiplier - 1) * INTERVAL
    assert resumed + wait - INTERVAL <= up <= resumed + wait + INTERVAL, case
    # DOWN all along in between: no flap back while it proves itself.
    assert [s for t, _, s in run.changes if down < t < up] == []
    again = started(answering(silent=[silent]), A)  # the same, stopped just before
    again.until(up - 0.001)
    assert again.trunks.order([A, B], again.now) == [B, A]
    again.until(up)
    assert again.trunks.order([A, B], again.now) == [A, B]


def test_a_short_gap_is_not_down() -> None:
    run = started(answering(silent=[(3.0, 3.6)]), A)  # two probes unanswered: 0.85 s quiet
    run.until(10.0)
    assert [s for _, _, s in run.changes] == [LinkState.UP]
    (stats,) = run.trunks.statistics(run.now)
    assert stats.probes_lost == 3  # 3.0, 3.25, 3.5
    assert stats.loss_ratio > 0


# -- what counts as alive ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reply_codes", "alive"),
    [
        (200, (), True),
        (404, (), True),  # a live stack that does not know the URI
        (405, (), True),
        (483, (), True),
        (503, (), True),
        (408, (), False),  # a proxy in front of a dead trunk makes one itself
        (404, (200,), False),
        (404, (200, 404), True),
        (200, (404,), False),
        (100, (), False),  # provisional: not an answer yet
        (180, (), False),
    ],
)
def test_which_answers_prove_a_trunk_alive(
    status: int, reply_codes: tuple[int, ...], alive: bool
) -> None:
    config = TrunksSection(reply_codes=reply_codes)
    run = started(answering(status), A, config=config)
    run.until(3.0)
    expected = LinkState.UP if alive else LinkState.DOWN
    assert [s for _, _, s in run.changes] == [expected]
    (stats,) = run.trunks.statistics(run.now)
    assert stats.last_status == (0 if status < 200 else status)
    if not alive and status >= 200:
        assert run.trunks.counters()["trunks.answers_not_alive"] > 0


# -- order ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "down", "given", "ordered", "all_down"),
    [
        ("none down", set(), [A, B, C], [A, B, C], 0),
        ("first down", {A}, [A, B, C], [B, C, A], 0),
        ("two down keep their order", {A, B}, [A, B, C], [C, A, B], 0),
        ("middle down", {B}, [A, B, C], [A, C, B], 0),
        ("all down: unchanged", {A, B, C}, [A, B, C], [A, B, C], 1),
        ("all down, another order", {A, B, C}, [C, A, B], [C, A, B], 1),
        ("unknown peers are not down", {A}, [A, Peer("udp", "127.0.9.9", 5060)], None, 0),
    ],
)
def test_order(
    case: str,
    down: set[Peer],
    given: list[Peer],
    ordered: list[Peer] | None,
    all_down: int,
) -> None:
    run = started(lambda peer, now: None if peer in down else 200, A, B, C)
    run.until(3.0)
    result = run.trunks.order(given, run.now)
    assert result == (ordered or [*given[1:], given[0]]), case
    assert sorted(result) == sorted(given)  # never drops one
    assert run.trunks.counters()["trunks.all_down_tried"] == all_down


def test_order_applies_silence_before_the_timer_runs() -> None:
    # The proxy may ask between two timer runs: a trunk silent past the detection time is
    # already down for it.
    run = started(answering(silent=[(3.0, 99.0)]), A, B)
    run.until(3.0)
    trunks = run.trunks
    assert trunks.order([A, B], 3.5) == [A, B]
    assert trunks.order([A, B], 2.77 + DETECTION + 0.01) == [A, B]  # both fell silent
    assert trunks.counters()["trunks.all_down_tried"] == 1


# -- the probes on the wire -------------------------------------------------------------------


def test_probe_is_an_rfc3261_options() -> None:
    trunks = health(first_probe=41)
    tcp = Peer("tcp", "::1", 5070)
    trunks.set_trunks({"sip:carrier.example": [A], "[::1]:5070": [tcp]}, 0.0)
    datagrams = dict((peer, data) for data, peer in trunks.datagrams_to_send(0.0))
    request = parse_message_untrusted(datagrams[A])
    assert isinstance(request, Request)
    assert request.method == "OPTIONS"
    assert str(request.uri) == "sip:127.0.1.1:5060"
    assert request.call_id == "ovltrunk.usw2-a.41"
    assert request.headers.get("Max-Forwards") == "70"
    assert request.headers.get("Via") == (
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.ovltrunk.41;rport"
    )
    assert request.headers.get("From") == "<sip:usw2-a@127.0.0.1:5060>;tag=ovltrunk.41"
    assert request.headers.get("To") == "<sip:127.0.1.1:5060>"
    assert request.headers.get("CSeq") == "1 OPTIONS"
    assert request.headers.get("User-Agent") == "overlay/test"
    assert request.headers.get("Accept") == "application/sdp"
    over_tcp = parse_message_untrusted(datagrams[tcp])
    assert isinstance(over_tcp, Request)
    assert str(over_tcp.uri) == "sip:[::1]:5070;transport=tcp"
    assert str(over_tcp.headers.get("Via")).startswith("SIP/2.0/TCP 127.0.0.1:5060;")
    assert over_tcp.call_id == "ovltrunk.usw2-a.42"


def test_via_names_the_advertised_address() -> None:
    listeners = [Listener("udp", "127.0.0.5", 5060, advertise="198.51.100.7")]
    trunks = TrunkHealth(
        "usw2-a", CONFIG, listeners=listeners, user_agent="overlay", now=0.0, first_probe=1
    )
    trunks.set_trunks({"t": [A]}, 0.0)
    ((data, _),) = trunks.datagrams_to_send(0.0)
    assert b"Via: SIP/2.0/UDP 198.51.100.7:5060;" in data


def test_a_trunk_without_a_listener_of_its_transport_is_not_probed() -> None:
    trunks = health()
    tls = Peer("tls", "127.0.1.9", 5061)
    trunks.set_trunks({"sips:carrier.example": [tls]}, 0.0)
    assert trunks.datagrams_to_send(0.0) == []
    trunks.handle_timer(5.0)
    assert trunks.order([tls, A], 5.0) == [tls, A]  # INIT: not known to be down
    assert trunks.counters()["trunks.unprobed"] == 1


@pytest.mark.parametrize(("worker", "workers"), [(0, 3), (1, 3), (2, 3), (1, 2)])
def test_each_worker_probes_with_call_ids_steered_to_itself(worker: int, workers: int) -> None:
    trunks = health(worker=worker, workers=workers)
    trunks.set_trunks({"t": [A, B, C]}, 0.0)
    numbers = []
    for step in range(5):
        for data, _ in trunks.datagrams_to_send(step * INTERVAL):
            assert steering_owner(data, workers) == worker
            numbers.append(int(data.split(b"Call-ID: ovltrunk.usw2-a.")[1].split(b"\r")[0]))
    assert len(numbers) == len(set(numbers)) == 15


# -- answers that are not, or not ours --------------------------------------------------------


def test_answers_not_for_it_are_left_to_the_sip_core() -> None:
    trunks = health()
    trunks.set_trunks({"t": [A]}, 0.0)
    ((probe, _),) = trunks.datagrams_to_send(0.0)
    other_node = answer_bytes(probe.replace(b"ovltrunk.usw2-a.", b"ovltrunk.use1-a."), 200)
    assert not trunks.receive_answer_untrusted(other_node, A, 0.01)
    assert not trunks.receive_answer_untrusted(probe, A, 0.01)  # a request: the core answers
    assert not trunks.receive_answer_untrusted(b"ovltrunk. garbage", A, 0.01)
    assert trunks.counters()["trunks.answers"] == 0


@pytest.mark.parametrize(
    ("case", "mangle", "source", "late"),
    [
        ("from another host", None, Peer("udp", "127.0.1.66", 5060), 0.0),
        ("from another port", None, Peer("udp", "127.0.1.1", 5999), 0.0),
        ("no probe of that number", b"ovltrunk.usw2-a.999", A, 0.0),
        ("not a number", b"ovltrunk.usw2-a.x1", A, 0.0),
        ("long after the probe", None, A, 10.0),
    ],
)
def test_stray_answers_are_consumed_and_counted(
    case: str, mangle: bytes | None, source: Peer, late: float
) -> None:
    trunks = health()
    trunks.set_trunks({"t": [A]}, 0.0)
    ((probe, _),) = trunks.datagrams_to_send(0.0)
    if mangle is not None:
        probe = probe.replace(b"ovltrunk.usw2-a.1", mangle)
    trunks.handle_timer(late)
    assert trunks.receive_answer_untrusted(answer_bytes(probe, 200), source, 0.02 + late)
    counters = trunks.counters()
    if case == "from another port":  # a server may answer from another socket (§18.2.2)
        assert counters["trunks.stray_answers"] == 0
        return
    assert counters["trunks.stray_answers"] == 1, case
    (stats,) = trunks.statistics(late)
    assert stats.probes_answered == 0


def test_a_duplicate_answer_counts_once() -> None:
    trunks = health()
    trunks.set_trunks({"t": [A]}, 0.0)
    ((probe, _),) = trunks.datagrams_to_send(0.0)
    for _ in range(2):
        trunks.receive_answer_untrusted(answer_bytes(probe, 200), A, 0.02)
    (stats,) = trunks.statistics(0.02)
    assert stats.probes_answered == 1


# -- the set of trunks ------------------------------------------------------------------------


def test_set_trunks_keeps_known_trunks_and_forgets_the_others() -> None:
    run = started(answering(), A, B)
    run.until(2.0)
    trunks = run.trunks
    trunks.set_trunks({"sip:carrier.example": [B, C], "127.0.1.2:5060": [B]}, 2.0)
    assert trunks.trunks == [B, C]
    by_peer = {s.trunk: s for s in trunks.statistics(2.0)}
    assert by_peer[B].state is LinkState.UP
    assert by_peer[B].targets == ("127.0.1.2:5060", "sip:carrier.example")
    assert by_peer[C].state is LinkState.INIT
    # The new trunk is probed at once, not at the next round.
    assert [peer for _, peer in trunks.datagrams_to_send(2.0)] == [B, C]


def test_no_trunks_no_timer() -> None:
    trunks = health()
    assert trunks.get_timer() is None
    trunks.set_trunks({"t": [A]}, 1.0)
    timer = trunks.get_timer()
    assert timer is not None
    assert timer <= 1.0  # due at once


def test_timer_is_the_next_probe_or_the_silence_deadline() -> None:
    trunks = health()
    trunks.set_trunks({"t": [A]}, 0.0)
    trunks.datagrams_to_send(0.0)
    assert trunks.get_timer() == INTERVAL
    # With the probe schedule left aside, the timer still wakes at the silence deadline.
    trunks._next_probe = 99.0
    assert trunks.get_timer() == DETECTION
    trunks.handle_timer(DETECTION)
    event = trunks.next_event()
    assert isinstance(event, TrunkStateChanged)
    assert (event.previous, event.statistics.state) == (LinkState.INIT, LinkState.DOWN)
    assert trunks.get_timer() == 99.0


def test_trunk_name() -> None:
    assert trunk_name(A) == "udp:127.0.1.1:5060"
    assert trunk_name(Peer("tls", "2001:db8::1", 5061)) == "tls:[2001:db8::1]:5061"
