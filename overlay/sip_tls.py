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
from pathlib import Path

from overlay.config import SipTlsSection
from overlay.control import TlsError, load_authorities, load_key_pair
from overlay.transport import TlsContexts


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
