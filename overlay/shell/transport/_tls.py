"""SIP over TLS for ``SipTransport``: the TLS streams and the bounded handshake.

RFC 3261 §26.2 and RFC 5922: a node that opens a TLS connection checks the server's certificate
against the SIP domain it meant to reach (sent as SNI too), or against the IP address when the
target was one (a static target, a Record-Route with an IP address); a trunk's name is never
taken from the SRV target or from the certificate itself. Python's ``ssl`` does both checks once
``server_hostname`` is set: a DNS name against the subjectAltName DNS entries (wildcards in the
leftmost label only, RFC 6125), an IP literal against the IP entries, with no SNI for an IP.

The contexts themselves are ``overlay.tls.TlsContexts``.
"""

from __future__ import annotations

import ssl

import trio

from overlay.tls import TlsContexts


class HandshakeFailed(Exception):
    """A TLS handshake that failed or took too long; ``reason`` is a short label for counters
    (OpenSSL's reason in lower case, or "timeout"), ``detail`` what to log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def client_stream(
    contexts: TlsContexts, stream: trio.SocketStream, server_name: str
) -> trio.SSLStream[trio.SocketStream]:
    """The client side of TLS over ``stream``, to be checked against ``server_name``."""
    return trio.SSLStream(
        stream, contexts.client, server_hostname=server_name, https_compatible=True
    )


def server_stream(
    contexts: TlsContexts, stream: trio.SocketStream
) -> trio.SSLStream[trio.SocketStream]:
    """The server side of TLS over an accepted ``stream``."""
    assert contexts.server is not None
    # https_compatible: a peer that closes without close_notify has simply closed, as on TCP;
    # a message cut short shows in the framing.
    return trio.SSLStream(stream, contexts.server, server_side=True, https_compatible=True)


async def handshake(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Complete the TLS handshake; bound it with a cancel scope (a timeout).

    Raises:
        HandshakeFailed: it failed (certificate refused, protocol error, connection lost); the
            stream is then broken and only good for closing.
    """
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise HandshakeFailed("certificate_verify_failed", cause.verify_message) from None
        if isinstance(cause, ssl.SSLError) and cause.reason:
            raise HandshakeFailed(cause.reason.lower(), str(cause)) from None
        raise HandshakeFailed("connection_lost", str(cause or exc)) from None
