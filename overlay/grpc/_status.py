"""gRPC statuses as the bridge's users see them: the codes, and the errors that carry one.

Modules outside ``overlay.grpc`` never import grpc (the import-linter contract ``grpc-bridge``):
they name status codes as :data:`StatusCode` and catch :class:`RpcError` / :class:`StreamBroken`,
never grpc's or asyncio's exceptions.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc
import structlog
import trio

__all__ = ["RpcError", "StatusCode", "StreamBroken"]

#: gRPC status codes (``StatusCode.PERMISSION_DENIED``), for modules that must not import grpc.
StatusCode = grpc.StatusCode

log = structlog.get_logger("overlay.control")


class RpcError(Exception):
    """A gRPC status other than OK.

    Raised by a server handler to answer with this status (any other exception becomes INTERNAL
    with a generic message, and is logged); raised by :meth:`GrpcBridge.unary` when the call
    fails.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class StreamBroken(trio.BrokenResourceError):
    """The RPC of a :class:`BridgedStream` ended with an error, was cancelled, or is over.

    ``code`` and ``details`` are the RPC's final gRPC status (at a server, the status the RPC
    ended with; CANCELLED when the client went away).
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str


_OK = _Status(grpc.StatusCode.OK, "the RPC has ended")
_SHUTTING_DOWN = _Status(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")


def _status_for(exc: BaseException, method: str) -> _Status:
    """The status a failed handler answers with. Call only in an ``except`` block."""
    if isinstance(exc, RpcError):
        return _Status(exc.code, exc.message)
    if isinstance(exc, BaseExceptionGroup):
        rpc_errors, rest = exc.split(RpcError)
        if rest is None and rpc_errors is not None:
            first: BaseException = rpc_errors
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return _status_for(first, method)
    log.exception("gRPC handler failed", method=method)
    return _Status(grpc.StatusCode.INTERNAL, "internal error")
