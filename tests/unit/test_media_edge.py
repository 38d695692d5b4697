"""Media anchoring at the overlay's edges: SDP through the ingress, a transit and the egress,
on proxy cores with real ``MediaEdge`` hooks (no sockets; the commands are what the fastpath
would be told); and a standby's edges restored from their active's call state."""

from __future__ import annotations

import dataclasses
import enum
import itertools

import pytest

from overlay.media import (
    AddSession,
    CallMediaState,
    MediaEdge,
    MediaSessions,
    PortAllocator,
    PortTaken,
    RemoveSession,
    Side,
    parse_sdp_untrusted,
)
from overlay.sip import LocalProtocolError, Request, Response, serialize
from tests.unit.overlay_fabric import Fabric
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to

MEDIA_ADDRESS = {"ing": "127.0.2.1", "mid": "127.0.2.2", "egr": "127.0.2.3", "alt": "127.0.2.4"}
OFFER = (
    b"v=0\r\no=caller 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
ANSWER = (
    b"v=0\r\no=callee 7 7 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    b"m=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP_TYPE = ("Content-Type: application/sdp",)


def edges() -> tuple[Fabric, dict[str, MediaEdge]]:
    made: dict[str, MediaEdge] = {}
    ids = itertools.count(0x1000)

    def media(node: str) -> MediaEdge:
        sessions = MediaSessions(PortAllocator(20000, 20099), session_ids=lambda: next(ids))
        made[node] = MediaEdge(node, MEDIA_ADDRESS[node], sessions)
        return made[node]

    return Fabric(media=media), made


def body_of(message: Request | Response) -> tuple[str, int]:
    sdp = parse_sdp_untrusted(message.body)
    assert sdp.connection is not None
    return sdp.connection.address, sdp.media[0].port


def call(fabric: Fabric, offer: bytes = OFFER, answer: bytes = ANSWER) -> tuple[Request, Response]:
    out = fabric.inject("ing", UAC, request(extra=SDP_TYPE, body=offer))
    [invite_data] = out[UAS]
    invite = parse(invite_data)
    assert isinstance(invite, Request)
    ok_data = response_to(invite_data, 200, extra=SDP_TYPE)
    ok_data = ok_data.replace(b"Content-Length: 0\r\n\r\n", b"")
    ok_data += f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer
    out = fabric.inject("egr", UAS, ok_data)
    ok = parse(out[UAC][0])
    assert isinstance(ok, Response)
    return invite, ok


def test_each_endpoint_is_pointed_at_its_own_edge_relay() -> None:
    fabric, media = edges()
    invite, ok = call(fabric)
    egr, ing = media["egr"], media["ing"]
    # The callee sends to the egress's relay, the caller to the ingress's; no overlay tag
    # leaves the overlay.
    assert body_of(invite) == ("127.0.2.3", 20000)
    assert body_of(ok) == ("127.0.2.1", 20000)
    assert b"x-overlay-session" not in invite.body + ok.body
    assert "mid" not in media or media["mid"].commands == []
    # Each edge forwards toward the other's session: the caller's leg at the ingress, the
    # callee's at the egress.
    [add_ing] = ing.commands
    [add_egr] = egr.commands
    assert isinstance(add_ing, AddSession)
    assert isinstance(add_egr, AddSession)
    assert add_ing.session.endpoint == ("127.0.0.2", 6000)
    assert add_egr.session.endpoint == ("127.0.0.3", 7000)
    assert add_ing.session.remote is not None
    assert add_egr.session.remote is not None
    assert add_ing.session.remote.node_id == "egr"
    assert add_ing.session.remote.session_id == add_egr.session.session_id
    assert add_egr.session.remote.node_id == "ing"
    assert add_egr.session.remote.session_id == add_ing.session.session_id


def test_a_retransmitted_2xx_changes_nothing() -> None:
    fabric, media = edges()
    invite, _ok = call(fabric)
    before = list(media["ing"].commands)
    ok_again = response_to(serialize(invite), 200, extra=SDP_TYPE)
    ok_again = ok_again.replace(b"Content-Length: 0\r\n\r\n", b"")
    ok_again += f"Content-Length: {len(ANSWER)}\r\n\r\n".encode() + ANSWER
    fabric.inject("egr", UAS, ok_again)
    assert media["ing"].commands == before
    assert media["ing"].sessions.statistics().sessions == 1


def test_bye_frees_both_edges() -> None:
    fabric, media = edges()
    call(fabric)
    routes = ["<sip:127.0.1.1:5060;lr;ovl=ing>", "<sip:127.0.1.3:5060;lr;ovl=egr>"]
    bye = request(
        "BYE",
        uri="sip:alice@127.0.0.3:7000",
        branch="z9hG4bK-bye",
        cseq=2,
        to_tag="callee-tag",
        extra=tuple(f"Route: {route}" for route in routes),
    )
    fabric.inject("ing", UAC, bye)
    for node in ("ing", "egr"):
        assert isinstance(media[node].commands[-1], RemoveSession)
        stats = media[node].sessions.statistics()
        assert (stats.sessions, stats.ports_in_use) == (0, 0)
        assert stats.ended["bye"] == 1
        assert media[node].tracked_calls() == 0


def test_a_failed_call_frees_its_ports() -> None:
    fabric, media = edges()
    out = fabric.inject("ing", UAC, request(extra=SDP_TYPE, body=OFFER))
    fabric.inject("egr", UAS, response_to(out[UAS][0], 486))
    for node in ("ing", "egr"):
        stats = media[node].sessions.statistics()
        assert (stats.sessions, stats.ports_in_use) == (0, 0)


def test_bad_offer_is_refused_with_a_reason() -> None:
    fabric, media = edges()
    out = fabric.inject("ing", UAC, request(extra=SDP_TYPE, body=b"v=0\r\nm=audio x\r\n"))
    [_trying, refused] = [parse(data) for data in out[UAC]]
    assert isinstance(refused, Response)
    assert refused.status in (400, 488)
    assert "SDP" in refused.reason
    assert media["ing"].sessions.statistics().ports_in_use == 0
    assert media["ing"].tracked_calls() == 0  # nothing kept for a call that never was


def test_exhausted_ports_refuse_the_call_and_keep_nothing() -> None:
    fabric, media = edges()
    ing = media["ing"]
    ing.sessions = MediaSessions(PortAllocator(20000, 20001))  # room for one stream
    two_streams = OFFER + b"m=audio 6002 RTP/AVP 0\r\n"
    out = fabric.inject("ing", UAC, request(extra=SDP_TYPE, body=two_streams))
    [_trying, refused] = [parse(data) for data in out[UAC]]
    assert isinstance(refused, Response)
    assert (refused.status, refused.reason) == (503, "Media Ports Exhausted")
    assert ing.sessions.statistics().ports_in_use == 0
    assert ing.tracked_calls() == 0


def test_an_endpoint_cannot_name_an_overlay_session() -> None:
    fabric, _ = edges()
    forged = OFFER + b"a=x-overlay-session:egr 0000000000000001\r\n"
    out = fabric.inject("ing", UAC, request(extra=SDP_TYPE, body=forged))
    invite = parse(out[UAS][0])
    assert isinstance(invite, Request)
    assert b"x-overlay-session" not in invite.body


def test_rtcp_mux_declined_by_the_answer_gives_the_stream_an_rtcp_port() -> None:
    fabric, media = edges()
    _invite, ok = call(fabric, offer=OFFER + b"a=rtcp-mux\r\n")
    # The callee did not take rtcp-mux: the caller's relay stream gets its RTCP port back.
    sdp = parse_sdp_untrusted(ok.body)
    assert not sdp.media[0].rtcp_mux
    [add] = media["ing"].commands
    assert isinstance(add, AddSession)
    assert add.session.ports.rtcp == add.session.ports.rtp + 1


def with_body(data: bytes, body: bytes) -> bytes:
    """A message with Content-Length 0 given ``body`` instead."""
    head = data.replace(b"Content-Length: 0\r\n\r\n", b"")
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_delayed_offer_is_anchored_from_the_2xx_and_the_ack() -> None:
    fabric, media = edges()
    out = fabric.inject("ing", UAC, request())  # INVITE without SDP (RFC 3261 §13.2.1)
    [invite_data] = out[UAS]
    assert media["ing"].commands == media["egr"].commands == []
    # The callee offers in the 2xx: the caller is pointed at the ingress relay.
    out = fabric.inject(
        "egr", UAS, with_body(response_to(invite_data, 200, extra=SDP_TYPE), ANSWER)
    )
    ok = parse(out[UAC][0])
    assert isinstance(ok, Response)
    assert body_of(ok) == ("127.0.2.1", 20000)
    assert b"x-overlay-session" not in ok.body
    assert media["ing"].commands == media["egr"].commands == []  # nothing forwards yet
    # The caller answers in the ACK, along the route set: the callee gets the egress relay.
    routes = reversed(ok.headers.values("Record-Route"))
    ack = request(
        "ACK",
        uri=f"sip:alice@{UAS.host}:{UAS.port}",
        branch="z9hG4bK-ack",
        to_tag="callee-tag",
        extra=(*SDP_TYPE, *(f"Route: {route}" for route in routes)),
    )
    out = fabric.inject("ing", UAC, with_body(ack, OFFER))
    [ack_data] = out[UAS]
    forwarded_ack = parse(ack_data)
    assert isinstance(forwarded_ack, Request)
    assert forwarded_ack.method == "ACK"
    assert body_of(forwarded_ack) == ("127.0.2.3", 20000)
    assert b"x-overlay-session" not in forwarded_ack.body
    [add_ing] = media["ing"].commands
    [add_egr] = media["egr"].commands
    assert isinstance(add_ing, AddSession)
    assert isinstance(add_egr, AddSession)
    assert add_ing.session.endpoint == ("127.0.0.2", 6000)
    assert add_egr.session.endpoint == ("127.0.0.3", 7000)
    assert add_ing.session.remote is not None
    assert add_egr.session.remote is not None
    assert add_ing.session.remote.session_id == add_egr.session.session_id
    assert add_egr.session.remote.session_id == add_ing.session.session_id
    # A retransmitted ACK (the 2xx was retransmitted) changes nothing.
    fabric.inject("ing", UAC, with_body(ack, OFFER))
    assert len(media["ing"].commands) == len(media["egr"].commands) == 1
    assert media["ing"].counters["delayed offer"] == 1


def test_a_delayed_offer_call_that_fails_keeps_nothing() -> None:
    fabric, media = edges()
    out = fabric.inject("ing", UAC, request())
    [invite_data] = out[UAS]
    fabric.inject("egr", UAS, response_to(invite_data, 486))
    for edge in media.values():
        assert edge.tracked_calls() == 0


# -- pair replication: call_state on the active, restore_call on the standby ------------------

CALL_ID = "call-1@127.0.0.2"
VIDEO = b"m=video 6002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
VIDEO_ANSWER = b"m=video 7002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"


def standby(node: str, first_id: int = 0x9000) -> MediaEdge:
    """A fresh edge for ``node``, as the standby of a pair starts."""
    ids = itertools.count(first_id)
    return MediaEdge(
        node,
        MEDIA_ADDRESS[node],
        MediaSessions(PortAllocator(20000, 20099), session_ids=lambda: next(ids)),
    )


def assert_plain(value: object) -> None:
    """``value`` is made of plain values only: what a wire encoder maps field by field."""
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, fields[0].name, None)
        for field in fields:
            assert_plain(getattr(value, field.name))
    elif isinstance(value, tuple):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or isinstance(value, str | int | float | bytes | enum.Enum)


def test_call_state_restored_on_a_standby_gives_the_same_state() -> None:
    fabric, media = edges()
    call(fabric, offer=OFFER + VIDEO, answer=ANSWER + VIDEO_ANSWER)
    for node in ("ing", "egr"):
        active = media[node]
        audio, video = active.sessions.of_call(CALL_ID)
        active.activity(audio.session_id, 1.0, rtp_latched=("127.0.0.2", 6000))
        active.activity(video.session_id, 1.0, rtcp_latched=("127.0.0.2", 6003))
        state = active.call_state(CALL_ID)
        assert_plain(state)
        assert (state.caller_tag, state.answered, state.delayed) == ("caller-tag", True, False)
        # Each edge sent SDP to its own endpoint only: the 2xx to the caller, the INVITE to the
        # callee.
        side = Side.CALLER if node == "ing" else Side.CALLEE
        assert [origin_side for origin_side, _ in state.origins] == [side]
        assert [item.session for item in state.sessions] == [audio, video]
        assert state.forwarding == (audio, video)

        replica = standby(node)
        replica.restore_call(state)
        assert replica.call_state(CALL_ID) == state
        assert replica.commands == [
            AddSession(audio, rtp_latched=("127.0.0.2", 6000)),
            AddSession(video, rtcp_latched=("127.0.0.2", 6003)),
        ]
        stats = replica.sessions.statistics()
        assert (stats.sessions, stats.foreign, stats.restored, stats.created) == (2, 2, 2, 0)
        assert replica.tracked_calls() == 1
        # Applied again, the same state is a no-op: the relay sessions keep their sockets.
        replica.commands.clear()
        replica.restore_call(state)
        assert replica.commands == []
        assert replica.call_state(CALL_ID) == state


def test_restore_call_applies_a_diff() -> None:
    fabric, media = edges()
    call(fabric, offer=OFFER + VIDEO, answer=ANSWER + VIDEO_ANSWER)
    active = media["ing"]
    replica = standby("ing")
    replica.restore_call(active.call_state(CALL_ID))
    replica.commands.clear()
    audio, video = active.sessions.of_call(CALL_ID)

    # The endpoint's NAT moved: the active's relay latched a new source for audio only.
    active.activity(audio.session_id, 2.0, rtp_latched=("192.0.2.50", 30000))
    replica.restore_call(active.call_state(CALL_ID))
    assert replica.commands == [
        RemoveSession(audio.session_id),
        AddSession(audio, rtp_latched=("192.0.2.50", 30000)),
    ]
    assert replica.call_state(CALL_ID) == active.call_state(CALL_ID)

    # A re-offer disabled video: the session ends, its relay session goes, audio stays.
    replica.commands.clear()
    state = active.call_state(CALL_ID)
    replica.restore_call(
        dataclasses.replace(state, sessions=state.sessions[:1], forwarding=state.forwarding[:1])
    )
    assert replica.commands == [RemoveSession(video.session_id)]
    stats = replica.sessions.statistics()
    assert (stats.sessions, stats.ports_in_use, stats.ended["replica"]) == (1, 2, 1)

    # Forwarding stopped without the session ending (not seen on a live call, but a diff).
    replica.commands.clear()
    replica.restore_call(dataclasses.replace(state, sessions=state.sessions[:1], forwarding=()))
    assert replica.commands == [RemoveSession(audio.session_id)]


def test_restoring_an_empty_state_forgets_the_call() -> None:
    fabric, media = edges()
    call(fabric)
    replica = standby("egr")
    replica.restore_call(media["egr"].call_state(CALL_ID))
    [session] = replica.sessions.of_call(CALL_ID)
    replica.commands.clear()
    replica.restore_call(CallMediaState(CALL_ID))
    assert replica.commands == [RemoveSession(session.session_id)]
    assert replica.call_state(CALL_ID) == CallMediaState(CALL_ID)
    assert replica.tracked_calls() == 0
    stats = replica.sessions.statistics()
    assert (stats.sessions, stats.foreign, stats.ports_in_use) == (0, 0, 0)
    assert media["egr"].call_state("unknown") == CallMediaState("unknown")


def test_restore_call_refuses_a_state_that_does_not_fit() -> None:
    fabric, media = edges()
    call(fabric)
    state = media["ing"].call_state(CALL_ID)
    replica = standby("ing")
    with pytest.raises(LocalProtocolError, match="another call's session"):
        replica.restore_call(dataclasses.replace(state, call_id="other"))
    with pytest.raises(LocalProtocolError, match="forwards an unknown session"):
        replica.restore_call(dataclasses.replace(state, sessions=()))
    assert replica.call_state(CALL_ID) == CallMediaState(CALL_ID)
    # The ports the active used are held here by another call: a clear refusal.
    squatter = replica.sessions.create("squatter", Side.CALLER, 0, 0.0)
    assert squatter.ports == state.sessions[0].session.ports
    with pytest.raises(PortTaken):
        replica.restore_call(state)


def test_a_new_relay_session_forgets_what_the_old_one_latched() -> None:
    fabric, media = edges()
    invite, _ok = call(fabric)
    ing = media["ing"]
    [session] = ing.sessions.of_call(CALL_ID)
    ing.activity(session.session_id, 1.0, rtp_latched=("127.0.0.2", 6000))
    # A retransmitted 2xx keeps the relay session, and so what it latched.
    fabric.inject(
        "egr", UAS, with_body(response_to(serialize(invite), 200, extra=SDP_TYPE), ANSWER)
    )
    assert ing.sessions.snapshot(CALL_ID)[0].rtp_latched == ("127.0.0.2", 6000)
    # A re-INVITE that moves the caller makes a new relay session: it latches afresh.
    reinvite(fabric, OFFER.replace(b"6000", b"6100"))
    assert isinstance(ing.commands[-1], AddSession)
    assert ing.sessions.snapshot(CALL_ID)[0].rtp_latched is None


def reinvite(fabric: Fabric, offer: bytes) -> tuple[bytes, bytes]:
    """The caller re-INVITEs with ``offer`` and the callee answers ``ANSWER`` (its o= version
    7 jumped to 9); returns the bodies the callee and the caller got."""
    routes = ["<sip:127.0.1.1:5060;lr;ovl=ing>", "<sip:127.0.1.3:5060;lr;ovl=egr>"]
    data = request(
        uri=f"sip:alice@{UAS.host}:{UAS.port}",
        branch="z9hG4bK-reinvite",
        cseq=2,
        to_tag="callee-tag",
        extra=(*SDP_TYPE, *(f"Route: {route}" for route in routes)),
        body=offer,
    )
    [at_callee] = fabric.inject("ing", UAC, data)[UAS]
    answer = ANSWER.replace(b"7 7 IN", b"7 9 IN")
    out = fabric.inject("egr", UAS, with_body(response_to(at_callee, 200, extra=SDP_TYPE), answer))
    [at_caller] = out[UAC]
    offered, answered = parse(at_callee), parse(at_caller)
    return offered.body, answered.body


def test_a_promoted_standby_answers_a_re_invite_as_its_active_would() -> None:
    """Both edges of a call taken over by their standbys: a re-INVITE after the takeover gets
    the same SDP (relay ports, o= versions the endpoints have seen) and the same relay
    commands as it would have on the actives."""
    fabric, media = edges()
    call(fabric)
    states = {node: media[node].call_state(CALL_ID) for node in ("ing", "egr")}
    replicas: dict[str, MediaEdge] = {}

    def restored(node: str) -> MediaEdge:
        replicas[node] = standby(node)
        if node in states:
            replicas[node].restore_call(states[node])
            replicas[node].commands.clear()
            assert len(replicas[node].sessions.promote(0.0)) == 1
        return replicas[node]

    taken_over = Fabric(media=restored)
    for edge in media.values():
        edge.commands.clear()
    moved = OFFER.replace(b"1 1 IN", b"1 5 IN").replace(b"6000", b"6100")
    offered, answered = reinvite(fabric, moved)
    assert reinvite(taken_over, moved) == (offered, answered)
    # What each endpoint sees did not change, so neither did its o= version (RFC 3264 §8),
    # whatever the far endpoint did with its own: the standby knew what the active had sent.
    assert b"o=caller 1 1 IN" in offered
    assert b"o=callee 7 7 IN" in answered
    # The caller moved: its relay session at the ingress is made again; the egress's stays.
    [session] = media["ing"].sessions.of_call(CALL_ID)
    assert media["ing"].commands == [RemoveSession(session.session_id), AddSession(session)]
    assert session.endpoint == ("127.0.0.2", 6100)
    assert media["egr"].commands == []
    for node in ("ing", "egr"):
        assert replicas[node].commands == media[node].commands
        assert replicas[node].call_state(CALL_ID) == media[node].call_state(CALL_ID)
