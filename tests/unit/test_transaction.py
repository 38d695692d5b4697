"""RFC 3261 §17 transaction state machines, every path and timer, on a hand-set clock."""

from __future__ import annotations

import pytest

from overlay.sip import (
    LocalProtocolError,
    Peer,
    Request,
    Response,
    TimerConfig,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    make_response,
)
from overlay.sip._transaction import INITIAL_STATE, TRANSITIONS, State
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to

T1, T2, T4 = 0.5, 4.0, 5.0
TCP_UAS = Peer("tcp", "127.0.0.3", 5062)


def req(method: str = "INVITE", **kwargs: object) -> Request:
    message = parse(request(method, **kwargs))  # type: ignore[arg-type]
    assert isinstance(message, Request)
    return message


def resp(request_obj: Request, status: int) -> Response:
    from overlay.sip import serialize

    message = parse(response_to(serialize(request_obj), status))
    assert isinstance(message, Response)
    return message


def run_until(layer: TransactionLayer, end: float) -> list[float]:
    """Fire timers up to ``end``; returns the times at which something was sent."""
    sent_at = []
    while (deadline := layer.get_timer()) is not None and deadline <= end:
        layer.handle_timer(deadline)
        sent_at.extend([deadline] * len(layer.datagrams_to_send()))
    return sent_at


def timeouts(layer: TransactionLayer) -> list[TransactionTimeout]:
    return [e for e in layer.events if isinstance(e, TransactionTimeout)]


def terminated(layer: TransactionLayer) -> list[TransactionTerminated]:
    return [e for e in layer.events if isinstance(e, TransactionTerminated)]


# -- INVITE client (§17.1.1) --------------------------------------------------------------------


def test_invite_client_timer_a_doubles_and_timer_b_times_out() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    txn = layer.send_request(req(), UAS, 0.0)
    assert len(layer.datagrams_to_send()) == 1
    layer.datagrams_to_send()
    sent = run_until(layer, 64 * T1)
    assert sent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A: T1, 2T1, 4T1, ... (no cap at T2)
    assert [e.transaction for e in timeouts(layer)] == [txn]
    assert not timeouts(layer)[0].transport_error
    assert txn.state is State.TERMINATED
    assert layer.get_timer() is None
    assert layer.statistics().client == 0


def test_invite_client_over_tcp_does_not_retransmit() -> None:
    layer = TransactionLayer()
    layer.send_request(req(), TCP_UAS, 0.0)
    layer.datagrams_to_send()
    assert run_until(layer, 64 * T1) == []
    assert len(timeouts(layer)) == 1


def test_invite_client_provisional_stops_timers_a_and_b() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.send_request(invite, UAS, 0.0)
    assert layer.receive_response(resp(invite, 180), 0.1) is txn
    assert txn.state is State.PROCEEDING
    layer.datagrams_to_send()
    assert run_until(layer, 100.0) == []
    assert timeouts(layer) == []
    assert txn.state is State.PROCEEDING


def test_invite_client_2xx_accepted_retransmissions_pass_until_timer_m() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.send_request(invite, UAS, 0.0)
    ok = resp(invite, 200)
    assert layer.receive_response(ok, 0.1) is txn
    assert txn.state is State.ACCEPTED
    # RFC 6026: retransmitted 2xx go to the user (the proxy forwards them).
    assert layer.receive_response(ok, 0.6) is txn
    layer.datagrams_to_send()
    assert run_until(layer, 0.1 + 64 * T1 - 0.01) == []
    assert txn.state is State.ACCEPTED
    run_until(layer, 0.1 + 64 * T1)
    assert txn.state is State.TERMINATED
    assert layer.receive_response(ok, 40.0) is None  # stray now


def test_invite_client_failure_sends_ack_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.send_request(invite, UAS, 0.0)
    layer.datagrams_to_send()
    busy = resp(invite, 486)
    assert layer.receive_response(busy, 0.2) is txn
    assert txn.state is State.COMPLETED
    [(ack_bytes, peer)] = layer.datagrams_to_send()
    assert peer == UAS
    ack = parse(ack_bytes)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.top_via.branch == invite.top_via.branch  # hop-by-hop ACK, §17.1.1.3
    assert len(ack.vias) == 1
    assert ack.to_tag == "callee-tag"
    assert (ack.cseq.number, ack.cseq.method) == (1, "ACK")
    layer.datagrams_to_send()
    assert layer.receive_response(busy, 0.3) is None  # absorbed ...
    assert [d for d, _ in layer.datagrams_to_send()] == [ack_bytes]  # ... and ACKed again
    layer.datagrams_to_send()
    run_until(layer, 0.2 + 32.0)  # Timer D: 32 s over UDP
    assert txn.state is State.TERMINATED
    assert timeouts(layer) == []


def test_invite_client_timer_d_is_zero_over_tcp() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.send_request(invite, TCP_UAS, 0.0)
    layer.receive_response(resp(invite, 404), 0.2)
    assert layer.get_timer() == 0.2
    layer.handle_timer(0.2)
    assert txn.state is State.TERMINATED


def test_invite_client_transport_error() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(req(), TCP_UAS, 0.0)
    layer.transport_error(TCP_UAS, 0.1)
    [event] = timeouts(layer)
    assert event.transaction is txn
    assert event.transport_error
    assert txn.state is State.TERMINATED


# -- non-INVITE client (§17.1.2) ----------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    txn = layer.send_request(req("OPTIONS"), UAS, 0.0)
    layer.datagrams_to_send()
    sent = run_until(layer, 64 * T1)
    # E: 0.5, then +1, +2, +4 (capped at T2), +4, ...
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [e.transaction for e in timeouts(layer)] == [txn]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    options = req("OPTIONS")
    txn = layer.send_request(options, UAS, 0.0)
    layer.datagrams_to_send()
    assert layer.receive_response(resp(options, 100), 0.1) is txn
    assert txn.state is State.PROCEEDING
    sent = run_until(layer, 10.0)
    assert sent[:2] == [0.5, 4.5]  # the armed E fires, then every T2
    assert sent[2] == 8.5


def test_non_invite_client_final_then_timer_k() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    options = req("OPTIONS")
    txn = layer.send_request(options, UAS, 0.0)
    ok = resp(options, 200)
    assert layer.receive_response(ok, 0.1) is txn
    assert txn.state is State.COMPLETED
    assert layer.receive_response(ok, 0.2) is None  # retransmission absorbed
    layer.datagrams_to_send()
    assert run_until(layer, 0.1 + T4) == []
    assert txn.state is State.TERMINATED
    assert timeouts(layer) == []


# -- INVITE server (§17.2.1) --------------------------------------------------------------------


def test_invite_server_failure_retransmits_on_timer_g_until_ack() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    invite = req()
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    layer.send_response(txn, make_response(invite, 486, to_tag="x"), 0.0)
    assert txn.state is State.COMPLETED
    layer.datagrams_to_send()
    sent = run_until(layer, 8.0)
    assert sent == [0.5, 1.5, 3.5, 7.5]  # G: T1, 2T1, 4T1, then min(8T1, T2)
    ack = req("ACK", to_tag="x", cseq_method="ACK")
    assert layer.receive_ack(ack, 8.0)
    assert txn.state is State.CONFIRMED
    assert layer.receive_ack(ack, 8.1)  # retransmitted ACK absorbed
    assert layer.receive_request(invite, UAC, 8.2) is None
    assert layer.datagrams_to_send() == []  # nothing resent in Confirmed
    run_until(layer, 8.0 + T4)
    assert txn.state is State.TERMINATED


def test_invite_server_timer_h_without_ack() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    invite = req()
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    layer.send_response(txn, make_response(invite, 404, to_tag="x"), 0.0)
    run_until(layer, 64 * T1)
    assert txn.state is State.TERMINATED
    assert [e.transaction for e in timeouts(layer)] == [txn]


def test_invite_server_absorbs_retransmissions_and_resends_provisional() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    layer.send_response(txn, make_response(invite, 100), 0.0)
    [(trying, _)] = layer.datagrams_to_send()
    layer.datagrams_to_send()
    assert layer.receive_request(invite, UAC, 0.5) is None
    assert layer.datagrams_to_send() == [(trying, UAC)]
    assert layer.statistics().retransmissions_absorbed == 1


def test_invite_server_2xx_accepted_until_timer_l() -> None:
    layer = TransactionLayer()
    invite = req()
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    ok = make_response(invite, 200, to_tag="x")
    layer.send_response(txn, ok, 0.0)
    assert txn.state is State.ACCEPTED
    layer.send_response(txn, ok, 1.0)  # a forwarded 2xx retransmission
    assert len(layer.datagrams_to_send()) == 2
    layer.datagrams_to_send()
    assert layer.receive_request(invite, UAC, 2.0) is None
    assert layer.datagrams_to_send() == []  # Accepted absorbs INVITE retransmissions
    run_until(layer, 64 * 0.5)
    assert txn.state is State.TERMINATED


def test_invite_server_over_tcp_timer_i_is_zero() -> None:
    layer = TransactionLayer()
    invite = req()
    source = Peer("tcp", "127.0.0.2", 40000)
    txn = layer.receive_request(invite, source, 0.0)
    assert txn is not None
    layer.send_response(txn, make_response(invite, 486, to_tag="x"), 0.0)
    layer.datagrams_to_send()
    layer.receive_ack(req("ACK", to_tag="x", cseq_method="ACK"), 1.0)
    assert layer.get_timer() == 1.0
    layer.handle_timer(1.0)
    assert txn.state is State.TERMINATED
    assert layer.datagrams_to_send() == []  # no Timer G over TCP


# -- non-INVITE server (§17.2.2) ----------------------------------------------------------------


def test_non_invite_server_paths_and_timer_j() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    bye = req("BYE", to_tag="x")
    txn = layer.receive_request(bye, UAC, 0.0)
    assert txn is not None
    assert txn.state is State.TRYING
    assert layer.receive_request(bye, UAC, 0.1) is None
    assert layer.datagrams_to_send() == []  # Trying: retransmission discarded
    layer.send_response(txn, make_response(bye, 100), 0.2)
    assert txn.state is State.PROCEEDING
    layer.datagrams_to_send()
    layer.receive_request(bye, UAC, 0.3)
    assert len(layer.datagrams_to_send()) == 1  # Proceeding: provisional resent
    layer.send_response(txn, make_response(bye, 200), 0.4)
    assert txn.state is State.COMPLETED
    layer.datagrams_to_send()
    layer.receive_request(bye, UAC, 0.5)
    [(data, _)] = layer.datagrams_to_send()
    assert b"200" in data[:20]
    run_until(layer, 0.4 + 64 * T1)
    assert txn.state is State.TERMINATED
    assert layer.statistics().server == 0


def test_non_invite_server_abandon_for_rfc4320() -> None:
    layer = TransactionLayer()
    txn = layer.receive_request(req("OPTIONS"), UAC, 0.0)
    assert txn is not None
    layer.abandon(txn, 1.0)
    assert txn.state is State.TERMINATED
    assert layer.statistics().server == 0


# -- the table ----------------------------------------------------------------------------------


def test_input_outside_the_table_is_a_local_error() -> None:
    layer = TransactionLayer()
    bye = req("BYE", to_tag="x")
    txn = layer.receive_request(bye, UAC, 0.0)
    assert txn is not None
    layer.send_response(txn, make_response(bye, 200), 0.0)
    with pytest.raises(
        LocalProtocolError, match="non-INVITE server transaction in state Completed"
    ):
        layer.send_response(txn, make_response(bye, 180), 0.1)


def test_every_state_is_reachable_and_terminates() -> None:
    for kind, states in TRANSITIONS.items():
        targets = {new for row in states.values() for new, _ in row.values()}
        assert State.TERMINATED in targets, kind
        assert set(states) <= targets | {INITIAL_STATE[kind]}, kind


def test_ack_with_unknown_branch_is_left_to_the_user() -> None:
    layer = TransactionLayer()
    assert not layer.receive_ack(req("ACK", to_tag="x", branch="z9hG4bK-other"), 0.0)


def test_rfc2543_requests_match_without_magic_cookie() -> None:
    layer = TransactionLayer()
    invite = req(branch="old-style-1")
    txn = layer.receive_request(invite, UAC, 0.0)
    assert txn is not None
    assert layer.receive_request(req(branch="old-style-1"), UAC, 0.5) is None
    layer.send_response(txn, make_response(invite, 486, to_tag="x"), 0.6)
    assert layer.receive_ack(req("ACK", branch="old-style-1", to_tag="x", cseq_method="ACK"), 0.7)
    assert txn.state is State.CONFIRMED


def test_peer_traffic_counts_requests_and_retransmissions_per_next_hop() -> None:
    layer = TransactionLayer(TimerConfig(T1, T2, T4))
    layer.send_request(req(), UAS, 0.0)
    layer.send_request(req("OPTIONS", branch="z9hG4bK-other"), UAS, 0.0)
    layer.send_request(req(branch="z9hG4bK-tcp"), TCP_UAS, 0.0)
    run_until(layer, 1.6)  # A and E both fire at 0.5 and 1.5; nothing is resent over TCP
    traffic = layer.take_peer_traffic()
    assert traffic == {UAS: (2, 4), TCP_UAS: (1, 0)}
    assert layer.take_peer_traffic() == {}
    run_until(layer, 3.6)  # A and E again at 3.5
    assert layer.take_peer_traffic() == {UAS: (0, 2)}


def test_an_adopted_calling_invite_is_sent_again_and_times_out_from_the_takeover() -> None:
    from overlay.sip import Transaction, serialize
    from overlay.sip._transaction import Kind

    invite = req(branch="z9hG4bK-adopted")
    txn = Transaction(Kind.INVITE_CLIENT, ("z9hG4bK-adopted", "INVITE"), invite, UAS)
    txn.request_bytes = serialize(invite)
    layer = TransactionLayer()
    layer.adopt(txn, 100.0)
    assert layer.datagrams_to_send() == [(txn.request_bytes, UAS)]  # at once, same bytes
    assert layer.get_timer() == pytest.approx(100.0 + T1)  # Timer A from the takeover
    with pytest.raises(LocalProtocolError, match="already exists"):
        layer.adopt(txn, 100.0)
    run_until(layer, 100.0 + 64 * T1)
    assert [type(e) for e in layer.events] == [TransactionTimeout, TransactionTerminated]


def test_only_invite_transactions_in_a_waiting_state_are_adopted() -> None:
    from overlay.sip import Transaction
    from overlay.sip._transaction import Kind

    bye = Transaction(Kind.NON_INVITE_CLIENT, ("z9hG4bK-b", "BYE"), req("BYE"), UAS)
    with pytest.raises(LocalProtocolError, match="cannot adopt"):
        TransactionLayer().adopt(bye, 0.0)
    server = Transaction(Kind.INVITE_SERVER, ("k",), req(), UAC)
    server.state = State.ACCEPTED
    layer = TransactionLayer()
    layer.adopt(server, 0.0)
    assert layer.get_timer() == pytest.approx(64 * T1)  # Timer L
