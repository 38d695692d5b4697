"""The sans-IO SIP core: bytes in, messages out, and back (no sockets, no clock).

See docs/internal/sip-api.md for the contract of the message layer exported here.
"""

from ._admission import Admission, Reject
from ._dialogs import DialogBook, EdgeDialog
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    ANOMALY_KINDS,
    FAILOVER_CAUSES,
    CallRefused,
    EgressFailedOver,
    OverlayAnomaly,
    ProxyEvent,
    ResolveTarget,
)
from ._framing import StreamFramer
from ._handover import InviteHandover
from ._headers import CSeq, NameAddr, Via, canonical_name, split_list_untrusted
from ._media_hook import MediaDirection, MediaHook, MediaRefused
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
from ._proxy import ProxyConfig, ProxyCore, ProxyStatistics
from ._relay import OVERLAY_PATH, NextHop, OverlayNodes, OverlayRoutes
from ._steering import call_id_untrusted, steering_owner
from ._targets import Listener, Locate, NextHopHealth, Refusal, Target, overlay_route
from ._transaction import (
    Peer,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionStatistics,
    TransactionTerminated,
    TransactionTimeout,
)
from ._uri import (
    AbsoluteUri,
    Address,
    SipUri,
    TelUri,
    host_bare,
    host_reference,
    parse_uri_untrusted,
)

__all__ = [
    "ANOMALY_KINDS",
    "FAILOVER_CAUSES",
    "OVERLAY_PATH",
    "REASON_PHRASES",
    "AbsoluteUri",
    "Address",
    "Admission",
    "CSeq",
    "CallRefused",
    "DialogBook",
    "EdgeDialog",
    "EgressFailedOver",
    "Headers",
    "InviteHandover",
    "Listener",
    "LocalProtocolError",
    "Locate",
    "MediaDirection",
    "MediaHook",
    "MediaRefused",
    "Message",
    "NameAddr",
    "NextHop",
    "NextHopHealth",
    "OverlayAnomaly",
    "OverlayNodes",
    "OverlayRoutes",
    "Peer",
    "ProtocolError",
    "ProxyConfig",
    "ProxyCore",
    "ProxyEvent",
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
    "host_reference",
    "make_error_response",
    "make_response",
    "overlay_route",
    "parse_message_untrusted",
    "parse_uri_untrusted",
    "serialize",
    "split_list_untrusted",
    "steering_owner",
]
