"""What the SIP core counts for metrics: calls offered and answered, how every transaction
ended, requests by method. Hand-set clock, as in test_transaction.py."""

from __future__ import annotations

from overlay.sip import (
    Peer,
    Request,
    Response,
    TransactionLayer,
    make_response,
    parse_message_untrusted,
    serialize,
)
from overlay.sip._transaction import Kind
from tests.unit.sip_helpers import UAC, UAS, ProxyHarness, request, response_to

T1 = 0.5


def req(method: str = "INVITE", **kwargs: object) -> Request:
    message = parse_message_untrusted(request(method, **kwargs))  # type: ignore[arg-type]
    assert isinstance(message, Request)
    return message


def finish(layer: TransactionLayer, until: float = 64 * T1 + 10) -> None:
    while (deadline := layer.get_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
    layer.datagrams_to_send()


def test_a_call_answered_then_ended_counts_once() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    stats = layer.statistics()
    assert (stats.initial_invites, stats.initial_invites_pending) == (1, 1)
    layer.send_response(txn, make_response(invite, 180, to_tag="x"), 0.1)
    layer.send_response(txn, make_response(invite, 200, to_tag="x"), 0.2)
    layer.send_response(txn, make_response(invite, 200, to_tag="y"), 0.3)  # a forked 2xx
    stats = layer.statistics()
    assert stats.initial_invite_answers == {200: 1}
    assert stats.initial_invites_pending == 0
    assert stats.ended == {}
    finish(layer)  # Timer L
    assert layer.statistics().ended == {(Kind.INVITE_SERVER, "2xx"): 1}


def test_a_reinvite_is_no_new_call() -> None:
    layer = TransactionLayer()
    reinvite = req(to_tag="callee-tag", branch="z9hG4bK-re")
    txn = layer.receive_request(reinvite, UAC, 0.0)
    assert txn is not None
    layer.send_response(txn, make_response(reinvite, 200), 0.1)
    stats = layer.statistics()
    assert (stats.initial_invites, stats.initial_invite_answers) == (0, {})


def test_a_rejected_call_counts_its_status_and_an_unacked_one_ends_as_no_ack() -> None:
    layer = TransactionLayer()
    acked, lost = req(), req(branch="z9hG4bK-2", call_id="call-2")
    acked_txn = layer.receive_request(acked, UAC, 0.0)
    lost_txn = layer.receive_request(lost, UAC, 0.0)
    assert acked_txn is not None
    assert lost_txn is not None
    busy = make_response(acked, 486, to_tag="x")
    layer.send_response(acked_txn, busy, 0.1)
    layer.send_response(lost_txn, make_response(lost, 503, to_tag="x"), 0.1)
    ack = req("ACK", cseq_method="ACK")
    assert layer.receive_ack(ack, 0.2)
    finish(layer)
    stats = layer.statistics()
    assert stats.initial_invite_answers == {486: 1, 503: 1}
    assert stats.ended == {(Kind.INVITE_SERVER, "4xx"): 1, (Kind.INVITE_SERVER, "no ACK"): 1}


def test_a_call_cut_off_by_a_transport_error_is_no_longer_in_setup() -> None:
    layer = TransactionLayer()
    source = Peer("tcp", "127.0.0.2", 5061)
    txn = layer.receive_request(req(), source, 0.0)
    assert txn is not None
    layer.transport_error(source, 0.5)
    stats = layer.statistics()
    assert (stats.initial_invites, stats.initial_invites_pending) == (1, 0)
    assert stats.initial_invite_answers == {}
    assert stats.ended == {(Kind.INVITE_SERVER, "transport error"): 1}


def test_a_request_with_a_bad_to_header_still_counts_as_a_call_attempt() -> None:
    layer = TransactionLayer()
    invite = req()
    invite.headers.set("To", "<sip:alice@example.com;tag")  # unterminated
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    assert layer.statistics().initial_invites == 1


def test_client_transactions_end_by_final_class_or_timeout() -> None:
    layer = TransactionLayer()
    answered = req("OPTIONS", branch="z9hG4bK-a")
    silent = req("OPTIONS", branch="z9hG4bK-b")
    invite = req(branch="z9hG4bK-c")
    layer.send_request(answered, UAS, 0.0)
    layer.send_request(silent, UAS, 0.0)
    layer.send_request(invite, UAS, 0.0)
    for sent, status in ((answered, 200), (invite, 404)):
        response = parse_message_untrusted(response_to(serialize(sent), status))
        assert isinstance(response, Response)
        layer.receive_response(response, 0.1)
    finish(layer)
    assert layer.statistics().ended == {
        (Kind.NON_INVITE_CLIENT, "2xx"): 1,
        (Kind.NON_INVITE_CLIENT, "timeout"): 1,
        (Kind.INVITE_CLIENT, "4xx"): 1,
    }


def test_an_abandoned_non_invite_ends_as_abandoned() -> None:
    layer = TransactionLayer()
    txn = layer.receive_request(req("OPTIONS"), UAC, 0.0)
    assert txn is not None
    layer.abandon(txn, 32.0)
    assert layer.statistics().ended == {(Kind.NON_INVITE_SERVER, "abandoned"): 1}


def test_made_up_methods_are_counted_together() -> None:
    harness = ProxyHarness()
    for index in range(50):
        harness.send(UAC, request(f"SCAN{index}", branch=f"z9hG4bK-{index}"))
    harness.send(UAC, request("INVITE", branch="z9hG4bK-invite"))
    assert harness.proxy.statistics().requests == {"other": 50, "INVITE": 1}
