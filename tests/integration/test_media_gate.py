"""The media plane's gate, over real loopback UDP: a pair member that holds by file (the lab's
two members on one machine) binds nothing of the pair's media address until it holds it, and
then relays, in one sweep, the sessions its book has (``MediaPlane.release_relay``).

The two members are two ``MediaPlane``s with the same media and overlay address; the peer's
relay is a plain socket at its configured media address.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from fastpath import Header, decode_header_untrusted, encode_header
from overlay.config import (
    ListenAddress,
    MediaSection,
    NodeConfig,
    NodeSection,
    PairSection,
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
from overlay.shell.media import MediaPlane

pytestmark = pytest.mark.integration

NODE, PEER = "use1", "usw2"
PORT = 21100
RTP = b"\x80\x00" + bytes(170)


def member_config(host: str, peer_host: str, *, held_by_file: bool) -> NodeConfig:
    """A member's config as the schema would build it: only what the media plane reads."""
    pair = PairSection(host, hold="file", hold_file="/nonexistent/hold", member=f"{NODE}.2")
    return NodeConfig(
        node=NodeSection(NODE, "lab"),
        sip=SipSection(listen=(ListenAddress("udp", host, 5060),)),
        media=MediaSection(address=host, overlay=(host, 7100), port_first=PORT, port_last=PORT + 9),
        peers=(
            PeerConfig(PEER, "lab", (peer_host, 5060), (peer_host, 7000), media=(peer_host, 7100)),
        ),
        pair=pair if held_by_file else None,
    )


def restored_call(
    endpoint: tuple[str, int], *, session_id: int = 0x5E55, port: int = PORT
) -> CallMediaState:
    """An answered call as a standby restores it (pair replication): one caller stream on
    relay port ``port`` toward the peer's session 0xB0B0, latched on ``endpoint``."""
    call_id = f"call-{session_id:x}@lab"
    session = MediaSession(
        session_id,
        call_id,
        Side.CALLER,
        0,
        PortPair(port, port + 1),
        0.0,
        endpoint=("192.0.2.1", 4000),
        remote=OverlaySession(PEER, 0xB0B0),
    )
    return CallMediaState(
        call_id,
        answered=True,
        sessions=(SessionState(session, confirmed=True, rtp_latched=endpoint),),
        forwarding=(session,),
    )


def bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


@pytest.fixture
def udp(loopback_host: Callable[[], str]) -> Iterator[Callable[[str | None, int], socket.socket]]:
    with contextlib.ExitStack() as stack:

        def make(host: str | None, port: int) -> socket.socket:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((host or loopback_host(), port))
            sock.settimeout(2.0)
            return sock

        yield make


def test_a_held_standby_binds_nothing_of_the_address_then_relays_its_book_in_one_sweep(
    loopback_host: Callable[[], str], udp: Callable[[str | None, int], socket.socket]
) -> None:
    host, peer_host = loopback_host(), loopback_host()
    peer = udp(peer_host, 7100)
    endpoint = udp(None, 0)
    active = MediaPlane(member_config(host, peer_host, held_by_file=False))
    active.start()
    standby = MediaPlane(member_config(host, peer_host, held_by_file=True))
    standby.start()
    try:
        assert standby.relay_held  # made while the active's relay has the overlay port
        standby.set_routes({PEER: PEER})
        standby.edge.restore_call(restored_call(endpoint.getsockname()))
        standby.apply()
        # The active's relay has the overlay port; the standby's session port is not bound.
        assert standby.counters()["media.relay_sessions"] == 0
        assert standby.counters()["media.sessions"] == 1
        assert bindable(host, PORT)

        active.stop()  # the active's machine dies: its ports are free
        assert (standby.release_relay(), standby.relay_held) == (1, False)
        counters = standby.session_counters(0x5E55)
        assert (counters["rtp_port"], counters["latched"], counters["endpoint"]) == (
            PORT,
            True,
            endpoint.getsockname(),
        )
        # Both ways at once, on the routes set while held: the far edge's media reaches the
        # endpoint, and the endpoint's goes to the far edge from the overlay address.
        header = Header(media_id(NODE), media_id(PEER), 0x5E55)
        peer.sendto(encode_header(header, RTP), (host, 7100))
        assert endpoint.recvfrom(65536) == (RTP, (host, PORT))
        endpoint.sendto(RTP, (host, PORT))
        data, source = peer.recvfrom(65536)
        sent, payload = decode_header_untrusted(data)
        assert (source, sent.session, payload) == ((host, 7100), 0xB0B0, RTP)
        with pytest.raises(RuntimeError, match="not held"):
            standby.release_relay()
    finally:
        standby.stop()
        active.stop()


#: Sessions in the sweep below: the design's "about 400 binds for 100 calls" (an RTP and an
#: RTCP socket per session, a session per stream at each of a call's two edges).
SWEEP_SESSIONS = 200
#: Measured about 20 ms; the bound leaves room for a loaded machine.
SWEEP_WITHIN_MS = 250.0


def test_the_sweep_binds_hundreds_of_sessions_at_once(
    loopback_host: Callable[[], str], udp: Callable[[str | None, int], socket.socket]
) -> None:
    host, peer_host = loopback_host(), loopback_host()
    config = member_config(host, peer_host, held_by_file=True)
    assert config.media is not None
    wide = dataclasses.replace(config.media, port_last=PORT + 2 * SWEEP_SESSIONS - 1)
    standby = MediaPlane(dataclasses.replace(config, media=wide))
    standby.start()
    try:
        endpoint = udp(None, 0).getsockname()
        for index in range(SWEEP_SESSIONS):
            standby.edge.restore_call(
                restored_call(endpoint, session_id=0x5E55 + index, port=PORT + 2 * index)
            )
        standby.apply()
        start = time.perf_counter()
        assert standby.release_relay() == SWEEP_SESSIONS
        took_ms = (time.perf_counter() - start) * 1000
        print(
            f"\nrelease_relay: {SWEEP_SESSIONS} sessions, {2 * SWEEP_SESSIONS} sockets in "
            f"{took_ms:.1f} ms"
        )
        assert took_ms < SWEEP_WITHIN_MS
        assert standby.counters()["media.relay_sessions"] == SWEEP_SESSIONS
        assert not bindable(host, PORT + 2 * SWEEP_SESSIONS - 1)
    finally:
        standby.stop()
