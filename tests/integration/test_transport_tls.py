"""SipTransport's TLS over real loopback sockets: handshakes, certificate checks, framing,
timeouts. The peers are Python ssl streams: each case needs a peer that misbehaves in one way
(no certificate, no handshake, garbage), which SIPp (built without TLS here) cannot do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from overlay.shell.transport import SipTransport, bind_listeners
from overlay.sip import Peer
from overlay.tls import TlsContexts
from tests.integration.tls_peers import Pki, client_context, open_tls

pytestmark = [pytest.mark.integration, pytest.mark.trio]

MESSAGE = (
    b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\n"
    b"Content-Length: 4\r\n\r\nbody"
)
OK = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


class Endpoint:
    """A SipTransport with one tls: listener, recording what it delivers and what fails."""

    def __init__(self, contexts: TlsContexts, **options: object) -> None:
        self.send_channel, self.received = trio.open_memory_channel[tuple[bytes, Peer]](10)
        self.failed: list[Peer] = []
        self.failure = trio.Event()
        self.transport = SipTransport(
            deliver=lambda data, peer: self.send_channel.send_nowait((data, peer)),
            transport_error=self._transport_error,
            tls=contexts,
            **options,  # type: ignore[arg-type]
        )
        self.address: tuple[str, int] = ("", 0)

    def _transport_error(self, peer: Peer) -> None:
        self.failed.append(peer)
        self.failure.set()

    def counter(self, name: str) -> int:
        return self.transport.statistics().counters.get(name, 0)


@asynccontextmanager
async def serving(endpoint: Endpoint, host: str, listen: str = "tls") -> AsyncIterator[Endpoint]:
    bound = bind_listeners([(listen, host, 0)])
    endpoint.address = (host, bound[0].listener.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.transport.serve, bound)
        yield endpoint
        nursery.cancel_scope.cancel()


def server_contexts(
    pki: Pki, names: list[str], *, verify_client: bool = False, handshake_timeout: float = 5.0
) -> TlsContexts:
    cert, key = pki.issue("server-" + "-".join(names).replace(":", "_"), names)
    return TlsContexts.create(
        cert=str(cert),
        key=str(key),
        ca=str(pki.ca_file),
        verify_client=verify_client,
        handshake_timeout=handshake_timeout,
    )


async def closed_by_peer(stream: trio.abc.ReceiveStream) -> bool:
    """Whether the other side closed (EOF, or a TLS alert then EOF) within 5 s."""
    with trio.fail_after(5):
        try:
            while await stream.receive_some(1000):
                pass
        except trio.BrokenResourceError:
            pass
    return True


async def test_incoming_tls_frames_messages_and_answers_on_the_connection(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path)
    host = loopback_host()
    async with serving(Endpoint(server_contexts(pki, [host])), host) as node:
        stream = await open_tls(*node.address, client_context(pki))
        data = MESSAGE + b"\r\n\r\n" + MESSAGE  # two messages and a keep-alive
        for piece in (data[:7], data[7:100], data[100:]):
            await stream.send_all(piece)
        with trio.fail_after(5):
            first, peer = await node.received.receive()
            second, _ = await node.received.receive()
        assert [first, second] == [MESSAGE, MESSAGE]
        assert peer.transport == "tls"
        node.transport.send(OK, peer)  # a response goes back on the same connection
        with trio.fail_after(5):
            assert await stream.receive_some(100) == OK
        stats = node.transport.statistics()
        assert (stats.tls_connections, stats.tcp_connections) == (1, 0)
        assert node.counter("tls.handshakes.in") == 1
        await stream.aclose()


@pytest.mark.parametrize(
    ("cert_names", "server_name", "same_ca", "reached"),
    [
        (["trunk.test"], "trunk.test", True, True),  # the SIP domain (RFC 5922), sent as SNI
        (["trunk.test"], "other.test", True, False),  # a name the certificate does not have
        (["trunk.test"], None, True, False),  # an IP target: checked against the IP
        ([":ip"], None, True, True),  # ... which the certificate has
        (["trunk.test"], "trunk.test", False, False),  # signed by a CA the node does not trust
    ],
)
async def test_outgoing_tls_checks_the_server_certificate(
    loopback_host: Callable[[], str],
    tmp_path: Path,
    cert_names: list[str],
    server_name: str | None,
    same_ca: bool,
    reached: bool,
) -> None:
    pki = Pki.create(tmp_path / "ca")
    trunk_host, node_host = loopback_host(), loopback_host()
    names = [trunk_host if name == ":ip" else name for name in cert_names]
    trunk_contexts = server_contexts(pki, names)
    assert trunk_contexts.server is not None
    sni: list[str | None] = []
    trunk_contexts.server.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    node_ca = pki if same_ca else Pki.create(tmp_path / "other", "other-ca")
    node = Endpoint(TlsContexts.create(ca=str(node_ca.ca_file)))
    async with (
        serving(Endpoint(trunk_contexts), trunk_host) as trunk,
        serving(node, node_host, "udp"),  # a node without a tls: listener may dial TLS
    ):
        peer = Peer("tls", *trunk.address)
        if server_name is not None:
            node.transport.verify_as(peer, server_name)
        node.transport.send(MESSAGE, peer)
        node.transport.send(MESSAGE, peer)  # queued on the same connection
        with trio.fail_after(5):
            if reached:
                assert (await trunk.received.receive())[0] == MESSAGE
                assert (await trunk.received.receive())[0] == MESSAGE
            else:
                await node.failure.wait()
        if reached:
            assert node.counter("tls.handshakes.out") == 1
            assert node.transport.statistics().tls_connections == 1
            assert sni == [server_name]  # no SNI for an IP address (RFC 6066 §3)
        else:
            # A transport error: the proxy core tries the next RFC 3263 target, or answers 503.
            assert node.failed == [peer]
            assert node.counter("tls.handshake_failures.out.certificate_verify_failed") == 1
            assert node.transport.statistics().tls_connections == 0


async def test_verify_client_refuses_a_trunk_without_a_good_certificate(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path / "ca")
    stranger = Pki.create(tmp_path / "other", "other-ca")
    host, trunk = loopback_host(), loopback_host()
    contexts = server_contexts(pki, [host], verify_client=True)
    async with serving(Endpoint(contexts), host) as node:
        refused = [
            client_context(pki),  # no certificate at all
            client_context(pki, stranger.issue("trunk", [trunk])),  # from another CA
        ]
        for context in refused:
            # TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
            stream = await open_tls(*node.address, context)
            await stream.send_all(MESSAGE)
            assert await closed_by_peer(stream)
            await stream.aclose()
        assert node.counter("tls.handshake_failures.in.peer_did_not_return_a_certificate") == 1
        assert node.counter("tls.handshake_failures.in.certificate_verify_failed") == 1
        # A trunk with a certificate from the configured CA gets in.
        stream = await open_tls(*node.address, client_context(pki, pki.issue("trunk", [trunk])))
        await stream.send_all(MESSAGE)
        with trio.fail_after(5):
            data, peer = await node.received.receive()
        assert (data, peer.transport) == (MESSAGE, "tls")
        assert node.counter("tls.handshakes.in") == 1
        await stream.aclose()


async def test_connection_without_handshake_times_out_without_holding_up_others(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path)
    host = loopback_host()
    timeout = 1.0
    contexts = server_contexts(pki, [host], handshake_timeout=timeout)
    async with serving(Endpoint(contexts), host) as node:
        silent = await trio.open_tcp_stream(*node.address)  # connects, never says hello
        opened = trio.current_time()
        # Meanwhile a real trunk connects and is served at once.
        stream = await open_tls(*node.address, client_context(pki))
        await stream.send_all(MESSAGE)
        with trio.fail_after(timeout / 2):
            assert (await node.received.receive())[0] == MESSAGE
        assert await closed_by_peer(silent)
        assert trio.current_time() - opened >= timeout
        assert node.counter("tls.handshake_failures.in.timeout") == 1
        assert node.transport.statistics().tls_connections == 1  # the trunk's
        await silent.aclose()
        await stream.aclose()


@pytest.mark.parametrize(
    ("data", "counter"),
    [
        # After the handshake: the same treatment as on TCP (framing error, connection closed).
        (b"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: nine\r\n\r\n", "tls framing: "),
        # No handshake at all, plain SIP on the TLS port.
        (b"TLS? no. " + MESSAGE, "tls.handshake_failures.in."),
    ],
)
async def test_garbage_closes_the_connection(
    loopback_host: Callable[[], str], tmp_path: Path, data: bytes, counter: str
) -> None:
    pki = Pki.create(tmp_path)
    host = loopback_host()
    async with serving(Endpoint(server_contexts(pki, [host])), host) as node:
        stream: trio.abc.Stream
        if counter.startswith("tls framing"):
            stream = await open_tls(*node.address, client_context(pki))
        else:
            stream = await trio.open_tcp_stream(*node.address)
        await stream.send_all(data)
        assert await closed_by_peer(stream)
        counters = node.transport.statistics().counters
        assert any(name.startswith(counter) for name in counters), counters
        assert node.received.statistics().current_buffer_used == 0
        await stream.aclose()


async def test_refused_source_costs_no_handshake(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path)
    host, blocked = loopback_host(), loopback_host()
    contexts = server_contexts(pki, [host])
    asked: list[str] = []

    def admit(source: str) -> bool:
        asked.append(source)
        return source != blocked

    async with serving(Endpoint(contexts, admit_connection=admit), host) as node:
        tcp = await trio.open_tcp_stream(*node.address, local_address=blocked)
        stream = trio.SSLStream(tcp, client_context(pki), server_hostname=host)
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
        assert asked == [blocked]
        assert node.transport.statistics().counters == {"tls refused at accept": 1}
        await tcp.aclose()
