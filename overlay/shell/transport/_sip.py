"""SIP over UDP, TCP and TLS with trio (RFC 3261 §18, §26).

One task per socket. The UDP task waits until its socket is readable and then drains it with
non-blocking ``recvfrom_into`` calls (into one buffer, see ``UDP_RECEIVE_SIZE``) before awaiting
again, so a burst costs one wake-up. Each message goes to the ``deliver(data, peer)`` callback
synchronously: the sans-IO core runs on the receive task and its output is sent before the next
datagram is read. Datagrams the shell marks ``urgent`` (an overlay node's link probes) must not
wait behind SIP work: the task then reads ahead of the messages it delivers (up to
``READ_AHEAD`` datagrams), delivering urgent ones as soon as they are read and the others in
order, a batch per turn. A probe therefore waits for one batch at most, not for the whole queue
of a node past its capacity, and an overloaded node does not take its own slowness for its
neighbours' death. Sending is synchronous too (``send``): UDP writes go straight to the
non-blocking socket; TCP writes go into the connection's bounded queue, drained by its writer
task.

TCP connections, accepted or opened, are kept in one table keyed by the remote (host, port), so a
response or a later request to the same peer reuses the connection (§18.2.2, §18.1.1). A
connection idle for ``tcp_idle_timeout`` seconds is closed. A connection that cannot be opened, or
breaks while messages are queued for it, is reported through ``transport_error(peer)``, which the
transaction layer turns into failed transactions (§17.1.4, RFC 3263 §4.3 fail-over).

TLS connections (``Peer`` transport "tls") are TCP connections with a TLS stream on top
(``_tls``), in the same table and with the same framing, idle timeout and queue. The handshake
runs on the connection's own task within ``TlsContexts.handshake_timeout``, so a peer that never
finishes one costs a socket for that long and holds up nobody else; a failed outgoing handshake
(a certificate that does not match the target, say) is a transport error like a refused
connection. The name an outgoing connection's certificate is checked against is given by the
shell beforehand (``verify_as``, RFC 5922 §7.2), else it is the IP address; a connection is
reused only for the name it was checked against, so the table key holds that name too.
``admit_connection(host)`` may refuse a TCP or TLS connection at accept (edge security), before
any handshake is spent on it.

A receive loop that leaves datagrams in its socket is behind it. Before such a batch is
handled, ``backlog(wait, now)`` is told how long the oldest datagram of the batch waited, and
``0.0`` once the loop has emptied its socket, so that overload control can refuse new calls
past the node's capacity (overlay.security.Overload). The wait is measured from the kernel's
receive timestamp (``SO_TIMESTAMPNS``), read with the first datagram of each batch only: it is
what a new request waits before the node even sees it (a queue's sojourn time), whereas the
time since the loop last emptied its socket (a busy period) grows without bound at full load
even when nothing waits long.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from overlay.shell.clock import wall_time_ns
from overlay.sip import Listener, Peer, RemoteProtocolError, StreamFramer, steering_owner
from overlay.tls import TlsContexts

from ._impairment import DelayLine, Impairments
from ._tls import HandshakeFailed, client_stream, handshake, server_stream

log = structlog.get_logger("overlay.transport")

#: errnos a UDP send or receive may return without anything being wrong with the socket
#: (ICMP errors surfacing on the socket, a full send buffer).
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOBUFS}
)
#: The largest datagram. Datagrams are read into one buffer of this size per socket and copied
#: out at their own size: ``recvfrom(65535)`` allocates 64 KB per datagram and shrinks it in
#: place, and the tails freed behind the messages a transaction keeps fragment the C heap
#: (measured on an egress at 300 calls/s: 185 MB of free heap after 6 minutes, 59 MB in use).
UDP_RECEIVE_SIZE = 65535
UDP_BATCH = 64
#: Datagrams read but not yet delivered, with an ``urgent`` predicate (module notes): about the
#: kernel buffer's worth of SIP messages.
READ_AHEAD = 4096
SOCKET_BUFFER = 4 * 1024 * 1024
#: Linux's receive timestamp option and its control message (not named by the socket module):
#: a ``struct timespec`` on the wall clock, for UDP and AF_UNIX datagram sockets alike.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
TCP_QUEUE_SIZE = 1024
#: Names the shell asked TLS connections to be checked against, one per (host, port): bounded,
#: as the hosts come from Request-URIs and Route headers, through DNS.
MAX_SERVER_NAMES = 4096
#: How long closing a connection may wait for its close_notify to be written.
CLOSE_TIMEOUT = 1.0

_Key = tuple[str, int, str | None]  # remote host, port, and the name a TLS peer was checked for
_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    tcp_connections: int
    counters: dict[str, int]
    tls_connections: int = 0


class _Connection:
    """One TCP or TLS connection and its queue of outgoing messages."""

    __slots__ = ("framer", "key", "last_activity", "peer", "receive", "send", "stream")

    def __init__(self, peer: Peer, key: _Key, max_size: int) -> None:
        self.peer = peer
        self.key = key
        self.stream: _Stream | None = None
        self.send, self.receive = trio.open_memory_channel[bytes](TCP_QUEUE_SIZE)
        self.framer = StreamFramer(max_size=max_size)
        self.last_activity = trio.current_time()


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """A listening socket bound before serving (and before forking workers)."""

    listener: Listener
    sock: socket.socket


def bind_listeners(specs: list[tuple[str, str, int]]) -> list[BoundSocket]:
    """Bind every ``(transport, host, port)``; port 0 gets a free port.

    Binding happens before the workers fork, so every worker shares the same sockets.

    Raises:
        OSError: an address cannot be bound (the sockets bound so far are closed).
    """
    bound: list[BoundSocket] = []
    try:
        for transport, host, port in specs:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if transport == "udp":
                sock = socket.socket(family, socket.SOCK_DGRAM)
                bound.append(BoundSocket(Listener(transport, host, port), sock))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.bind((host, port))
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
                bound.append(BoundSocket(Listener(transport, host, port), sock))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(1024)
            sock.setblocking(False)
            bound[-1] = BoundSocket(Listener(transport, host, sock.getsockname()[1]), sock)
    except BaseException:
        for item in bound:
            item.sock.close()
        raise
    return bound


class Steering:
    """Which worker owns a UDP datagram, and the pipes that hand it over.

    Every message of a call carries its Call-ID, so steering datagrams by a hash of it keeps a
    call's transactions, retransmissions, CANCEL and ACK in the worker that holds its state,
    whichever worker's ``recvfrom`` picked them off the shared socket.

    Args:
        index: this worker's number, 0-based.
        inbound: this worker's end of its own datagram pipe.
        outbound: the writing ends of every worker's pipe, by worker number.
        pinned: datagrams whose Call-ID starts with this go to worker 0 (an overlay node's
            link probes, for its mesh; ``b""``: none).
    """

    def __init__(
        self,
        index: int,
        inbound: socket.socket,
        outbound: tuple[socket.socket, ...],
        *,
        pinned: bytes = b"",
    ) -> None:
        self.index = index
        self.inbound = inbound
        self.outbound = outbound
        self.pinned = pinned

    @staticmethod
    def open_pipes(workers: int) -> list[tuple[socket.socket, socket.socket]]:
        """One (read end, write end) datagram pipe per worker, made before forking."""
        pipes = []
        for _ in range(workers):
            read, write = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for end in (read, write):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                end.setblocking(False)
            pipes.append((read, write))
        return pipes

    def owner(self, data: bytes) -> int:
        return steering_owner(data, len(self.outbound), self.pinned)


class _Backlog:
    """How long the oldest datagram of the batch a receive loop is about to handle waited
    (the longest over the sockets still behind), reported for every batch the loop starts
    behind its socket, and when it catches up (module notes)."""

    def __init__(self, report: Callable[[float, float], None]) -> None:
        self._report = report
        self._waits: dict[socket.socket, float] = {}

    def behind(self, sock: socket.socket, arrived: float) -> None:
        now = trio.current_time()
        waits = self._waits
        waits[sock] = now - arrived
        self._report(max(waits.values()), now)

    def caught_up(self, sock: socket.socket) -> None:
        waits = self._waits
        if waits.pop(sock, None) is not None:
            self._report(max(waits.values(), default=0.0), trio.current_time())

    @staticmethod
    def watch(sock: socket.socket) -> None:
        """Have the kernel stamp ``sock``'s datagrams with their arrival (those already queued
        are stamped when read: at start they look fresh)."""
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    @staticmethod
    def arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
        """A datagram's arrival on the trio clock, from its receive timestamp (now without
        one). A wall clock stepped back makes it now, never later."""
        now = trio.current_time()
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds: int
                nanoseconds: int
                seconds, nanoseconds = _TIMESPEC.unpack(data)
                age = wall_time_ns() - seconds * 1_000_000_000 - nanoseconds
                return now - max(age, 0) / 1e9
        return now


class SipTransport:
    """The SIP sockets of one node (or of one worker of a node).

    Args:
        deliver: called with ``(data, peer)`` for every datagram and every framed TCP message.
        transport_error: called with the peer whose TCP connection failed.
        max_message_size: largest message accepted on a TCP stream.
        tcp_idle_timeout: seconds after which an unused TCP connection is closed.
        tcp_connect_timeout: seconds a TCP connect may take before the peer counts as failed
            (``transport_error``: the next RFC 3263 target is tried at once).
        steering: set when several workers share the sockets.
        impairments: faults applied to what is sent to overlay peers (fault injection).
        backlog: told, with the time, how long the oldest datagram of the batch a UDP receive
            loop is about to handle waited, or ``0.0`` once they caught up (module notes).
        tls: contexts for ``tls`` listeners and peers; without them a TLS peer cannot be
            reached (a transport error) and binding a ``tls`` listener is an error.
        admit_connection: asked with the remote host of every accepted TCP or TLS connection;
            ``False`` closes it at once (edge security: a blocked source costs no handshake).
        urgent: which UDP datagrams are delivered as soon as they are read, ahead of those
            read before them (module notes).
    """

    def __init__(
        self,
        *,
        deliver: Callable[[bytes, Peer], None],
        transport_error: Callable[[Peer], None],
        max_message_size: int = 65535,
        tcp_idle_timeout: float = 60.0,
        tcp_connect_timeout: float = 2.0,
        steering: Steering | None = None,
        impairments: Impairments | None = None,
        backlog: Callable[[float, float], None] | None = None,
        tls: TlsContexts | None = None,
        admit_connection: Callable[[str], bool] | None = None,
        urgent: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._deliver = deliver
        self._urgent = urgent
        self._tls = tls
        self._admit_connection = admit_connection
        self._server_names: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._backlog = None if backlog is None else _Backlog(backlog)
        self._impairments = impairments
        self._delay_line = DelayLine()
        self._transport_error = transport_error
        self._max_size = max_message_size
        self._idle = tcp_idle_timeout
        self._connect_timeout = tcp_connect_timeout
        self._steering = steering
        self._udp: dict[int, socket.socket] = {}  # address family -> socket
        self._tcp_bind: dict[int, str] = {}  # address family -> local host for outgoing TCP
        self._connections: dict[_Key, _Connection] = {}
        self._nursery: trio.Nursery | None = None
        self.counters: Counter[str] = Counter()

    async def serve(
        self,
        bound: list[BoundSocket],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the sockets from ``bind_listeners`` until cancelled, then close them."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for item in bound:
                    listener, sock = item.listener, item.sock
                    if listener.transport == "udp":
                        self._udp.setdefault(sock.family, sock)
                        nursery.start_soon(self._udp_loop, sock)
                    else:
                        if listener.transport == "tls" and (
                            self._tls is None or self._tls.server is None
                        ):
                            raise ValueError("a tls listener needs TlsContexts with a server side")
                        self._tcp_bind.setdefault(sock.family, listener.host)
                        tcp = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                        nursery.start_soon(self._tcp_accept_loop, tcp, listener.transport)
                    log.info(
                        "listening",
                        transport=listener.transport,
                        host=listener.host,
                        port=listener.port,
                    )
                if self._steering is not None:
                    nursery.start_soon(self._steered_loop, self._steering.inbound)
                if self._impairments is not None:
                    nursery.start_soon(self._delay_line.run)
                task_status.started()
        finally:
            for item in bound:
                item.sock.close()

    def send(self, data: bytes, peer: Peer) -> None:
        """Queue ``data`` for ``peer``; never blocks. Failures are counted (and, for TCP,
        reported through ``transport_error``). Impairments of an overlay peer apply first."""
        impairments = self._impairments
        if impairments is not None:
            peer_id = impairments.peer_at(peer.host, peer.port)
            if peer_id is not None:
                delay = impairments.verdict(peer_id)
                if delay is None:
                    self.counters["impairment drop"] += 1
                    return
                if delay > 0:
                    ordered = None if peer.transport == "udp" else peer
                    send_later = functools.partial(self._send_now, data, peer)
                    self._delay_line.schedule(delay, send_later, ordered_key=ordered)
                    return
        self._send_now(data, peer)

    def _send_now(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "udp":
            family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
            sock = self._udp.get(family)
            if sock is None:
                self.counters["udp no socket for family"] += 1
                return
            try:
                sock.sendto(data, (peer.host, peer.port))
            except OSError as exc:
                if exc.errno not in TRANSIENT_ERRNOS:
                    raise
                self.counters[f"udp send {errno.errorcode.get(exc.errno, exc.errno)}"] += 1
            return
        key = self._key(peer)
        connection = self._connections.get(key)
        if connection is None:
            connection = self._open_connection(peer, key)
        try:
            connection.send.send_nowait(data)
        except trio.WouldBlock:
            self.counters[f"{peer.transport} queue full"] += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.counters[f"{peer.transport} send on closed connection"] += 1

    def verify_as(self, peer: Peer, server_name: str) -> None:
        """Check the certificate of TLS connections opened to ``peer`` against ``server_name``
        (the SIP domain the peer was resolved from, RFC 5922 §7.2) rather than its IP address.

        Holds for every later connection to that (host, port) until another name is given; the
        most recent ``MAX_SERVER_NAMES`` are kept.
        """
        names = self._server_names
        address = (peer.host, peer.port)
        names[address] = server_name
        names.move_to_end(address)
        if len(names) > MAX_SERVER_NAMES:
            names.popitem(last=False)

    def statistics(self) -> TransportStatistics:
        tls = sum(c.peer.transport == "tls" for c in self._connections.values())
        return TransportStatistics(len(self._connections) - tls, dict(self.counters), tls)

    def _key(self, peer: Peer) -> _Key:
        if peer.transport != "tls":
            return (peer.host, peer.port, None)
        return (peer.host, peer.port, self._server_names.get((peer.host, peer.port)))

    # -- UDP ---------------------------------------------------------------------------------

    async def _udp_loop(self, sock: socket.socket) -> None:
        deliver = self._deliver
        recvfrom_into = sock.recvfrom_into
        buffer = memoryview(bytearray(UDP_RECEIVE_SIZE))  # see UDP_RECEIVE_SIZE
        steering = self._steering
        backlog = self._backlog
        urgent = self._urgent
        read_ahead = UDP_BATCH if urgent is None else READ_AHEAD
        pending: deque[tuple[bytes, Peer]] = deque()  # read, not yet delivered
        # With a backlog to report, each batch's first datagram is read with its arrival, kept
        # with the number of datagrams delivered before it: (that number, when it arrived).
        if backlog is not None:
            backlog.watch(sock)
        recvmsg_into, buffers = sock.recvmsg_into, [buffer]
        arrivals: deque[tuple[int, float]] = deque()
        delivered = 0
        while True:
            if pending:
                await trio.lowlevel.checkpoint()  # timers and other sockets between batches
            else:
                await trio.lowlevel.wait_readable(sock)
            drained = False
            stamped = backlog is None
            while len(pending) < read_ahead:
                try:
                    if stamped:
                        size, address = recvfrom_into(buffer)
                    else:
                        size, ancillary, _, address = recvmsg_into(buffers, _ANCILLARY_SIZE)
                        stamped = True
                        arrivals.append((delivered + len(pending), _Backlog.arrival(ancillary)))
                except BlockingIOError:
                    drained = True
                    break
                except OSError as exc:
                    if exc.errno not in TRANSIENT_ERRNOS:
                        raise
                    self.counters["udp receive error"] += 1
                    continue
                data = buffer[:size].tobytes()
                if steering is not None and (owner := steering.owner(data)) != steering.index:
                    self._hand_over(steering.outbound[owner], data, address)
                    continue
                peer = Peer("udp", address[0], address[1])
                if urgent is not None and urgent(data):
                    deliver(data, peer)
                else:
                    pending.append((data, peer))
            # A bounded batch per turn: a flood on one socket must not starve the timers.
            batch = min(UDP_BATCH, len(pending))
            if backlog is not None and arrivals and not (drained and len(pending) == batch):
                # Behind: more waits than this batch. The first datagram of the oldest read
                # batch not fully handled arrived no later than the next one to be handled.
                while len(arrivals) > 1 and arrivals[1][0] <= delivered:
                    arrivals.popleft()
                backlog.behind(sock, arrivals[0][1])
            for _ in range(batch):
                deliver(*pending.popleft())
            if backlog is not None:
                delivered += batch
                if drained and not pending:
                    arrivals.clear()
                    backlog.caught_up(sock)

    def _hand_over(self, pipe: socket.socket, data: bytes, address: tuple[str, int]) -> None:
        host = address[0].encode()
        try:
            pipe.send(b"%c%s%s%s" % (len(host), host, address[1].to_bytes(2, "big"), data))
        except BlockingIOError:
            self.counters["steering pipe full"] += 1

    async def _steered_loop(self, pipe: socket.socket) -> None:
        """Datagrams another worker read off the shared socket but this worker owns."""
        deliver = self._deliver
        backlog = self._backlog
        buffer = memoryview(bytearray(UDP_RECEIVE_SIZE + 64))  # see UDP_RECEIVE_SIZE
        buffers = [buffer]
        if backlog is not None:
            backlog.watch(pipe)
        behind = False  # the last batch left datagrams in the pipe
        while True:
            await trio.lowlevel.wait_readable(pipe)
            stamp = backlog is not None
            for _ in range(UDP_BATCH):
                try:
                    if stamp:
                        size, ancillary, _, _ = pipe.recvmsg_into(buffers, _ANCILLARY_SIZE)
                        stamp = False
                        if behind and backlog is not None:
                            backlog.behind(pipe, _Backlog.arrival(ancillary))
                    else:
                        size = pipe.recv_into(buffer)
                    frame = buffer[:size]
                except BlockingIOError:
                    behind = False
                    if backlog is not None:
                        backlog.caught_up(pipe)
                    break
                end = 1 + frame[0]
                host = str(frame[1:end], "ascii")
                port = int.from_bytes(frame[end : end + 2], "big")
                deliver(frame[end + 2 :].tobytes(), Peer("udp", host, port))
            else:
                behind = True

    # -- TCP ---------------------------------------------------------------------------------

    async def _tcp_accept_loop(self, listener: trio.SocketListener, transport: str) -> None:
        async with listener:
            while True:
                tcp = await listener.accept()
                host, port = tcp.socket.getpeername()[:2]
                if self._admit_connection is not None and not self._admit_connection(host):
                    self.counters[f"{transport} refused at accept"] += 1
                    await tcp.aclose()
                    continue
                peer = Peer(transport, host, port)
                connection = _Connection(peer, (host, port, None), self._max_size)
                if transport == "tls":
                    assert self._tls is not None
                    connection.stream = server_stream(self._tls, tcp)
                else:
                    connection.stream = tcp
                old = self._connections.get(connection.key)
                if old is not None:
                    await old.send.aclose()
                self._connections[connection.key] = connection
                self.counters[f"{transport} accepted"] += 1
                assert self._nursery is not None
                self._nursery.start_soon(self._run_connection, connection)

    def _open_connection(self, peer: Peer, key: _Key) -> _Connection:
        connection = _Connection(peer, key, self._max_size)
        self._connections[key] = connection
        assert self._nursery is not None
        self._nursery.start_soon(self._run_connection, connection)
        return connection

    async def _run_connection(self, connection: _Connection) -> None:
        peer = connection.peer
        outgoing = connection.stream is None
        failed = False
        try:
            if connection.stream is None:
                connection.stream = await self._connect(connection)
            try:
                if isinstance(connection.stream, trio.SSLStream):
                    await self._handshake(connection, connection.stream, outgoing=outgoing)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tcp_writer, connection, nursery.cancel_scope)
                    await self._tcp_reader(connection)
                    nursery.cancel_scope.cancel()
            finally:
                self._forget(connection)  # before closing: nothing more is queued on it
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await connection.stream.aclose()
        except HandshakeFailed:
            failed = outgoing  # what was queued for it cannot be sent
        except (OSError, trio.BrokenResourceError) as exc:
            failed = True
            self.counters[f"{peer.transport} connection failed"] += 1
            log.info(
                f"{peer.transport} connection failed",
                host=peer.host,
                port=peer.port,
                error=str(exc),
            )
        finally:
            self._forget(connection)
        if failed:
            self._transport_error(peer)

    def _forget(self, connection: _Connection) -> None:
        if self._connections.get(connection.key) is connection:
            del self._connections[connection.key]
        connection.send.close()

    async def _handshake(
        self,
        connection: _Connection,
        stream: trio.SSLStream[trio.SocketStream],
        *,
        outgoing: bool,
    ) -> None:
        """The TLS handshake, counted and logged by direction.

        Raises:
            HandshakeFailed: it failed or timed out.
        """
        assert self._tls is not None
        direction = "out" if outgoing else "in"
        peer = connection.peer
        timeout = self._tls.handshake_timeout
        try:
            with trio.move_on_after(timeout) as scope:
                await handshake(stream)
            if scope.cancelled_caught:
                raise HandshakeFailed("timeout", f"no handshake within {timeout:g} s")
        except HandshakeFailed as failure:
            self.counters[f"tls.handshake_failures.{direction}.{failure.reason}"] += 1
            log.info(
                "tls handshake failed",
                direction=direction,
                host=peer.host,
                port=peer.port,
                server_name=connection.key[2],
                reason=failure.reason,
                detail=failure.detail,
            )
            raise
        self.counters[f"tls.handshakes.{direction}"] += 1

    async def _connect(self, connection: _Connection) -> _Stream:
        """A new connection to the peer: TCP, with the client side of TLS for a TLS peer."""
        peer = connection.peer
        if peer.transport == "tls" and self._tls is None:
            raise OSError(errno.EPROTONOSUPPORT, "no TLS configured for SIP")
        tcp = await self._connect_tcp(peer)
        if peer.transport != "tls":
            return tcp
        assert self._tls is not None
        return client_stream(self._tls, tcp, connection.key[2] or peer.host)

    async def _connect_tcp(self, peer: Peer) -> trio.SocketStream:
        family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            local = self._tcp_bind.get(family)
            if local is not None:
                await sock.bind((local, 0))
            with trio.move_on_after(self._connect_timeout) as connecting:
                await sock.connect((peer.host, peer.port))
            if connecting.cancelled_caught:
                self.counters[f"{peer.transport} connect timeout"] += 1
                raise OSError(errno.ETIMEDOUT, f"connect timed out after {self._connect_timeout} s")
        except BaseException:
            sock.close()
            raise
        self.counters[f"{peer.transport} connected"] += 1
        return trio.SocketStream(sock)

    async def _tcp_reader(self, connection: _Connection) -> None:
        stream = connection.stream
        assert stream is not None
        framer = connection.framer
        peer = connection.peer
        while True:
            with trio.move_on_at(connection.last_activity + self._idle) as idle:
                data = await stream.receive_some(65536)
            if idle.cancelled_caught:
                if trio.current_time() >= connection.last_activity + self._idle:
                    self.counters[f"{peer.transport} idle closed"] += 1
                    return
                continue
            connection.last_activity = trio.current_time()
            framer.receive_data(bytes(data))  # a TLS stream's bytearray; bytes pass as they are
            try:
                while (message := framer.next_message()) is not None:
                    self._deliver(message, peer)
            except RemoteProtocolError as exc:
                self.counters[f"{peer.transport} framing: {exc.reason}"] += 1
                log.info(
                    f"{peer.transport} framing error",
                    host=peer.host,
                    port=peer.port,
                    reason=exc.reason,
                )
                return
            if not data:
                return

    async def _tcp_writer(self, connection: _Connection, scope: trio.CancelScope) -> None:
        stream = connection.stream
        assert stream is not None
        async for data in connection.receive:
            connection.last_activity = trio.current_time()
            await stream.send_all(data)
        scope.cancel()
