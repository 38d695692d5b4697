"""Which worker owns a datagram: a hash of its Call-ID, found without parsing the message.

A node with several worker processes shares its UDP sockets among them; every message of a call
(retransmissions, CANCEL, ACK, BYE, the responses) carries the same Call-ID, so hashing it sends
the whole call to the worker that holds its transactions. The search is one regular expression
over the header section, far cheaper than the parse the owner will do anyway.

Call-IDs that start with a ``pinned`` prefix go to worker 0 instead: an overlay node's link
probes and their answers (``ovlprobe.``), which its mesh, in worker 0 only, must see. The test
is a ``startswith`` on the Call-ID found anyway, so it costs nothing more, and a message that
merely carries the prefix elsewhere (in a body) is steered like any other.
"""

from __future__ import annotations

import re
import zlib

# RFC 3261 §20.8, §7.3.3: "Call-ID" or its compact form "i", any case, LWS before the colon.
_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id_untrusted(data: bytes) -> bytes | None:
    """The raw Call-ID value of a message, or ``None`` when there is none in its header."""
    end = data.find(b"\r\n\r\n")
    match = _CALL_ID.search(data, 0, end if end >= 0 else len(data))
    return match.group(1).rstrip(b" \t") if match else None


def steering_owner(data: bytes, workers: int, pinned: bytes = b"") -> int:
    """The worker (0-based) that owns this message; messages without a Call-ID, or with one
    that starts with ``pinned`` (when given), go to 0."""
    if workers == 1:
        return 0
    call_id = call_id_untrusted(data)
    if not call_id or (pinned and call_id.startswith(pinned)):
        return 0
    return zlib.crc32(call_id) % workers
