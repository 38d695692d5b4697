"""ProxyCore with edge security (an EdgeGuard as its Admission): what callers see on the wire."""

from __future__ import annotations

import dataclasses

from overlay.config import SecuritySection
from overlay.security import EdgeGuard
from overlay.sip import Peer, Request, Response, serialize
from tests.unit.sip_helpers import UAC, UAS, ProxyHarness, parse, request, response_to

UAS_HOST = UAS.host


def harness(**changes: object) -> tuple[ProxyHarness, EdgeGuard]:
    section = dataclasses.replace(SecuritySection(), **changes)  # type: ignore[arg-type]
    guard = EdgeGuard(section, targets=[UAS_HOST])
    return ProxyHarness(admission=guard), guard


def invite(n: int, **kwargs: object) -> bytes:
    return request("INVITE", branch=f"z9hG4bK-inv-{n}", call_id=f"call-{n}", **kwargs)  # type: ignore[arg-type]


def responses(out: dict[Peer, list[bytes]], peer: Peer = UAC) -> list[Response]:
    parsed = [parse(data) for data in out.get(peer, [])]
    assert all(isinstance(message, Response) for message in parsed)
    return parsed  # type: ignore[return-value]


def test_rate_limited_invite_gets_a_stateless_503_with_retry_after() -> None:
    h, guard = harness(rate=1.0, burst=1, retry_after=7)
    out = h.send(UAC, invite(1))
    assert [r.status for r in responses(out)] == [100]
    assert UAS in out
    out = h.send(UAC, invite(2))
    [refusal] = responses(out)
    assert (refusal.status, refusal.reason) == (503, "Rate Limit Exceeded")
    assert refusal.headers.get("Retry-After") == "7"
    assert refusal.to_tag is not None
    assert UAS not in out
    stats = h.proxy.statistics()
    assert stats.transactions_server == 1  # only the admitted INVITE's
    assert stats.generated[503] == 1
    # Its ACK is absorbed, never routed on to the callee.
    ack = request(
        "ACK", branch="z9hG4bK-inv-2", call_id="call-2", to_tag=refusal.to_tag, cseq_method="ACK"
    )
    assert h.send(UAC, ack) == {}
    assert h.proxy.statistics().drops["ACK of a stateless response"] == 1
    # The refusal is never retransmitted: it left no timer (the first call times out: 408).
    assert {r.status for r in responses(h.advance(40.0))} == {408}
    assert guard.statistics().rate_limited == 1


def test_refusal_goes_to_the_source_not_where_the_via_points() -> None:
    h, _ = harness(rate=1.0, burst=1)
    h.send(UAC, invite(1))
    out = h.send(UAC, invite(2, via_host="198.51.100.99:5060"))  # a forged Via
    assert [peer.host for peer in out] == [UAC.host]


def test_retransmissions_of_an_admitted_invite_are_not_charged() -> None:
    h, guard = harness(rate=1.0, burst=1)
    for _ in range(10):
        out = h.send(UAC, invite(1))
        assert [r.status for r in responses(out)] == [100]
    assert guard.statistics().rate_limited == 0


def test_a_call_in_progress_finishes_on_an_empty_bucket() -> None:
    h, guard = harness(rate=1.0, burst=1)
    out = h.send(UAC, invite(1))
    at_uas = out[UAS][0]
    assert [r.status for r in responses(h.send(UAC, invite(2)))] == [503]  # bucket empty
    # CANCEL of the admitted INVITE, the callee's answers and the caller's BYE all flow.
    cancel = request("CANCEL", branch="z9hG4bK-inv-1", call_id="call-1", cseq_method="CANCEL")
    assert [r.status for r in responses(h.send(UAC, cancel))] == [200]
    out = h.send(UAS, response_to(at_uas, 200))
    assert [r.status for r in responses(out)] == [200]
    bye = request(
        "BYE",
        uri="sip:alice@127.0.0.3:5062",
        branch="z9hG4bK-bye-1",
        call_id="call-1",
        cseq=2,
        to_tag="callee-tag",
    )
    out = h.send(UAC, bye)
    assert UAS in out
    assert guard.statistics().rate_limited == 1


def test_responses_flow_from_a_source_whose_bucket_is_empty() -> None:
    h, _ = harness(rate=1.0, burst=1)
    at_uas = h.send(UAC, invite(1))[UAS][0]
    # The callee spends its own bucket on requests of its own...
    for n, status in ((1, 200), (2, 503)):
        options = request("OPTIONS", uri="sip:127.0.0.1:5060", branch=f"z9hG4bK-o{n}")
        [answer] = responses(h.send(UAS, options), UAS)
        assert answer.status == status
    # ...and its answers to the call still reach the caller.
    assert [r.status for r in responses(h.send(UAS, response_to(at_uas, 180)))] == [180]
    assert [r.status for r in responses(h.send(UAS, response_to(at_uas, 200)))] == [200]


def test_scanner_gets_nothing_and_then_nothing_at_all() -> None:
    h, guard = harness()
    scan = request("OPTIONS", uri="sip:100@127.0.0.1", extra=("User-Agent: friendly-scanner",))
    assert h.send(UAC, scan) == {}
    assert h.send(UAC, invite(1)) == {}  # blocked: not even parsed
    assert h.send(UAC, b"garbage") == {}
    assert guard.statistics().blocked == {"user_agent": 1}
    assert guard.statistics().blocked_drops == 2
    assert h.proxy.statistics().requests == {"OPTIONS": 1}


def test_answers_of_404_block_the_prober() -> None:
    h, guard = harness(max_failures=3)
    h.targets = {}  # the dialplan knows no number
    for n in range(3):
        out = h.send(UAC, invite(n, uri=f"sip:{n}@example.com"))
        assert [r.status for r in responses(out)] == [100, 404]
    assert guard.statistics().blocked == {"failures": 1}
    assert h.send(UAC, invite(9)) == {}


def test_garbage_counts_as_failures() -> None:
    h, guard = harness(max_failures=2)
    broken = invite(1).replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE")
    for _ in range(2):
        [answer] = h.send(UAC, broken)[UAC]
        assert answer.startswith(b"SIP/2.0 400 ")
    assert guard.statistics().blocked == {"failures": 1}


def test_outside_the_acl_gets_403_in_reject_mode() -> None:
    h, guard = harness(allow=(), deny_action="reject")
    [answer] = responses(h.send(UAC, invite(1)))
    assert (answer.status, answer.reason) == (403, "Forbidden")
    assert h.proxy.statistics().transactions_server == 0
    assert guard.statistics().denied == 1


def test_outside_the_acl_gets_nothing_by_default() -> None:
    h, guard = harness(allow=())
    assert h.send(UAC, invite(1)) == {}
    assert h.proxy.statistics().requests == {}  # dropped before parsing
    # The static dialplan target is let in: it is where calls go.
    assert guard.screen(UAS_HOST, 0.0)


def test_register_gets_405_listing_what_the_node_handles() -> None:
    for h in (ProxyHarness(), harness()[0]):
        register = request("REGISTER", uri="sip:example.com")
        out = h.send(UAC, register)
        [answer] = responses(out)
        assert (answer.status, answer.reason) == (405, "Method Not Allowed")
        allow = [method.strip() for method in (answer.headers.get("Allow") or "").split(",")]
        assert "INVITE" in allow
        assert "REGISTER" not in allow
        assert UAS not in out  # never relayed to a registrar
        options = request("OPTIONS", uri="sip:127.0.0.1:5060", branch="z9hG4bK-o")
        [pong] = responses(h.send(UAC, options))
        assert "REGISTER" not in (pong.headers.get("Allow") or "")


def test_register_failures_and_sweep_block_a_registration_scanner() -> None:
    h, guard = harness(sweep_users=1000, max_failures=5)
    for n in range(5):
        message = parse(request("REGISTER", uri="sip:example.com", branch=f"z9hG4bK-r{n}"))
        assert isinstance(message, Request)
        message.headers.set("To", f"<sip:{n}@example.com>")
        h.send(UAC, serialize(message))
    assert guard.statistics().blocked == {"failures": 1}
