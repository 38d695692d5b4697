"""gRPC for trio: grpcio's asyncio API on one thread of its own, driven from trio.

This module is the bridge itself: the loop thread, the crossings between the two threads, the
servers and the client calls. With ``_stream`` (a stream's two halves) it is the only code of the
project that imports asyncio (STYLE.md §6, the import-linter contract ``asyncio-bridge``); with
``_stream`` and ``_status`` (status codes and errors), the only code that uses grpc itself (the
contract ``grpc-bridge``: others get status codes as :data:`StatusCode`). Everything else uses
:func:`open_grpc_bridge` and the objects it hands out; they take and return trio-friendly values
and raise :class:`RpcError` / :class:`StreamBroken`, never grpc's or asyncio's exceptions.
"""

# Theory of operation
# -------------------
#
# Two threads, two event loops. The trio thread runs the node. The bridge thread (started by
# open_grpc_bridge and joined before it returns) runs an asyncio loop that owns every grpc.aio
# object: servers, channels, calls, the health servicer. Rule 1: a grpc.aio or asyncio object is
# used only on the loop thread, a trio object only on the trio thread; an object may be built on
# either thread, but once it has been handed over, only its own side touches it. Nothing is shared
# under a lock: the two sides talk only by posting callbacks to each other, and each side's
# callbacks run in the order they were posted.
#
#   trio -> loop: `_to_loop(fn, *args)` = loop.call_soon_threadsafe; to wait for a result,
#       `_run_in_loop(coro)` = asyncio.run_coroutine_threadsafe plus a trio.Event that the
#       future's done-callback sets through the trio token. The trio thread never blocks;
#       cancelling the trio caller cancels the asyncio task (concurrent Future.cancel()).
#   loop -> trio: `_to_trio(fn, *args)` = TrioToken.run_sync_soon. The loop thread never waits
#       for trio: results come back as further `_to_loop` posts (call_soon_threadsafe setting an
#       asyncio future or feeding an asyncio queue).
#
# Messages cross as bytes. Senders serialize on the trio thread (so a message that does not
# serialize raises at the caller); receivers deserialize on the loop thread (so a malformed peer
# message ends the RPC: INTERNAL at a client, INVALID_ARGUMENT at a server). grpc itself only
# ever sees bytes, which keeps its "log and pass None" serializer behaviour out of the way.
#
# Streams (BridgedStream and its loop half) and their flow control: see the theory of operation
# in ``_stream``.
#
# Server handlers run on trio. Unary: a sync function is called inside the run_sync_soon callback
# (no task); an async one runs as a task in the bridge's nursery under its own cancel scope,
# cancelled if the RPC is. Stream (bidirectional, or server-streaming: the same BridgedStream whose
# receive side is over from the start): the handler runs as a task in the bridge's nursery; when
# the RPC ends first (client gone, deadline, server stopping), its receive/send raise StreamBroken
# and its cancel scope gets a deadline HANDLER_GRACE seconds away. Before any handler runs, the
# service's `authorize` (if any) sees the method and the Caller (peer address and the client's
# verified certificate, read from grpc's auth context on the loop thread); the Caller is also in
# a context variable while the handler runs (`current_caller()`; tasks inherit it).
#
# TLS: a bridge acts as one identity. With TlsCredentials, its servers require and verify a client
# certificate signed by the CA (mutual TLS) and its channels present the same certificate and
# verify the server's against the CA, the server's name being the target's host (an IP address
# or DNS name in the server certificate's subjectAltName).
#
# Shutdown (open_grpc_bridge's exit, also on error or cancellation): refuse new work; cancel the
# stream handlers (their RPCs end with UNAVAILABLE); health says NOT_SERVING; servers stop with
# SERVER_GRACE seconds for unary RPCs in flight; channels close (cancelling client calls); the
# bridge's nursery is cancelled and joined; the loop is stopped, its leftover tasks cancelled and
# run to completion, the loop closed; the thread tells trio it is done and is joined. Every wait
# is shielded and bounded by SHUTDOWN_TIMEOUT.

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
import structlog
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from overlay.sip import host_reference

from ._identities import Caller, TlsCredentials, _caller
from ._service import (
    MethodHandler,
    Service,
    _Method,
    _ServerStreamHandler,
    _StreamHandler,
    _UnaryHandler,
)
from ._status import _OK, _SHUTTING_DOWN, RpcError, _Status, _status_for
from ._stream import _CLOSE, BridgedStream

__all__ = ["GrpcBridge", "open_grpc_bridge"]

log = structlog.get_logger("overlay.control")

#: Seconds in-flight unary RPCs get to finish when the bridge stops its servers.
SERVER_GRACE: Final = 0.5
#: Bound on each step of the bridge's shutdown.
SHUTDOWN_TIMEOUT: Final = 5.0

# Seconds a server waits after read() said EOF before telling the handler the client half-closed
# (see _pump_in). Only delays the end of a stream, once per RPC.
_EOF_SETTLE: Final = 0.1

# HTTP/2 keepalive, so that a peer that vanished without closing its connection (host down, cable
# cut) breaks the streams to it within about 15 s instead of at the next TCP timeout. Servers must
# accept pings that often, or they answer the client's pings with GOAWAY "too_many_pings".
_KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle stream
)
# grpc backs off reconnecting to a dead target up to 120 s by default; an overlay peer that comes
# back (a restarted region) must get its flooding session again within a second.
_CHANNEL_OPTIONS = (
    *_KEEPALIVE_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
_SERVER_OPTIONS = (
    # grpc binds with SO_REUSEPORT by default: two servers could share a port without an error.
    ("grpc.so_reuseport", 0),
    # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS (its string differs from its name):
    # without it an idle stream (a quiet WatchEvents) is sent GOAWAY "too_many_pings".
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    *_KEEPALIVE_OPTIONS,
)

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
T = TypeVar("T")


# --- the bridge ------------------------------------------------------------------------------


def _address(host: str, port: int) -> str:
    return f"{host_reference(host)}:{port}"


class GrpcBridge:
    """grpcio's asyncio servers and channels, run on the bridge thread and used from trio.

    Made by :func:`open_grpc_bridge`; use it only on the trio thread that opened it. After the
    bridge has started to close, its methods raise ``trio.ClosedResourceError``.
    """

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        nursery: trio.Nursery,
        tls: TlsCredentials | None = None,
    ) -> None:
        self._token = token
        self._nursery = nursery
        self._tls = tls
        self._closing = False  # trio thread
        self._thread_done = trio.Event()  # trio thread
        self._stream_scopes: set[trio.CancelScope] = set()  # trio thread: server stream handlers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._thread_main, name="overlay-grpc-bridge", daemon=True
        )
        # Loop thread only:
        self._servers: list[grpc.aio.Server] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._health: Any = None  # grpc_health's asyncio HealthServicer, made on the loop thread
        self._tasks: set[asyncio.Task[None]] = set()
        # Loop thread only: when each beaten health status turns NOT_SERVING (``beat``).
        self._expiries: dict[str, asyncio.TimerHandle] = {}

    # -- public API (trio thread) -----------------------------------------------------------

    async def start_server(self, host: str, port: int, services: Sequence[Service]) -> int:
        """Serve ``services`` on ``host:port``, plus health checking and reflection.

        The standard ``grpc.health.v1.Health`` service reports SERVING for the server as a whole
        (``""``) and for each of ``services`` until :meth:`set_serving` says otherwise; server
        reflection (``grpc.reflection.v1alpha``) lists them (the messages' modules must have been
        imported: reflection reads protobuf's default descriptor pool).

        Args:
            host: address to bind, e.g. ``"127.0.0.1"`` or ``"::1"``.
            port: port to bind; 0 picks a free one.
            services: what to serve. With the bridge's TLS credentials, clients must present a
                certificate signed by its CA (mutual TLS); without, the server is plaintext.

        Returns:
            The bound port.

        Raises:
            OSError: the address cannot be bound (in use, or not an address of this host).
        """
        self._check_open()
        return await self._run_in_loop(self._start_server_in_loop(_address(host, port), services))

    def set_serving(self, service: str, serving: bool) -> None:
        """Set the health status of ``service`` (``""`` = the whole server) on every server."""
        self._check_open()
        self._to_loop(self._set_health_in_loop, service, serving)

    def beat(self, service: str, *, ttl: float) -> None:
        """``service`` is SERVING for ``ttl`` seconds from now, then NOT_SERVING unless beaten
        again. For what only the trio thread can vouch for (its event loop turning): a status
        set once would go on being reported from grpcio's thread however wedged trio is."""
        self._check_open()
        self._to_loop(self._beat_in_loop, service, ttl)

    @asynccontextmanager
    async def open_stream(
        self,
        target: str,
        method: str,
        request_serializer: Callable[[RequestT], bytes],
        response_deserializer: Callable[[bytes], ResponseT],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, known to the server
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> AsyncIterator[BridgedStream]:
        """Open a bidirectional stream to ``method`` of ``target``.

        Args:
            target: ``"host:port"`` of the server (``"127.0.0.2:7000"``). Calls to one target
                share one channel, opened on first use and closed with the bridge.
            method: ``"/package.Service/Method"`` (``"/overlay.v1.LinkState/Flood"``).
            request_serializer: turns a message to send into bytes (on the trio thread).
            response_deserializer: turns received bytes into a message (on the bridge thread).
            timeout: seconds the whole RPC may last (a gRPC deadline); None = no limit.
            metadata: (key, value) pairs sent with the call.

        Yields:
            The stream. Opening does not wait for the connection: a target that cannot be
            reached shows up as StreamBroken (UNAVAILABLE) from ``receive``.

        Resource handling: leaving the block cancels the RPC if it is still running (call
        ``close()`` and receive until ``EndOfChannel`` first to end it cleanly).
        """
        self._check_open()
        stream = BridgedStream(self, target, request_serializer)
        rpc = self._client_stream_in_loop(
            stream, target, method, response_deserializer, timeout, tuple(metadata)
        )
        with self._running(stream, rpc):
            yield stream

    @asynccontextmanager
    async def open_server_stream(
        self,
        target: str,
        method: str,
        request: RequestT,
        request_serializer: Callable[[RequestT], bytes],
        response_deserializer: Callable[[bytes], ResponseT],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, known to the server
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> AsyncIterator[BridgedStream]:
        """Call the server-streaming ``method`` of ``target`` with ``request``.

        Args are as for :meth:`open_stream`, plus the one request (serialized here).

        Yields:
            A stream to ``receive`` the responses from, until ``trio.EndOfChannel`` (the server
            ended the RPC with OK) or :class:`StreamBroken` (any other status, e.g. UNAVAILABLE
            when the target cannot be reached). It sends nothing: ``send`` raises
            ``trio.ClosedResourceError``.

        Resource handling: leaving the block cancels the RPC if it is still running.
        """
        self._check_open()
        data = request_serializer(request)
        stream = BridgedStream(self, target, _nothing_to_send)
        stream._closed = True
        rpc = self._client_server_stream_in_loop(
            stream, target, method, data, response_deserializer, timeout, tuple(metadata)
        )
        with self._running(stream, rpc):
            yield stream

    @contextmanager
    def _running(self, stream: BridgedStream, rpc: Coroutine[Any, Any, None]) -> Iterator[None]:
        """Run the client call ``rpc``, which feeds ``stream``, on the loop during the block."""
        future = asyncio.run_coroutine_threadsafe(rpc, self._loop)
        try:
            yield
        finally:
            stream._end_rpc(_Status(grpc.StatusCode.CANCELLED, "the stream was closed locally"))
            # Cancels the asyncio task, which cancels the call. Nothing to wait for: whatever it
            # still posts to the stream is dropped, and the bridge's exit reaps the task.
            future.cancel()

    async def unary(
        self,
        target: str,
        method: str,
        request: RequestT,
        request_serializer: Callable[[RequestT], bytes],
        response_deserializer: Callable[[bytes], ResponseT],
        *,
        timeout: float | None,  # noqa: ASYNC109 - a gRPC deadline, known to the server
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> ResponseT:
        """Call the unary ``method`` (``"/overlay.v1.Control/ListLinks"``) on ``target``.

        Args and channels are as for :meth:`open_stream`; ``timeout`` is required, so that a
        caller states how long it is prepared to wait (None = no limit). Cancelling the caller
        cancels the RPC.

        Returns:
            The deserialized response.

        Raises:
            RpcError: the call ended with a status other than OK (DEADLINE_EXCEEDED after
                ``timeout`` seconds, UNAVAILABLE if the target cannot be reached, ...).
        """
        self._check_open()
        data = request_serializer(request)
        return await self._run_in_loop(
            self._unary_in_loop(target, method, data, response_deserializer, timeout, metadata)
        )

    # -- crossing threads -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise trio.ClosedResourceError("the gRPC bridge is closed")

    def _to_loop(self, fn: Callable[..., object], *args: object) -> bool:
        """From the trio thread: run ``fn(*args)`` soon on the loop thread. False if it is gone."""
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nothing over there listens any more
            return False
        return True

    def _to_trio(self, fn: Callable[..., object], *args: object) -> bool:
        """From the loop thread: run ``fn(*args)`` soon on the trio thread. False if it is gone."""
        try:
            self._token.run_sync_soon(self._guarded, fn, args)
        except trio.RunFinishedError:
            return False
        return True

    @staticmethod
    def _guarded(fn: Callable[..., object], args: tuple[object, ...]) -> None:
        # An exception escaping a run_sync_soon callback would crash trio.run.
        try:
            fn(*args)
        except Exception:
            log.exception("gRPC bridge callback failed", callback=getattr(fn, "__qualname__", fn))

    async def _run_in_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and wait for its result without blocking trio."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = trio.Event()
        future.add_done_callback(lambda _: self._to_trio(done.set))
        try:
            await done.wait()
        finally:
            future.cancel()  # no-op once done; else cancels the asyncio task
        try:
            return future.result()
        except (RpcError, OSError) as exc:
            # Outcomes, not bugs: drop the loop thread's frames. They hold grpc objects (a
            # channel, an unstarted server), which would outlive the bridge, and keep grpc's
            # poller thread running, for as long as the caller keeps the exception.
            exc.__context__ = None
            raise exc.with_traceback(None) from None

    # -- loop thread ------------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._health = health.aio.HealthServicer()
            loop.run_forever()
        finally:
            try:
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                # Drop the last references to grpc.aio objects here, on this thread: when the
                # last one goes, grpc stops its completion-queue poller thread. Calls and
                # their exceptions sit in reference cycles (exception -> traceback -> frame ->
                # call), which only the cycle collector frees; without it the poller thread
                # would outlive the bridge until some later collection.
                self._servers.clear()
                self._channels.clear()
                self._health = None
                gc.collect()
                asyncio.set_event_loop(None)
                loop.close()
                self._to_trio(self._thread_done.set)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_health_in_loop(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._spawn(self._health.set(service, status))

    def _beat_in_loop(self, service: str, ttl: float) -> None:
        expiry = self._expiries.pop(service, None)
        if expiry is None:
            self._set_health_in_loop(service, True)
        else:
            expiry.cancel()
        self._expiries[service] = self._loop.call_later(ttl, self._expire_in_loop, service)

    def _expire_in_loop(self, service: str) -> None:
        del self._expiries[service]
        self._set_health_in_loop(service, False)

    async def _start_server_in_loop(self, address: str, services: Sequence[Service]) -> int:
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    service.name,
                    {
                        name: self._grpc_method_handler(
                            _Method(f"/{service.name}/{name}", name, service.authorize), handler
                        )
                        for name, handler in service.methods.items()
                    },
                )
                for service in services
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [s.name for s in services]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        tls = self._tls
        try:
            if tls is None:
                port: int = server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
                )
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc >= 1.60 raises; older ones returned 0
            raise OSError(f"cannot bind the gRPC server to {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot bind the gRPC server to {address}")
        await server.start()
        self._servers.append(server)
        for name in names:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return port

    def _grpc_method_handler(
        self, method: _Method, handler: MethodHandler
    ) -> grpc.RpcMethodHandler:
        # grpc gets no (de)serializers: bytes cross the bridge (see the theory of operation).
        if isinstance(handler, _UnaryHandler):
            unary = handler

            async def serve_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await self._serve_unary(method, unary, request, context)

            return grpc.unary_unary_rpc_method_handler(serve_unary)
        if isinstance(handler, _ServerStreamHandler):
            server_stream = handler

            async def serve_server_stream(
                request: bytes, context: grpc.aio.ServicerContext
            ) -> None:
                message = await self._decode_request(
                    server_stream.request_deserializer, request, context
                )
                await self._serve_stream(method, server_stream, context, message)

            return grpc.unary_stream_rpc_method_handler(serve_server_stream)
        stream = handler

        async def serve_stream(_requests: object, context: grpc.aio.ServicerContext) -> None:
            await self._serve_stream(method, stream, context)

        return grpc.stream_stream_rpc_method_handler(serve_stream)

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            tls = self._tls
            if tls is None:
                channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            else:
                credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
                channel = grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
            self._channels[target] = channel
        return channel

    @staticmethod
    def _caller_of(context: grpc.aio.ServicerContext) -> Caller:
        """Loop thread: who is calling, from grpc's view of the connection."""
        certificates = context.auth_context().get("x509_pem_cert") or [None]
        return Caller(context.peer(), certificates[0])

    @staticmethod
    async def _decode_request(
        deserializer: Callable[[bytes], object], data: bytes, context: grpc.aio.ServicerContext
    ) -> object:
        """Loop thread: the request a server received; INVALID_ARGUMENT if it does not decode."""
        try:
            return deserializer(data)
        except Exception as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode the request: {exc}"
            )
            raise  # not reached: abort() raises

    async def _unary_in_loop(
        self,
        target: str,
        method: str,
        data: bytes,
        response_deserializer: Callable[[bytes], ResponseT],
        deadline_s: float | None,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> ResponseT:
        call = self._channel(target).unary_unary(method)
        try:
            raw: bytes = await call(data, timeout=deadline_s, metadata=tuple(metadata))
        except grpc.aio.AioRpcError as exc:
            raise RpcError(exc.code(), exc.details() or "") from None
        try:
            return response_deserializer(raw)
        except Exception as exc:
            raise RpcError(grpc.StatusCode.INTERNAL, f"cannot decode the response: {exc}") from None

    async def _serve_unary(
        self,
        method: _Method,
        handler: _UnaryHandler,
        data: bytes,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        request = await self._decode_request(handler.request_deserializer, data, context)
        reply: asyncio.Future[bytes | _Status] = self._loop.create_future()
        call = _UnaryCall(self, reply, self._caller_of(context))
        if not self._to_trio(self._start_unary, method, handler, request, call):
            await context.abort(*_SHUTTING_DOWN)
        try:
            outcome = await reply
        except asyncio.CancelledError:  # client gone, deadline or server stopping
            self._to_trio(call.cancel)
            raise
        if isinstance(outcome, _Status):
            await context.abort(outcome.code, outcome.details)
        assert isinstance(outcome, bytes)
        return outcome

    async def _serve_stream(
        self,
        method: _Method,
        handler: _StreamHandler | _ServerStreamHandler,
        context: grpc.aio.ServicerContext,
        request: object = None,
    ) -> None:
        """Serve a bidirectional stream, or (with the decoded ``request``) a server stream."""
        stream = BridgedStream(self, context.peer(), handler.response_serializer)
        side = stream._loop_side
        reader = None
        if isinstance(handler, _StreamHandler):
            reader = self._loop.create_task(
                self._pump_in(stream, context.read, handler.request_deserializer, client=False)
            )
        caller = self._caller_of(context)
        end = _Status(grpc.StatusCode.CANCELLED, "the RPC was cancelled")
        try:
            if not self._to_trio(self._start_stream, method, handler, stream, caller, request):
                end = _SHUTTING_DOWN
            else:
                while True:
                    item = await side.outgoing.get()
                    if isinstance(item, _Status):
                        end = item
                        break
                    if item is _CLOSE:
                        end = _OK
                        break
                    assert isinstance(item, bytes)
                    try:
                        await context.write(item)
                    except Exception as exc:  # the RPC ended under us (the client went away)
                        end = _Status(grpc.StatusCode.CANCELLED, f"the RPC has ended: {exc}")
                        break
                    self._to_trio(stream._written)
        finally:
            if reader is not None:
                reader.cancel()
            self._to_trio(stream._end_rpc, end)
        if end.code is not grpc.StatusCode.OK:
            await context.abort(end.code, end.details)

    async def _client_stream_in_loop(
        self,
        stream: BridgedStream,
        target: str,
        method: str,
        response_deserializer: Callable[[bytes], object],
        deadline_s: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        call = self._channel(target).stream_stream(method)(timeout=deadline_s, metadata=metadata)
        await self._run_client_call(stream, call, response_deserializer, write=True)

    async def _client_server_stream_in_loop(
        self,
        stream: BridgedStream,
        target: str,
        method: str,
        data: bytes,
        response_deserializer: Callable[[bytes], object],
        deadline_s: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        call = self._channel(target).unary_stream(method)(
            data, timeout=deadline_s, metadata=metadata
        )
        await self._run_client_call(stream, call, response_deserializer, write=False)

    async def _run_client_call(
        self,
        stream: BridgedStream,
        call: grpc.aio.Call,
        response_deserializer: Callable[[bytes], object],
        *,
        write: bool,
    ) -> None:
        """Pump the responses of ``call`` into ``stream`` until they end, and with ``write`` the
        stream's messages into ``call``; then cancel the call."""
        reader = self._loop.create_task(
            self._pump_in(stream, call.read, response_deserializer, client=True, call=call)
        )
        writer = self._loop.create_task(self._client_writer(stream, call)) if write else None
        try:
            await reader
        finally:
            call.cancel()
            reader.cancel()
            if writer is not None:
                writer.cancel()

    async def _client_writer(self, stream: BridgedStream, call: grpc.aio.StreamStreamCall) -> None:
        side = stream._loop_side
        try:
            while True:
                item = await side.outgoing.get()
                if item is _CLOSE:
                    await call.done_writing()
                    return
                await call.write(item)
                self._to_trio(stream._written)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The RPC is over: fail the sends now. The reader reports the end to receive() in
            # order, after the messages that arrived before it (it may be waiting for credit).
            status = _Status(await call.code(), await call.details() or "")
            self._to_trio(stream._end_sending, status)

    async def _pump_in(
        self,
        stream: BridgedStream,
        read: Callable[[], Awaitable[object]],
        deserializer: Callable[[bytes], object],
        *,
        client: bool,
        call: grpc.aio.Call | None = None,
    ) -> None:
        side = stream._loop_side
        try:
            while True:
                await side.credit.acquire()
                data = await read()
                if data is grpc.aio.EOF:
                    if client:
                        # grpc raises for a status other than OK, so this is the end, with OK.
                        self._to_trio(stream._end_rpc, _OK)
                        return
                    # A server's read() says EOF both for a clean half-close and for a client
                    # that cancelled or vanished; grpc cancels this RPC (and so this task) a
                    # moment later in the second case. Wait that moment before calling it clean.
                    await asyncio.sleep(_EOF_SETTLE)
                    self._to_trio(stream._end_receive, _OK)
                    return
                try:
                    assert isinstance(data, bytes)
                    message = deserializer(data)
                except Exception as exc:
                    bad = _Status(
                        grpc.StatusCode.INTERNAL if client else grpc.StatusCode.INVALID_ARGUMENT,
                        f"cannot decode a message from the peer: {exc}",
                    )
                    if call is not None:
                        call.cancel()
                        self._to_trio(stream._end_rpc, bad)
                    else:
                        side.outgoing.put_nowait(bad)  # ends the RPC with that status
                    return
                self._to_trio(stream._deliver, message)
        except grpc.aio.AioRpcError as exc:  # client: the RPC ended with an error
            self._to_trio(stream._end_rpc, _Status(exc.code(), exc.details() or ""))
        except Exception as exc:  # server: read() after the RPC ended
            self._to_trio(
                stream._end_rpc, _Status(grpc.StatusCode.CANCELLED, f"the RPC has ended: {exc}")
            )

    # -- trio thread: running handlers --------------------------------------------------------

    def _start_unary(
        self, method: _Method, handler: _UnaryHandler, request: object, call: _UnaryCall
    ) -> None:
        token = _caller.set(call.caller)
        try:
            refusal = method.refusal(call.caller)
            if refusal is not None:
                call.finish(refusal)
            elif self._closing and handler.is_async:
                call.finish(_SHUTTING_DOWN)
            elif handler.is_async:
                call.scope = trio.CancelScope()
                # The task copies the context now: current_caller() works in it.
                self._nursery.start_soon(self._run_async_unary, method, handler, request, call)
            else:
                try:
                    reply: bytes | _Status = handler.response_serializer(handler.fn(request))
                except Exception as exc:
                    reply = _status_for(exc, method.path)
                call.finish(reply)
        finally:
            _caller.reset(token)

    async def _run_async_unary(
        self, method: _Method, handler: _UnaryHandler, request: object, call: _UnaryCall
    ) -> None:
        reply: bytes | _Status = _Status(grpc.StatusCode.CANCELLED, "the handler was cancelled")
        assert call.scope is not None
        try:
            with call.scope:
                try:
                    reply = handler.response_serializer(await handler.fn(request))
                except Exception as exc:
                    reply = _status_for(exc, method.path)
        finally:
            call.finish(reply)

    def _start_stream(
        self,
        method: _Method,
        handler: _StreamHandler | _ServerStreamHandler,
        stream: BridgedStream,
        caller: Caller,
        request: object,
    ) -> None:
        refusal = method.refusal(caller)
        if refusal is None and self._closing:
            refusal = _SHUTTING_DOWN
        if refusal is not None:
            self._to_loop(stream._loop_side.outgoing.put_nowait, refusal)
            return
        if isinstance(handler, _ServerStreamHandler):
            stream._end_receive(_OK)  # the one request was the whole of the client's side
        stream._handler_scope = trio.CancelScope()
        token = _caller.set(caller)
        try:
            self._nursery.start_soon(self._run_stream, method, handler, stream, request)
        finally:
            _caller.reset(token)

    async def _run_stream(
        self,
        method: _Method,
        handler: _StreamHandler | _ServerStreamHandler,
        stream: BridgedStream,
        request: object,
    ) -> None:
        scope = stream._handler_scope
        assert scope is not None
        self._stream_scopes.add(scope)
        end = _Status(grpc.StatusCode.CANCELLED, "the handler was cancelled")
        try:
            with scope:
                try:
                    if isinstance(handler, _ServerStreamHandler):
                        await handler.fn(request, stream)
                    else:
                        await handler.fn(stream)
                    end = _OK
                except Exception as exc:
                    end = _status_for(exc, method.path)
        finally:
            self._stream_scopes.discard(scope)
            if self._closing and end.code is grpc.StatusCode.CANCELLED:
                end = _SHUTTING_DOWN
            self._to_loop(stream._loop_side.outgoing.put_nowait, end)

    # -- shutdown ---------------------------------------------------------------------------

    async def _stop_serving(self) -> None:
        """Stop the servers and close the channels. Trio side; shielded and bounded."""
        self._closing = True
        for scope in self._stream_scopes:
            scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT) as bounded:
            await self._run_in_loop(self._stop_serving_in_loop())
        if bounded.cancelled_caught:
            log.error("gRPC servers did not stop in time", timeout=SHUTDOWN_TIMEOUT)

    async def _stop_serving_in_loop(self) -> None:
        await self._health.enter_graceful_shutdown()
        results = await asyncio.gather(
            *(server.stop(SERVER_GRACE) for server in self._servers),
            *(channel.close() for channel in self._channels.values()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Exception):
                log.error("stopping a gRPC server or channel failed", error=repr(result))

    async def _stop_thread(self) -> None:
        """Stop the loop and join the thread. Trio side; shielded and bounded."""
        self._closing = True
        self._to_loop(self._loop.stop)
        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT):
            await self._thread_done.wait()
        if self._thread_done.is_set():
            self._thread.join()  # it has nothing left to do but return
        else:
            log.error("the gRPC bridge thread did not stop", timeout=SHUTDOWN_TIMEOUT)


def _nothing_to_send(message: object) -> bytes:
    raise TypeError("this stream only receives")


class _UnaryCall:
    """One unary RPC being served: the asyncio future for the reply, the trio cancel scope."""

    __slots__ = ("_bridge", "_reply", "caller", "scope")

    def __init__(
        self, bridge: GrpcBridge, reply: asyncio.Future[bytes | _Status], caller: Caller
    ) -> None:
        self._bridge = bridge
        self._reply = reply  # loop thread only
        self.caller = caller
        self.scope: trio.CancelScope | None = None  # trio thread only: an async handler's task

    def finish(self, reply: bytes | _Status) -> None:
        """Trio thread: hand the reply over to the loop thread."""
        self._bridge._to_loop(_resolve, self._reply, reply)

    def cancel(self) -> None:
        """Trio thread: the RPC was cancelled; stop an async handler."""
        if self.scope is not None:
            self.scope.cancel()


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # cancelled meanwhile: nobody waits for the value
        future.set_result(value)


@asynccontextmanager
async def open_grpc_bridge(*, tls: TlsCredentials | None = None) -> AsyncIterator[GrpcBridge]:
    """Start the gRPC bridge thread; stop everything it runs on exit.

    Args:
        tls: the identity of this side for mutual TLS, used by every server and channel of the
            bridge; ``None``: plaintext servers and channels.

    Resource handling: on exit (normal, error or cancellation) the stream handlers are cancelled,
    the servers stop (SERVER_GRACE seconds for unary RPCs in flight), client channels close, the
    handler tasks are cancelled, the asyncio loop stops and the thread is joined, so no thread
    outlives the block.
    """
    token = trio.lowlevel.current_trio_token()
    bridge: GrpcBridge | None = None
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            bridge = GrpcBridge(token, nursery, tls)
            bridge._thread.start()
            try:
                yield bridge
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                await bridge._stop_serving()
                nursery.cancel_scope.cancel()
        # The nursery is closed: no handler task is left to post to the loop.
    except BaseExceptionGroup as group:
        # The body's own exception went through the handlers' nursery, which wrapped it: give
        # the caller the exception it raised, not a group of one.
        if body_error is None or list(group.exceptions) != [body_error]:
            raise
        cause, context = body_error.__cause__, body_error.__context__
        try:
            raise body_error
        finally:
            body_error.__cause__, body_error.__context__ = cause, context
    finally:
        if bridge is not None:
            await bridge._stop_thread()
