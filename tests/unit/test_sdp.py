"""SDP (RFC 8866): byte-exact round trips, rewriting toward the relay, o= versions, the overlay
attribute, and every malformed body refused with a reason naming the line."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.media import (
    MAX_MEDIA,
    Connection,
    OriginKeeper,
    OverlaySession,
    PortPair,
    Rtcp,
    Sdp,
    bump_version,
    direction_of,
    endpoint_of,
    parse_sdp_untrusted,
    rewrite,
    serialize_sdp,
    set_overlay_session,
    strip_overlay_sessions,
)
from overlay.sip import LocalProtocolError, RemoteProtocolError

RELAY = "203.0.113.5"


def _body(*lines: str, eol: str = "\r\n") -> bytes:
    return "".join(line + eol for line in lines).encode()


# SIPp's built-in uac scenario.
SIPP = _body(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 192.0.2.10",
    "s=-",
    "c=IN IP4 192.0.2.10",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)

# A softphone offering audio and video, with RFC 3605 a=rtcp (one with an address), ICE
# candidates and RTCP feedback that must pass untouched.
LINPHONE = _body(
    "v=0",
    "o=1001 3185 1429 IN IP4 198.51.100.20",
    "s=Talk",
    "c=IN IP4 198.51.100.20",
    "t=0 0",
    "a=ice-pwd:31ec21eb38b2ec6d36e8dc7b",
    "a=ice-ufrag:0ad4e9a4",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "m=audio 7078 RTP/AVP 96 97 98 0 8 101",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:97 speex/16000",
    "a=rtpmap:98 speex/8000",
    "a=rtpmap:101 telephone-event/48000",
    "a=rtcp:7079 IN IP4 198.51.100.20",
    "a=candidate:1 1 UDP 2130706303 198.51.100.20 7078 typ host",
    "a=candidate:1 2 UDP 2130706302 198.51.100.20 7079 typ host",
    "a=rtcp-fb:* trr-int 1000",
    "m=video 9078 RTP/AVP 96 97",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 H264/90000",
    "a=fmtp:97 profile-level-id=42801F",
    "a=rtcp:9079",
    "a=rtcp-fb:* ccm tmmbr",
    "a=rtcp-fb:96 nack pli",
)

# A PBX offer: session-level c=, explicit directions, a disabled (port 0) stream.
ASTERISK = _body(
    "v=0",
    "o=- 1718096354 1718096354 IN IP4 192.0.2.30",
    "s=Asterisk",
    "c=IN IP4 192.0.2.30",
    "t=0 0",
    "m=audio 10004 RTP/AVP 0 8 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=sendrecv",
    "m=video 0 RTP/AVP 99",
    "a=rtpmap:99 H264/90000",
)

IPV6 = _body(
    "v=0",
    "o=- 20518 0 IN IP6 2001:db8::10",
    "s=-",
    "c=IN IP6 2001:DB8:0:0::10",
    "t=0 0",
    "m=audio 49170 RTP/SAVPF 111",
    "a=rtpmap:111 opus/48000/2",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
    "a=rtcp-mux",
    "a=rtcp:49170 IN IP6 2001:db8::10",
)

# RFC 3264 §8.4 and RFC 2543 holds, and the RFC 8866 §5.7 suffix forms.
HOLD_INACTIVE = _body(
    "v=0",
    "o=- 7 8 IN IP4 192.0.2.40",
    "s=-",
    "c=IN IP4 192.0.2.40",
    "t=0 0",
    "a=inactive",
    "m=audio 4000 RTP/AVP 0",
)
HOLD_OLD = _body(
    "v=0",
    "o=- 7 9 IN IP4 192.0.2.40",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0",
    "a=sendonly",
)
MULTICAST = _body(
    "v=0",
    "o=- 1 1 IN IP4 192.0.2.1",
    "s=-",
    "c=IN IP4 233.252.0.1/127/3",
    "t=0 0",
    "m=audio 5000/2 RTP/AVP 0",
    "c=IN IP6 ff15::101/3",
    "m=video 5004 RTP/AVP 31",
    "c=IN IP4 233.252.0.9/127",
)

SAMPLES = {
    "sipp": SIPP,
    "linphone": LINPHONE,
    "asterisk": ASTERISK,
    "ipv6": IPV6,
    "hold-inactive": HOLD_INACTIVE,
    "hold-old": HOLD_OLD,
    "multicast": MULTICAST,
    "lf-only": SIPP.replace(b"\r\n", b"\n"),
    "no-final-eol": SIPP.removesuffix(b"\r\n"),
    "trailing-blank-line": SIPP + b"\r\n",
    "mixed-eol": SIPP.replace(b"s=-\r\n", b"s=-\n"),
    "latin-1-session-name": SIPP.replace(b"s=-", b"s=Caf\xe9"),
    "runs-of-spaces": SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio  6000 RTP/AVP 0 8 "),
    "domain-names": ASTERISK.replace(b"IN IP4 192.0.2.30", b"IN IP4 pbx.example.com"),
}


def _parse(data: bytes) -> Sdp:
    return parse_sdp_untrusted(data)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


# -- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_untouched_sdp_round_trips_byte_exact(name: str):
    data = SAMPLES[name]
    sdp = _parse(data)
    assert serialize_sdp(sdp) == data
    assert _parse(serialize_sdp(sdp)) == sdp


def test_parsed_fields():
    sdp = _parse(LINPHONE)
    assert sdp.origin.username == "1001"
    assert sdp.origin.session_version == "1429"
    assert sdp.connection == Connection("IP4", "198.51.100.20")
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 7078, "RTP/AVP")
    assert audio.formats == ("96", "97", "98", "0", "8", "101")
    assert audio.rtcp == Rtcp(7079, "IP4", "198.51.100.20")
    assert video.rtcp == Rtcp(9079)
    assert not audio.rtcp_mux
    assert _parse(IPV6).media[0].rtcp_mux


def test_suffix_forms_are_tolerated():
    sdp = _parse(MULTICAST)
    assert sdp.connection == Connection("IP4", "233.252.0.1", ttl=127, count=3)
    assert sdp.media[0].port_count == 2
    assert sdp.media[0].connection == Connection("IP6", "ff15::101", count=3)
    assert sdp.media[1].connection == Connection("IP4", "233.252.0.9", ttl=127)


def test_non_utf8_text_lines_are_kept_as_bytes():
    data = SAMPLES["latin-1-session-name"]
    rewritten = rewrite(_parse(data), RELAY, [PortPair(20000, 20001)])
    assert b"s=Caf\xe9\r\n" in serialize_sdp(rewritten)


# -- rewrite ----------------------------------------------------------------------------------


def test_rewrite_sets_origin_network_type():
    data = _edit(b"IN IP4 192.0.2.10\r\ns=", b"XX IP4 192.0.2.10\r\ns=")
    rewritten = rewrite(_parse(data), RELAY, [PortPair(20000, 20001)])
    assert serialize_sdp(rewritten).splitlines()[1] == b"o=user1 53655765 2353687637 IN IP4 " + (
        RELAY.encode()
    )


def test_rewrite_sipp_offer():
    rewritten = rewrite(_parse(SIPP), RELAY, [PortPair(20000, 20001)])
    assert serialize_sdp(rewritten) == _body(
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 203.0.113.5",
        "s=-",
        "c=IN IP4 203.0.113.5",
        "t=0 0",
        "m=audio 20000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    )
    assert endpoint_of(rewritten, 0) == (RELAY, 20000)


def test_rewrite_audio_and_video_keeps_every_other_line():
    original = _parse(LINPHONE)
    rewritten = rewrite(original, RELAY, [PortPair(20000, 20001), PortPair(20002, 20003)])
    changed = {
        b"o=1001 3185 1429 IN IP4 198.51.100.20": b"o=1001 3185 1429 IN IP4 203.0.113.5",
        b"c=IN IP4 198.51.100.20": b"c=IN IP4 203.0.113.5",
        b"m=audio 7078 RTP/AVP 96 97 98 0 8 101": b"m=audio 20000 RTP/AVP 96 97 98 0 8 101",
        b"a=rtcp:7079 IN IP4 198.51.100.20": b"a=rtcp:20001 IN IP4 203.0.113.5",
        b"m=video 9078 RTP/AVP 96 97": b"m=video 20002 RTP/AVP 96 97",
        b"a=rtcp:9079": b"a=rtcp:20003",
    }
    expected = [changed.get(line, line) for line in _lines(LINPHONE)]
    assert _lines(serialize_sdp(rewritten)) == expected
    assert [endpoint_of(original, index) for index in (0, 1)] == [
        ("198.51.100.20", 7078),
        ("198.51.100.20", 9078),
    ]
    assert [endpoint_of(rewritten, index) for index in (0, 1)] == [(RELAY, 20000), (RELAY, 20002)]


def test_rewrite_leaves_disabled_stream_alone():
    sdp = _parse(ASTERISK)
    rewritten = rewrite(sdp, RELAY, [PortPair(20000, 20001), None])
    assert b"m=video 0 RTP/AVP 99\r\n" in serialize_sdp(rewritten)
    assert rewritten.media[1].port == 0
    assert endpoint_of(rewritten, 1) is None
    with pytest.raises(LocalProtocolError, match="disabled"):
        rewrite(sdp, RELAY, [PortPair(20000, 20001), PortPair(20002, 20003)])


def test_session_connection_kept_for_streams_left_alone_only():
    data = _body(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
        "c=IN IP4 192.0.2.2",
        "m=application 5000 TCP/BFCP *",
    )
    rewritten = rewrite(_parse(data), RELAY, [PortPair(20000, 20001), None])
    assert rewritten.connection == Connection("IP4", "192.0.2.1")
    assert rewritten.media[0].connection == Connection("IP4", RELAY)
    assert endpoint_of(rewritten, 1) == ("192.0.2.1", 5000)
    untouched = rewrite(_parse(data), RELAY, [None, None])
    assert untouched.connection == Connection("IP4", "192.0.2.1")
    assert untouched.origin.address == RELAY


def test_active_stream_left_alone_keeps_its_address():
    rewritten = rewrite(_parse(LINPHONE), RELAY, [PortPair(20000, 20001), None])
    lines = _lines(serialize_sdp(rewritten))
    video = lines.index(b"m=video 9078 RTP/AVP 96 97")
    assert lines[video + 1] == b"c=IN IP4 198.51.100.20"
    assert endpoint_of(rewritten, 1) == ("198.51.100.20", 9078)
    assert endpoint_of(rewritten, 0) == (RELAY, 20000)


def test_rewrite_ipv6_both_ways():
    to_v4 = rewrite(_parse(IPV6), RELAY, [PortPair(20000, None)])
    text = serialize_sdp(to_v4)
    assert b"c=IN IP4 203.0.113.5\r\n" in text
    assert b"o=- 20518 0 IN IP4 203.0.113.5\r\n" in text
    # rtcp-mux: a=rtcp names the RTP port (RFC 5761 §5.1.3).
    assert b"a=rtcp:20000 IN IP4 203.0.113.5\r\n" in text
    assert endpoint_of(_parse(IPV6), 0) == ("2001:db8::10", 49170)  # canonical form

    to_v6 = rewrite(_parse(SIPP), "2001:DB8::5", [PortPair(20000, 20001)])
    assert b"c=IN IP6 2001:db8::5\r\n" in serialize_sdp(to_v6)
    assert endpoint_of(to_v6, 0) == ("2001:db8::5", 20000)


def test_rtcp_attribute_added_only_when_needed():
    sdp = _parse(SIPP)
    added = serialize_sdp(rewrite(sdp, RELAY, [PortPair(20000, 20011)]))
    assert added.endswith(b"a=rtpmap:0 PCMU/8000\r\na=rtcp:20011\r\n")
    assert b"a=rtcp" not in serialize_sdp(rewrite(sdp, RELAY, [PortPair(20000, 20001)]))
    muxed = _parse(SIPP + b"a=rtcp-mux\r\n")
    assert b"a=rtcp:" not in serialize_sdp(rewrite(muxed, RELAY, [PortPair(20000, 20011)]))


def test_rtcp_attribute_added_without_final_line_ending():
    sdp = _parse(SAMPLES["no-final-eol"])
    added = serialize_sdp(rewrite(sdp, RELAY, [PortPair(20000, 20011)]))
    assert added.endswith(b"a=rtpmap:0 PCMU/8000\r\na=rtcp:20011")
    lf = serialize_sdp(rewrite(_parse(SAMPLES["lf-only"]), RELAY, [PortPair(20000, 20011)]))
    assert lf.endswith(b"a=rtpmap:0 PCMU/8000\na=rtcp:20011\n")
    assert b"\r" not in lf


def test_single_port_needs_rtcp_mux():
    with pytest.raises(LocalProtocolError, match="rtcp-mux"):
        rewrite(_parse(SIPP), RELAY, [PortPair(20000, None)])


@pytest.mark.parametrize(
    ("address", "ports"),
    [
        ("relay.example.com", [PortPair(20000, 20001)]),
        ("0.0.0.0", [PortPair(20000, 20001)]),
        ("[2001:db8::5]", [PortPair(20000, 20001)]),
        (RELAY, []),
        (RELAY, [PortPair(20000, 20001), None]),
    ],
)
def test_rewrite_refuses_bad_arguments(address: str, ports: list[PortPair | None]):
    with pytest.raises(LocalProtocolError):
        rewrite(_parse(SIPP), address, ports)


def test_port_count_is_dropped():
    rewritten = rewrite(_parse(MULTICAST), RELAY, [PortPair(20000, 20001), None])
    assert rewritten.media[0].port_count is None
    assert b"m=audio 20000 RTP/AVP 0\r\nc=IN IP4 203.0.113.5\r\n" in serialize_sdp(rewritten)


# -- hold -------------------------------------------------------------------------------------


def test_inactive_offer_round_trips_and_rewrites():
    sdp = _parse(HOLD_INACTIVE)
    assert sdp.direction == "inactive"
    assert direction_of(sdp, 0) == "inactive"
    rewritten = rewrite(sdp, RELAY, [PortPair(20000, 20001)])
    assert direction_of(rewritten, 0) == "inactive"
    assert b"a=inactive\r\n" in serialize_sdp(rewritten)
    assert endpoint_of(rewritten, 0) == (RELAY, 20000)


def test_old_style_hold_stays_held():
    sdp = _parse(HOLD_OLD)
    assert sdp.connection is not None
    assert sdp.connection.held
    assert endpoint_of(sdp, 0) is None
    assert direction_of(sdp, 0) == "sendonly"
    rewritten = rewrite(sdp, RELAY, [PortPair(20000, 20001)])
    text = serialize_sdp(rewritten)
    assert b"c=IN IP4 0.0.0.0\r\n" in text
    assert b"m=audio 20000 RTP/AVP 0\r\n" in text
    assert b"o=- 7 9 IN IP4 203.0.113.5\r\n" in text
    assert endpoint_of(rewritten, 0) is None


def test_media_level_hold_stays_held():
    data = SIPP + b"c=IN IP4 0.0.0.0\r\n"
    rewritten = rewrite(_parse(data), RELAY, [PortPair(20000, 20001)])
    assert rewritten.media[0].connection == Connection("IP4", "0.0.0.0")
    # The session-level c= serves no stream any more: it no longer shows the endpoint.
    assert rewritten.connection == Connection("IP4", RELAY)
    assert endpoint_of(rewritten, 0) is None


def test_direction_defaults_to_sendrecv():
    assert direction_of(_parse(SIPP), 0) == "sendrecv"
    assert direction_of(_parse(ASTERISK), 0) == "sendrecv"


# -- o= versions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "bumped"),
    [("0", "1"), ("1429", "1430"), ("99", "100"), ("0009", "0010"), ("9" * 5000, "1" + "0" * 5000)],
)
def test_bump_version(version: str, bumped: str):
    sdp = bump_version(_parse(SIPP.replace(b"2353687637", version.encode())))
    assert sdp.origin.session_version == bumped
    assert serialize_sdp(sdp) == SIPP.replace(b"2353687637", bumped.encode())


def test_origin_keeper_increments_only_on_change():
    keeper = OriginKeeper()
    first = rewrite(_parse(SIPP), RELAY, [PortPair(20000, 20001)])
    assert keeper.apply(first) == first
    # A refresh re-INVITE with an identical body: same version, same body.
    assert keeper.apply(rewrite(_parse(SIPP), RELAY, [PortPair(20000, 20001)])) == first
    # The endpoint kept its version but the relay ports changed: the version must move.
    moved = keeper.apply(rewrite(_parse(SIPP), RELAY, [PortPair(20002, 20003)]))
    assert moved.origin.session_version == "2353687638"
    # The other side changed its o= (a transfer): username and session id stay the first ones.
    other = SIPP.replace(b"o=user1 53655765 2353687637", b"o=- 42 1")
    again = keeper.apply(rewrite(_parse(other), RELAY, [PortPair(20002, 20003)]))
    assert again == moved
    changed = keeper.apply(rewrite(_parse(other), RELAY, [PortPair(20004, 20005)]))
    assert serialize_sdp(changed).splitlines()[1] == (
        b"o=user1 53655765 2353687639 IN IP4 203.0.113.5"
    )


# -- the overlay attribute --------------------------------------------------------------------


def test_overlay_session_set_replace_strip():
    sdp = _parse(LINPHONE)
    tagged = set_overlay_session(sdp, 1, OverlaySession("us-west-2", 0xDEADBEEF))
    text = serialize_sdp(tagged)
    assert text.endswith(
        b"a=rtcp-fb:96 nack pli\r\na=x-overlay-session:us-west-2 00000000deadbeef\r\n"
    )
    assert tagged.media[1].overlay_session == OverlaySession("us-west-2", 0xDEADBEEF)
    assert tagged.media[0].overlay_session is None

    replaced = set_overlay_session(tagged, 1, OverlaySession("use1", (1 << 64) - 1))
    assert replaced.media[1].overlay_session == OverlaySession("use1", (1 << 64) - 1)
    assert serialize_sdp(replaced).count(b"x-overlay-session") == 1

    both = set_overlay_session(replaced, 0, OverlaySession("use1", 7))
    assert both.media[0].overlay_session == OverlaySession("use1", 7)
    stripped = strip_overlay_sessions(both)
    assert serialize_sdp(stripped) == LINPHONE
    assert strip_overlay_sessions(sdp) is sdp


def test_overlay_session_strip_keeps_missing_final_eol():
    data = SAMPLES["no-final-eol"] + b"\r\na=x-overlay-session:usw2 0123456789abcdef"
    assert serialize_sdp(strip_overlay_sessions(_parse(data))) == SAMPLES["no-final-eol"]


def test_overlay_session_parsed_case_insensitive_hex():
    data = SIPP + b"a=x-overlay-session:usw2 0123456789ABCDEF\r\n"
    assert _parse(data).media[0].overlay_session == OverlaySession("usw2", 0x0123456789ABCDEF)


@pytest.mark.parametrize(
    ("node_id", "session_id"), [("USW2", 1), ("", 1), ("a b", 1), ("usw2", 0), ("usw2", 1 << 64)]
)
def test_overlay_session_refuses_bad_values(node_id: str, session_id: int):
    with pytest.raises(LocalProtocolError):
        OverlaySession(node_id, session_id)


def test_set_overlay_session_index_checked():
    with pytest.raises(IndexError):
        set_overlay_session(_parse(SIPP), 1, OverlaySession("usw2", 1))


# -- malformed input --------------------------------------------------------------------------


def _edit(old: bytes, new: bytes, base: bytes = SIPP) -> bytes:
    assert old in base
    return base.replace(old, new, 1)


MALFORMED = [
    (b"", "Empty SDP"),
    (b"\r\n", "no o= line"),
    (_edit(b"v=0", b"v=1"), "line 1 (v=): the first line must be v=0"),
    (_edit(b"v=0\r\n", b""), "line 1 (o=): the first line must be v=0"),
    (SIPP + b"v=0\r\n", "line 8 (v=): repeated version line"),
    (_edit(b"o=user1 53655765 2353687637 IN IP4 192.0.2.10\r\n", b""), "no o= line"),
    (_edit(b"53655765 2353687637", b"53655765"), "line 2 (o=): malformed origin"),
    (_edit(b"2353687637", b"23x"), "line 2 (o=): malformed origin"),
    (SIPP + b"o=- 1 1 IN IP4 192.0.2.1\r\n", "line 8 (o=): origin repeated"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP4"), "line 4 (c=): malformed connection"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=ATM NSAP 47.0091"), "line 4 (c=): network type"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IPX 192.0.2.10"), "line 4 (c=): address type"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP4 192.0.2.300"), "line 4 (c=): bad address"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP4 2001:db8::1"), "does not match the address"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP6 192.0.2.10"), "does not match the address"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP6 fe80::1%eth0"), "line 4 (c=): bad address"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP6 ff15::1/1/2"), "IP6 address with a TTL"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP4 233.252.0.1/1/0"), "number of addresses is 0"),
    (_edit(b"c=IN IP4 192.0.2.10", b"c=IN IP4 192.0.2.1/x"), "malformed connection"),
    (_edit(b"t=0 0", b"c=IN IP4 192.0.2.1"), "line 5 (c=): several connection lines"),
    (SIPP + b"c=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.2\r\n", "line 9 (c=): several"),
    (_edit(b"c=IN IP4 192.0.2.10\r\n", b""), "line 5 (m=): no connection line"),
    (_edit(b"6000", b"70000"), "line 6 (m=): port out of range"),
    (_edit(b"6000", b"600000"), "line 6 (m=): malformed media description"),
    (_edit(b"6000", b"-1"), "line 6 (m=): malformed media description"),
    (_edit(b"6000", b"6000/0"), "line 6 (m=): number of ports is 0"),
    (_edit(b"RTP/AVP 0", b"RTP/AVP"), "line 6 (m=): no format"),
    (_edit(b"RTP/AVP 0", b"RTP/AVP   "), "line 6 (m=): no format"),
    (_edit(b"RTP/AVP 0", b"RTP//AVP 0"), "line 6 (m=): bad transport protocol"),
    (_edit(b"RTP/AVP 0", b"RTP/AVP 0 (x)"), "line 6 (m=): bad format"),
    (_edit(b"m=audio", b"m=au:dio"), "line 6 (m=): bad media type"),
    (_edit(b"m=audio", b"m=audio\xe9"), "line 6 (m=): malformed media description"),
    (SIPP + b"a=rtcp\r\n", "line 8 (a=): malformed rtcp attribute"),
    (SIPP + b"a=rtcp:99999\r\n", "line 8 (a=): port out of range"),
    (SIPP + b"a=rtcp:6001 IN IP4\r\n", "line 8 (a=): malformed rtcp"),
    (SIPP + b"a=rtcp:6001 IN IP4 ::1\r\n", "line 8 (a=): address does not match"),
    (SIPP + b"a=rtcp:6001 IN IP4 -\r\n", "line 8 (a=): bad address"),
    (SIPP + b"a=rtcp:6001\r\na=rtcp:6003\r\n", "line 9 (a=): several rtcp"),
    (SIPP + b"a=rtcp-mux:yes\r\n", "line 8 (a=): rtcp-mux takes no value"),
    (SIPP + b"a=sendonly\r\na=recvonly\r\n", "line 9 (a=): several direction"),
    (SIPP + b"a=inactive:1\r\n", "line 8 (a=): inactive takes no value"),
    (SIPP + b"a=x-overlay-session:usw2 123\r\n", "line 8 (a=): malformed x-overlay-session"),
    (SIPP + b"a=x-overlay-session:USW2 0123456789abcdef\r\n", "malformed x-overlay-session"),
    (SIPP + b"a=x-overlay-session:usw2 0000000000000000\r\n", "x-overlay-session id is 0"),
    (
        SIPP
        + b"a=x-overlay-session:a 0000000000000001\r\na=x-overlay-session:a 0000000000000002\r\n",
        "line 9 (a=): several x-overlay-session",
    ),
    (_edit(b"s=-", b"s=\x00"), "line 3: NUL byte"),
    (_edit(b"s=-\r\n", b"s=-\rx\r\n"), "line 3: bare CR"),
    (_edit(b"s=-\r\n", b"s=-\r\n\r\n"), "line 4: empty line"),
    (_edit(b"s=-", b"S=-"), "line 3: not of the form"),
    (_edit(b"s=-", b"s -"), "line 3: not of the form"),
    (_edit(b"s=-", b"s"), "line 3: not of the form"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_refused_with_reason(data: bytes, reason: str):
    with pytest.raises(RemoteProtocolError) as info:
        parse_sdp_untrusted(data)
    assert reason in info.value.reason
    assert info.value.status_hint in (400, 488)
    assert "\r" not in info.value.reason
    assert "\n" not in info.value.reason


def test_not_relayable_is_488():
    data = _edit(b"c=IN IP4 192.0.2.10", b"c=ATM NSAP 47.0091")
    with pytest.raises(RemoteProtocolError) as info:
        parse_sdp_untrusted(data)
    assert info.value.status_hint == 488


def _streams(count: int) -> bytes:
    return _body(
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"
    ) + b"".join(b"m=audio %d RTP/AVP 0\r\n" % (10000 + 2 * index) for index in range(count))


def test_media_section_limit():
    assert len(_parse(_streams(MAX_MEDIA)).media) == MAX_MEDIA
    with pytest.raises(RemoteProtocolError, match="line 70 \\(m=\\): more than 64") as info:
        parse_sdp_untrusted(_streams(MAX_MEDIA + 1))
    assert info.value.status_hint == 488


def test_size_limit():
    padding = b"a=x-pad:" + b"x" * 100 + b"\r\n"
    data = SIPP + padding * ((65536 - len(SIPP)) // len(padding))
    data += b"a=" + b"x" * (65536 - len(data) - 4) + b"\r\n"
    assert len(data) == 65536
    assert serialize_sdp(_parse(data)) == data
    with pytest.raises(RemoteProtocolError, match="larger than 65536") as info:
        parse_sdp_untrusted(data + b"a\r\n")
    assert info.value.status_hint == 413


# -- fuzzing ----------------------------------------------------------------------------------

SEEDS = list(SAMPLES.values())
_INTERESTING = [
    *(bytes([char]) for char in b" /:=.\r\n\x00\xff0a9"),
    *(b"\r\n", b"\n", b"m=audio 0 RTP/AVP 0\r\n", b"c=IN IP4 0.0.0.0\r\n", b"a=rtcp-mux\r\n"),
    *(b"a=rtcp:1 IN IP6 ::1\r\n", b"a=x-overlay-session:n 00000000000000ff\r\n", b"/127/2"),
]


def _parse_or_refusal(data: bytes) -> Sdp | RemoteProtocolError:
    try:
        return parse_sdp_untrusted(data)
    except RemoteProtocolError as exc:
        return exc


def _check(data: bytes) -> None:
    """The invariant: parse, or refuse with RemoteProtocolError and a one-line reason; what
    parses serialises back byte-exact, and parses again to the same value; rewriting and the
    attribute functions work on anything that parsed."""
    sdp = _parse_or_refusal(data)
    if isinstance(sdp, RemoteProtocolError):
        assert "\r" not in sdp.reason
        assert "\n" not in sdp.reason
        return
    assert serialize_sdp(sdp) == data
    assert _parse(serialize_sdp(sdp)) == sdp
    ports: list[PortPair | None] = [
        None
        if description.disabled or index % 3 == 2
        else PortPair(20000 + 4 * index, None if description.rtcp_mux else 20003 + 4 * index)
        for index, description in enumerate(sdp.media)
    ]
    for address in (RELAY, "2001:db8::5"):
        rewritten = rewrite(sdp, address, ports)
        assert _parse(serialize_sdp(rewritten)) == rewritten
        for index, pair in enumerate(ports):
            endpoint = endpoint_of(rewritten, index)
            if pair is not None and endpoint is not None:
                assert endpoint == (address.lower(), pair.rtp)
        bumped = bump_version(rewritten)
        assert bumped.origin.session_version != rewritten.origin.session_version
    if sdp.media:
        tagged = set_overlay_session(sdp, 0, OverlaySession("usw2", 1))
        assert tagged.media[0].overlay_session == OverlaySession("usw2", 1)
        stripped = strip_overlay_sessions(tagged)
        assert all(description.overlay_session is None for description in stripped.media)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.choice((1, 1, 2, 3))):
        position = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0 and position < len(data):
            data = (
                data[:position]
                + bytes([data[position] ^ (1 << rng.randrange(8))])
                + data[position + 1 :]
            )
        elif kind == 1:
            data = data[:position]
        elif kind == 2:
            data = data[:position] + rng.choice(_INTERESTING) + data[position:]
        else:
            lines = data.split(b"\r\n")
            index = rng.randrange(len(lines))
            if kind == 3:
                lines.insert(index, lines[index])
            else:
                del lines[index]
            data = b"\r\n".join(lines)
    return data


@pytest.mark.parametrize("seed", range(3))
def test_mutated_samples(seed: int):
    rng = random.Random(seed)
    for _ in range(3000):
        _check(_mutate(rng.choice(SEEDS), rng))


@settings(
    max_examples=1000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes):
    _check(data)
    _check(SIPP + data)


@settings(max_examples=1000, derandomize=True, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(_INTERESTING)), max_size=5),
)
def test_structured_insertions(seed: bytes, edits: list[tuple[int, bytes]]):
    data = seed
    for position, insert in edits:
        position %= len(data) + 1
        data = data[:position] + insert + data[position:]
    _check(data)


@pytest.mark.parametrize(
    "data",
    [
        # Inputs that would make a careless pattern backtrack for a long time.
        b"v=0\r\no=" + b"a " * 20000 + b"\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=a 1 p" + b" f" * 20000 + b"\x00",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4 " + b"a." * 20000 + b"\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4 h\r\nm=a 1 p" + b" " * 30000 + b"f\xff",
        b"v=0\r\n" + b"a=x\r\n" * 10000 + b"\r\n\r\nx",
    ],
)
def test_no_catastrophic_backtracking(data: bytes):
    with pytest.raises(RemoteProtocolError):
        parse_sdp_untrusted(data)
