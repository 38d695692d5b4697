"""The node's I/O: SIP sockets (UDP, TCP, TLS) and RFC 3263 DNS resolution, on trio."""

from ._impairment import ALL_PEERS, DelayLine, Fault, Impairments
from ._resolver import ResolutionError, ResolvedTarget, SipResolver
from ._sip import BoundSocket, SipTransport, Steering, TransportStatistics, bind_listeners

__all__ = [
    "ALL_PEERS",
    "BoundSocket",
    "DelayLine",
    "Fault",
    "Impairments",
    "ResolutionError",
    "ResolvedTarget",
    "SipResolver",
    "SipTransport",
    "Steering",
    "TransportStatistics",
    "bind_listeners",
]
