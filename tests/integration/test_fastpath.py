"""The compiled relay over real UDP on loopback: relays, endpoints and bad input.

Every relay and endpoint gets its own loopback address (``loopback_host``) and an ephemeral
port. Tests are plain synchronous pytest: every receive has a socket timeout and every wait
polls a bounded number of times, so a lost packet fails the test instead of hanging it.
"""

from __future__ import annotations

import collections
import errno
import gc
import os
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

import fastpath
from fastpath import (
    DROP_REASONS,
    ECHO_MAX_PAYLOAD,
    FLAG_ECHO_REPLY,
    FLAG_ECHO_REQUEST,
    FLAG_RTCP,
    INITIAL_TTL,
    MAX_PAYLOAD,
    Header,
    Relay,
    decode_header_untrusted,
    encode_header,
)

pytestmark = pytest.mark.integration

Address = tuple[str, int]

# Media ids of the nodes (as zlib.crc32 of a node id would give; any 32-bit values do).
A_ID, B_ID, T_ID = 0xA0A0_0001, 0xB0B0_0002, 0x7070_0003
RECV_TIMEOUT = 2.0
ENDPOINT_RCVBUF = 1 << 20


def rtp(seq: int, size: int = 172, tag: int = 0) -> bytes:
    """A 172-byte RTP packet (PT 0) whose body carries ``tag`` and ``seq``."""
    header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, 0x5EED)
    body = struct.pack("!II", tag, seq)
    return (header + body).ljust(size, b"\xa5")


def rtcp_sender_report(ssrc: int = 0x5EED) -> bytes:
    """An RTCP SR (packet type 200) without report blocks."""
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def eventually(check: Callable[[], None], timeout: float = 3.0) -> None:
    """Retry ``check`` (which asserts) until it passes, for a bounded time.

    Send counters move when ``sendmmsg`` returns, and on loopback the kernel has delivered the
    datagram by then: a receiver can read it a moment before the relay has counted it.
    """
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        try:
            check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
        else:
            return


def overlay_in_reaches(relay: Relay, packets: int) -> bool:
    return relay.counters()["overlay_in"]["packets"] >= packets


def take_replies(relay: Relay, count: int) -> list[tuple[int, bytes, float]]:
    """The next ``count`` echo replies of ``relay``, waiting for them (bounded)."""
    replies: list[tuple[int, bytes, float]] = []
    deadline = time.monotonic() + RECV_TIMEOUT
    for _ in range(10_000):
        replies += relay.take_echo_replies()
        if len(replies) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    return replies


def sources_and_payloads(replies: list[tuple[int, bytes, float]]) -> list[tuple[int, bytes]]:
    return [(source, payload) for source, payload, _ in replies]


def drops(relay: Relay) -> dict[str, int]:
    return {k: v for k, v in relay.counters()["drops"].items() if v}


def recv(sock: socket.socket) -> tuple[bytes, Address]:
    data, source = sock.recvfrom(65536)
    return data, (source[0], source[1])


def assert_silent(sock: socket.socket) -> None:
    """Nothing is queued on ``sock`` (call after something that would have arrived earlier)."""
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recvfrom(65536)
    finally:
        sock.settimeout(RECV_TIMEOUT)


@dataclass
class Node:
    relay: Relay
    host: str
    media_id: int

    @property
    def overlay(self) -> Address:
        return (self.host, self.relay.overlay_port)


@dataclass
class Leg:
    """One endpoint leg: the session on a node and the endpoint's socket(s)."""

    node: Node
    session_id: int
    endpoint: socket.socket
    rtcp_endpoint: socket.socket | None = None

    @property
    def rtp_address(self) -> Address:
        counters = self.node.relay.session_counters(self.session_id)
        return (self.node.host, counters["rtp_port"])

    @property
    def rtcp_address(self) -> Address:
        port = self.node.relay.session_counters(self.session_id)["rtcp_port"]
        assert port is not None
        return (self.node.host, port)


@dataclass
class Net:
    """The relays and sockets of one test; everything is stopped and closed at teardown."""

    host: Callable[[], str]
    nodes: list[Node] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    next_session: int = 0x5E55_0000_0000_0001

    def node(self, media_id: int, *, start: bool = True) -> Node:
        host = self.host()
        node = Node(Relay(media_id, host, 0), host, media_id)
        self.nodes.append(node)
        if start:
            node.relay.start()
        return node

    def udp(self, host: str | None = None, port: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ENDPOINT_RCVBUF)
        sock.bind((host or self.host(), port))
        sock.settimeout(RECV_TIMEOUT)
        return sock

    def socket_pair(self) -> tuple[socket.socket, socket.socket]:
        """Two sockets on ports P and P + 1 (an endpoint's RTP and RTCP)."""
        host = self.host()
        for _ in range(50):
            first = self.udp(host)
            port = first.getsockname()[1]
            if port < 65535:
                try:
                    return first, self.udp(host, port + 1)
                except OSError:
                    pass
        raise RuntimeError(f"no consecutive free ports on {host}")

    def session_id(self) -> int:
        self.next_session += 1
        return self.next_session

    def call(
        self, a: Node, b: Node, *, rtcp: bool = False, rtcp_mux_a: bool = False
    ) -> tuple[Leg, Leg]:
        """Sessions for one call between ``a`` and ``b``.

        A's endpoint is unknown (learnt by latching); B's comes from its "SDP". With ``rtcp``
        both sessions have RTCP ports (A's unless ``rtcp_mux_a``) and both endpoints an RTCP
        socket on their RTP port + 1.
        """
        sid_a, sid_b = self.session_id(), self.session_id()
        if rtcp:
            ea, ea_rtcp = self.socket_pair()
            eb, eb_rtcp = self.socket_pair()
        else:
            ea, ea_rtcp, eb, eb_rtcp = self.udp(), None, self.udp(), None
        a_rtcp = 0 if rtcp and not rtcp_mux_a else None
        b_rtcp = 0 if rtcp else None
        eb_address = eb.getsockname()
        a.relay.add_session(sid_a, a.host, 0, a_rtcp, None, b.media_id, sid_b)
        b.relay.add_session(sid_b, b.host, 0, b_rtcp, eb_address, a.media_id, sid_a)
        return Leg(a, sid_a, ea, ea_rtcp), Leg(b, sid_b, eb, eb_rtcp)

    def close(self) -> None:
        for node in self.nodes:
            node.relay.stop()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def net(loopback_host: Callable[[], str]) -> Iterator[Net]:
    n = Net(loopback_host)
    try:
        yield n
    finally:
        n.close()


def link(a: Node, b: Node) -> None:
    """Direct next hops between two nodes."""
    a.relay.set_next_hops({b.media_id: b.overlay})
    b.relay.set_next_hops({a.media_id: a.overlay})


def exchange(leg_a: Leg, leg_b: Leg, count: int = 1, tag: int = 0) -> None:
    """``count`` packets A -> B then B -> A, each checked byte for byte and by source."""
    for seq in range(count):
        packet = rtp(seq, tag=tag)
        leg_a.endpoint.sendto(packet, leg_a.rtp_address)
        assert recv(leg_b.endpoint) == (packet, leg_b.rtp_address)
    for seq in range(count):
        packet = rtp(seq, tag=tag + 1)
        leg_b.endpoint.sendto(packet, leg_b.rtp_address)
        assert recv(leg_a.endpoint) == (packet, leg_a.rtp_address)


# ---------------------------------------------------------------------------------------------


def test_the_compiled_extension_is_loaded() -> None:
    assert fastpath._relay.__file__ is not None
    assert fastpath._relay.__file__.endswith(".so")
    assert fastpath.Relay is fastpath._relay.Relay


def test_rtp_crosses_two_relays_unchanged_both_ways(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    before = time.monotonic()
    exchange(leg_a, leg_b, count=10)
    after = time.monotonic()

    def settled() -> None:
        ca = a.relay.session_counters(leg_a.session_id)
        assert ca["packets_in"] == 10
        assert ca["bytes_in"] == 1720
        assert ca["packets_out"] == 10
        assert ca["bytes_out"] == 1720
        assert ca["drops"] == 0
        assert ca["latched"] is True
        assert ca["endpoint"] == leg_a.endpoint.getsockname()
        assert ca["rtcp_port"] is None
        assert ca["last_seen"] is not None
        assert before <= ca["last_seen"] <= after
        cb = b.relay.session_counters(leg_b.session_id)
        assert (cb["packets_in"], cb["packets_out"], cb["drops"]) == (10, 10, 0)
        assert a.relay.counters()["links"] == {B_ID: {"packets": 10, "bytes": 10 * 192}}
        assert b.relay.counters()["links"] == {A_ID: {"packets": 10, "bytes": 10 * 192}}
        assert a.relay.counters()["overlay_in"] == {"packets": 10, "bytes": 10 * 192}
        assert a.relay.counters()["sessions"] == 1
        assert drops(a.relay) == drops(b.relay) == {}

    eventually(settled)


def test_rtcp_travels_between_the_rtcp_ports(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b, rtcp=True)
    assert leg_a.rtcp_endpoint is not None
    assert leg_b.rtcp_endpoint is not None
    report = rtcp_sender_report()

    leg_a.rtcp_endpoint.sendto(report, leg_a.rtcp_address)
    # B's endpoint RTCP address is its SDP port + 1 until its own RTCP arrives.
    assert recv(leg_b.rtcp_endpoint) == (report, leg_b.rtcp_address)
    leg_b.rtcp_endpoint.sendto(report + b"b", leg_b.rtcp_address)
    assert recv(leg_a.rtcp_endpoint) == (report + b"b", leg_a.rtcp_address)
    exchange(leg_a, leg_b)
    assert_silent(leg_a.rtcp_endpoint)
    assert_silent(leg_b.rtcp_endpoint)
    rtcp_endpoint = leg_b.rtcp_endpoint.getsockname()

    def settled() -> None:
        counters = b.relay.session_counters(leg_b.session_id)
        assert counters["rtcp_endpoint"] == rtcp_endpoint
        assert counters["packets_in"] == counters["packets_out"] == 2

    eventually(settled)


def test_rtcp_mux_is_told_apart_by_packet_type(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b, rtcp=True, rtcp_mux_a=True)
    assert leg_b.rtcp_endpoint is not None
    assert a.relay.session_counters(leg_a.session_id)["rtcp_port"] is None
    report = rtcp_sender_report()

    # A's endpoint muxes: RTP and RTCP on one socket; B's endpoint has both ports.
    leg_a.endpoint.sendto(rtp(1), leg_a.rtp_address)
    leg_a.endpoint.sendto(report, leg_a.rtp_address)
    assert recv(leg_b.endpoint) == (rtp(1), leg_b.rtp_address)
    assert recv(leg_b.rtcp_endpoint) == (report, leg_b.rtcp_address)
    # RTCP from B's endpoint reaches A's endpoint on its one (RTP) port.
    leg_b.rtcp_endpoint.sendto(report, leg_b.rtcp_address)
    assert recv(leg_a.endpoint) == (report, leg_a.rtp_address)


def test_latching_drops_other_sources_and_replaces_the_sdp_address(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    exchange(leg_a, leg_b)  # A latches on its endpoint

    intruder = net.udp()
    for seq in range(3):
        intruder.sendto(rtp(seq, tag=666), leg_a.rtp_address)
    leg_a.endpoint.sendto(rtp(99), leg_a.rtp_address)
    assert recv(leg_b.endpoint)[0] == rtp(99)  # the intruder's packets never arrived first
    assert_silent(leg_b.endpoint)
    assert drops(a.relay) == {"unknown_source": 3}
    assert a.relay.session_counters(leg_a.session_id)["drops"] == 3

    # Another call: until B's endpoint sends, B delivers to the address from its SDP...
    leg_a, leg_b = net.call(a, b)
    leg_a.endpoint.sendto(rtp(4), leg_a.rtp_address)
    assert recv(leg_b.endpoint) == (rtp(4), leg_b.rtp_address)
    assert b.relay.session_counters(leg_b.session_id)["latched"] is False
    # ... but the endpoint sends from another address (a NAT): that one is latched.
    natted = net.udp()
    natted.sendto(rtp(5), leg_b.rtp_address)
    assert recv(leg_a.endpoint) == (rtp(5), leg_a.rtp_address)
    leg_a.endpoint.sendto(rtp(6), leg_a.rtp_address)
    assert recv(natted) == (rtp(6), leg_b.rtp_address)
    assert_silent(leg_b.endpoint)
    counters = b.relay.session_counters(leg_b.session_id)
    assert counters["endpoint"] == natted.getsockname()
    assert counters["latched"] is True
    leg_b.endpoint.sendto(rtp(7), leg_b.rtp_address)  # the SDP address is now a stranger
    wait_until(lambda: drops(b.relay) == {"unknown_source": 1}, "the drop at B")


def test_a_session_added_latched_takes_only_its_replicated_sources(net: Net) -> None:
    """A standby's relay restores a session of its active (pair replication) latched on the
    sources the active's relay had latched: media flows to them at once, before they send,
    and a stranger cannot take the ports during the takeover."""
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    endpoint, endpoint_rtcp = net.udp(), net.udp()  # RTCP not on RTP + 1: a NAT's choice
    sid_a, sid_b = net.session_id(), net.session_id()
    a.relay.add_session(
        sid_a, a.host, 0, 0, endpoint.getsockname(), B_ID, sid_b,
        latched=True, rtcp_latched=endpoint_rtcp.getsockname(),
    )  # fmt: skip
    far, far_rtcp = net.socket_pair()
    b.relay.add_session(sid_b, b.host, 0, 0, far.getsockname(), A_ID, sid_a)
    leg_a = Leg(a, sid_a, endpoint, endpoint_rtcp)
    leg_b = Leg(b, sid_b, far, far_rtcp)
    counters = a.relay.session_counters(sid_a)
    assert (counters["latched"], counters["rtcp_latched"]) == (True, True)
    assert counters["endpoint"] == endpoint.getsockname()
    assert counters["rtcp_endpoint"] == endpoint_rtcp.getsockname()

    # The far side's media reaches the latched sources before they sent anything.
    far.sendto(rtp(1), leg_b.rtp_address)
    assert recv(endpoint) == (rtp(1), leg_a.rtp_address)
    far_rtcp.sendto(rtcp_sender_report(), leg_b.rtcp_address)
    assert recv(endpoint_rtcp) == (rtcp_sender_report(), leg_a.rtcp_address)
    # A stranger is dropped on both ports, from its first datagram.
    stranger = net.udp()
    stranger.sendto(rtp(2, tag=666), leg_a.rtp_address)
    stranger.sendto(rtcp_sender_report(0x666), leg_a.rtcp_address)
    wait_until(lambda: drops(a.relay) == {"unknown_source": 2}, "the stranger's drops")
    assert_silent(far)
    assert_silent(far_rtcp)
    assert_silent(stranger)
    # The latched sources themselves go through, and stay latched.
    exchange(leg_a, leg_b, count=2)
    endpoint_rtcp.sendto(rtcp_sender_report(), leg_a.rtcp_address)
    assert recv(far_rtcp) == (rtcp_sender_report(), leg_b.rtcp_address)
    counters = a.relay.session_counters(sid_a)
    assert counters["endpoint"] == endpoint.getsockname()
    assert counters["rtcp_endpoint"] == endpoint_rtcp.getsockname()
    assert drops(a.relay) == {"unknown_source": 2}


def test_rtcp_latched_alone_leaves_rtp_to_learn(net: Net) -> None:
    """A recvonly endpoint had only its RTCP reports latched on the active: the restored session
    holds RTCP and still learns RTP from the first packet, as any session does."""
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    sdp_endpoint, reports = net.udp(), net.udp()
    sid_a, sid_b = net.session_id(), net.session_id()
    a.relay.add_session(
        sid_a, a.host, 0, 0, sdp_endpoint.getsockname(), B_ID, sid_b,
        rtcp_latched=reports.getsockname(),
    )  # fmt: skip
    counters = a.relay.session_counters(sid_a)
    assert (counters["latched"], counters["rtcp_latched"]) == (False, True)
    far = net.udp()
    b.relay.add_session(sid_b, b.host, 0, None, far.getsockname(), A_ID, sid_a)
    natted = net.udp()
    rtp_port = counters["rtp_port"]
    natted.sendto(rtp(1), (a.host, rtp_port))
    assert recv(far)[0] == rtp(1)
    counters = a.relay.session_counters(sid_a)
    assert (counters["latched"], counters["endpoint"]) == (True, natted.getsockname())
    # Latching RTP does not move the RTCP source already latched.
    assert (counters["rtcp_latched"], counters["rtcp_endpoint"]) == (True, reports.getsockname())


def test_a_call_with_both_legs_on_one_node(net: Net) -> None:
    a = net.node(A_ID)
    e1, e2 = net.udp(), net.udp()
    s1, s2 = net.session_id(), net.session_id()
    a.relay.add_session(s1, a.host, 0, None, None, A_ID, s2)
    a.relay.add_session(s2, a.host, 0, None, e2.getsockname(), A_ID, s1)
    exchange(Leg(a, s1, e1), Leg(a, s2, e2), count=3)
    assert a.relay.counters()["links"] == {}
    assert drops(a.relay) == {}


def test_transit_relay_forwards_both_ways(net: Net) -> None:
    a, t, b = net.node(A_ID), net.node(T_ID), net.node(B_ID)
    a.relay.set_next_hops({B_ID: t.overlay, T_ID: t.overlay})
    t.relay.set_next_hops({A_ID: a.overlay, B_ID: b.overlay})
    b.relay.set_next_hops({A_ID: t.overlay, T_ID: t.overlay})
    leg_a, leg_b = net.call(a, b)
    exchange(leg_a, leg_b, count=5)

    def settled() -> None:
        counters = t.relay.counters()
        assert counters["sessions"] == 0
        assert counters["links"] == {
            A_ID: {"packets": 5, "bytes": 5 * 192},
            B_ID: {"packets": 5, "bytes": 5 * 192},
        }
        assert drops(t.relay) == {}

    eventually(settled)


def test_transit_decrements_ttl_and_drops_at_zero(net: Net) -> None:
    t, b = net.node(T_ID), net.node(B_ID)
    sink, sender = net.udp(), net.udp()
    t.relay.set_next_hops({99: sink.getsockname(), B_ID: b.overlay})
    header = Header(destination=99, source=7, session=0x0123_4567_89AB_CDEF, flags=FLAG_RTCP)

    for ttl in (INITIAL_TTL, 5, 1):
        packet = encode_header(Header(**{**header.__dict__, "ttl": ttl}), b"payload")
        sender.sendto(packet, t.overlay)
        data, source = recv(sink)
        assert source == t.overlay
        assert decode_header_untrusted(data) == (
            Header(**{**header.__dict__, "ttl": ttl - 1}),
            b"payload",
        )
        assert data[:1] + data[2:] == packet[:1] + packet[2:]

    sender.sendto(encode_header(Header(**{**header.__dict__, "ttl": 0})), t.overlay)
    wait_until(lambda: drops(t.relay) == {"ttl_expired": 1}, "the ttl drop at T")
    # Arriving at T with ttl 1, the packet reaches B with 0 and is dropped there.
    sender.sendto(encode_header(Header(B_ID, 7, 1, ttl=1)), t.overlay)
    wait_until(lambda: drops(b.relay) == {"ttl_expired": 1}, "the ttl drop at B")


def test_a_route_change_moves_the_flow_without_loss(net: Net) -> None:
    a, t, b = net.node(A_ID), net.node(T_ID), net.node(B_ID)
    link(a, b)
    t.relay.set_next_hops({A_ID: a.overlay, B_ID: b.overlay})
    leg_a, leg_b = net.call(a, b)

    def burst(first: int, count: int = 200) -> None:
        for chunk in range(first, first + count, 50):
            for seq in range(chunk, chunk + 50):
                leg_a.endpoint.sendto(rtp(seq), leg_a.rtp_address)
            for seq in range(chunk, chunk + 50):
                assert recv(leg_b.endpoint)[0] == rtp(seq)

    def via_t(packets: int) -> Callable[[], None]:
        def check() -> None:
            assert t.relay.counters()["links"][B_ID]["packets"] == packets

        return check

    burst(0)
    a.relay.set_next_hops({B_ID: t.overlay})  # the direct link degraded: detour via T
    burst(200)
    eventually(via_t(200))
    a.relay.set_next_hops({B_ID: b.overlay})  # and back
    burst(400)
    eventually(via_t(200))

    def settled() -> None:
        assert a.relay.counters()["links"] == {B_ID: {"packets": 600, "bytes": 600 * 192}}
        assert drops(a.relay) == drops(t.relay) == drops(b.relay) == {}

    eventually(settled)


def test_bad_packets_are_counted_and_other_sessions_keep_flowing(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    exchange(leg_a, leg_b)
    silent_sid = net.session_id()  # a session whose endpoint is still unknown
    a.relay.add_session(silent_sid, a.host, 0, None, None, B_ID, 42)
    valid = bytearray(encode_header(Header(A_ID, B_ID, leg_a.session_id), rtp(1)))

    def patched(offset: int, value: int) -> bytes:
        packet = bytearray(valid)
        packet[offset] = value
        return bytes(packet)

    overlay_cases: list[tuple[str, bytes]] = [
        ("short", b""),
        ("short", bytes(valid[:19])),
        ("bad_version", patched(0, 0x20)),
        ("bad_version", patched(0, 0x00)),
        ("bad_flags", patched(0, 0x18)),
        ("bad_flags", patched(0, 0x10 | FLAG_ECHO_REQUEST | FLAG_ECHO_REPLY)),
        ("reserved", patched(3, 1)),
        ("ttl_expired", patched(1, 0)),
        ("unknown_session", encode_header(Header(A_ID, B_ID, 0xDEAD), rtp(1))),
        ("no_next_hop", encode_header(Header(0x7777, B_ID, 1), rtp(1))),
        ("no_endpoint", encode_header(Header(A_ID, B_ID, silent_sid), rtp(1))),
        ("oversized", bytes(valid[:20]) + bytes(MAX_PAYLOAD + 1)),
        ("oversized", encode_header(Header(A_ID, B_ID, 0, FLAG_ECHO_REPLY), bytes(600))),
    ]
    stranger = net.udp()
    expected: collections.Counter[str] = collections.Counter()
    for number, (reason, packet) in enumerate(overlay_cases):
        stranger.sendto(packet, a.overlay)
        expected[reason] += 1
        wait_until(lambda: drops(a.relay) == expected, f"{reason} counted")
        exchange(leg_a, leg_b, tag=number)  # the call is undisturbed

    # On a session port: a datagram too large to wrap, then the largest that fits.
    leg_a.endpoint.sendto(bytes(MAX_PAYLOAD + 1), leg_a.rtp_address)
    expected["oversized"] += 1
    wait_until(lambda: drops(a.relay) == expected, "oversized from the endpoint")
    leg_a.endpoint.sendto(bytes(MAX_PAYLOAD), leg_a.rtp_address)
    assert recv(leg_b.endpoint) == (bytes(MAX_PAYLOAD), leg_b.rtp_address)
    assert a.relay.session_counters(leg_a.session_id)["drops"] == 1
    assert a.relay.session_counters(silent_sid)["drops"] == 1
    assert drops(b.relay) == {}
    exchange(leg_a, leg_b, count=3)


def test_random_garbage_on_the_overlay_port_is_all_dropped(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    rng = random.Random(0)
    stranger = net.udp()
    sent = 0
    for _ in range(10):
        for _ in range(200):
            stranger.sendto(rng.randbytes(rng.randrange(0, 120)), a.overlay)
            sent += 1
        wait_until(partial(overlay_in_reaches, a.relay, sent), "the garbage to arrive")
    assert sum(a.relay.counters()["drops"].values()) == sent
    exchange(leg_a, leg_b, count=3)


def test_remove_session_frees_its_ports(net: Net) -> None:
    a = net.node(A_ID)
    sid = net.session_id()
    a.relay.add_session(sid, a.host, 0, 0, None, B_ID, 7)
    counters = a.relay.session_counters(sid)
    rtcp_port = counters["rtcp_port"]
    assert rtcp_port is not None
    ports = (counters["rtp_port"], rtcp_port)
    with pytest.raises(OSError, match="in use"):
        a.relay.add_session(net.session_id(), a.host, ports[0], None, None, B_ID, 7)
    a.relay.remove_session(sid)
    assert a.relay.counters()["sessions"] == 0
    for port in ports:
        net.udp(a.host, port).close()
    with pytest.raises(KeyError):
        a.relay.remove_session(sid)
    with pytest.raises(KeyError):
        a.relay.session_counters(sid)
    sender = net.udp()
    sender.sendto(encode_header(Header(A_ID, B_ID, sid)), a.overlay)
    wait_until(lambda: drops(a.relay) == {"unknown_session": 1}, "the packet to be dropped")
    a.relay.add_session(sid, a.host, ports[0], ports[1], None, B_ID, 7)  # the id is free again
    assert a.relay.session_counters(sid)["rtp_port"] == ports[0]


def test_sessions_come_and_go_while_a_call_flows(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    rng = random.Random(1)
    live: set[int] = set()
    for round_number in range(6):
        for _ in range(60):
            sid = rng.getrandbits(64) | 1
            a.relay.add_session(sid, a.host, 0, None, None, B_ID, sid)
            live.add(sid)
        for sid in rng.sample(sorted(live), 40):
            a.relay.remove_session(sid)
            live.discard(sid)
        exchange(leg_a, leg_b, count=5, tag=round_number)
    assert a.relay.counters()["sessions"] == len(live) + 1
    for sid in live:
        assert a.relay.session_counters(sid)["packets_in"] == 0
    for sid in live:
        a.relay.remove_session(sid)
    assert a.relay.counters()["sessions"] == 1
    assert drops(a.relay) == {}


def test_tables_set_before_start_take_effect_once_started(net: Net) -> None:
    a, b = net.node(A_ID, start=False), net.node(B_ID, start=False)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    leg_a.endpoint.sendto(rtp(0), leg_a.rtp_address)  # waits in the socket until start()
    a.relay.start()
    b.relay.start()
    assert recv(leg_b.endpoint) == (rtp(0), leg_b.rtp_address)
    exchange(leg_a, leg_b)


def test_calls_from_another_thread_while_a_call_flows(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b)
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for number in range(300):
                sid = 0xC0DE_0000 + number
                a.relay.add_session(sid, a.host, 0, 0, None, B_ID, sid)
                a.relay.session_counters(sid)
                a.relay.counters()
                a.relay.set_next_hops({B_ID: b.overlay, number + 1: b.overlay})
                a.relay.remove_session(sid)
                a.relay.take_echo_replies()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for round_number in range(40):
            exchange(leg_a, leg_b, count=5, tag=round_number)
    finally:
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert errors == []
    assert a.relay.counters()["sessions"] == 1
    assert drops(a.relay) == drops(b.relay) == {}


def test_errors_from_calls(net: Net) -> None:
    a = net.node(A_ID)
    sid = net.session_id()
    a.relay.add_session(sid, a.host, 0, None, None, B_ID, 7)
    port = a.relay.session_counters(sid)["rtp_port"]

    with pytest.raises(ValueError, match="already exists"):
        a.relay.add_session(sid, a.host, 0, None, None, B_ID, 7)
    with pytest.raises(OSError, match=f"{a.host}:{port}") as excinfo:
        a.relay.add_session(net.session_id(), a.host, port, None, None, B_ID, 7)
    assert excinfo.value.errno == 98  # EADDRINUSE
    with pytest.raises(OSError, match=f"{a.host}:{a.relay.overlay_port}"):
        Relay(A_ID, a.host, a.relay.overlay_port)

    def add(
        sid: object = 9,
        host: object = a.host,
        rtp_port: object = 0,
        rtcp_port: object = None,
        endpoint: object = None,
        node: object = B_ID,
        remote: object = 1,
        latched: object = False,
        rtcp_latched: object = None,
    ) -> Callable[[], None]:
        return lambda: a.relay.add_session(
            sid, host, rtp_port, rtcp_port, endpoint, node, remote,  # type: ignore[arg-type]
            latched=latched, rtcp_latched=rtcp_latched,  # type: ignore[arg-type]
        )  # fmt: skip

    def hops(table: object) -> Callable[[], None]:
        return lambda: a.relay.set_next_hops(table)  # type: ignore[arg-type]

    def faults(table: object) -> Callable[[], None]:
        return lambda: a.relay.set_faults(table)  # type: ignore[arg-type]

    bad_calls: list[tuple[type[Exception], str, Callable[[], object]]] = [
        (ValueError, "must not be 0", add(sid=0)),
        (ValueError, "must not be 0", add(remote=0)),
        (OverflowError, "session_id", add(sid=2**64)),
        (OverflowError, "rtp_port", add(rtp_port=65536)),
        (OverflowError, "remote_node", add(node=-1)),
        (ValueError, "numeric", add(host="localhost")),
        (ValueError, "numeric", add(host="127.0.0.1.5")),
        (TypeError, "host must be a str", add(host=b"127.0.0.1")),
        (ValueError, "same address family", add(endpoint=("::1", 5))),
        (ValueError, "rtcp-mux", add(rtp_port=4000, rtcp_port=4000)),
        (OverflowError, "endpoint port", add(endpoint=(a.host, 0))),
        (TypeError, "endpoint", add(endpoint="x")),
        (TypeError, "session_id", add(sid="9")),
        (ValueError, "latched needs the endpoint", add(latched=True)),
        (TypeError, "latched must be a bool", add(latched=1, endpoint=(a.host, 5))),
        (ValueError, "needs an RTCP port", add(rtcp_latched=(a.host, 5))),
        (ValueError, "same address family", add(rtcp_port=0, rtcp_latched=("::1", 5))),
        (TypeError, "rtcp_latched must be", add(rtcp_port=0, rtcp_latched="x")),
        (OverflowError, "rtcp_latched port", add(rtcp_port=0, rtcp_latched=(a.host, 0))),
        (OverflowError, "node_media_id", lambda: Relay(2**32, "127.0.0.1", 0)),
        (ValueError, "numeric", lambda: Relay(1, "", 0)),
        (OverflowError, "overlay_port", lambda: Relay(1, "127.0.0.1", -1)),
        (ValueError, "own media id", hops({A_ID: ("127.0.0.1", 9)})),
        (ValueError, "numeric", hops({B_ID: ("node-b", 9)})),
        (ValueError, "address family", hops({B_ID: ("::1", 9)})),
        (OverflowError, "port", hops({B_ID: ("127.0.0.1", 0)})),
        (TypeError, "tuple", hops({B_ID: "127.0.0.1:9"})),
        (ValueError, "this node", lambda: a.relay.send_echo(A_ID, b"")),
        (ValueError, "exceeds", lambda: a.relay.send_echo(B_ID, bytes(ECHO_MAX_PAYLOAD + 1))),
        (ValueError, "address family", lambda: a.relay.send_echo(B_ID, b"", via=("::1", 9))),
        (ValueError, "numeric", lambda: a.relay.send_echo(B_ID, b"", via=("node-b", 9))),
        (OverflowError, "via port", lambda: a.relay.send_echo(B_ID, b"", via=(a.host, 0))),
        (TypeError, "via", lambda: a.relay.send_echo(B_ID, b"", via="x")),  # type: ignore[arg-type]
        (TypeError, "peer must be a", lambda: a.relay.set_peers(["127.0.0.1:9"])),  # type: ignore[list-item]
        (TypeError, "not iterable", lambda: a.relay.set_peers(9)),  # type: ignore[arg-type]
        (ValueError, "address family", lambda: a.relay.set_peers([("::1", 9)])),
        (ValueError, "numeric", lambda: a.relay.set_peers([("node-b", 9)])),
        (OverflowError, "peer port", lambda: a.relay.set_peers([(a.host, 0)])),
        (ValueError, "between 0 and 1", faults({(a.host, 9): (1.5, False)})),
        (ValueError, "between 0 and 1", faults({(a.host, 9): (float("nan"), False)})),
        (TypeError, "loss_ratio, blackhole", faults({(a.host, 9): 0.5})),
        (TypeError, "float, bool", faults({(a.host, 9): ("0.5", False)})),
        (TypeError, "float, bool", faults({(a.host, 9): (0.5, 1)})),
        (ValueError, "numeric", faults({("node-b", 9): (0.5, False)})),
        (OverflowError, "fault address port", faults({(a.host, 65536): (0.5, False)})),
        (RuntimeError, "already started", a.relay.start),
    ]
    for error, message, call in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert a.relay.counters()["sessions"] == 1  # nothing half-added
    a.relay.set_next_hops({})  # an empty table is fine
    a.relay.set_faults({})
    a.relay.set_peers(None)

    a.relay.stop()
    for call in (
        a.relay.start,
        lambda: a.relay.add_session(9, a.host, 0, None, None, 1, 1),
        lambda: a.relay.remove_session(sid),
        lambda: a.relay.set_next_hops({}),
        lambda: a.relay.set_peers([]),
        lambda: a.relay.set_faults({}),
        lambda: a.relay.send_echo(B_ID, b""),
        lambda: a.relay.send_echo(B_ID, b"", via=(a.host, 9)),
    ):
        with pytest.raises(RuntimeError, match="stopped"):
            call()
    assert a.relay.session_counters(sid)["packets_in"] == 0  # still readable
    assert a.relay.counters()["sessions"] == 1


def test_stop_is_prompt_and_closes_every_socket(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    leg_a, leg_b = net.call(a, b, rtcp=True)
    exchange(leg_a, leg_b)
    ports = [a.relay.overlay_port, *leg_a.rtp_address[1:], *leg_a.rtcp_address[1:]]
    for seq in range(500):  # traffic in flight while stopping
        leg_a.endpoint.sendto(rtp(seq), leg_a.rtp_address)
    started = time.monotonic()
    a.relay.stop()
    assert time.monotonic() - started < 0.5
    a.relay.stop()  # idempotent
    for port in ports:
        net.udp(a.host, port).close()

    never_started = net.node(T_ID, start=False)
    never_started.relay.stop()
    net.udp(never_started.host, never_started.relay.overlay_port).close()


def test_stop_returns_while_another_thread_sends_commands(
    loopback_host: Callable[[], str],
) -> None:
    host = loopback_host()
    for _ in range(100):
        relay = Relay(A_ID, host, 0)
        relay.start()
        done = threading.Event()

        def hammer(relay: Relay = relay, done: threading.Event = done) -> None:
            for _ in range(100_000):
                if done.is_set():
                    return
                relay.take_echo_replies()  # a command: wakes the loop every time

        worker = threading.Thread(target=hammer)
        worker.start()
        time.sleep(0.001)
        # In a thread of its own: a stop() that never returns fails the test, not the run.
        stopper = threading.Thread(target=relay.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=5)
        done.set()
        worker.join(timeout=5)
        assert not stopper.is_alive(), "stop() did not return"
        assert not worker.is_alive()


def test_a_dropped_relay_stops_its_thread_and_frees_its_port(
    loopback_host: Callable[[], str],
) -> None:
    host = loopback_host()
    relay = Relay(A_ID, host, 0)
    relay.start()
    port = relay.overlay_port
    del relay
    gc.collect()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))


def test_echo_round_trip_direct_and_through_a_transit(net: Net) -> None:
    a, t, b = net.node(A_ID), net.node(T_ID), net.node(B_ID)
    link(a, b)
    a.relay.send_echo(B_ID, b"probe-1")
    assert sources_and_payloads(take_replies(a.relay, 1)) == [(B_ID, b"probe-1")]
    assert a.relay.take_echo_replies() == []

    # B has no next hop toward A: its replies go back to where the requests came from (T),
    # which forwards them by its own table.
    a.relay.set_next_hops({B_ID: t.overlay})
    t.relay.set_next_hops({A_ID: a.overlay, B_ID: b.overlay})
    b.relay.set_next_hops({})
    a.relay.send_echo(B_ID, b"probe-2")
    a.relay.send_echo(B_ID, b"")
    assert sources_and_payloads(take_replies(a.relay, 2)) == [(B_ID, b"probe-2"), (B_ID, b"")]

    def transit_counted() -> None:
        assert t.relay.counters()["links"][B_ID]["packets"] == 2
        assert t.relay.counters()["links"][A_ID]["packets"] == 2

    eventually(transit_counted)

    a.relay.send_echo(0x4242, b"nowhere")
    assert drops(a.relay) == {"no_next_hop": 1}
    assert drops(b.relay) == drops(t.relay) == {}
    # An echo request that reached its destination from a stranger is answered too, to the
    # stranger's address.
    stranger = net.udp()
    request = encode_header(Header(B_ID, A_ID, 5, FLAG_ECHO_REQUEST), b"raw")
    stranger.sendto(request, b.overlay)
    assert recv(stranger) == (
        encode_header(Header(A_ID, B_ID, 5, FLAG_ECHO_REPLY, INITIAL_TTL), b"raw"),
        b.overlay,
    )
    assert a.relay.take_echo_replies() == []


def test_direct_echo_via_a_neighbour_without_next_hops(net: Net) -> None:
    # Neither relay has a next hop: the request goes straight to B's overlay socket and the
    # reply straight back to A's, so the probe measures that link both ways.
    a, b = net.node(A_ID), net.node(B_ID)
    sent_at = time.monotonic()
    a.relay.send_echo(B_ID, b"direct-1", via=b.overlay)
    a.relay.send_echo(B_ID, b"direct-2", via=b.overlay)
    replies = take_replies(a.relay, 2)
    taken_at = time.monotonic()
    assert sources_and_payloads(replies) == [(B_ID, b"direct-1"), (B_ID, b"direct-2")]
    received = [received_at for _, _, received_at in replies]
    assert sent_at <= received[0] <= received[1] <= taken_at
    assert drops(a.relay) == drops(b.relay) == {}
    # Not through the next-hop table, so not counted on a link.
    assert a.relay.counters()["links"] == b.relay.counters()["links"] == {}
    assert b.relay.counters()["overlay_in"] == {"packets": 2, "bytes": 2 * (20 + 8)}

    # With a next hop toward B elsewhere, via still wins; without via the table is used.
    t = net.node(T_ID)
    a.relay.set_next_hops({B_ID: t.overlay})
    a.relay.send_echo(B_ID, b"direct-3", via=b.overlay)
    assert sources_and_payloads(take_replies(a.relay, 1)) == [(B_ID, b"direct-3")]
    assert t.relay.counters()["overlay_in"]["packets"] == 0
    a.relay.send_echo(B_ID, b"tabled")
    wait_until(lambda: drops(t.relay) == {"no_next_hop": 1}, "the request dropped at T")
    assert a.relay.counters()["links"][B_ID]["packets"] == 1


def test_echo_replies_queue_is_bounded_and_drops_the_oldest(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    total = fastpath.ECHO_QUEUE_LEN + 6
    for first in range(0, total, 100):
        last = min(first + 100, total)
        for number in range(first, last):
            a.relay.send_echo(B_ID, number.to_bytes(4, "big"))
        wait_until(partial(overlay_in_reaches, b.relay, last), "the requests to arrive")
    wait_until(lambda: drops(a.relay) == {"echo_overflow": 6}, "the overflow")
    replies = a.relay.take_echo_replies()
    assert [int.from_bytes(p, "big") for _, p, _ in replies] == list(range(6, total))
    received = [received_at for _, _, received_at in replies]
    assert received == sorted(received)
    assert received[-1] <= time.monotonic()


def test_the_overlay_socket_takes_datagrams_from_its_peers_only(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    a.relay.set_peers([b.overlay])
    b.relay.set_peers([a.overlay])
    leg_a, leg_b = net.call(a, b)
    exchange(leg_a, leg_b)

    # Someone who can reach A's overlay port, while the call flows: media forged for the live
    # session, an echo request that would make A a reflector, junk. None of it gets through.
    stranger = net.udp()
    forged = encode_header(Header(A_ID, B_ID, leg_a.session_id), rtp(666, tag=666))
    reflect = encode_header(Header(A_ID, B_ID, 1, FLAG_ECHO_REQUEST), b"reflect me")
    for seq in range(50):
        for packet in (forged, reflect, b"junk"):
            stranger.sendto(packet, a.overlay)
        leg_b.endpoint.sendto(rtp(seq), leg_b.rtp_address)
        assert recv(leg_a.endpoint) == (rtp(seq), leg_a.rtp_address)
    wait_until(lambda: drops(a.relay) == {"unknown_peer": 150}, "the stranger's drops")
    assert_silent(leg_a.endpoint)
    assert_silent(stranger)

    def delivered_the_call_only() -> None:
        counters = a.relay.session_counters(leg_a.session_id)
        assert (counters["packets_out"], counters["drops"]) == (51, 0)

    eventually(delivered_the_call_only)

    # The peer's media and echoes pass, both ways.
    b.relay.send_echo(A_ID, b"from-b", via=a.overlay)
    assert sources_and_payloads(take_replies(b.relay, 1)) == [(A_ID, b"from-b")]
    a.relay.send_echo(B_ID, b"from-a")
    assert sources_and_payloads(take_replies(a.relay, 1)) == [(B_ID, b"from-a")]
    exchange(leg_a, leg_b, count=3)
    assert drops(a.relay) == {"unknown_peer": 150}
    assert drops(b.relay) == {}


def test_replacing_the_peers_takes_effect_with_the_next_datagram(net: Net) -> None:
    a, t, b = net.node(A_ID), net.node(T_ID), net.node(B_ID)
    link(a, b)
    a.relay.set_peers([b.overlay])
    leg_a, leg_b = net.call(a, b)
    exchange(leg_a, leg_b)
    # T is not a peer of A yet: its echo request is dropped, not answered.
    t.relay.send_echo(A_ID, b"t-1", via=a.overlay)
    wait_until(lambda: drops(a.relay) == {"unknown_peer": 1}, "T's request dropped")
    assert t.relay.take_echo_replies() == []

    a.relay.set_peers([b.overlay, t.overlay])
    t.relay.send_echo(A_ID, b"t-2", via=a.overlay)
    assert sources_and_payloads(take_replies(t.relay, 1)) == [(A_ID, b"t-2")]
    exchange(leg_a, leg_b)

    # B taken off the list: what B sends stops at A's socket; A's sends to B still flow.
    a.relay.set_peers([t.overlay])
    leg_b.endpoint.sendto(rtp(1), leg_b.rtp_address)
    wait_until(lambda: drops(a.relay) == {"unknown_peer": 2}, "B's media dropped")
    leg_a.endpoint.sendto(rtp(2), leg_a.rtp_address)
    assert recv(leg_b.endpoint) == (rtp(2), leg_b.rtp_address)
    assert_silent(leg_a.endpoint)

    # An empty list takes nobody; None (a new relay's state) takes anybody.
    a.relay.set_peers([])
    t.relay.send_echo(A_ID, b"t-3", via=a.overlay)
    wait_until(lambda: drops(a.relay) == {"unknown_peer": 3}, "T's request dropped")
    a.relay.set_peers(None)
    stranger = net.udp()
    stranger.sendto(encode_header(Header(A_ID, 7, 5, FLAG_ECHO_REQUEST), b"s"), a.overlay)
    assert recv(stranger) == (
        encode_header(Header(7, A_ID, 5, FLAG_ECHO_REPLY, INITIAL_TTL), b"s"),
        a.overlay,
    )
    exchange(leg_a, leg_b)
    assert drops(a.relay) == {"unknown_peer": 3}


def seq_of(packet: bytes) -> int:
    """The sequence number ``rtp()`` put into the packet's body."""
    seq: int = struct.unpack_from("!I", packet, 16)[0]
    return seq


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` now."""
    sock.setblocking(False)
    packets = []
    try:
        for _ in range(100_000):
            packets.append(sock.recv(65536))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(RECV_TIMEOUT)
    return packets


def test_fault_loss_drops_that_share_of_what_goes_to_the_address(net: Net) -> None:
    a, b, t = net.node(A_ID), net.node(B_ID), net.node(T_ID)
    a.relay.set_next_hops({B_ID: b.overlay, T_ID: t.overlay})
    b.relay.set_next_hops({A_ID: a.overlay})
    t.relay.set_next_hops({A_ID: a.overlay})
    to_b, at_b = net.call(a, b)
    to_t, at_t = net.call(a, t)
    exchange(to_b, at_b)
    exchange(to_t, at_t)
    a.relay.set_faults({b.overlay: (0.5, False)})

    def sent_toward_b() -> int:
        counters = a.relay.counters()
        return counters["links"][B_ID]["packets"] + counters["drops"]["fault"]

    def delivered_by_b() -> int:
        return b.relay.session_counters(at_b.session_id)["packets_out"]

    def reaches(count: Callable[[], int], goal: int) -> bool:
        return count() == goal

    total, chunk = 4000, 100
    arrived: list[int] = []
    for first in range(0, total, chunk):
        for seq in range(first, first + chunk):
            to_b.endpoint.sendto(rtp(seq), to_b.rtp_address)
            to_t.endpoint.sendto(rtp(seq), to_t.rtp_address)
        # T's stream, to another address, loses nothing.
        for seq in range(first, first + chunk):
            assert recv(at_t.endpoint) == (rtp(seq), at_t.rtp_address)
        # What A let through toward B has been delivered by B: read it.
        wait_until(partial(reaches, sent_toward_b, first + chunk + 1), "A's sends")
        forwarded = a.relay.counters()["links"][B_ID]["packets"]
        wait_until(partial(reaches, delivered_by_b, forwarded), "B's deliveries")
        arrived += [seq_of(packet) for packet in drain(at_b.endpoint)]

    dropped = drops(a.relay)["fault"]
    assert drops(a.relay) == {"fault": dropped}
    assert dropped + len(arrived) == total
    assert 0.45 * total <= dropped <= 0.55 * total
    assert arrived == sorted(set(arrived))  # what arrives is the stream, in order
    assert a.relay.session_counters(to_b.session_id)["drops"] == dropped
    assert a.relay.session_counters(to_t.session_id)["drops"] == 0

    # B's sends to A are not A's to impair.
    for seq in range(20):
        at_b.endpoint.sendto(rtp(seq), at_b.rtp_address)
        assert recv(to_b.endpoint) == (rtp(seq), to_b.rtp_address)
    # Cleared: nothing is lost any more.
    a.relay.set_faults({b.overlay: (0.0, False)})
    exchange(to_b, at_b, count=20)
    assert drops(a.relay) == {"fault": dropped}


def test_a_blackhole_drops_media_and_echoes_sent_to_the_address(net: Net) -> None:
    a, t, b = net.node(A_ID), net.node(T_ID), net.node(B_ID)
    a.relay.set_next_hops({B_ID: t.overlay, T_ID: t.overlay})
    t.relay.set_next_hops({A_ID: a.overlay, B_ID: b.overlay})
    b.relay.set_next_hops({A_ID: t.overlay, T_ID: t.overlay})
    leg_a, leg_b = net.call(a, b)
    exchange(leg_a, leg_b)

    # The transit's sends to B: forwarded media, its own echo requests, its echo replies.
    t.relay.set_faults({b.overlay: (0.25, True)})
    for seq in range(100):
        leg_a.endpoint.sendto(rtp(seq), leg_a.rtp_address)
    wait_until(lambda: drops(t.relay) == {"fault": 100}, "the forwarded media dropped")
    t.relay.send_echo(B_ID, b"t-to-b", via=b.overlay)
    t.relay.send_echo(B_ID, b"t-to-b, tabled")
    b.relay.send_echo(T_ID, b"b-to-t", via=t.overlay)
    wait_until(lambda: drops(t.relay) == {"fault": 103}, "the echoes dropped")
    assert_silent(leg_b.endpoint)
    assert b.relay.counters()["overlay_in"]["packets"] == 1  # the first exchange's
    assert b.relay.take_echo_replies() == []
    # T's sends elsewhere are not impaired: B's media reaches A.
    leg_b.endpoint.sendto(rtp(7), leg_b.rtp_address)
    assert recv(leg_a.endpoint) == (rtp(7), leg_a.rtp_address)

    # A loss ratio of 1 is a blackhole too.
    t.relay.set_faults({b.overlay: (1.0, False)})
    for seq in range(50):
        leg_a.endpoint.sendto(rtp(seq), leg_a.rtp_address)
    wait_until(lambda: drops(t.relay) == {"fault": 153}, "the forwarded media dropped")

    t.relay.set_faults({})
    exchange(leg_a, leg_b, count=5)
    t.relay.send_echo(B_ID, b"again", via=b.overlay)
    assert sources_and_payloads(take_replies(t.relay, 1)) == [(B_ID, b"again")]
    assert drops(t.relay) == {"fault": 153}
    assert drops(a.relay) == drops(b.relay) == {}


def test_a_burst_across_50_sessions_arrives_complete_and_in_order(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    link(a, b)
    calls = [net.call(a, b) for _ in range(50)]
    per_round, rounds = 4, 100  # 50 * 4 * 100 = 20,000 packets
    selector = selectors.DefaultSelector()
    for index, (_, leg_b) in enumerate(calls):
        leg_b.endpoint.setblocking(False)
        selector.register(leg_b.endpoint, selectors.EVENT_READ, index)
    targets = [(leg_a.endpoint, leg_a.rtp_address) for leg_a, _ in calls]
    received = [0] * len(calls)
    started = time.monotonic()
    try:
        for round_number in range(rounds):
            for seq in range(round_number * per_round, (round_number + 1) * per_round):
                for index, (sock, address) in enumerate(targets):
                    sock.sendto(rtp(seq, tag=index), address)
            goal = (round_number + 1) * per_round * len(calls)
            deadline = time.monotonic() + 5.0
            while sum(received) < goal:
                assert time.monotonic() < deadline, f"lost packets in round {round_number}"
                for key, _ in selector.select(timeout=0.5):
                    index = key.data
                    sock = calls[index][1].endpoint
                    for _ in range(64):
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        assert data == rtp(received[index], tag=index)
                        received[index] += 1
    finally:
        selector.close()
    elapsed = time.monotonic() - started
    assert received == [rounds * per_round] * len(calls)
    assert elapsed < 30

    def settled() -> None:
        assert a.relay.counters()["links"][B_ID]["packets"] == 20_000
        delivered = sum(b.relay.session_counters(leg.session_id)["packets_out"] for _, leg in calls)
        assert delivered == 20_000
        assert drops(a.relay) == drops(b.relay) == {}

    eventually(settled)


def test_every_drop_reason_has_a_counter(net: Net) -> None:
    a = net.node(A_ID)
    assert list(a.relay.counters()["drops"]) == list(DROP_REASONS)
    assert set(DROP_REASONS) >= {
        "short",
        "bad_version",
        "reserved",
        "ttl_expired",
        "unknown_session",
        "no_next_hop",
        "unknown_source",
        "oversized",
        "unknown_peer",
        "fault",
    }


# ---------------------------------------------------------------------------------------------
# Liveness echoes
# ---------------------------------------------------------------------------------------------

LIVENESS_INTERVAL = 0.02
LIVENESS_DETECTION = 0.12


def wait_notice(relay: Relay, timeout: float = 2.0) -> float:
    """Block until ``relay.liveness_fd`` is readable; returns when (monotonic)."""
    with selectors.DefaultSelector() as selector:
        selector.register(relay.liveness_fd, selectors.EVENT_READ)
        assert selector.select(timeout), "no liveness notice"
    return time.monotonic()


def heard_from(relay: Relay, peer: int, answers: int) -> bool:
    state = relay.liveness()[peer]
    return state["answered"] >= answers and not state["silent"]


def test_liveness_detects_a_stopped_peer_in_the_detection_time_and_its_return(
    net: Net,
) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    a.relay.set_liveness({B_ID: b.overlay}, LIVENESS_INTERVAL, LIVENESS_DETECTION)
    wait_until(partial(heard_from, a.relay, B_ID, 10), "ten liveness answers")
    assert not a.relay.take_liveness_notice()  # nothing went silent

    address = b.overlay
    b.relay.stop()
    stopped = time.monotonic()
    detected = wait_notice(a.relay) - stopped
    assert a.relay.take_liveness_notice()
    state = a.relay.liveness()[B_ID]
    assert state["silent"]
    assert state["heard"] is not None
    assert state["heard"] <= stopped
    # Silence starts at the last answer, at most one interval before the stop (plus the
    # loop's scheduling): never sooner than the detection time less that interval.
    assert LIVENESS_DETECTION - LIVENESS_INTERVAL <= detected < 0.3, detected
    assert state["sent"] > state["answered"]
    # Liveness answers never reach the measurement echoes' queue.
    assert a.relay.take_echo_replies() == []

    # The peer comes back on the same address: its first answer ends the silence at once.
    back = Node(Relay(B_ID, address[0], address[1]), address[0], B_ID)
    net.nodes.append(back)
    back.relay.start()
    wait_notice(a.relay)
    assert a.relay.take_liveness_notice()
    assert not a.relay.liveness()[B_ID]["silent"]
    assert drops(a.relay) == {}


def test_liveness_echoes_obey_faults_and_measurement_echoes_still_flow(net: Net) -> None:
    a, b, c = net.node(A_ID), net.node(B_ID), net.node(T_ID)
    a.relay.set_liveness({B_ID: b.overlay, T_ID: c.overlay}, LIVENESS_INTERVAL, LIVENESS_DETECTION)
    wait_until(partial(heard_from, a.relay, B_ID, 5), "B's answers")
    wait_until(partial(heard_from, a.relay, T_ID, 5), "T's answers")

    a.relay.set_faults({b.overlay: (0.0, True)})
    wait_notice(a.relay)
    a.relay.take_liveness_notice()
    assert {peer: s["silent"] for peer, s in a.relay.liveness().items()} == {
        B_ID: True,
        T_ID: False,
    }
    assert drops(a.relay)["fault"] > 0
    a.relay.send_echo(T_ID, b"measure", via=c.overlay)
    assert sources_and_payloads(take_replies(a.relay, 1)) == [(T_ID, b"measure")]

    a.relay.set_faults({})
    wait_notice(a.relay)
    a.relay.take_liveness_notice()
    assert not a.relay.liveness()[B_ID]["silent"]


def test_replacing_the_liveness_peers_keeps_the_state_of_those_kept(net: Net) -> None:
    a, b, c = net.node(A_ID), net.node(B_ID), net.node(T_ID)
    a.relay.set_liveness({B_ID: b.overlay}, LIVENESS_INTERVAL, LIVENESS_DETECTION)
    wait_until(partial(heard_from, a.relay, B_ID, 5), "B's answers")
    before = a.relay.liveness()[B_ID]["answered"]
    a.relay.set_liveness({B_ID: b.overlay, T_ID: c.overlay}, LIVENESS_INTERVAL, LIVENESS_DETECTION)
    assert a.relay.liveness()[B_ID]["answered"] >= before
    assert a.relay.liveness()[T_ID]["answered"] == 0
    wait_until(partial(heard_from, a.relay, T_ID, 3), "T's answers")

    a.relay.set_liveness({}, LIVENESS_INTERVAL, LIVENESS_DETECTION)
    assert a.relay.liveness() == {}
    received = b.relay.counters()["overlay_in"]["packets"]
    time.sleep(5 * LIVENESS_INTERVAL)  # no event exists for "nothing is sent"
    assert b.relay.counters()["overlay_in"]["packets"] <= received + 1  # one in flight


def test_liveness_refuses_bad_arguments(net: Net) -> None:
    a, b = net.node(A_ID), net.node(B_ID)
    with pytest.raises(ValueError, match="own media id"):
        a.relay.set_liveness({A_ID: b.overlay}, 0.02, 0.1)
    with pytest.raises(ValueError, match="interval must be between"):
        a.relay.set_liveness({B_ID: b.overlay}, 0.0, 0.1)
    with pytest.raises(ValueError, match="detection_time must be between"):
        a.relay.set_liveness({B_ID: b.overlay}, 0.05, 0.01)
    with pytest.raises(ValueError, match="not a numeric"):
        a.relay.set_liveness({B_ID: ("localhost", 1)}, 0.02, 0.1)
    assert a.relay.liveness() == {}
    a.relay.stop()
    assert a.relay.liveness_fd == -1
    with pytest.raises(RuntimeError, match="stopped"):
        a.relay.set_liveness({B_ID: b.overlay}, 0.02, 0.1)


def thread_stat(name: str) -> list[str]:
    """The fields of /proc/<tid>/stat after the name (field 3 first) of this process's thread
    called ``name``."""
    for tid in os.listdir("/proc/self/task"):
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        if stat[stat.index("(") + 1 : stat.rindex(")")] == name:
            return stat.rpartition(")")[2].split()
    raise AssertionError(f"no thread {name}")


def thread_nice(name: str) -> int:
    return int(thread_stat(name)[19 - 3])


def thread_realtime(name: str) -> tuple[int, int]:
    """(scheduling policy, real-time priority) of the thread: fields 41 and 40."""
    fields = thread_stat(name)
    return int(fields[41 - 3]), int(fields[40 - 3])


def test_the_relay_thread_runs_at_its_own_priority(net: Net) -> None:
    relay = Relay(A_ID, net.host(), 0)
    caller = os.getpriority(os.PRIO_PROCESS, 0)
    relay.start(niceness=-3)
    try:
        if relay.niceness_error:  # not privileged: the thread runs at the caller's priority
            assert relay.niceness_error in (errno.EPERM, errno.EACCES)
            assert thread_nice("fastpath") == caller
        else:
            assert thread_nice("fastpath") == -3
        # The caller's own priority is as it was.
        assert os.getpriority(os.PRIO_PROCESS, 0) == caller
    finally:
        relay.stop()
    with pytest.raises(OverflowError, match="niceness"):
        Relay(A_ID, net.host(), 0).start(niceness=-21)


def test_the_relay_thread_runs_real_time_when_asked(net: Net) -> None:
    relay = Relay(A_ID, net.host(), 0)
    relay.start(realtime=1)
    try:
        if relay.realtime_error:  # not privileged: the ordinary scheduler
            assert relay.realtime_error == errno.EPERM
            assert thread_realtime("fastpath") == (os.SCHED_OTHER, 0)
        else:
            assert thread_realtime("fastpath") == (os.SCHED_FIFO, 1)
        # The caller's thread keeps the ordinary scheduler.
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        relay.stop()
    with pytest.raises(OverflowError, match="realtime"):
        Relay(A_ID, net.host(), 0).start(realtime=100)
