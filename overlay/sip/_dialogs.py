"""The dialogs of the calls that cross the overlay's edge at this node, kept so the node can
end one toward its own party itself (RFC 3261 §12.2.1.1), sans-IO.

The proxy needs no dialog state to route: in-dialog requests follow Record-Route. But when a
call's far edge is lost (``ProxyCore.overlay_nodes_lost``) nobody else will tell this edge's
party, which would keep its media ports and wait 32 s on its own BYE. So at each edge the core
notes, from the 2xx that establishes a call, what a BYE from the far party would carry when it
reached this node: the party's Contact (the Request-URI), the route set between this node and
the party, the two parties' From/To values with their tags, and the far party's last CSeq
(updated by every in-dialog request the far side sends across the edge). ``end`` hands the
entry over and leaves a tombstone for ``linger`` seconds, during which the party's own
in-dialog requests are answered here (BYE 200, others 481) instead of crossing into the dead
overlay.

Only the first 2xx of a call makes an entry (a forked call's later dialogs are the caller's
to end, §13.2.2.4). Entries go with the call's BYE; beyond ``max_dialogs`` the oldest is
forgotten (counted in ``evicted``), which bounds what calls that end without a BYE leave.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from ._errors import RemoteProtocolError
from ._headers import NameAddr
from ._media_hook import MediaDirection
from ._message import Request, Response
from ._transaction import Peer
from ._uri import SipUri, parse_uri_untrusted

MAX_DIALOGS = 100_000


@dataclass(frozen=True, slots=True)
class EdgeDialog:
    """What this edge needs to send a BYE to its party as if the far party had sent it.

    Attributes:
        call_id: the call's Call-ID.
        far_node: the call's other edge node.
        party: the party's From/To value with its tag (the BYE's To).
        far: the far party's value with its tag (the BYE's From).
        target: the party's Contact URI (the BYE's Request-URI).
        route_set: Route values between this node and the party, nearest first.
        peer: where the BYE goes: the next hop toward the party.
        far_cseq: the far party's highest CSeq in the dialog so far (0: none seen).
    """

    call_id: str
    far_node: str
    party: str
    far: str
    target: str
    route_set: tuple[str, ...]
    peer: Peer
    far_cseq: int


class DialogBook:
    """See the module docstring. ``node_id`` finds this node's own Record-Route entries."""

    def __init__(
        self, node_id: str, *, max_dialogs: int = MAX_DIALOGS, linger: float = 32.0
    ) -> None:
        self._node_id = node_id
        self._max = max_dialogs
        self._linger = linger
        self._dialogs: OrderedDict[str, EdgeDialog] = OrderedDict()
        self._tombstones: OrderedDict[str, float] = OrderedDict()  # call id -> until
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._dialogs)

    def get(self, call_id: str) -> EdgeDialog | None:
        """A call's entry: pair replication (issue 16) reads it on the active."""
        return self._dialogs.get(call_id)

    def restore(self, dialog: EdgeDialog) -> None:
        """Put the active's entry of a call in this book (pair replication's standby), so
        after a takeover this node can end the call as its active would have."""
        self._dialogs.pop(dialog.call_id, None)
        while len(self._dialogs) >= self._max:
            self._dialogs.popitem(last=False)
            self.evicted += 1
        self._dialogs[dialog.call_id] = dialog

    def forget(self, call_id: str) -> None:
        """Drop a call's entry (pair replication's standby: the active's call is over)."""
        self._dialogs.pop(call_id, None)

    def answered(
        self,
        invite: Request,
        answer: Response,
        direction: MediaDirection,
        *,
        far_node: str,
        invite_peer: Peer,
        answer_peer: Peer,
    ) -> None:
        """A 2xx to an initial INVITE that crossed the edge here going ``direction``:
        ``invite`` as this node received it (from ``invite_peer``), ``answer`` as it came back
        (from ``answer_peer``). Malformed headers leave the call out of the book."""
        call_id = invite.call_id
        if call_id in self._dialogs:
            return
        try:
            if direction is MediaDirection.ENTERING:  # the party is the caller, upstream
                dialog = EdgeDialog(
                    call_id=call_id,
                    far_node=far_node,
                    party=_required(invite, "From"),
                    far=_required(answer, "To"),
                    target=_contact(invite),
                    route_set=tuple(invite.headers.values("Record-Route")),
                    peer=invite_peer,
                    far_cseq=0,
                )
            else:  # the party is the callee, downstream: its route set lies above ours
                records = answer.headers.values("Record-Route")
                ours = next(
                    (i for i, value in enumerate(records) if self._is_ours(value)), len(records)
                )
                dialog = EdgeDialog(
                    call_id=call_id,
                    far_node=far_node,
                    party=_required(answer, "To"),
                    far=_required(invite, "From"),
                    target=_contact(answer),
                    route_set=tuple(reversed(records[:ours])),
                    peer=answer_peer,
                    far_cseq=invite.cseq.number,
                )
        except RemoteProtocolError:
            return
        self.restore(dialog)

    def request(self, request: Request, direction: MediaDirection) -> None:
        """An in-dialog request crossing the edge here: a BYE ends the entry; one from the far
        side (``LEAVING``: toward the party) raises ``far_cseq``."""
        dialog = self._dialogs.get(request.call_id)
        if dialog is None:
            return
        if request.method == "BYE":
            del self._dialogs[request.call_id]
        elif direction is MediaDirection.LEAVING and request.cseq.number > dialog.far_cseq:
            self._dialogs[request.call_id] = replace(dialog, far_cseq=request.cseq.number)

    def toward(self, node_id: str) -> list[str]:
        """The calls whose far edge is ``node_id``."""
        return [call_id for call_id, d in self._dialogs.items() if d.far_node == node_id]

    def end(self, call_id: str, now: float) -> EdgeDialog | None:
        """Take a call's entry to end it here; its tombstone lasts ``linger`` seconds."""
        dialog = self._dialogs.pop(call_id, None)
        if dialog is not None:
            self._tombstones[call_id] = now + self._linger
        return dialog

    def ended(self, call_id: str, now: float) -> bool:
        """Whether this node ended the call less than ``linger`` seconds ago."""
        tombstones = self._tombstones
        while tombstones:
            oldest, until = next(iter(tombstones.items()))
            if until > now:
                break
            del tombstones[oldest]
        return call_id in tombstones

    def _is_ours(self, value: str) -> bool:
        try:
            uri = parse_uri_untrusted(NameAddr.parse_untrusted(value).uri)
        except RemoteProtocolError:
            return False
        return isinstance(uri, SipUri) and uri.param("ovl") == self._node_id


def _required(message: Request | Response, name: str) -> str:
    value = message.headers.get(name)
    if value is None:
        raise RemoteProtocolError(f"Missing {name} header", status_hint=None)
    return value


def _contact(message: Request | Response) -> str:
    contact = message.headers.first_value("Contact")
    if contact is None:
        raise RemoteProtocolError("Missing Contact header", status_hint=None)
    return NameAddr.parse_untrusted(contact).uri
