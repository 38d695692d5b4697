"""The sans-IO SIP core: bytes in, messages out, and back (no sockets, no clock).

See docs/internal/sip-api.md for the contract of the message layer exported here.
"""

from ._admission import Admission, Reject
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._framing import StreamFramer
from ._headers import CSeq, NameAddr, Via, canonical_name, split_list_untrusted
from ._message import (
    REASON_PHRASES,
    Headers,
    Message,
    Request,
    Response,
    make_error_response,
    make_response,
    parse_message_untrusted,
    serialize,
)
from ._proxy import (
    Listener,
    MediaDirection,
    MediaHook,
    MediaRefused,
    OverlayNodes,
    OverlayPaths,
    ProxyConfig,
    ProxyCore,
    ProxyStatistics,
    Refusal,
    ResolveTarget,
    Target,
    overlay_route,
)
from ._steering import call_id_untrusted, steering_owner
from ._transaction import (
    Peer,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionStatistics,
    TransactionTerminated,
    TransactionTimeout,
)
from ._uri import AbsoluteUri, Address, SipUri, TelUri, host_bare, parse_uri_untrusted

__all__ = [
    "REASON_PHRASES",
    "AbsoluteUri",
    "Address",
    "Admission",
    "CSeq",
    "Headers",
    "Listener",
    "LocalProtocolError",
    "MediaDirection",
    "MediaHook",
    "MediaRefused",
    "Message",
    "NameAddr",
    "OverlayNodes",
    "OverlayPaths",
    "Peer",
    "ProtocolError",
    "ProxyConfig",
    "ProxyCore",
    "ProxyStatistics",
    "Refusal",
    "Reject",
    "RemoteProtocolError",
    "Request",
    "ResolveTarget",
    "Response",
    "SipUri",
    "StreamFramer",
    "Target",
    "TelUri",
    "TimerConfig",
    "Transaction",
    "TransactionLayer",
    "TransactionStatistics",
    "TransactionTerminated",
    "TransactionTimeout",
    "Via",
    "call_id_untrusted",
    "canonical_name",
    "host_bare",
    "make_error_response",
    "make_response",
    "overlay_route",
    "parse_message_untrusted",
    "parse_uri_untrusted",
    "serialize",
    "split_list_untrusted",
    "steering_owner",
]
