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
    SHARE_DOWN,
    SHARE_UP,
    TICK,
    EdgeGuard,
    GuardEvent,
    Overload,
    OverloadEnded,
    OverloadStarted,
    overload_control,
    shed_after,
)
from overlay.sip import Peer, Reject, Request, Response
from tests.unit.sip_helpers import UAC, UAS, ProxyHarness, parse, request, response_to

UNKNOWN = "127.0.1.10"  # any address the configuration does not name
TARGET = "127.0.2.1"  # a static dialplan target
TRUNK = "127.0.3.7"  # inside a [[security.trunks]] network
PEER = "127.0.4.1"  # an overlay peer's SIP address
OVERLOADED = Reject(503, "Server Overloaded", 5)
T0 = 100.0  # when the receive loop fell behind


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


def events(o: Overload) -> list[GuardEvent]:
    out = []
    while (event := o.next_event()) is not None:
        out.append(event)
    return out


# -- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "to_tag", "known", "after"),
    [
        ("OPTIONS", None, False, 0.1),  # unknown sources' out-of-dialog requests go first
        ("REGISTER", None, False, 0.1),
        ("MESSAGE", None, False, 0.1),
        ("SUBSCRIBE", None, False, 0.1),
        ("FOO", None, False, 0.1),
        ("INVITE", None, False, 0.2),  # then new calls, from anyone
        ("INVITE", None, True, 0.2),
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
def test_what_is_shed_and_from_when(
    method: str, to_tag: str | None, known: bool, after: float | None
) -> None:
    request = req(method, to_tag=to_tag)
    assert shed_after(request, known=known, backlog=0.2, unknown_backlog=0.1) == after


def test_nothing_is_shed_while_the_node_keeps_up() -> None:
    o = control()
    for n, method in enumerate(("INVITE", "OPTIONS", "REGISTER")):
        assert o.admit(req(method, n=n), UNKNOWN, T0) is None
    o.backlog(T0)
    assert o.admit(req(n=9), UNKNOWN, T0 + 0.05) is None  # behind, but not for long
    assert events(o) == []
    assert sum(o.statistics().shed.values()) == 0


def test_unknown_sources_are_shed_first_then_new_calls() -> None:
    o = control()
    o.backlog(T0)
    at = T0 + 0.15  # past unknown_backlog (0.1), not past backlog (0.2)
    assert o.admit(req("OPTIONS", n=1), UNKNOWN, at) == OVERLOADED
    assert o.admit(req("REGISTER", n=2), UNKNOWN, at) == OVERLOADED
    assert o.admit(req("INVITE", n=3), UNKNOWN, at) is None  # calls still get in
    assert o.admit(req("OPTIONS", n=4), TARGET, at) is None  # known sources' keepalives
    assert o.admit(req("OPTIONS", n=5), TRUNK, at) is None
    at = T0 + 0.25  # past backlog: new calls are refused too, from anyone outside
    assert o.admit(req("INVITE", n=6), UNKNOWN, at) == OVERLOADED
    assert o.admit(req("INVITE", n=7), TRUNK, at) == OVERLOADED
    assert o.admit(req("INVITE", n=8), TARGET, at) == OVERLOADED
    counters = o.counters()
    assert counters["overload.shed.unknown.OPTIONS"] == 1
    assert counters["overload.shed.unknown.REGISTER"] == 1
    assert counters["overload.shed.unknown.INVITE"] == 1
    assert counters["overload.shed.known.INVITE"] == 2
    assert counters["overload.shed.known.OPTIONS"] == 0
    assert counters["overload.episodes"] == 1
    assert sum(v for k, v in counters.items() if k.startswith("overload.shed.")) == 5


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
    o.backlog(T0)
    for host in (UNKNOWN, TRUNK):
        assert o.admit(message, host, T0 + 60.0) is None  # however far behind
    assert o.counters()["overload.episodes"] == 0


def test_overlay_peers_are_never_shed() -> None:
    """Link probes between nodes decide link health: a busy node must still answer them."""
    o = control()
    o.backlog(T0)
    for n, method in enumerate(("OPTIONS", "INVITE", "REGISTER")):
        assert o.admit(req(method, n=n), PEER, T0 + 10.0) is None


def test_caught_up_means_admitted_again() -> None:
    o = control()
    o.backlog(T0)
    assert o.admit(req(n=1), UNKNOWN, T0 + 0.3) == OVERLOADED
    o.backlog(None)
    assert o.admit(req(n=2), UNKNOWN, T0 + 0.31) is None
    o.backlog(T0 + 0.4)  # behind again: the clock starts over
    assert o.admit(req(n=3), UNKNOWN, T0 + 0.5) is None
    assert o.admit(req(n=4), UNKNOWN, T0 + 0.61) == OVERLOADED


def test_one_episode_per_overload_with_its_count() -> None:
    o = control(retry_after=9)
    o.backlog(T0)
    assert o.admit(req(n=1), UNKNOWN, T0 + 0.25) == Reject(503, "Server Overloaded", 9)
    assert events(o) == [OverloadStarted(0.25)]
    o.admit(req("OPTIONS", n=2), UNKNOWN, T0 + 0.3)
    o.backlog(None)
    o.handle_timer(T0 + 0.5)
    assert events(o) == []  # a short catch-up is not the episode's end
    o.backlog(T0 + 0.6)
    o.admit(req(n=3), UNKNOWN, T0 + 0.9)
    o.backlog(None)
    o.handle_timer(T0 + 1.5)
    assert events(o) == []
    o.handle_timer(T0 + 1.9)  # a quiet second after the last refusal
    assert events(o) == [OverloadEnded(shed=3)]
    o.handle_timer(T0 + 5.0)
    assert events(o) == []
    assert o.statistics().episodes == 1


def test_a_share_is_shed_while_the_node_keeps_up_within_an_episode() -> None:
    """After passing the backlog the node does not let every new call in the moment it
    catches up: it sheds a share that grows while it falls behind and shrinks while not."""
    o = control()
    o.backlog(T0)
    assert o.admit(req(n=0), UNKNOWN, T0 + 0.2) == OVERLOADED  # behind: the episode starts
    for tick in range(1, 4):  # still behind at three more ticks: the share grows
        assert o.admit(req(n=tick), UNKNOWN, T0 + 0.2 + tick * TICK) == OVERLOADED
    assert o.share == pytest.approx(3 * SHARE_UP)
    o.backlog(None)  # caught up: 3 in 10 new calls are still refused, evenly
    now = T0 + 0.55
    verdicts = [o.admit(req(n=10 + n), TRUNK, now) for n in range(10)]
    assert verdicts.count(OVERLOADED) == 3
    assert OVERLOADED not in verdicts[:3]
    # While there is a share, unknown sources' requests are refused; known ones' OPTIONS not.
    assert o.admit(req("OPTIONS", n=30), UNKNOWN, now) == OVERLOADED
    assert o.admit(req("OPTIONS", n=31), TRUNK, now) is None
    # The tick of the last refusal behind the backlog grows it once more; later ones shrink it.
    now += 5 * TICK
    o.admit(req("OPTIONS", n=32), TRUNK, now)
    assert o.share == pytest.approx(4 * SHARE_UP - 4 * SHARE_DOWN)
    # A quiet second ends the episode, and the share with it.
    o.handle_timer(now + EPISODE_QUIET)
    assert o.share == 0.0
    assert o.admit(req(n=40), UNKNOWN, now + EPISODE_QUIET) is None
    assert [type(event) for event in events(o)] == [OverloadStarted, OverloadEnded]


def test_shedding_charges_no_source_in_the_guard() -> None:
    """In front of [security]'s guard: a shed INVITE takes no token from its source."""
    guard = EdgeGuard(dataclasses.replace(SecuritySection(), rate=1.0, burst=1))
    o = Overload(OverloadSection(), inner=guard)
    o.backlog(T0)
    for n in range(10):
        assert o.admit(req(n=n), UNKNOWN, T0 + 1.0) == OVERLOADED
    o.backlog(None)
    assert o.admit(req(n=11), UNKNOWN, T0 + 1.0) is None
    assert guard.statistics().rate_limited == 0
    # What is not shed is the guard's to judge, and its screen is the guard's.
    assert o.admit(req(n=12), UNKNOWN, T0 + 1.0) == Reject(503, "Rate Limit Exceeded", 5)
    assert o.screen(UNKNOWN, T0) is guard.screen(UNKNOWN, T0)


def test_for_a_node_with_or_without_security() -> None:
    base = (
        '[node]\nnode_id = "a"\nregion = "r"\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
        f'[[dialplan]]\ntarget = "{TARGET}:5060"\n'
    )
    plain = overload_control(parse_config(base, source="node.toml"))
    assert plain is not None
    assert plain.inner is None
    plain.backlog(T0)
    assert plain.admit(req("OPTIONS"), TARGET, T0 + 1.0) is None  # a dialplan target is known
    assert plain.admit(req("OPTIONS"), UNKNOWN, T0 + 1.0) == OVERLOADED
    text = base + '[security]\n[[security.trunks]]\ncidr = "127.0.3.0/24"\n'
    config = parse_config(text, source="node.toml")
    guard = EdgeGuard(SecuritySection())
    guarded = overload_control(config, guard)
    assert guarded is not None
    assert guarded.inner is guard
    guarded.backlog(T0)
    assert guarded.admit(req("OPTIONS"), TRUNK, T0 + 1.0) is None  # a trunk is known
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
    o.backlog(h.now)  # the node falls behind its socket
    h.now += 0.5
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
    o.backlog(None)
    assert UAS in h.send(UAC, invite(3))
    assert o.counters()["overload.shed.unknown.INVITE"] == 1
    assert o.counters()["overload.shed.unknown.OPTIONS"] == 1


def test_cancel_of_a_ringing_call_goes_through() -> None:
    h, o = harness()
    out = h.send(UAC, invite(1))
    [at_uas] = out[UAS]
    h.send(UAS, response_to(at_uas, 180))
    o.backlog(h.now)
    h.now += 1.0
    cancel = request("CANCEL", branch="z9hG4bK-inv-1", call_id="call-1", cseq_method="CANCEL")
    out = h.send(UAC, cancel)
    assert statuses(out) == [200]  # the CANCEL's own answer
    assert any(parse(data).method == "CANCEL" for data in out[UAS])  # type: ignore[union-attr]
    out = h.send(UAS, response_to(at_uas, 487))
    assert statuses(out) == [487]
    assert sum(v for k, v in o.counters().items() if k.startswith("overload.shed.")) == 0
