"""grpcio bridged to trio, and who may call what.

The only package that imports asyncio or grpc (STYLE.md §6): servers, clients and streams are
made through ``open_grpc_bridge``; ``AccessPolicy`` maps a caller's certificate to its role.
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
from ._bridge import (
    BridgedStream,
    Caller,
    GrpcBridge,
    MethodHandler,
    RpcError,
    Service,
    StatusCode,
    StreamBroken,
    TlsCredentials,
    current_caller,
    open_grpc_bridge,
    server_stream_handler,
    stream_handler,
    unary_handler,
)

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
