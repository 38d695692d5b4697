"""LinkMonitor: RTT/jitter/loss estimation and BFD-like up/down, driven by hand-set `now`."""

from __future__ import annotations

import pytest

from overlay.linkstate import LinkMonitor, LinkState, ProbeConfig

CONFIG = ProbeConfig(interval=0.1, multiplier=3, hold_down=2.0, probe_timeout=1.0, loss_window=10)


def run_probes(
    monitor: LinkMonitor,
    start: float,
    count: int,
    *,
    rtt: float = 0.05,
    lost: set[int] = frozenset(),
) -> tuple[float, list[LinkState]]:
    """Send `count` probes every interval from `start`; answer all but the indexes in `lost`.

    Returns the time after the last step and the state changes seen, in order.
    """
    changes: list[LinkState] = []
    now = start
    for i in range(count):
        seq = monitor.next_probe(now)
        if i not in lost:
            change = monitor.probe_answered(seq, now + rtt)
            if change is not None:
                changes.append(change)
        now += CONFIG.interval
        change = monitor.handle_timer(now)
        if change is not None:
            changes.append(change)
    return now, changes


def test_new_link_comes_up_after_multiplier_answers():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    assert monitor.state is LinkState.INIT
    _, changes = run_probes(monitor, 0.0, 3)
    assert changes == [LinkState.UP]
    assert monitor.metrics(1.0).up


def test_rtt_is_smoothed_and_jitter_follows_variation():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    run_probes(monitor, 0.0, 50, rtt=0.068)
    metrics = monitor.metrics(10.0)
    assert metrics.rtt_ms == pytest.approx(68.0, abs=0.01)
    assert metrics.jitter_ms == pytest.approx(0.0, abs=0.01)
    # A step to 168 ms moves the smoothed RTT most of the way within a second (10 probes).
    now, _ = run_probes(monitor, 5.0, 10, rtt=0.168)
    assert 130.0 < monitor.metrics(now).rtt_ms < 168.0
    # Alternating samples make jitter grow towards their difference.
    now = 10.0
    for i in range(100):
        seq = monitor.next_probe(now)
        monitor.probe_answered(seq, now + (0.05 if i % 2 else 0.07))
        now += 0.1
    assert monitor.metrics(now).jitter_ms == pytest.approx(20.0, rel=0.1)


def test_loss_counts_probes_unanswered_within_timeout():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 3)
    now, _ = run_probes(monitor, now, 10, lost={2, 5})
    # The last losses are known only after probe_timeout.
    monitor.handle_timer(now + CONFIG.probe_timeout)
    assert monitor.metrics(now).loss_ratio == pytest.approx(0.2)
    assert monitor.statistics(0.0).probes_lost == 2
    assert monitor.statistics(0.0).probes_answered == 11


def test_late_answer_still_counts_when_within_timeout():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    seq = monitor.next_probe(0.0)
    monitor.probe_answered(seq, 0.9)
    assert monitor.metrics(1.0).loss_ratio == 0.0
    assert monitor.metrics(1.0).rtt_ms == pytest.approx(900.0)


def test_link_goes_down_after_detection_time_of_silence():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    last_heard = now - CONFIG.interval + 0.05
    assert monitor.state is LinkState.UP
    deadline = monitor.get_timer()
    assert deadline == pytest.approx(last_heard + CONFIG.detection_time)
    assert monitor.handle_timer(deadline - 0.001) is None
    assert monitor.handle_timer(deadline + 0.001) is LinkState.DOWN
    assert not monitor.metrics(deadline).up


def test_two_misses_do_not_bring_the_link_down():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    _, changes = run_probes(monitor, 0.0, 20, lost={10, 11})
    assert changes == [LinkState.UP]


def test_down_link_needs_hold_down_of_health_to_come_back():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    now, changes = run_probes(monitor, now, 10, lost=set(range(10)))
    assert changes == [LinkState.DOWN]
    # Answers again: stays DOWN for hold_down, then UP.
    start = now
    now, changes = run_probes(monitor, now, 19)
    assert changes == []
    assert monitor.state is LinkState.DOWN
    now, changes = run_probes(monitor, now, 3)
    assert changes == [LinkState.UP]
    assert now - start >= CONFIG.hold_down


def test_flapping_link_stays_down():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    # 4 answered, 4 lost, repeatedly: never healthy for the 2 s hold-down.
    lost = {i for i in range(80) if i % 8 >= 4}
    _, changes = run_probes(monitor, now, 80, lost=lost)
    assert changes == [LinkState.DOWN]


def test_answer_after_long_silence_reports_down_first():
    """If the timer did not run during the silence, the answer itself ends the UP period."""
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    seq = monitor.next_probe(now + 5.0)
    assert monitor.probe_answered(seq, now + 5.05) is LinkState.DOWN


def test_unknown_answer_proves_liveness_without_rtt_sample():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    assert monitor.probe_answered(999, 0.1) is None
    assert monitor.statistics(0.0).probes_answered == 0
    assert monitor.metrics(0.1).rtt_ms == 0.0


def test_retransmission_ratio_over_window():
    monitor = LinkMonitor("b", CONFIG, 0.0, admin_cost=7.0)
    monitor.record_traffic(100, 5, 1.0)
    monitor.record_traffic(100, 15, 5.0)
    assert monitor.metrics(5.0).retrans_ratio == pytest.approx(0.1)
    # The first report leaves the 10 s window.
    assert monitor.metrics(11.5).retrans_ratio == pytest.approx(0.15)
    assert monitor.metrics(20.0).retrans_ratio == 0.0
    assert monitor.metrics(20.0).admin_cost == 7.0


def test_statistics_snapshot():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    run_probes(monitor, 0.0, 4)
    stats = monitor.statistics(1.0)
    assert stats.neighbor == "b"
    assert stats.state is LinkState.UP
    assert stats.probes_sent == 4
    assert stats.probes_answered == 4


def test_probes_lost_before_the_link_came_up_do_not_count_as_loss():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 10, lost=set(range(7)))  # the peer was still starting
    now, _ = run_probes(monitor, now, 10)  # the early probes expire meanwhile
    assert monitor.state is LinkState.UP
    assert monitor.statistics(0.0).probes_lost == 7
    assert monitor.metrics(now).loss_ratio == 0.0


def run_echoes(
    monitor: LinkMonitor, start: float, count: int, *, rtt: float, answered: bool
) -> float:
    """Send `count` media echoes every interval from `start`, answered after `rtt` or never."""
    now = start
    for _ in range(count):
        seq = monitor.next_echo(now)
        if answered:
            monitor.echo_answered(seq, now + rtt)
        now += CONFIG.interval
        monitor.handle_timer(now)
    return now


def test_a_dead_media_path_shows_as_loss_but_does_not_take_the_link_down():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    assert monitor.state is LinkState.UP
    # Signalling probes keep being answered; the neighbour's relay answers no echo.
    for _ in range(20):
        seq = monitor.next_probe(now)
        monitor.probe_answered(seq, now + 0.05)
        monitor.next_echo(now)
        now += CONFIG.interval
        assert monitor.handle_timer(now) is None
    metrics = monitor.metrics(now)
    assert metrics.up
    assert metrics.loss_ratio == 1.0  # the worse of the two paths: calls' audio would be lost
    stats = monitor.statistics(now)
    assert stats.media is not None
    assert stats.media.loss_ratio == 1.0
    assert stats.media.sent == 20
    assert stats.media.lost >= 10  # the rest are within probe_timeout: fate not known yet
    assert stats.probes_lost == 0


def test_media_echo_measures_its_own_rtt_and_jitter():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5, rtt=0.020)
    assert monitor.statistics(now).media is None  # no echo sent: no media statistics
    seq = monitor.next_echo(now)
    monitor.echo_answered(seq, now + 0.030)
    monitor.echo_answered(seq, now + 0.031)  # a duplicate gives no second sample
    for i in range(100):
        now += CONFIG.interval
        seq = monitor.next_echo(now)
        monitor.echo_answered(seq, now + (0.030 if i % 2 else 0.040))
    stats = monitor.statistics(now)
    assert stats.media is not None
    assert 30.0 < stats.media.rtt_ms < 40.0
    assert stats.media.jitter_ms > 5.0
    assert stats.media.loss_ratio == 0.0
    assert stats.media.answered == stats.media.sent == 101
    # The advertised jitter is the worse path's, the RTT the signalling probes'.
    assert monitor.metrics(now).jitter_ms == stats.media.jitter_ms
    assert monitor.metrics(now).rtt_ms == pytest.approx(20.0)


def test_media_loss_before_the_link_came_up_does_not_count():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now = run_echoes(monitor, 0.0, 10, rtt=0.0, answered=False)
    now, changes = run_probes(monitor, now, 3)
    assert changes == [LinkState.UP]
    now = run_echoes(monitor, now, 10, rtt=0.02, answered=True)
    assert monitor.metrics(now).loss_ratio == 0.0


def stalled_for(monitor: LinkMonitor, start: float, stall: float, *, excused: bool) -> float:
    """The node probes, then its event loop stalls for ``stall`` seconds: the peer's answer to
    the last probe waits unread until the stall ends. Returns when the stall ended."""
    seq = monitor.next_probe(start)
    end = start + stall
    if excused:
        monitor.excuse(start, end)
    change = monitor.handle_timer(end)  # the timer may run before the socket is read
    assert change is None or not excused
    monitor.probe_answered(seq, end)
    return end


def test_own_stall_does_not_take_a_healthy_link_down():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 20, rtt=0.02)
    before = monitor.metrics(now)
    end = stalled_for(monitor, now, 0.6, excused=True)
    assert monitor.state is LinkState.UP
    after = monitor.metrics(end)
    # The answer read 600 ms late is no RTT sample, and no probe counts as lost.
    assert (after.rtt_ms, after.jitter_ms, after.loss_ratio) == (
        before.rtt_ms,
        before.jitter_ms,
        0.0,
    )


def test_unexcused_stall_is_taken_for_a_dead_peer():
    """Without being told of its stall, the node would blame its neighbour: the control case."""
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 20, rtt=0.02)
    stalled_for(monitor, now, 0.6, excused=False)
    assert monitor.state is LinkState.DOWN


def test_peer_that_stays_silent_after_a_stall_is_still_detected_in_time():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 20, rtt=0.02)
    last_heard = now - CONFIG.interval + 0.02
    monitor.excuse(now, now + 0.6)  # the peer died during the stall: nothing comes after it
    end = now + 0.6
    # Detection counts the silence before and after the stall, not the stall itself.
    due = end + CONFIG.detection_time - (now - last_heard)
    t = end
    while monitor.handle_timer(t) is None:
        monitor.next_probe(t)
        t += 0.01
    assert monitor.state is LinkState.DOWN
    assert due <= t <= due + 0.011


def test_a_silent_pair_member_is_held_in_grace_then_up_at_once_when_its_standby_answers():
    monitor = LinkMonitor("pair", CONFIG, 0.0)
    monitor.grace = 4.0
    now, _ = run_probes(monitor, 0.0, 5)
    assert monitor.state is LinkState.UP
    now, changes = run_probes(monitor, now, 10, lost=set(range(10)))
    assert changes == [LinkState.GRACE]
    metrics = monitor.metrics(now)
    assert (metrics.up, metrics.grace) == (True, True)  # kept as a destination
    assert metrics.rtt_ms == pytest.approx(50.0)  # with its last metrics
    deadline = monitor.get_timer()
    assert deadline is not None
    assert deadline <= monitor.since + 4.0  # the grace's end is a timer
    # The standby holds the address: its first answer brings the link up, no hold-down.
    _, changes = run_probes(monitor, now, 1)
    assert changes == [LinkState.UP]
    assert monitor.metrics(now).loss_ratio == 0.0  # the takeover's silence is no path loss


def test_grace_runs_out_into_down():
    monitor = LinkMonitor("pair", CONFIG, 0.0)
    monitor.grace = 1.0
    now, _ = run_probes(monitor, 0.0, 5)
    start = now
    now, changes = run_probes(monitor, now, 15, lost=set(range(15)))
    assert changes == [LinkState.GRACE, LinkState.DOWN]
    assert monitor.since - start == pytest.approx(1.0 + CONFIG.detection_time, abs=0.11)
    assert not monitor.metrics(now).up


def test_without_grace_a_silent_link_goes_down_as_before():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    _, changes = run_probes(monitor, now, 5, lost=set(range(5)))
    assert changes == [LinkState.DOWN]


def test_a_standby_that_took_over_has_its_links_up_on_their_first_answer():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    monitor.up_on_first_answer = True
    _, changes = run_probes(monitor, 0.0, 1)
    assert changes == [LinkState.UP]


def test_a_link_assumed_up_at_a_takeover_goes_down_when_silent():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    monitor.assume_up(5.0)
    assert monitor.state is LinkState.UP
    assert monitor.handle_timer(5.0 + CONFIG.detection_time + 0.01) is LinkState.DOWN


def test_liveness_silence_takes_an_answering_link_down_at_once():
    # The probes still answer (a relay blackholed, or the peer's relay thread dead while its
    # SIP answers): the relay's verdict alone takes the link down, without waiting for them.
    monitor = LinkMonitor("b", CONFIG, 0.0)
    now, _ = run_probes(monitor, 0.0, 5)
    assert monitor.liveness_changed(True, now + 0.01) is LinkState.DOWN
    assert monitor.liveness_silent
    assert not monitor.metrics(now).up
    # Answers alone do not bring it back while the relay still says silent.
    now, changes = run_probes(monitor, now, 30)
    assert changes == []
    assert monitor.state is LinkState.DOWN
    # Once it says the echoes came back, the usual hold-down applies from then.
    back = now
    assert monitor.liveness_changed(False, back) is None
    now, changes = run_probes(monitor, now, 19)
    assert changes == []
    now, changes = run_probes(monitor, now, 3)
    assert changes == [LinkState.UP]
    assert monitor.since - back >= CONFIG.hold_down


def test_liveness_silence_of_a_pair_member_starts_its_grace_and_the_answer_ends_it():
    monitor = LinkMonitor("pair", CONFIG, 0.0)
    monitor.grace = 4.0
    now, _ = run_probes(monitor, 0.0, 5)
    assert monitor.liveness_changed(True, now) is LinkState.GRACE
    assert monitor.liveness_changed(False, now + 0.05) is LinkState.UP  # no hold-down


def test_liveness_that_never_stopped_changes_nothing():
    monitor = LinkMonitor("b", CONFIG, 0.0)
    assert monitor.liveness_changed(False, 0.05) is None
    _, changes = run_probes(monitor, 0.0, 3)
    assert changes == [LinkState.UP]
