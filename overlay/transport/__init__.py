"""The node's I/O: SIP sockets (UDP, TCP) and RFC 3263 DNS resolution, on trio."""

from ._resolver import ResolutionError, ResolvedTarget, SipResolver
from ._sip import SipTransport, TransportStatistics

__all__ = [
    "ResolutionError",
    "ResolvedTarget",
    "SipResolver",
    "SipTransport",
    "TransportStatistics",
]
