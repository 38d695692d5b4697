"""Who is at either end of an RPC: this side's TLS credentials, and the client of a served one.

A bridge acts as one identity, :class:`TlsCredentials` (see "TLS" in the theory of operation of
``_bridge``). A handler learns who calls it from :func:`current_caller`; ``_auth`` reads the
caller's certificate for its roles.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

__all__ = ["Caller", "TlsCredentials", "current_caller"]


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """The PEM-encoded mutual-TLS material of one side: a node, or a NOC client.

    Attributes:
        ca: the certificate(s) trusted to sign the other side's certificate.
        cert: this side's certificate (a chain: the leaf first).
        key: its private key.
    """

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Caller:
    """The client of an RPC being served.

    Attributes:
        peer: grpc's peer string, ``"ipv4:127.0.0.1:40112"``.
        certificate: the client's certificate (PEM), verified against the server's CA by the
            TLS handshake; ``None`` on a server without TLS.
    """

    peer: str
    certificate: bytes | None


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "overlay_grpc_caller", default=None
)


def current_caller() -> Caller | None:
    """The client of the RPC the calling handler serves; ``None`` outside a handler."""
    return _caller.get()
