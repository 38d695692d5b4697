"""Events for the NOC (overlay.noc._events): their kinds and one-line summaries, and a hub
that numbers them, filters them per watcher and drops a watcher that falls behind."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from overlay.linkstate import LinkMetrics
from overlay.noc import (
    KINDS,
    CallFailed,
    CallFailedOver,
    DrainChanged,
    Event,
    FaultInjected,
    FaultsCleared,
    LinkChanged,
    LinkOverride,
    OverrideCleared,
    OverrideSet,
    RouteChanged,
    SourcesUnblocked,
    TrunkChanged,
    kind,
    summary,
)
from overlay.shell.events import EventHub, WatcherFellBehind

UP = LinkChanged("use1", True, LinkMetrics("use1", True, 68.04, 1.25, 0.012))
DOWN = LinkChanged("use2", False, LinkMetrics("use2", False))
ROUTE = RouteChanged(
    "use1", ("usw2", "use1"), ("usw2", "use2", "use1"), "link usw2→use1 down", version=7
)
OVERRIDE = LinkOverride("use1", 500.0, False, 2000.0, "olga", "fibre work")


@pytest.mark.parametrize(
    ("event", "name", "line"),
    [
        (UP, "LINK_UP", "link to use1 up (rtt 68.0 ms, loss 1.2%, jitter 1.2 ms)"),
        (DOWN, "LINK_DOWN", "link to use2 down"),
        (ROUTE, "ROUTE_CHANGE", "route to use1: usw2→use1 ⇒ usw2→use2→use1 (link usw2→use1 down)"),
        (
            RouteChanged("use2", ("usw2", "use2"), None, "unreachable (no path)", 8),
            "ROUTE_CHANGE",
            "route to use2: usw2→use2 ⇒ unreachable (no path)",
        ),
        (
            CallFailed("c1@h", "use1", 503, "No Route to Egress"),
            "CALL_FAILED",
            "call c1@h failed: 503 No Route to Egress",
        ),
        (
            FaultInjected("*", blackhole=True),
            "FAULT_INJECTED",
            "fault toward every peer: blackhole",
        ),
        (
            FaultInjected("use1", delay_ms=30, jitter_ms=5, loss_ratio=0.01),
            "FAULT_INJECTED",
            "fault toward use1: +30 ms, jitter 5 ms, loss 1.0%",
        ),
        (FaultsCleared("", 2), "FAULTS_CLEARED", "2 fault(s) cleared toward every peer"),
        (DrainChanged(True, "maintenance"), "DRAIN", "draining: maintenance"),
        (DrainChanged(False, ""), "UNDRAIN", "no longer draining"),
        (
            OverrideSet(OVERRIDE),
            "LINK_OVERRIDE_SET",
            "link to use1 admin cost 500 ms by override: fibre work",
        ),
        (
            OverrideCleared(OVERRIDE, expired=True),
            "LINK_OVERRIDE_CLEARED",
            "override of the link to use1 (admin cost 500 ms) expired",
        ),
        (
            CallFailedOver("c1@h", "use1-a", "use1-b", "no answer", 2),
            "CALL_FAILED_OVER",
            "call c1@h failed over from use1-a to use1-b (no answer, attempt 2)",
        ),
        (
            SourcesUnblocked("*", ("192.0.2.66", "2001:db8::/64")),
            "SOURCES_UNBLOCKED",
            "unblocked every blocked source: 2 block(s) lifted",
        ),
        (
            TrunkChanged("udp:192.0.2.7:5060", ("sip:carrier.example",), True, 12.34, 200, 8.0),
            "TRUNK_UP",
            "trunk udp:192.0.2.7:5060 (sip:carrier.example) up (rtt 12.3 ms)",
        ),
        (
            TrunkChanged("udp:192.0.2.7:5060", ("sip:carrier.example",), False, 12.3, 200, 1003),
            "TRUNK_DOWN",
            "trunk udp:192.0.2.7:5060 (sip:carrier.example) down: silent 1.0 s, last 200",
        ),
        (
            TrunkChanged("tcp:192.0.2.8:5060", (), False, 0.0, 0, None),
            "TRUNK_DOWN",
            "trunk tcp:192.0.2.8:5060 down: never answered",
        ),
        (
            TrunkChanged("udp:192.0.2.9:5060", ("192.0.2.9:5060",), False, 0.0, 408, None),
            "TRUNK_DOWN",
            "trunk udp:192.0.2.9:5060 (192.0.2.9:5060) down: last 408",
        ),
    ],
)
def test_kind_and_summary(event: Event, name: str, line: str):
    assert kind(event) == name
    assert name in KINDS
    assert summary(event).startswith(line)


@pytest.mark.trio
async def test_hub_numbers_stamps_and_filters():
    hub = EventHub("usw2", clock=lambda: 1234.5)
    with hub.watch() as everything, hub.watch(["LINK_DOWN", "ROUTE_CHANGE"]) as some:
        assert hub.watchers == 2
        hub.publish(UP)
        hub.publish(DOWN)
        hub.publish(DrainChanged(True, "x"), by="olga")
        hub.publish(ROUTE)
        got = [await everything.receive() for _ in range(4)]
        assert [item.seq for item in got] == [1, 2, 3, 4]
        assert {(item.node_id, item.time) for item in got} == {("usw2", 1234.5)}
        assert got[2].by == "olga"
        assert [(await some.receive()).event for _ in range(2)] == [DOWN, ROUTE]
    assert hub.watchers == 0
    assert hub.published == 4


@pytest.mark.trio
async def test_watcher_that_falls_behind_is_dropped_without_holding_up_others():
    hub = EventHub("usw2", buffer=3)
    with hub.watch() as slow, hub.watch(["DRAIN"]) as other:
        for _ in range(4):
            hub.publish(UP)
        hub.publish(DrainChanged(True, ""))
        assert hub.dropped_watchers == 1
        assert [(await slow.receive()).seq for _ in range(3)] == [1, 2, 3]  # what it had
        with pytest.raises(WatcherFellBehind, match="more than 3 events behind"):
            await slow.receive()
        assert (await other.receive()).seq == 5


@pytest.mark.trio
async def test_watch_waits_for_the_next_event(autojump_clock: trio.testing.MockClock):
    hub = EventHub("usw2")
    with hub.watch() as watcher:
        with trio.move_on_after(60) as scope:
            await watcher.receive()
        assert scope.cancelled_caught
        hub.publish(DOWN)
        assert (await watcher.receive()).event == DOWN


def test_unknown_kinds_are_refused():
    with (
        pytest.raises(ValueError, match="unknown event kinds: LINK_SIDEWAYS"),
        EventHub("x").watch(["LINK_SIDEWAYS"]),
    ):
        pass
