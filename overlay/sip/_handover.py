"""An INVITE's response context as a pair's active hands it to its standby (issue 16), plain
values only: pair replication carries it, and after a takeover ``ProxyCore.promote`` turns it
back into live transactions, so a call that was being set up when the active died completes.

Times travel as what was left: the two members' clocks differ, and the standby restarts each
timer from the moment it takes over.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._targets import Target
from ._transaction import Peer


@dataclass(frozen=True, slots=True)
class InviteHandover:
    """One INVITE's response context (``ProxyCore.invite_handovers``).

    Attributes:
        call_id: the call's Call-ID.
        server_key: the server transaction's §17.2.3 key; ``server_peer`` where its responses go.
        request: the INVITE as this node received it.
        last_response: the last response sent upstream on it (a 1xx or a 2xx), or ``None``.
        forward: the request as forwarded, before this node's Via and Record-Route.
        media: the ``MediaDirection`` value when it crosses the overlay's edge here.
        from_overlay, far_node: its upstream is another overlay node, and which one.
        egress, route: the overlay node it is sent to and the Route pushed for it.
        alternates: the next egress nodes to fail over to; ``next_hops`` the next hops left.
        attempts, egress_tries: branches sent and egress nodes tried so far.
        branch: the current branch's request as sent (our Via on top), and ``branch_peer``.
        provisional: the branch had a provisional response (its Timer B no longer runs).
        replied: a final response went upstream (a 2xx: its retransmissions still pass).
        cancelled: the caller cancelled it.
        timer_c_left: seconds left of Timer C when the state was taken, ``None`` unarmed.
    """

    call_id: str
    server_key: tuple[str, ...]
    server_peer: Peer
    request: bytes
    last_response: bytes | None
    last_status: int
    forward: bytes
    media: str | None
    from_overlay: bool
    far_node: str
    egress: str | None
    route: str | None
    alternates: tuple[Target, ...]
    next_hops: tuple[Peer, ...]
    attempts: int
    egress_tries: int
    branch: bytes | None
    branch_peer: Peer | None
    provisional: bool
    replied: bool
    cancelled: bool
    timer_c_left: float | None
