"""gRPC services implemented on trio: the handlers of their methods, and who may call them.

A :class:`Service` maps method names to handlers made by :func:`unary_handler`,
:func:`stream_handler` and :func:`server_stream_handler`; ``GrpcBridge.start_server`` serves it.
How the bridge runs each kind of handler is under "Server handlers run on trio" in the theory of
operation of ``_bridge``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ._identities import Caller
from ._status import _Status, _status_for
from ._stream import BridgedStream

__all__ = [
    "MethodHandler",
    "Service",
    "server_stream_handler",
    "stream_handler",
    "unary_handler",
]

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

#: Called before every handler of a :class:`Service` with the method name (``"Drain"``) and the
#: caller; raises :class:`RpcError` (PERMISSION_DENIED, ...) to refuse the call.
Authorize = Callable[[str, Caller], None]


@dataclass(frozen=True, slots=True)
class _UnaryHandler:
    fn: Callable[[Any], Any]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]
    is_async: bool


@dataclass(frozen=True, slots=True)
class _StreamHandler:
    fn: Callable[[BridgedStream], Awaitable[None]]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]


@dataclass(frozen=True, slots=True)
class _ServerStreamHandler:
    fn: Callable[[Any, BridgedStream], Awaitable[None]]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]


#: One method of a :class:`Service`, built by :func:`unary_handler`, :func:`stream_handler` or
#: :func:`server_stream_handler`.
MethodHandler = _UnaryHandler | _StreamHandler | _ServerStreamHandler


@overload
def unary_handler(
    fn: Callable[[RequestT], Awaitable[ResponseT]],
    request_deserializer: Callable[[bytes], RequestT],
    response_serializer: Callable[[ResponseT], bytes],
) -> MethodHandler: ...
@overload
def unary_handler(
    fn: Callable[[RequestT], ResponseT],
    request_deserializer: Callable[[bytes], RequestT],
    response_serializer: Callable[[ResponseT], bytes],
) -> MethodHandler: ...
def unary_handler(
    fn: Callable[[Any], Any],
    request_deserializer: Callable[[bytes], Any],
    response_serializer: Callable[[Any], bytes],
) -> MethodHandler:
    """A unary method implemented on trio: ``fn(request) -> response``.

    A plain function runs on the trio thread in a ``run_sync_soon`` callback, so it must not
    block. An ``async def`` function runs as a task of the bridge's nursery and is cancelled if
    the RPC is (client gone, deadline). Either may raise :class:`RpcError` to answer with that
    status; any other exception is logged and answered with INTERNAL. A request that does not
    decode is answered with INVALID_ARGUMENT without calling ``fn``.
    """
    return _UnaryHandler(
        fn, request_deserializer, response_serializer, inspect.iscoroutinefunction(fn)
    )


def stream_handler(
    fn: Callable[[BridgedStream], Awaitable[None]],
    request_deserializer: Callable[[bytes], RequestT],
    response_serializer: Callable[[ResponseT], bytes],
) -> MethodHandler:
    """A bidirectional-streaming method implemented on trio: ``async def fn(stream) -> None``.

    ``fn`` runs as a task of the bridge's nursery for the life of the RPC. When it returns, the
    response stream ends with OK; :class:`RpcError` ends it with that status; any other exception
    is logged and ends it with INTERNAL. When the RPC ends first, ``stream.receive()`` raises
    StreamBroken (``trio.EndOfChannel`` after a clean half-close by the client), and ``fn`` is
    cancelled if it has not returned HANDLER_GRACE seconds later.
    """
    return _StreamHandler(fn, request_deserializer, response_serializer)


def server_stream_handler(
    fn: Callable[[RequestT, BridgedStream], Awaitable[None]],
    request_deserializer: Callable[[bytes], RequestT],
    response_serializer: Callable[[ResponseT], bytes],
) -> MethodHandler:
    """A server-streaming method implemented on trio: ``async def fn(request, stream) -> None``.

    As :func:`stream_handler`, except that the client sends one request, given to ``fn``, and
    ``stream`` only sends (its ``receive`` raises ``trio.EndOfChannel``). When the client goes
    away, ``send`` raises :class:`StreamBroken` and ``fn`` is cancelled HANDLER_GRACE seconds
    later if it has not returned (a handler waiting for something to send is cancelled so). A
    request that does not decode ends the RPC with INVALID_ARGUMENT without calling ``fn``.
    """
    return _ServerStreamHandler(fn, request_deserializer, response_serializer)


@dataclass(frozen=True)
class Service:
    """One gRPC service implemented on the trio side.

    Example::

        Service("overlay.v1.Control", {
            "ListLinks": unary_handler(
                list_links,
                control_pb2.ListLinksRequest.FromString,
                control_pb2.ListLinksResponse.SerializeToString,
            ),
        }, authorize=policy.authorize_control)
    """

    #: Fully qualified service name, ``package.Service``.
    name: str
    #: Method name (without the service) -> handler.
    methods: Mapping[str, MethodHandler]
    #: Checks every call before its handler runs (see :data:`Authorize`); ``None``: no check.
    authorize: Authorize | None = None


class _Method:
    """A served method: its path, its name, and its service's ``authorize``."""

    __slots__ = ("authorize", "name", "path")

    def __init__(self, path: str, name: str, authorize: Authorize | None) -> None:
        self.path = path  # "/overlay.v1.Control/Drain"
        self.name = name  # "Drain"
        self.authorize = authorize

    def refusal(self, caller: Caller) -> _Status | None:
        """Trio thread: the status that refuses ``caller``, or None when it may call."""
        if self.authorize is None:
            return None
        try:
            self.authorize(self.name, caller)
        except Exception as exc:
            return _status_for(exc, self.path)
        return None
