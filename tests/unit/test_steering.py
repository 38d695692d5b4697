"""Call-ID steering: every message of a call goes to the same worker."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overlay.linkstate import PROBE_MARK, probe_request
from overlay.sip import Peer, call_id_untrusted, steering_owner
from tests.unit.sip_helpers import request, response_to

PEER = Peer("udp", "127.0.0.2", 5060)


def test_call_id_found_in_long_and_compact_forms_any_case() -> None:
    assert call_id_untrusted(request(call_id="abc@h")) == b"abc@h"
    compact = request(call_id="abc@h").replace(b"Call-ID:", b"i :")
    assert call_id_untrusted(compact) == b"abc@h"
    shouting = request(call_id="abc@h").replace(b"Call-ID:", b"CALL-ID:\t")
    assert call_id_untrusted(shouting) == b"abc@h"


def test_call_id_in_the_body_is_not_taken() -> None:
    data = request(call_id="real", body=b"\r\nCall-ID: fake\r\n")
    assert call_id_untrusted(data) == b"real"
    assert call_id_untrusted(b"INVITE sip:x SIP/2.0\r\n\r\nCall-ID: fake\r\n") is None


@given(st.from_regex(r"[a-z0-9.\-]{1,20}(@[a-z0-9.\-]{1,20})?", fullmatch=True))
def test_every_message_of_a_call_has_one_owner(call_id: str) -> None:
    invite = request(call_id=call_id)
    messages = [
        invite,
        request("CANCEL", call_id=call_id),
        request("ACK", call_id=call_id, to_tag="t", cseq_method="ACK"),
        request("BYE", call_id=call_id, to_tag="t", cseq=2, branch="z9hG4bK-bye"),
        response_to(invite, 180),
        response_to(invite, 200),
    ]
    for workers in (2, 3, 8):
        owners = {steering_owner(m, workers) for m in messages}
        assert len(owners) == 1
        assert 0 <= owners.pop() < workers


def test_single_worker_and_junk_go_to_worker_zero() -> None:
    assert steering_owner(request(), 1) == 0
    assert steering_owner(b"\x00\xffjunk", 4) == 0


def test_pinned_call_ids_go_to_worker_zero_the_others_by_hash() -> None:
    probe = probe_request("usw2", Peer("udp", "127.0.0.1", 5060), "usw1", PEER, 7)
    answer = response_to(probe, 200)
    for workers in (2, 3, 8):
        assert steering_owner(probe, workers, PROBE_MARK) == 0
        assert steering_owner(answer, workers, PROBE_MARK) == 0
    # Without the pin a probe goes where its Call-ID hashes: worker 1 of 2 for this one.
    assert steering_owner(probe, 2) == 1


def test_the_pin_is_a_call_id_prefix_not_anywhere_in_the_message() -> None:
    in_body = request(call_id="k@h", body=b"ovlprobe.usw2.use1\r\n")
    in_id = request(call_id="x-ovlprobe.usw2.use1")
    for data in (in_body, in_id):
        assert steering_owner(data, 8, PROBE_MARK) == steering_owner(data, 8)
    assert {steering_owner(request(call_id=f"c{n}"), 2, PROBE_MARK) for n in range(20)} == {0, 1}
