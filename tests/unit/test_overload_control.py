"""overlay.security.Overload with a hand-set clock: what is shed first, what is never shed.

The first part asks ``Overload`` directly, as the proxy core would for each new request; the
second drives a ``ProxyCore`` with it as its Admission and looks at what goes on the wire.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from overlay.config import OverloadSection, SecuritySection, parse_config
from overlay.security import (
    EPISODE_QUIET,
    SHARE_STEP,
    START_TICKS,
    TICK,
    EdgeGuard,
    GuardEvent,
    Overload,
    OverloadEnded,
    OverloadStarted,
    overload_control,
    shed_class,
)
from overlay.sip import Peer, Reject, Request, Response
from tests.unit.sip_helpers import UAC, UAS, ProxyHarness, parse, request, response_to

UNKNOWN = "127.0.1.10"  # any address the configuration does not name
TARGET = "127.0.2.1"  # a static dialplan target
TRUNK = "127.0.3.7"  # inside a [[security.trunks]] network
PEER = "127.0.4.1"  # an overlay peer's SIP address
OVERLOADED = Reject(503, "Server Overloaded", 5)
T0 = 100.0
#: The receive loop's reports of how long its batches waited, one a tick, for a node whose
#: queue builds up: the floor rises from the target (0.1 s) to the backlog (0.2 s) and past.
BUILDING = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3)


def control(**changes: object) -> Overload:
    section = dataclasses.replace(OverloadSection(), **changes)  # type: ignore[arg-type]
    return Overload(
        section,
        exempt=[PEER],
        known=[TARGET],
        trunks=[ipaddress.ip_network("127.0.3.0/24")],
    )


def req(method: str = "INVITE", *, n: int = 0, **kwargs: object) -> Request:
    message = parse(request(method, branch=f"z9hG4bK-{method}-{n}", call_id=f"c{n}", **kwargs))  # type: ignore[arg-type]
    assert isinstance(message, Request)
    return message


def waits(o: Overload, reports: tuple[float, ...], start: float = T0) -> float:
    """Report one wait a tick (just past each tick's start); returns the next tick's start."""
    for n, wait in enumerate(reports):
        o.backlog(wait, start + n * TICK + 0.001)
    return start + len(reports) * TICK + 0.001


def in_episode(o: Overload, start: float = T0) -> float:
    """Bring ``o`` into an episode with a building queue; returns a time in its first tick."""
    now = waits(o, BUILDING, start) - TICK / 2
    assert o.statistics().share == SHARE_STEP, o.statistics()
    return now


def events(o: Overload) -> list[GuardEvent]:
    out = []
    while (event := o.next_event()) is not None:
        out.append(event)
    return out


# -- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "to_tag", "known", "kind"),
    [
        ("OPTIONS", None, False, "unknown"),  # unknown sources' out-of-dialog requests go first
        ("REGISTER", None, False, "unknown"),
        ("MESSAGE", None, False, "unknown"),
        ("SUBSCRIBE", None, False, "unknown"),
        ("FOO", None, False, "unknown"),
        ("INVITE", None, False, "call"),  # then new calls, from anyone
        ("INVITE", None, True, "call"),
        ("OPTIONS", None, True, None),  # a trunk's keepalive
        ("REGISTER", None, True, None),
        ("INVITE", "t", False, None),  # a re-INVITE: the call was admitted
        ("BYE", "t", False, None),
        ("ACK", "t", False, None),
        ("UPDATE", "t", True, None),
        ("ACK", None, False, None),  # the ACK of a final response this node did not send
        ("CANCEL", None, False, None),  # a CANCEL ends work
    ],
)
def test_what_is_shed(method: str, to_tag: str | None, known: bool, kind: str | None) -> None:
    assert shed_class(req(method, to_tag=to_tag), known=known) == kind


# -- when -----------------------------------------------------------------------------------


def test_nothing_is_shed_while_the_node_keeps_up() -> None:
    """However busy: a queue that empties now and then, or stands under the target."""
    o = control()
    now = T0
    for n in range(50):
        o.backlog(0.09 if n % 2 else 0.0, now)
        for method in ("INVITE", "OPTIONS", "REGISTER"):
            assert o.admit(req(method, n=n), UNKNOWN, now) is None
        now += TICK / 2
    assert events(o) == []
    assert sum(o.statistics().shed.values()) == 0


def test_a_stall_that_drains_starts_no_episode() -> None:
    """A node that stalled (a busy machine, a collector pass) comes back behind its socket and
    catches up: the wait jumps, then falls. That is not overload."""
    o = control()
    now = waits(o, (0.0, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0))
    assert o.admit(req(n=1), TRUNK, now) is None
    assert o.statistics().episodes == 0
    # One as long as twice the backlog is: T1 retransmissions are already on their way.
    waits(o, (0.45, 0.42, 0.0), now)
    assert o.statistics().episodes == 1


def test_unknown_sources_are_shed_first_then_new_calls() -> None:
    o = control()
    now = waits(o, (0.0, 0.12, 0.15))  # the floor stood at unknown_backlog (0.1) for a tick
    assert o.admit(req("OPTIONS", n=1), UNKNOWN, now) == OVERLOADED
    assert o.admit(req("REGISTER", n=2), UNKNOWN, now) == OVERLOADED
    assert o.admit(req("INVITE", n=3), UNKNOWN, now) is None  # calls still get in
    assert o.admit(req("OPTIONS", n=4), TARGET, now) is None  # known sources' keepalives
    assert o.admit(req("OPTIONS", n=5), TRUNK, now) is None
    now = waits(o, BUILDING[3:], now)  # the queue keeps building: an episode
    assert o.wait >= 0.2  # past backlog: every new call is refused, from anyone outside
    assert o.admit(req("INVITE", n=6), UNKNOWN, now) == OVERLOADED
    assert o.admit(req("INVITE", n=7), TRUNK, now) == OVERLOADED
    assert o.admit(req("INVITE", n=8), TARGET, now) == OVERLOADED
    counters = o.counters()
    assert counters["overload.shed.unknown.OPTIONS"] == 1
    assert counters["overload.shed.unknown.REGISTER"] == 1
    assert counters["overload.shed.unknown.INVITE"] == 1
    assert counters["overload.shed.known.INVITE"] == 2
    assert counters["overload.shed.known.OPTIONS"] == 0
    assert counters["overload.episodes"] == 1
    assert sum(v for k, v in counters.items() if k.startswith("overload.shed.")) == 5


def test_a_building_queue_starts_an_episode() -> None:
    """Ticks in a row with the floor rising from the target past the backlog."""
    o = control()
    now = waits(o, BUILDING[:-2])
    assert o.admit(req(n=1), TRUNK, now) is None  # past the backlog, but only just
    assert o.statistics().episodes == 0
    now = waits(o, BUILDING[-2:], now)
    assert START_TICKS == 2
    assert events(o) == [OverloadStarted(0.2)]
    assert o.admit(req(n=2), TRUNK, now) == OVERLOADED  # the wait is past the backlog


def test_an_uneven_build_up_starts_an_episode() -> None:
    """The floor need not rise every tick: over three ticks at the target or more, from the
    first to the last, up to the backlog."""
    o = control()
    waits(o, (0.0, 0.15, 0.15, 0.3, 0.22, 0.22))  # floors 0, 0.15, 0.15, 0.22, closed by the last
    assert events(o) == [OverloadStarted(0.22)]


@pytest.mark.parametrize(
    "message",
    [
        req("INVITE", to_tag="t"),
        req("BYE", to_tag="t"),
        req("ACK", to_tag="t"),
        req("UPDATE", to_tag="t"),
        req("CANCEL"),
        req("ACK"),
    ],
    ids=["re-INVITE", "BYE", "ACK", "UPDATE", "CANCEL", "ACK-out-of-dialog"],
)
def test_established_dialogs_and_cancels_are_never_shed(message: Request) -> None:
    o = control()
    now = in_episode(o)
    o.backlog(5.0, now)
    for host in (UNKNOWN, TRUNK):
        assert o.admit(message, host, now) is None  # however far behind


def test_overlay_peers_are_never_shed() -> None:
    """Link probes between nodes decide link health: a busy node must still answer them."""
    o = control()
    now = in_episode(o)
    o.backlog(5.0, now)
    for n, method in enumerate(("OPTIONS", "INVITE", "REGISTER")):
        assert o.admit(req(method, n=n), PEER, now) is None


def test_a_share_is_shed_below_the_backlog_within_an_episode() -> None:
    """Within an episode a share of new calls is refused even while the wait is short, so
    that catching up does not let a burst of calls in; all of them past the backlog."""
    o = control()
    now = in_episode(o)
    o.backlog(0.15, now)  # under the backlog: the share (1 in 20) applies
    verdicts = [o.admit(req(n=10 + n), TRUNK, now) for n in range(40)]
    assert verdicts.count(OVERLOADED) == 2
    assert OVERLOADED not in verdicts[:19]  # evenly, not first
    # Within an episode, unknown sources' requests are refused; known ones' OPTIONS not.
    assert o.admit(req("OPTIONS", n=60), UNKNOWN, now) == OVERLOADED
    assert o.admit(req("OPTIONS", n=61), TRUNK, now) is None
    o.backlog(0.2, now)
    assert all(o.admit(req(n=70 + n), TRUNK, now) == OVERLOADED for n in range(5))


def test_the_share_aims_at_the_target_wait() -> None:
    """It grows while the floor stands at the target (0.1 s) or more and does not fall,
    shrinks while it is under and does not rise, and holds while on its way back."""
    o = control()
    now = in_episode(o)
    share = o.statistics().share
    moves = []
    for wait in (0.3, 0.3, 0.32, 0.25, 0.12, 0.05, 0.02, 0.02, 0.0, 0.06, 0.08, 0.0):
        now = waits(o, (wait,), now)
        moves.append(round((o.statistics().share - share) / SHARE_STEP))
        share = o.statistics().share
    # Each tick is judged when the next one's first report comes, on its floor: the lowest of
    # the wait it started with and those reported in it. The share stops at zero.
    assert moves == [0, 1, 1, 1, 0, 0, -1, -1, -1, -1, 0, 0]


def test_one_episode_per_overload_with_its_count() -> None:
    o = control(retry_after=9)
    now = in_episode(o)
    assert events(o) == [OverloadStarted(0.2)]
    assert o.admit(req(n=1), UNKNOWN, now) == Reject(503, "Server Overloaded", 9)
    o.admit(req("OPTIONS", n=2), UNKNOWN, now)
    o.backlog(0.0, now)  # caught up
    o.handle_timer(now + 0.5)
    assert events(o) == []  # a short catch-up is not the episode's end
    now = waits(o, (0.3,), now + 0.6)
    o.admit(req(n=3), UNKNOWN, now)
    o.backlog(0.0, now)
    o.handle_timer(now + 0.5)
    assert events(o) == []
    o.handle_timer(now + EPISODE_QUIET)  # a quiet second after the last refusal
    assert events(o) == [OverloadEnded(shed=3)]
    assert o.statistics().share == 0.0
    assert o.admit(req(n=4), UNKNOWN, now + EPISODE_QUIET) is None
    o.handle_timer(now + 5.0)
    assert events(o) == []
    assert o.statistics().episodes == 1


def test_shedding_charges_no_source_in_the_guard() -> None:
    """In front of [security]'s guard: a shed INVITE takes no token from its source."""
    guard = EdgeGuard(dataclasses.replace(SecuritySection(), rate=1.0, burst=1))
    o = Overload(OverloadSection(), inner=guard)
    now = in_episode(o)
    for n in range(10):
        assert o.admit(req(n=n), UNKNOWN, now) == OVERLOADED
    o.backlog(0.0, now)
    o.handle_timer(now + EPISODE_QUIET)  # the episode is over
    now += EPISODE_QUIET
    assert o.admit(req(n=11), UNKNOWN, now) is None
    assert guard.statistics().rate_limited == 0
    # What is not shed is the guard's to judge, and its screen is the guard's.
    assert o.admit(req(n=12), UNKNOWN, now) == Reject(503, "Rate Limit Exceeded", 5)
    assert o.screen(UNKNOWN, now) is guard.screen(UNKNOWN, now)


def test_for_a_node_with_or_without_security() -> None:
    base = (
        '[node]\nnode_id = "a"\nregion = "r"\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
        f'[[dialplan]]\ntarget = "{TARGET}:5060"\n'
    )
    plain = overload_control(parse_config(base, source="node.toml"))
    assert plain is not None
    assert plain.inner is None
    now = waits(plain, (0.0, 0.15, 0.15))
    assert plain.admit(req("OPTIONS"), TARGET, now) is None  # a dialplan target is known
    assert plain.admit(req("OPTIONS"), UNKNOWN, now) == OVERLOADED
    text = base + '[security]\n[[security.trunks]]\ncidr = "127.0.3.0/24"\n'
    config = parse_config(text, source="node.toml")
    guard = EdgeGuard(SecuritySection())
    guarded = overload_control(config, guard)
    assert guarded is not None
    assert guarded.inner is guard
    now = waits(guarded, (0.0, 0.15, 0.15))
    assert guarded.admit(req("OPTIONS"), TRUNK, now) is None  # a trunk is known
    off = parse_config(base + "[overload]\nenabled = false\n", source="node.toml")
    assert overload_control(off) is None


# -- on the wire, through the proxy core ----------------------------------------------------


def harness(**changes: object) -> tuple[ProxyHarness, Overload]:
    section = dataclasses.replace(OverloadSection(), **changes)  # type: ignore[arg-type]
    o = Overload(section, known=[UAS.host])
    return ProxyHarness(admission=o), o


def statuses(out: dict[Peer, list[bytes]], peer: Peer = UAC) -> list[int]:
    parsed = [parse(data) for data in out.get(peer, [])]
    assert all(isinstance(message, Response) for message in parsed)
    return [message.status for message in parsed]  # type: ignore[union-attr]


def invite(n: int, **kwargs: object) -> bytes:
    return request("INVITE", branch=f"z9hG4bK-inv-{n}", call_id=f"call-{n}", **kwargs)  # type: ignore[arg-type]


def test_admitted_calls_complete_while_new_ones_get_503() -> None:
    h, o = harness(retry_after=7)
    out = h.send(UAC, invite(1))
    assert statuses(out) == [100]
    [at_uas] = out[UAS]
    h.now = in_episode(o, h.now)  # the node falls behind its socket, further and further
    # A retransmission of the admitted INVITE is absorbed, not refused.
    assert statuses(h.send(UAC, invite(1))) == [100]
    out = h.send(UAC, invite(2))
    [data] = out[UAC]
    refusal = parse(data)
    assert isinstance(refusal, Response)
    assert (refusal.status, refusal.reason) == (503, "Server Overloaded")
    assert refusal.headers.get("Retry-After") == "7"
    assert UAS not in out
    # Its ACK is absorbed, never routed on.
    ack = request(
        "ACK", branch="z9hG4bK-inv-2", call_id="call-2", to_tag=refusal.to_tag, cseq_method="ACK"
    )
    assert h.send(UAC, ack) == {}
    # The admitted call goes on: ringing, answer, ACK, BYE and its 200.
    assert statuses(h.send(UAS, response_to(at_uas, 180))) == [180]
    out = h.send(UAS, response_to(at_uas, 200))
    assert statuses(out) == [200]
    dialog = {
        "uri": "sip:alice@127.0.0.3:5062",
        "call_id": "call-1",
        "to_tag": "callee-tag",
        "extra": ("Route: <sip:127.0.0.1:5060;lr>",),
    }
    out = h.send(UAC, request("ACK", branch="z9hG4bK-ack-1", **dialog))  # type: ignore[arg-type]
    assert UAS in out
    out = h.send(UAC, request("BYE", branch="z9hG4bK-bye-1", cseq=2, **dialog))  # type: ignore[arg-type]
    [bye] = out[UAS]
    assert statuses(h.send(UAS, response_to(bye, 200))) == [200]
    # The callee's OPTIONS (a known source) is answered; an unknown one's is refused.
    options = request("OPTIONS", uri="sip:127.0.0.1", branch="z9hG4bK-o1", call_id="o1")
    assert statuses(h.send(UAS, options), UAS) == [200]
    stranger = Peer("udp", UNKNOWN, 5070)
    options = request("OPTIONS", uri="sip:127.0.0.1", branch="z9hG4bK-o2", call_id="o2")
    assert statuses(h.send(stranger, options), stranger) == [503]
    o.backlog(0.0, h.now)
    o.handle_timer(h.now + EPISODE_QUIET)  # the episode is over
    assert UAS in h.send(UAC, invite(3))
    assert o.counters()["overload.shed.unknown.INVITE"] == 1
    assert o.counters()["overload.shed.unknown.OPTIONS"] == 1


def test_cancel_of_a_ringing_call_goes_through() -> None:
    h, o = harness()
    out = h.send(UAC, invite(1))
    [at_uas] = out[UAS]
    h.send(UAS, response_to(at_uas, 180))
    h.now = in_episode(o, h.now)
    o.backlog(1.0, h.now)
    cancel = request("CANCEL", branch="z9hG4bK-inv-1", call_id="call-1", cseq_method="CANCEL")
    out = h.send(UAC, cancel)
    assert statuses(out) == [200]  # the CANCEL's own answer
    assert any(parse(data).method == "CANCEL" for data in out[UAS])  # type: ignore[union-attr]
    out = h.send(UAS, response_to(at_uas, 487))
    assert statuses(out) == [487]
    assert sum(v for k, v in o.counters().items() if k.startswith("overload.shed.")) == 0
