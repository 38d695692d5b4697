"""What the proxy core asks of its shell, and tells it (``ProxyCore.next_event``)."""

from __future__ import annotations

from dataclasses import dataclass

from ._targets import Target


@dataclass(frozen=True, slots=True)
class ResolveTarget:
    """Ask the shell to locate ``target`` (RFC 3263) and call ``resolved(token, ...)``; a
    target with ``await_route`` waits for a route to that overlay node instead."""

    token: int
    target: Target
    call_id: str = ""  # of the request waiting for it, for the shell's logs


@dataclass(frozen=True, slots=True)
class CallRefused:
    """A new call (an INVITE outside a dialog) the dialplan's answer refused: the node is
    draining, or no egress can take it. Its INVITE never left: a failed call for the NOC."""

    call_id: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class EgressFailedOver:
    """A new call left its egress node for the next one of its rule before any final answer
    (``cause``: one of ``FAILOVER_CAUSES``); the caller still sees one call. ``attempt`` counts
    the egress nodes tried so far, this one included (2 for the first fail-over)."""

    call_id: str
    failed: str
    egress: str
    cause: str
    attempt: int


#: ``EgressFailedOver`` causes.
FAILOVER_CAUSES = {
    "no answer": "not even a 100 Trying within [sip.timers] fr",
    "408": "the egress answered 408 Request Timeout",
    "503": "the egress answered 503 Service Unavailable",
    "timeout": "Timer B fired, or the connection to the egress failed",
    "egress lost": "the mesh lost every route to the egress before its final answer",
}


@dataclass(frozen=True, slots=True)
class OverlayAnomaly:
    """A message a routing loop caught, or would have: for the shell to log and the NOC.

    ``kind`` is one of ``ANOMALY_KINDS``; ``crossed`` the overlay nodes the message had crossed
    before this one; ``destination`` the node it was going to.
    """

    kind: str
    message: str  # the method, or the status of a response
    call_id: str
    destination: str
    crossed: tuple[str, ...]


#: ``OverlayAnomaly`` kinds: what happened, and whether the message went on.
ANOMALY_KINDS = {
    "loop": "came back to a node it had crossed; relayed on around it",
    "avoided": "next hop was a node it had crossed; sent around it",
    "dropped": "no path avoids the nodes it had crossed; dropped",
    "duplicate": "proxied twice by one node (its Via twice on top); dropped",
    "relay limit": "crossed too many overlay nodes; dropped",
}

#: Everything ``ProxyCore.next_event`` returns.
ProxyEvent = ResolveTarget | CallRefused | EgressFailedOver | OverlayAnomaly
