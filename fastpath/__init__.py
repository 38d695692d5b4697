"""The media fastpath: RTP/RTCP relaying in C with the GIL released (docs/internal/media.md).

Python decides, the fastpath moves packets: ``overlay.media`` pushes sessions and next hops into
a ``Relay`` and reads its counters; no Python code runs per packet. How the forwarding thread,
its tables and its lock work is described at the top of ``fastpath/_relay.pyx``.

``import fastpath`` fails with ImportError when the compiled extension is missing (``./run
setup`` builds it); there is no silent pure-Python fallback.
"""

from fastpath._header import (
    FLAG_ECHO_REPLY,
    FLAG_ECHO_REQUEST,
    FLAG_RTCP,
    HEADER_LEN,
    INITIAL_TTL,
    VERSION,
    Header,
    decode_header_untrusted,
    encode_header,
)
from fastpath._relay import (
    BATCH_SIZE,
    DROP_REASONS,
    ECHO_MAX_PAYLOAD,
    ECHO_QUEUE_LEN,
    MAX_DATAGRAM,
    MAX_PAYLOAD,
    Relay,
)
from fastpath._types import LivenessCounters, RelayCounters, SessionCounters, TrafficCounters
from fastpath.errors import BadPacket

__all__ = [
    "BATCH_SIZE",
    "DROP_REASONS",
    "ECHO_MAX_PAYLOAD",
    "ECHO_QUEUE_LEN",
    "FLAG_ECHO_REPLY",
    "FLAG_ECHO_REQUEST",
    "FLAG_RTCP",
    "HEADER_LEN",
    "INITIAL_TTL",
    "MAX_DATAGRAM",
    "MAX_PAYLOAD",
    "VERSION",
    "BadPacket",
    "Header",
    "LivenessCounters",
    "Relay",
    "RelayCounters",
    "SessionCounters",
    "TrafficCounters",
    "decode_header_untrusted",
    "encode_header",
]
