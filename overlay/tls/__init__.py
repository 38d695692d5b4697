"""Certificates and TLS contexts: the fleet's CA, node and operator certificates (gRPC), and
the SIP transport's contexts (``[sip.tls]``), each checked at start with the file named.
"""

from ._certs import (
    Issued,
    TlsError,
    create_ca,
    issue_client,
    issue_node,
    load_authorities,
    load_ca,
    load_key_pair,
    load_tls,
)
from ._sip import MINIMUM_VERSION, TlsContexts, load_sip_tls

__all__ = [
    "MINIMUM_VERSION",
    "Issued",
    "TlsContexts",
    "TlsError",
    "create_ca",
    "issue_client",
    "issue_node",
    "load_authorities",
    "load_ca",
    "load_key_pair",
    "load_sip_tls",
    "load_tls",
]
