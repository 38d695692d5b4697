"""SipTransport over real TCP sockets: framing, connection reuse, idle timeout."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing

from overlay.shell.transport import SipTransport, bind_listeners
from overlay.sip import Peer

pytestmark = pytest.mark.integration

MESSAGE = (
    b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
    b"Content-Length: 4\r\n\r\nbody"
)


@pytest.mark.trio
async def test_framing_reuse_and_idle_timeout(
    loopback_host: Callable[[], str], clock: trio.testing.MockClock
) -> None:
    send_channel, received = trio.open_memory_channel[tuple[bytes, Peer]](10)
    transport = SipTransport(
        deliver=lambda data, peer: send_channel.send_nowait((data, peer)),
        transport_error=lambda peer: None,
        tcp_idle_timeout=30.0,
    )
    host = loopback_host()
    bound = bind_listeners([("tcp", host, 0)])
    port = bound[0].listener.port
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, bound)
        stream = await trio.open_tcp_stream(host, port)
        # Two messages and a keep-alive in odd-sized pieces: framed by Content-Length.
        data = MESSAGE + b"\r\n\r\n" + MESSAGE
        for piece in (data[:7], data[7:100], data[100:]):
            await stream.send_all(piece)
        with trio.fail_after(5):
            first, peer = await received.receive()
            second, _ = await received.receive()
        assert [first, second] == [MESSAGE, MESSAGE]
        assert peer.transport == "tcp"
        # A response to that peer reuses the connection it came in on.
        transport.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", peer)
        with trio.fail_after(5):
            assert (await stream.receive_some(100)).startswith(b"SIP/2.0 200 OK")
        assert transport.statistics().tcp_connections == 1
        # Idle for longer than tcp_idle_timeout: the node closes it.
        await trio.sleep(31)
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        assert transport.statistics().tcp_connections == 0
        await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_bad_framing_closes_the_connection(loopback_host: Callable[[], str]) -> None:
    transport = SipTransport(deliver=lambda data, peer: None, transport_error=lambda peer: None)
    host = loopback_host()
    bound = bind_listeners([("tcp", host, 0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, bound)
        stream = await trio.open_tcp_stream(host, bound[0].listener.port)
        await stream.send_all(b"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: nine\r\n\r\n")
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        assert any("framing" in key for key in transport.statistics().counters)
        await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_connect_that_hangs_fails_after_the_connect_timeout(
    loopback_host: Callable[[], str], clock: trio.testing.MockClock
) -> None:
    """A target that never completes the handshake (a blackholed host) is a transport error
    after ``tcp_connect_timeout``, so the proxy tries the next target instead of waiting for
    Timer B."""
    failed: list[Peer] = []
    reported = trio.Event()

    def transport_error(peer: Peer) -> None:
        failed.append(peer)
        reported.set()

    transport = SipTransport(
        deliver=lambda data, peer: None,
        transport_error=transport_error,
        tcp_connect_timeout=2.0,
    )
    host = loopback_host()
    # A listener whose accept queue is full: Linux drops further SYNs, so a connect hangs.
    full = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    full.bind((host, 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    with full:
        bound = bind_listeners([("tcp", loopback_host(), 0)])
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve, bound)
            for _ in range(2):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect((host, port))
                fillers.append(filler)
            peer = Peer("tcp", host, port)
            transport.send(MESSAGE, peer)
            with trio.fail_after(5):
                await reported.wait()
            assert failed == [peer]
            assert transport.statistics().counters["tcp connect timeout"] == 1
            nursery.cancel_scope.cancel()
    for filler in fillers:
        filler.close()
