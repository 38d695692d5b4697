"""Probe OPTIONS on the wire: built, recognised, answered; anything else is not a probe."""

from __future__ import annotations

from overlay.linkstate import (
    PROBE_MARK,
    ProbeAnswer,
    ProbeRequest,
    answer_probe,
    probe_request,
    read_probe_untrusted,
)
from overlay.sip import Peer, Request, parse_message_untrusted

A = Peer("udp", "127.0.0.11", 5060)
B = Peer("udp", "127.0.0.12", 5060)


def test_probe_round_trip():
    data = probe_request("usw2", A, "use1", B, 42)
    assert PROBE_MARK in data
    probe = read_probe_untrusted(data)
    assert isinstance(probe, ProbeRequest)
    request = probe.request
    assert request.method == "OPTIONS"
    assert request.max_forwards == 0
    assert request.top_via.host == "127.0.0.11"
    answer = read_probe_untrusted(answer_probe(probe, user_agent="overlay"))
    assert answer == ProbeAnswer("usw2", "use1", 42, 200)


def test_probe_over_ipv6_brackets_the_host():
    data = probe_request("a", Peer("udp", "::1", 5060), "b", Peer("udp", "::2", 5070), 1)
    message = parse_message_untrusted(data)
    assert isinstance(message, Request)
    assert message.uri == "sip:b@[::2]:5070"


def test_other_messages_are_not_probes():
    assert read_probe_untrusted(b"garbage ovlprobe. \r\n\r\n") is None
    invite = probe_request("a", A, "b", B, 1).replace(b"OPTIONS", b"INVITE")
    assert read_probe_untrusted(invite) is None
    not_ours = probe_request("a", A, "b", B, 1).replace(b"Call-ID: ovlprobe.", b"Call-ID: x")
    assert read_probe_untrusted(not_ours + b"") is None


def test_answer_without_node_names_is_not_a_probe_answer():
    data = probe_request("a", A, "b", B, 1).replace(b"ovlprobe.a.b", b"ovlprobe.ab")
    probe = read_probe_untrusted(data)
    assert isinstance(probe, ProbeRequest)
    assert read_probe_untrusted(answer_probe(probe, user_agent="x")) is None
