"""Control plane: gRPC services of the node, bridged to trio (DESIGN.md "Control")."""

from ._bridge import (
    BridgedStream,
    GrpcBridge,
    MethodHandler,
    RpcError,
    Service,
    StreamBroken,
    open_grpc_bridge,
    stream_handler,
    unary_handler,
)

__all__ = [
    "BridgedStream",
    "GrpcBridge",
    "MethodHandler",
    "RpcError",
    "Service",
    "StreamBroken",
    "open_grpc_bridge",
    "stream_handler",
    "unary_handler",
]
