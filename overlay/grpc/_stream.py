"""One gRPC stream seen from trio (:class:`BridgedStream`), and its half on the loop thread."""

# Theory of operation: streams
# ----------------------------
#
# This continues the theory of operation in ``_bridge`` (two threads, Rule 1, `_to_loop` and
# `_to_trio`). The pumps named here are GrpcBridge's: `_pump_in` at both ends; pump-out is
# `_client_writer` at a client and the write loop of `_serve_stream` at a server.
#
# A stream (BridgedStream, the same class at a client and at a server) has a trio half (the
# object itself: a memory channel of received messages, a count of unwritten messages) and a loop
# half (_LoopSide: a queue of outgoing items, a semaphore of read credit). On the loop thread two
# pumps move messages: pump-in reads one message per read credit and posts it to trio; pump-out
# takes bytes from the queue, writes them, and posts "one more written" to trio. The trio half
# learns that the RPC is over through `_end_rpc(status)`, posted exactly when the loop half knows
# it; the first end wins and later posts are dropped, as are any messages that arrive after the
# trio side stopped listening. Callbacks posted to trio never raise (they would crash trio.run):
# `_guarded` logs instead.
#
# Flow control: at most STREAM_BUFFER_SIZE messages per direction per stream sit between the two
# threads. Sending: `send_nowait` raises trio.WouldBlock when that many are queued and not yet
# accepted by grpc (grpc's `write` returns once HTTP/2 flow control lets the message out), and
# `send` waits for room; so a peer that stops reading pushes back on the trio sender. Receiving:
# pump-in reads only while it holds credit, and every `receive` returns one credit; so a trio
# receiver that stops reading stops grpc reading, and HTTP/2 flow control pushes back on the peer.

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import grpc
import trio

from ._status import StreamBroken, _Status

if TYPE_CHECKING:
    from ._bridge import GrpcBridge

__all__ = ["BridgedStream"]

#: Messages per direction per stream that may wait between trio and grpc (see "Flow control").
STREAM_BUFFER_SIZE: Final = 64
#: Seconds a server stream handler may keep running after its RPC ended.
HANDLER_GRACE: Final = 0.5


_CLOSE: Final = object()  # queued by close(): half-close (client) / end the RPC with OK (server)


class _LoopSide:
    """The loop-thread half of a stream. Touched only on the loop thread once created."""

    __slots__ = ("credit", "outgoing")

    def __init__(self) -> None:
        # Neither binds to a loop until first awaited, so the trio thread may create them.
        # Items: bytes to write, _CLOSE, or (server) the _Status the handler finished with.
        self.outgoing: asyncio.Queue[object] = asyncio.Queue()
        self.credit = asyncio.Semaphore(STREAM_BUFFER_SIZE)


class BridgedStream:
    """One bidirectional gRPC stream, seen from trio.

    The same class serves both ends: :meth:`GrpcBridge.open_stream` yields one at a client, and a
    :func:`stream_handler` receives one at a server. Its methods must be called on the trio
    thread that opened the bridge. It sends what its serializer accepts and receives what its
    deserializer returns (protobuf messages, which are untyped: hence ``Any``).

    Buffering: up to STREAM_BUFFER_SIZE (64) sent messages may wait for grpc to accept them;
    :meth:`send_nowait` raises ``trio.WouldBlock`` beyond that and :meth:`send` waits. Up to as
    many received messages are read ahead of :meth:`receive`.

    Error handling: once the RPC is over, :meth:`receive` first returns the messages that had
    already arrived and then raises :class:`StreamBroken` with the final status (or
    ``trio.EndOfChannel`` if the peer had half-closed cleanly before); :meth:`send` and
    :meth:`send_nowait` raise :class:`StreamBroken` at once.
    """

    def __init__(self, bridge: GrpcBridge, peer: str, serializer: Callable[[Any], bytes]) -> None:
        #: The other end: grpc's peer string at a server (``"ipv4:127.0.0.1:40112"``), the
        #: target at a client (``"127.0.0.2:7000"``).
        self.peer = peer
        self._bridge = bridge
        self._serializer = serializer
        self._loop_side = _LoopSide()
        # Trio thread only from here on.
        self._incoming_send, self._incoming = trio.open_memory_channel[Any](math.inf)
        self._receive_end: _Status | None = None  # why receive() stops: None = still open
        self._rpc_end: _Status | None = None  # set once the RPC is over
        self._closed = False  # close() was called
        self._unwritten = 0  # sent but not yet accepted by grpc
        self._room = trio.lowlevel.ParkingLot()  # senders waiting for _unwritten to drop
        self._handler_scope: trio.CancelScope | None = None  # server: the handler's task

    async def receive(self) -> Any:  # noqa: ANN401 - a protobuf message
        """The next message from the peer.

        Raises:
            trio.EndOfChannel: the peer finished sending cleanly (at a server: the client
                half-closed; at a client: the server ended the RPC with OK) and every message
                has been received.
            StreamBroken: the RPC failed, was cancelled, or the peer went away.
        """
        try:
            message = await self._incoming.receive()
        except trio.EndOfChannel:
            end = self._receive_end
            if end is not None and end.code is not grpc.StatusCode.OK:
                raise StreamBroken(*end) from None
            raise
        self._bridge._to_loop(self._loop_side.credit.release)
        return message

    def send_nowait(self, message: object) -> None:
        """Queue ``message`` for the peer without waiting.

        Raises:
            trio.WouldBlock: STREAM_BUFFER_SIZE messages are already waiting to be written.
            StreamBroken: the RPC is over.
            trio.ClosedResourceError: :meth:`close` was called.
            Exception: whatever the serializer raises for a message it cannot encode.
        """
        if self._rpc_end is not None:
            raise StreamBroken(*self._rpc_end)
        if self._closed:
            raise trio.ClosedResourceError("send after close()")
        if self._unwritten >= STREAM_BUFFER_SIZE:
            raise trio.WouldBlock
        data = self._serializer(message)
        if not self._bridge._to_loop(self._loop_side.outgoing.put_nowait, data):
            raise StreamBroken(grpc.StatusCode.UNAVAILABLE, "the gRPC bridge is closed")
        self._unwritten += 1

    async def send(self, message: object) -> None:
        """Queue ``message`` for the peer, waiting while the buffer is full.

        Raises:
            StreamBroken, trio.ClosedResourceError: as :meth:`send_nowait`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._unwritten >= STREAM_BUFFER_SIZE and self._rpc_end is None:
            if self._closed:
                break  # send_nowait raises
            await self._room.park()
        self.send_nowait(message)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self) -> None:
        """Say that nothing more will be sent. Idempotent; messages already sent still go.

        Client: half-close (the server's receive then raises ``trio.EndOfChannel``); responses
        can still be received. Server: the RPC ends with OK once the messages already sent are
        written; the handler should return.
        """
        if not self._closed:
            self._closed = True
            self._room.unpark_all()
            self._bridge._to_loop(self._loop_side.outgoing.put_nowait, _CLOSE)

    # Callbacks posted by the loop thread (run on the trio thread).

    def _deliver(self, message: object) -> None:
        if self._receive_end is None:
            self._incoming_send.send_nowait(message)
        # else: the trio side stopped listening; drop it.

    def _end_receive(self, status: _Status) -> None:
        if self._receive_end is None:
            self._receive_end = status
            self._incoming_send.close()

    def _end_rpc(self, status: _Status) -> None:
        self._end_receive(status)
        self._end_sending(status)

    def _end_sending(self, status: _Status) -> None:
        if self._rpc_end is not None:
            return
        self._rpc_end = status
        self._room.unpark_all()
        if self._handler_scope is not None:
            grace = trio.current_time() + HANDLER_GRACE
            self._handler_scope.deadline = min(self._handler_scope.deadline, grace)

    def _written(self) -> None:
        self._unwritten -= 1
        self._room.unpark()
