"""grpcio bridged to trio, and who may call what.

The only package that imports asyncio or grpc (STYLE.md §6): servers, clients and streams are
made through ``open_grpc_bridge``; ``AccessPolicy`` maps a caller's certificate to its role.

One idea in five parts, each a module: ``_status`` (status codes and the errors that carry
them), ``_identities`` (TLS credentials and the caller of a served RPC), ``_service`` (services
and their method handlers), ``_stream`` (a stream's trio and asyncio halves) and ``_bridge`` (the
loop thread, servers and client calls; its theory of operation is the place to start). ``_auth``
builds the access policy on top.
"""

from ._auth import (
    NODE_URI_PREFIX,
    OPERATOR_METHODS,
    ROLE_URI_PREFIX,
    AccessPolicy,
    Identity,
    Role,
    identity_of,
    node_of,
)
from ._bridge import GrpcBridge, open_grpc_bridge
from ._identities import Caller, TlsCredentials, current_caller
from ._service import (
    MethodHandler,
    Service,
    server_stream_handler,
    stream_handler,
    unary_handler,
)
from ._status import RpcError, StatusCode, StreamBroken
from ._stream import BridgedStream

__all__ = [
    "NODE_URI_PREFIX",
    "OPERATOR_METHODS",
    "ROLE_URI_PREFIX",
    "AccessPolicy",
    "BridgedStream",
    "Caller",
    "GrpcBridge",
    "Identity",
    "MethodHandler",
    "Role",
    "RpcError",
    "Service",
    "StatusCode",
    "StreamBroken",
    "TlsCredentials",
    "current_caller",
    "identity_of",
    "node_of",
    "open_grpc_bridge",
    "server_stream_handler",
    "stream_handler",
    "unary_handler",
]
