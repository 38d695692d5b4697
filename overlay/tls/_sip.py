"""The node's SIP over TLS material (``[sip.tls]``), checked at start (docs/security.md).

A file that is unreadable, not PEM, a key that is not the certificate's, or a certificate
outside its validity period stops the node before it serves anything, with the file named, as
the ``[grpc]`` files do; only then are the ssl contexts made from them. Without ``[sip.tls]``
the node has no TLS listener, and the TLS connections it opens verify servers against the
system's CA store, without a client certificate.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from overlay.config import SipTlsSection

from ._certs import TlsError, load_authorities, load_key_pair

#: Both sides speak TLS 1.2 or later with the ssl module's default cipher choice.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsContexts:
    """What ``SipTransport`` needs for TLS.

    ``client`` verifies servers (CERT_REQUIRED, hostname checked) and presents this node's
    certificate when it has one; ``server`` serves the ``tls:`` listeners (``None`` without
    them); ``handshake_timeout`` bounds every handshake, in seconds.
    """

    client: ssl.SSLContext
    server: ssl.SSLContext | None = None
    handshake_timeout: float = 5.0

    @classmethod
    def create(
        cls,
        *,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        verify_client: bool = False,
        handshake_timeout: float = 5.0,
    ) -> TlsContexts:
        """Contexts from PEM files (paths).

        Args:
            cert: this node's certificate chain, leaf first; ``None``: no server side and no
                client certificate.
            key: its private key.
            ca: CA bundle that verifies peers' certificates; ``None``: the system's store.
            verify_client: connecting peers must present a certificate ``ca`` signed.
            handshake_timeout: seconds a handshake may take.

        Raises:
            ssl.SSLError, OSError: a file cannot be loaded (check the files first to name the
                problem: ``overlay.tls._sip``).
        """
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        client.minimum_version = MINIMUM_VERSION
        server = None
        if cert is not None:
            client.load_cert_chain(cert, key)
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
            server.minimum_version = MINIMUM_VERSION
            server.load_cert_chain(cert, key)
            server.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_NONE
        return cls(client, server, handshake_timeout)


def load_sip_tls(section: SipTlsSection | None, *, now: datetime.datetime) -> TlsContexts:
    """The TLS contexts of the node's SIP transport.

    Raises:
        TlsError: a file of ``section`` cannot work; the message names it.
    """
    if section is None:
        return TlsContexts.create()
    load_key_pair(Path(section.cert), Path(section.key), now=now)
    if section.ca is not None:
        load_authorities(Path(section.ca), now=now)
    try:
        return TlsContexts.create(
            cert=section.cert,
            key=section.key,
            ca=section.ca,
            verify_client=section.verify_client,
            handshake_timeout=section.handshake_timeout,
        )
    except (ssl.SSLError, OSError) as exc:
        # What the checks above let through, e.g. a key type this OpenSSL refuses.
        raise TlsError(f"{section.cert}: {exc}") from None
