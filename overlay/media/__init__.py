"""The media plane's sans-IO parts: SDP rewriting, relay ports and media sessions.

Edges rewrite every offer and answer so that endpoints send media to their local relay
(``parse_sdp_untrusted``, ``rewrite``, ``serialize_sdp``), hand out relay ports
(``PortAllocator``) and keep the book of the media sessions of their calls (``MediaSessions``).
Nothing here opens a socket or reads a clock: the node pushes the results to the fastpath. See
docs/internal/media.md for the contracts between these pieces, the fastpath and the node.
"""

from ._edge import (
    AddSession,
    CallMediaState,
    MediaCommand,
    MediaEdge,
    RemoveSession,
    media_id,
)
from ._ports import (
    PortAllocator,
    PortPair,
    PortsExhausted,
    PortStatistics,
    PortTaken,
    port_slice,
)
from ._sdp import (
    DIRECTIONS,
    MAX_MEDIA,
    MAX_SDP_SIZE,
    Connection,
    MediaDescription,
    Origin,
    OriginKeeper,
    OverlaySession,
    Rtcp,
    Sdp,
    SdpLine,
    bump_version,
    direction_of,
    endpoint_of,
    parse_sdp_untrusted,
    rewrite,
    serialize_sdp,
    set_overlay_session,
    strip_overlay_sessions,
)
from ._sessions import (
    EndReason,
    MediaSession,
    MediaSessions,
    MediaStatistics,
    SessionState,
    Side,
    worker_session_ids,
)

__all__ = [
    "DIRECTIONS",
    "MAX_MEDIA",
    "MAX_SDP_SIZE",
    "AddSession",
    "CallMediaState",
    "Connection",
    "EndReason",
    "MediaCommand",
    "MediaDescription",
    "MediaEdge",
    "MediaSession",
    "MediaSessions",
    "MediaStatistics",
    "Origin",
    "OriginKeeper",
    "OverlaySession",
    "PortAllocator",
    "PortPair",
    "PortStatistics",
    "PortTaken",
    "PortsExhausted",
    "RemoveSession",
    "Rtcp",
    "Sdp",
    "SdpLine",
    "SessionState",
    "Side",
    "bump_version",
    "direction_of",
    "endpoint_of",
    "media_id",
    "parse_sdp_untrusted",
    "port_slice",
    "rewrite",
    "serialize_sdp",
    "set_overlay_session",
    "strip_overlay_sessions",
    "worker_session_ids",
]
