"""RFC 3261 §16 proxy behaviour of ProxyCore, driven through its sans-IO API."""

from __future__ import annotations

import gc

from overlay.sip import Peer, Request, Response, Target
from tests.unit.sip_helpers import (
    PROXY,
    PROXY_TCP,
    UAC,
    UAS,
    UAS2,
    ProxyHarness,
    parse,
    request,
    response_to,
    status_of,
)


def forwarded(out: dict[Peer, list[bytes]], peer: Peer = UAS) -> Request:
    [data] = out[peer]
    message = parse(data)
    assert isinstance(message, Request)
    return message


def statuses(out: dict[Peer, list[bytes]], peer: Peer = UAC) -> list[int]:
    return [status_of(data) for data in out.get(peer, [])]


def settle(h: ProxyHarness) -> None:
    """Run every timer out and check that nothing is left behind (no leak)."""
    h.advance(3600.0)
    stats = h.proxy.statistics()
    assert (stats.transactions_client, stats.transactions_server) == (0, 0)
    assert stats.contexts == 0
    assert h.proxy.get_timer() is None


def test_invite_call_flow_with_record_route() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request())
    assert statuses(out) == [100]
    invite = forwarded(out)
    assert invite.uri == "sip:alice@example.com"
    assert invite.max_forwards == 69
    assert len(invite.vias) == 2
    assert invite.top_via.host == "127.0.0.1"
    assert invite.top_via.port == 5060
    assert invite.top_via.branch is not None
    assert invite.top_via.branch.startswith("z9hG4bK")
    assert invite.vias[1].param("rport") == "5061"
    assert invite.headers.values("Record-Route") == ["<sip:127.0.0.1:5060;lr>"]

    out = h.send(UAS, response_to(out[UAS][0], 180))
    assert statuses(out) == [180]
    ringing = parse(out[UAC][0])
    assert isinstance(ringing, Response)
    assert len(ringing.vias) == 1

    out = h.send(UAS, response_to(h_last_invite(h, invite), 200))
    assert statuses(out) == [200]

    # The ACK for the 2xx follows the route set: Route names the proxy, R-URI the callee.
    ack = request(
        "ACK",
        uri="sip:alice@127.0.0.3:5062",
        branch="z9hG4bK-ack-1",
        to_tag="callee-tag",
        extra=("Route: <sip:127.0.0.1:5060;lr>",),
    )
    out = h.send(UAC, ack)
    acked = forwarded(out)
    assert acked.method == "ACK"
    assert "Route" not in acked.headers
    assert acked.max_forwards == 69

    bye = request(
        "BYE",
        uri="sip:alice@127.0.0.3:5062",
        branch="z9hG4bK-bye-1",
        cseq=2,
        to_tag="callee-tag",
        extra=("Route: <sip:127.0.0.1:5060;lr>",),
    )
    out = h.send(UAC, bye)
    fwd_bye = forwarded(out)
    assert "Record-Route" not in fwd_bye.headers
    out = h.send(UAS, response_to(out[UAS][0], 200))
    assert statuses(out) == [200]
    settle(h)


def h_last_invite(h: ProxyHarness, invite: Request) -> bytes:
    from overlay.sip import serialize

    return serialize(invite)


def test_retransmitted_invite_is_absorbed() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request())
    assert len(out[UAS]) == 1
    for _ in range(3):
        out = h.send(UAC, request())
        assert UAS not in out  # one copy forwarded
        assert statuses(out) == [100]  # the 100 Trying is resent
    assert h.proxy.statistics().retransmissions_absorbed == 3


def test_max_forwards_zero_gets_483() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request(max_forwards=0))
    assert statuses(out) == [100, 483]
    assert UAS not in out


def test_missing_max_forwards_becomes_70_minus_one() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request(max_forwards=None))
    assert forwarded(out).max_forwards == 69


def test_unsupported_scheme_gets_416_and_proxy_require_420() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request("MESSAGE", uri="http://example.com/x"))
    assert statuses(out) == [416]
    out = h.send(UAC, request("MESSAGE", branch="z9hG4bK-2", extra=("Proxy-Require: foo",)))
    assert statuses(out) == [420]


def test_loop_is_detected() -> None:
    h = ProxyHarness(targets={"": Target("127.0.0.1", 5060)})
    out = h.send(UAC, request("MESSAGE"))
    looped = out[Peer("udp", "127.0.0.1", 5060)][0]
    out = h.send(Peer("udp", "127.0.0.1", 5060), looped)
    assert statuses(out, Peer("udp", "127.0.0.1", 5060)) == [482]


def test_no_dialplan_match_gets_404() -> None:
    h = ProxyHarness(targets={})
    out = h.send(UAC, request("MESSAGE"))
    assert statuses(out) == [404]


def test_options_to_the_node_itself() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request("OPTIONS", uri="sip:127.0.0.1:5060"))
    [data] = out[UAC]
    response = parse(data)
    assert isinstance(response, Response)
    assert response.status == 200
    assert "INVITE" in (response.headers.get("Allow") or "")


def test_unknown_method_to_the_node_gets_501() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request("FROBNICATE", uri="sip:127.0.0.1"))
    assert statuses(out) == [501]
    # ... but an unknown method for someone else is proxied (§16: proxies forward them).
    out = h.send(UAC, request("FROBNICATE", branch="z9hG4bK-2"))
    assert forwarded(out).method == "FROBNICATE"


def test_busy_here_is_acked_hop_by_hop_and_forwarded() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request())
    invite_to_uas = out[UAS][0]
    out = h.send(UAS, response_to(invite_to_uas, 486))
    ack = forwarded(out)
    assert ack.method == "ACK"
    assert statuses(out) == [486]
    # The caller's ACK for the 486 ends at the proxy.
    out = h.send(UAC, request("ACK", to_tag="callee-tag", cseq_method="ACK"))
    assert out == {}
    settle(h)


def test_cancel_before_answer() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request())
    invite_to_uas = out[UAS][0]
    h.send(UAS, response_to(invite_to_uas, 180))
    out = h.send(UAC, request("CANCEL"))
    assert statuses(out) == [200]
    cancel = forwarded(out)
    assert cancel.method == "CANCEL"
    invite = parse(invite_to_uas)
    assert isinstance(invite, Request)
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.uri == invite.uri
    out = h.send(UAS, response_to(out[UAS][0], 200))
    assert out == {}
    out = h.send(UAS, response_to(invite_to_uas, 487))
    assert statuses(out) == [487]
    settle(h)


def test_cancel_waits_for_a_provisional_response() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request())
    invite_to_uas = out[UAS][0]
    out = h.send(UAC, request("CANCEL"))
    assert statuses(out) == [200]
    assert UAS not in out  # §9.1: no CANCEL before a provisional response
    out = h.send(UAS, response_to(invite_to_uas, 100))
    assert forwarded(out).method == "CANCEL"


def test_cancel_without_provisional_and_silent_callee_gets_487() -> None:
    h = ProxyHarness(t1=0.05)
    h.send(UAC, request())
    h.send(UAC, request("CANCEL"))
    out = h.advance(64 * 0.05)
    assert 487 in statuses(out)
    settle(h)


def test_silent_callee_gets_408_at_timer_b() -> None:
    h = ProxyHarness(t1=0.05)
    h.send(UAC, request())
    out = h.advance(64 * 0.05 - 0.001)
    assert UAC not in out
    assert len(out[UAS]) == 6  # Timer A retransmissions
    out = h.advance(0.001)
    assert statuses(out) == [408]
    settle(h)


def test_non_invite_timeout_sends_nothing_upstream() -> None:
    h = ProxyHarness(t1=0.05)
    h.send(UAC, request("MESSAGE"))
    out = h.advance(64 * 0.05)
    assert UAC not in out  # RFC 4320 §4.2: no 408 for non-INVITE
    settle(h)


def test_timer_c_cancels_a_ringing_branch_and_answers_408() -> None:
    h = ProxyHarness(timer_c=181.0)
    out = h.send(UAC, request())
    invite_to_uas = out[UAS][0]
    h.send(UAS, response_to(invite_to_uas, 180))
    out = h.advance(181.0)
    assert forwarded(out).method == "CANCEL"
    out = h.send(UAS, response_to(invite_to_uas, 487))
    assert statuses(out) == [408]
    settle(h)


def test_503_fails_over_to_the_next_resolved_target_then_becomes_500() -> None:
    h = ProxyHarness(targets={"": Target("trunk.example.com")})
    out = h.send(UAC, request())
    [event] = h.resolve_events()
    assert event.target.host == "trunk.example.com"
    out = h.resolved(event.token, [UAS, UAS2])
    out = h.send(UAS, response_to(out[UAS][0], 503))
    assert forwarded(out, UAS).method == "ACK"
    second = out[UAS2][0]
    assert UAC not in out
    out = h.send(UAS2, response_to(second, 503))
    assert statuses(out) == [500]
    settle(h)


def test_timeout_fails_over_to_the_next_target() -> None:
    h = ProxyHarness(t1=0.05, fr=0, targets={"": Target("trunk.example.com")})
    h.send(UAC, request())
    [event] = h.resolve_events()
    h.resolved(event.token, [UAS, UAS2])
    out = h.advance(64 * 0.05)
    assert len(out[UAS2]) == 1
    out = h.send(UAS2, response_to(out[UAS2][0], 200))
    assert statuses(out) == [200]


def test_failed_resolution_gets_404() -> None:
    h = ProxyHarness(targets={"": Target("nowhere.example.com")})
    h.send(UAC, request())
    [event] = h.resolve_events()
    h.proxy.resolution_failed(event.token, "NXDOMAIN", h.now)
    out = h.advance(0)
    assert statuses(out) == [404]


def test_stray_response_is_dropped() -> None:
    h = ProxyHarness()
    stray = response_to(request(), 200)
    assert h.send(UAS, stray) == {}


def test_malformed_request_gets_400_with_reason_and_no_via_is_dropped() -> None:
    h = ProxyHarness()
    bad = request().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    out = h.send(UAC, bad)
    [data] = out[UAC]
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"SIP/2.0 400 ")
    assert b"CSeq" in status_line  # the reason phrase names the problem
    no_via = b"\r\n".join(line for line in request().split(b"\r\n") if not line.startswith(b"Via"))
    assert h.send(UAC, no_via) == {}
    assert sum(h.proxy.statistics().drops.values()) == 2


def test_strict_router_upstream_is_handled() -> None:
    # A strict router put our Record-Route URI in the Request-URI and the real target in Route.
    h = ProxyHarness()
    bye = request(
        "BYE",
        uri="sip:127.0.0.1:5060;lr",
        to_tag="callee-tag",
        extra=("Route: <sip:alice@127.0.0.3:5062>",),
    )
    out = h.send(UAC, bye)
    fwd = forwarded(out)
    assert fwd.uri == "sip:alice@127.0.0.3:5062"
    assert "Route" not in fwd.headers


def test_strict_next_hop_route_is_converted() -> None:
    h = ProxyHarness()
    bye = request(
        "BYE",
        uri="sip:alice@127.0.0.9:5070",
        to_tag="callee-tag",
        extra=("Route: <sip:127.0.0.3:5062>",),  # no ;lr: a strict router
    )
    out = h.send(UAC, bye)
    fwd = forwarded(out)
    assert fwd.uri == "sip:127.0.0.3:5062"
    assert fwd.headers.values("Route") == ["<sip:alice@127.0.0.9:5070>"]


def test_transport_change_double_record_routes() -> None:
    h = ProxyHarness(
        listeners=(PROXY, PROXY_TCP),
        targets={"": Target("127.0.0.3", 5062, "tcp")},
    )
    out = h.send(UAC, request())
    fwd = forwarded(out, Peer("tcp", "127.0.0.3", 5062))
    assert fwd.headers.values("Record-Route") == [
        "<sip:127.0.0.1:5060;transport=tcp;lr>",
        "<sip:127.0.0.1:5060;lr>",
    ]
    assert fwd.top_via.transport == "TCP"


def test_late_2xx_after_final_is_still_forwarded() -> None:
    h = ProxyHarness(timer_c=181.0)
    out = h.send(UAC, request())
    invite_to_uas = out[UAS][0]
    h.send(UAS, response_to(invite_to_uas, 180))
    h.advance(181.0)  # Timer C: CANCEL sent
    out = h.send(UAS, response_to(invite_to_uas, 200))  # the callee answered anyway
    assert statuses(out) == [200]


def test_in_dialog_requests_to_the_node_address_use_the_dialplan() -> None:
    # Callers that ignore Record-Route send ACK and BYE to the proxy's own address.
    h = ProxyHarness()
    out = h.send(UAC, request(uri="sip:alice@127.0.0.1:5060"))
    out = h.send(UAS, response_to(out[UAS][0], 200))
    assert statuses(out) == [200]
    ack = request("ACK", uri="sip:alice@127.0.0.1:5060", branch="z9hG4bK-ack", to_tag="callee-tag")
    assert forwarded(h.send(UAC, ack)).method == "ACK"
    bye = request(
        "BYE", uri="sip:alice@127.0.0.1:5060", branch="z9hG4bK-bye", cseq=2, to_tag="callee-tag"
    )
    out = h.send(UAC, bye)
    assert forwarded(out).method == "BYE"
    assert statuses(h.send(UAS, response_to(out[UAS][0], 200))) == [200]
    settle(h)


def test_malformed_route_is_answered_not_leaked() -> None:
    h = ProxyHarness()
    out = h.send(UAC, request("MESSAGE", extra=('Route: <sip:127.0.0.3;lr>, "unterminated',)))
    assert statuses(out) == [400]
    settle(h)


def test_oversized_message_gets_513() -> None:
    h = ProxyHarness(max_message_size=1500)
    big = request("MESSAGE", body=b"x" * 2000, extra=("Content-Type: text/plain",))
    out = h.send(UAC, big)
    [data] = out[UAC]
    assert data.startswith(b"SIP/2.0 513 ")
    assert h.proxy.statistics().transactions_server == 0


def test_call_state_is_freed_without_the_cyclic_collector() -> None:
    # The node runs with full GC passes off (overlay.shell.workers): a reference cycle left
    # behind by a call would be a leak there.
    from overlay.sip import Transaction
    from overlay.sip._proxy import _Context

    def alive() -> int:
        return sum(isinstance(o, (Transaction, _Context)) for o in gc.get_objects())

    gc.collect()
    before = alive()
    gc.disable()
    try:
        test_invite_call_flow_with_record_route()
        test_cancel_before_answer()
        test_busy_here_is_acked_hop_by_hop_and_forwarded()
        test_503_fails_over_to_the_next_resolved_target_then_becomes_500()
        test_timer_c_cancels_a_ringing_branch_and_answers_408()
        assert alive() == before
    finally:
        gc.enable()
