"""The node's media plane over real loopback UDP: who its relay takes from, what faults drop,
the sessions a standby restores from its active (pair replication), and another SIP worker's
sessions in the owner's relay.

The peers' relays are plain sockets bound at the ``[[peers]].media`` addresses of the node's
config, so what the node's relay accepts from them and sends to them is what a real peer's relay
would see.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from fastpath import (
    FLAG_ECHO_REPLY,
    FLAG_ECHO_REQUEST,
    Header,
    decode_header_untrusted,
    encode_header,
)
from overlay.config import (
    ListenAddress,
    MediaSection,
    NodeConfig,
    NodeSection,
    PeerConfig,
    SipSection,
)
from overlay.media import (
    CallMediaState,
    MediaSession,
    OverlaySession,
    PortPair,
    SessionState,
    Side,
    media_id,
)
from overlay.shell.media import MediaPlane, SessionActivity, WorkerMedia

pytestmark = pytest.mark.integration

NODE, PEERS = "plane-a", ("plane-b", "plane-c")
RECV_TIMEOUT = 2.0


def node_config(host: str, peer_hosts: dict[str, str]) -> NodeConfig:
    """The node's config as the schema would build it: only what the media plane reads."""
    return NodeConfig(
        node=NodeSection(NODE, "lab"),
        sip=SipSection(listen=(ListenAddress("udp", host, 5060),)),
        media=MediaSection(address=host, overlay=(host, 7100), port_first=21000, port_last=21009),
        peers=tuple(
            PeerConfig(
                peer, "lab", sip=(peer_host, 5060), grpc=(peer_host, 7000), media=(peer_host, 7100)
            )
            for peer, peer_host in peer_hosts.items()
        ),
    )


@dataclass
class Bed:
    plane: MediaPlane
    overlay: tuple[str, int]
    peers: dict[str, socket.socket]  # node id -> a socket at its configured media address
    udp: Callable[[str | None, int], socket.socket]  # (host, port); None: a fresh host

    def drops(self, reason: str) -> int:
        return self.plane.counters()[f"media.drops.{reason}"]

    def wait_drops(self, reason: str, count: int) -> None:
        deadline = time.monotonic() + RECV_TIMEOUT
        while self.drops(reason) != count:
            assert time.monotonic() < deadline, f"{reason} drops stayed at {self.drops(reason)}"
            time.sleep(0.002)


@pytest.fixture
def bed(loopback_host: Callable[[], str]) -> Iterator[Bed]:
    host = loopback_host()
    peer_hosts = {peer: loopback_host() for peer in PEERS}
    sockets: list[socket.socket] = []

    def udp(host: str | None, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(sock)
        sock.bind((host or loopback_host(), port))
        sock.settimeout(RECV_TIMEOUT)
        return sock

    peers = {peer: udp(peer_host, 7100) for peer, peer_host in peer_hosts.items()}
    plane = MediaPlane(node_config(host, peer_hosts))
    plane.start()
    try:
        yield Bed(plane, (host, 7100), peers, udp)
    finally:
        plane.stop()
        for sock in sockets:
            sock.close()


def echo_request(source: str, payload: bytes) -> bytes:
    return encode_header(Header(media_id(NODE), media_id(source), 0, FLAG_ECHO_REQUEST), payload)


def echo_reply(source: str, payload: bytes) -> bytes:
    return encode_header(Header(media_id(source), media_id(NODE), 0, FLAG_ECHO_REPLY), payload)


def assert_silent(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
    finally:
        sock.settimeout(RECV_TIMEOUT)


def test_the_relay_takes_overlay_datagrams_from_configured_peers_only(bed: Bed) -> None:
    peer = bed.peers["plane-b"]
    peer.sendto(echo_request("plane-b", b"peer"), bed.overlay)
    assert peer.recvfrom(65536) == (echo_reply("plane-b", b"peer"), bed.overlay)

    # Another host, and the peer's host from another port: neither is the peer's relay.
    stranger = bed.udp(None, 0)
    same_host = bed.udp(peer.getsockname()[0], 0)
    for sock in (stranger, same_host):
        sock.sendto(echo_request("plane-b", b"reflect me"), bed.overlay)
    bed.wait_drops("unknown_peer", 2)
    assert_silent(stranger)
    assert_silent(same_host)
    assert bed.drops("fault") == 0


def received(bed: Bed, seq: int) -> set[str]:
    """Send echo ``seq`` to every peer; the peers it reached (a fault's drop counts at once)."""
    reached = set()
    for peer, sock in bed.peers.items():
        dropped = bed.drops("fault")
        bed.plane.send_echo(peer, seq)
        if bed.drops("fault") == dropped:
            header, _ = decode_header_untrusted(sock.recv(65536))
            assert (header.destination, header.flags) == (media_id(peer), FLAG_ECHO_REQUEST)
            reached.add(peer)
        else:
            assert_silent(sock)
    return reached


def test_faults_by_peer_node_id(bed: Bed) -> None:
    assert received(bed, 1) == {"plane-b", "plane-c"}
    bed.plane.set_faults({"plane-b": (0.0, True)})
    assert received(bed, 2) == {"plane-c"}
    # "*" is every peer not named itself, as for signalling.
    bed.plane.set_faults({"*": (1.0, False), "plane-c": (0.0, False)})
    assert received(bed, 3) == {"plane-c"}
    bed.plane.set_faults({"*": (0.0, True)})
    assert received(bed, 4) == set()
    bed.plane.set_faults({})
    assert received(bed, 5) == {"plane-b", "plane-c"}

    with pytest.raises(ValueError, match="not a peer with a media address: nobody"):
        bed.plane.set_faults({"nobody": (0.0, True)})
    with pytest.raises(ValueError, match="between 0 and 1"):
        bed.plane.set_faults({"plane-b": (2.0, False)})
    assert received(bed, 6) == {"plane-b", "plane-c"}


def test_a_fault_drops_the_echo_replies_to_that_peer(bed: Bed) -> None:
    bed.plane.set_faults({"plane-b": (0.0, True)})
    for peer, sock in bed.peers.items():
        sock.sendto(echo_request(peer, b"probe"), bed.overlay)
    assert bed.peers["plane-c"].recvfrom(65536) == (echo_reply("plane-c", b"probe"), bed.overlay)
    bed.wait_drops("fault", 1)
    assert_silent(bed.peers["plane-b"])


def restored_call(
    call_id: str, session_id: int, port: int, latched: tuple[str, int] | None
) -> CallMediaState:
    """The media state of a call as a standby receives it: one answered caller stream on relay
    port ``port``, forwarded toward session 0xB0B0 of plane-b, latched on ``latched``."""
    session = MediaSession(
        session_id,
        call_id,
        Side.CALLER,
        0,
        PortPair(port, port + 1),
        0.0,
        endpoint=("192.0.2.1", 4000),  # what its SDP said; the relay latched elsewhere
        remote=OverlaySession("plane-b", 0xB0B0),
    )
    return CallMediaState(
        call_id,
        caller_tag="caller-tag",
        answered=True,
        sessions=(SessionState(session, confirmed=True, rtp_latched=latched),),
        forwarding=(session,),
    )


def test_a_restored_session_starts_latched_where_the_active_latched(bed: Bed) -> None:
    plane, host = bed.plane, bed.overlay[0]
    plane.set_routes({"plane-b": "plane-b"})
    endpoint, stranger = bed.udp(None, 0), bed.udp(None, 0)
    source = endpoint.getsockname()
    plane.edge.restore_call(restored_call("call@h", 0x5E55, 21000, source))
    plane.apply()
    counters = plane.relay.session_counters(0x5E55)
    assert (counters["rtp_port"], counters["latched"], counters["endpoint"]) == (
        21000,
        True,
        source,
    )

    # Media from the far edge reaches the endpoint at once; a stranger is dropped.
    peer = bed.peers["plane-b"]
    packet = b"\x80\x00" + bytes(170)
    peer.sendto(
        encode_header(Header(media_id(NODE), media_id("plane-b"), 0x5E55), packet), bed.overlay
    )
    assert endpoint.recvfrom(65536) == (packet, (host, 21000))
    stranger.sendto(packet, (host, 21000))
    bed.wait_drops("unknown_source", 1)
    endpoint.sendto(packet, (host, 21000))
    header, payload = decode_header_untrusted(peer.recv(65536))
    assert (header.destination, header.session, payload) == (media_id("plane-b"), 0xB0B0, packet)

    # The same state again keeps the relay session (its counters go on); an empty one ends it.
    plane.edge.restore_call(restored_call("call@h", 0x5E55, 21000, source))
    plane.apply()
    assert plane.relay.session_counters(0x5E55)["packets_in"] == 1
    plane.edge.restore_call(CallMediaState("call@h"))
    plane.apply()
    assert plane.counters()["media.relay_sessions"] == 0
    assert plane.counters()["media.ports_in_use"] == 0


def test_poll_notes_what_the_relay_latched(bed: Bed) -> None:
    plane, host = bed.plane, bed.overlay[0]
    plane.set_routes({"plane-b": "plane-b"})
    plane.edge.restore_call(restored_call("call@h", 0x5E56, 21002, None))
    plane.apply()
    assert plane.relay.session_counters(0x5E56)["latched"] is False
    natted = bed.udp(None, 0)
    natted.sendto(b"\x80\x00" + bytes(170), (host, 21002))
    bed.peers["plane-b"].recv(65536)
    plane.poll(1.0)
    [state] = plane.edge.call_state("call@h").sessions
    assert (state.rtp_latched, state.rtcp_latched) == (natted.getsockname(), None)


def test_another_workers_sessions_go_through_the_owners_relay(
    loopback_host: Callable[[], str],
) -> None:
    host = loopback_host()
    peer_hosts = {peer: loopback_host() for peer in PEERS}
    config = node_config(host, peer_hosts)  # ports 21000..21009: two pairs each, one spare
    plane = MediaPlane(config, workers=2)
    worker = WorkerMedia(config, worker=1, workers=2)
    worker.send = lambda commands: plane.apply_from(1, commands)  # the channel, in process
    reports: list[tuple[int, tuple[SessionActivity, ...]]] = []
    plane.on_activity = lambda index, sessions: reports.append((index, sessions))
    plane.set_routes({"plane-b": "plane-b"})
    sockets = []

    def udp(host: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(sock)
        sock.bind((host, port))
        sock.settimeout(RECV_TIMEOUT)
        return sock

    peer = udp(peer_hosts["plane-b"], 7100)
    plane.start()
    try:
        # The worker's session (an odd id: worker 1 of 2) on its slice, in the owner's relay.
        worker.edge.restore_call(restored_call("w1@h", 0x5E57, 21004, None))
        worker.edge.sessions.promote(0.0)
        worker.apply()
        assert plane.relay.session_counters(0x5E57)["rtp_port"] == 21004
        # A port another program holds: the owner's relay refuses it, counts and goes on.
        udp(host, 21006)
        worker.edge.restore_call(restored_call("w1-taken@h", 0x5E59, 21006, None))
        worker.apply()
        assert plane.counters()["media.failures.add_session"] == 1

        endpoint = udp(loopback_host(), 0)
        endpoint.sendto(b"\x80\x00" + bytes(170), (host, 21004))
        peer.recv(65536)
        plane.poll(1.0)
        activity = SessionActivity(0x5E57, endpoint.getsockname(), None)
        assert reports == [(1, (activity,))]
        assert plane.edge.sessions.statistics().sessions == 0
        worker.activity(reports[-1][1], 1.0)
        [state] = worker.edge.call_state("w1@h").sessions
        assert state.rtp_latched == endpoint.getsockname()
        plane.poll(2.0)  # nothing new: an empty report, the worker's inactivity tick
        assert reports[-1] == (1, ())

        # Silent past the timeout on the worker's clock: it ends there and leaves the relay.
        worker.edge.restore_call(CallMediaState("w1-taken@h"))
        assert config.media is not None
        worker.activity((), 1.0 + config.media.inactivity_timeout + 1)
        assert worker.edge.sessions.statistics().sessions == 0
        counters = plane.counters()
        assert (counters["media.relay_sessions"], counters["media.ports_in_use"]) == (0, 0)
        assert worker.counters()["media.ended.timeout"] == 1
    finally:
        plane.stop()
        for sock in sockets:
            sock.close()


def test_a_report_that_crossed_a_re_add_under_rtcp_mux_only_touches(
    loopback_host: Callable[[], str],
) -> None:
    config = node_config(loopback_host(), {peer: loopback_host() for peer in PEERS})
    worker = WorkerMedia(config, worker=1, workers=2)
    sent: list[tuple[object, ...]] = []
    worker.send = sent.append
    state = restored_call("w1@h", 0x5E57, 21004, None)
    muxed = dataclasses.replace(state.sessions[0].session, ports=PortPair(21004, None))
    worker.edge.restore_call(
        dataclasses.replace(
            state, sessions=(SessionState(muxed, confirmed=True),), forwarding=(muxed,)
        )
    )
    worker.edge.sessions.promote(0.0)
    worker.apply()
    assert len(sent) == 1
    # The owner's relay still had the session with its RTCP port when it polled.
    source = ("127.0.0.2", 4000)
    worker.activity((SessionActivity(0x5E57, source, ("127.0.0.2", 4001)),), 50.0)
    assert worker.counters()["media.stale_reports"] == 1
    assert config.media is not None
    worker.activity((), config.media.inactivity_timeout + 1.0)  # touched at 50: still live
    assert worker.counters()["media.sessions"] == 1
