"""The book of the calls anchored at this node, for the Control service (sans-IO).

``CallTracker`` is the proxy core's ``MediaHook`` (``overlay.sip``): the core shows it every
request that crosses the overlay's edge at this node and every response sent back across it.
It notes what it sees and hands every message on, unchanged, to the media plane's hook when
there is one, so tracking costs the signalling nothing else. A call is born with the initial
INVITE that enters the overlay here (this node is its INGRESS) or leaves it here (EGRESS); the
other edge is read from the overlay's own marks: the Route the ingress pushes names the egress
(``ovl=``), and the ingress's Via, the only one the overlay adds, names the ingress.

States follow the INVITE transaction and the dialog: TRYING, RINGING on a provisional response,
ANSWERED on a 2xx, then ENDED by a BYE; or FAILED on a final error, CANCELLED on a 487. A failed
call is reported as a ``CallFailed`` event (a cancelled one is the caller's choice, not a
failure). Calls are never kept forever: one that got no final response within
``setup_timeout``, or an answered one whose media sessions all timed out, ends when the book is
next read; ended calls move to a history of the ``history`` most recent; and beyond
``max_calls`` live calls the oldest is forgotten (counted in ``evicted``).

Pair replication (issue 16, docs/internal/pair-state-design.md §3, §4) reads a call's record
with ``live`` (or, once over, ``final``) on the active and puts it back with ``restore`` on the
standby, which then answers the NOC about the active's calls and, after a takeover, keeps
booking them. ``on_change`` tells it which calls to read again: every message the book sees
may change a call's state at its other owners too (the dialog book, the media edge).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from overlay.sip import (
    MediaDirection,
    MediaHook,
    MediaRefused,
    NameAddr,
    ProtocolError,
    Request,
    Response,
    SipUri,
    parse_uri_untrusted,
)

from ._events import CallFailed

#: Seconds a call may wait for a final response (Timer C is 180 s by default, RFC 3261 §16.6).
SETUP_TIMEOUT = 200.0
HISTORY = 256
MAX_CALLS = 100_000


class CallRole(enum.Enum):
    INGRESS = "INGRESS"  # the call entered the overlay here
    EGRESS = "EGRESS"  # the call leaves the overlay here


class CallState(enum.Enum):
    TRYING = "TRYING"
    RINGING = "RINGING"
    ANSWERED = "ANSWERED"
    ENDED = "ENDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def over(self) -> bool:
        return self in (CallState.ENDED, CallState.FAILED, CallState.CANCELLED)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A snapshot of one call; every change replaces it.

    Attributes:
        call_id: the SIP Call-ID.
        role: whether the call entered or leaves the overlay here.
        state: see the module docstring.
        from_uri, to_uri, request_uri: of the initial INVITE, as sent on.
        far_node: the other edge node ("" when the overlay's marks did not say).
        started: ``now`` of the initial INVITE.
        answered: ``now`` of the first 2xx, or ``None``.
        ended: ``now`` it ended, failed or was cancelled, or ``None``.
        final_status, final_reason: the final response to the INVITE (0 while none), or for an
            ended call what ended it.
        requests, responses: messages of the call that crossed the edge here.
        had_media: the media plane anchored streams of it when it was answered.
        egress_tries: egress nodes the call was sent to (an ingress's record; more than 1
            after a fail-over, ``failed_over``).
        setup_extra: seconds of set-up spent on egress nodes that failed the call, 0 if none.
    """

    call_id: str
    role: CallRole
    state: CallState
    from_uri: str
    to_uri: str
    request_uri: str
    far_node: str
    started: float
    answered: float | None = None
    ended: float | None = None
    final_status: int = 0
    final_reason: str = ""
    requests: int = 1
    responses: int = 0
    had_media: bool = False
    egress_tries: int = 1
    setup_extra: float = 0.0


class CallTracker:
    """See the module docstring.

    Args:
        media: the media plane's hook, called after the tracker for every message.
        media_sessions: how many media sessions a call has now (the media plane's book), to end
            answered calls whose media timed out; ``None`` without a media plane.
        on_failed: called with a ``CallFailed`` for every call that fails.
        on_change: called with a call's id for every message of it the book sees and every
            change of its record (pair replication marks the call to read it again). The
            attribute of that name may be set later: the node sets it once its replication,
            which reads the core this book is the hook of, exists.
    """

    def __init__(
        self,
        media: MediaHook | None = None,
        *,
        media_sessions: Callable[[str], int] | None = None,
        on_failed: Callable[[CallFailed], object] | None = None,
        on_change: Callable[[str], object] | None = None,
        setup_timeout: float = SETUP_TIMEOUT,
        history: int = HISTORY,
        max_calls: int = MAX_CALLS,
    ) -> None:
        self._media = media
        self._media_sessions = media_sessions
        self._on_failed = on_failed
        self.on_change = on_change
        self._setup_timeout = setup_timeout
        self._max_calls = max_calls
        self._live: OrderedDict[str, CallRecord] = OrderedDict()  # oldest first
        self._history: deque[CallRecord] = deque(maxlen=history)
        self.evicted = 0
        self.failed = 0

    # -- MediaHook ----------------------------------------------------------------------------

    def request(self, request: Request, direction: MediaDirection, now: float) -> None:
        call_id = request.call_id
        self._changed(call_id)
        record = self._live.get(call_id)
        if record is None and request.method == "INVITE" and request.to_tag is None:
            record = self._start(request, direction, now)
        elif record is not None:
            record = dataclasses.replace(record, requests=record.requests + 1)
            if request.method == "BYE":
                record = self._over(record, CallState.ENDED, now, 0, _bye_reason(request))
            self._put(record)
        if self._media is None:
            return
        try:
            self._media.request(request, direction, now)
        except MediaRefused as refused:
            if record is not None and not record.state.over and record.answered is None:
                self._fail(record, now, refused.status, refused.reason)
            raise

    def response(self, response: Response, direction: MediaDirection, now: float) -> None:
        self._changed(response.call_id)
        record = self._live.get(response.call_id)
        if record is not None:
            self._response(record, response, now)
        if self._media is not None:
            self._media.response(response, direction, now)

    # -- reading ------------------------------------------------------------------------------

    def calls(self, now: float, *, include_ended: bool = False) -> list[CallRecord]:
        """The live calls (and with ``include_ended`` the recent ended ones), newest first."""
        self._expire(now)
        live = list(reversed(self._live.values()))
        if not include_ended:
            return live
        return live + list(reversed(self._history))

    def get(self, call_id: str, now: float) -> CallRecord | None:
        """One call, live or recently ended."""
        self._expire(now)
        record = self._live.get(call_id)
        if record is not None:
            return record
        return self.final(call_id)

    def active(self, now: float) -> int:
        """Calls not over."""
        self._expire(now)
        return len(self._live)

    def live(self, call_id: str) -> CallRecord | None:
        """The record of a call not over, or ``None``, as it is: unlike ``get`` it expires
        nothing, so reading it changes no state. Pair replication (issue 16) reads each call it
        replicates with it; ``None`` means the call is over (or unknown) here.
        """
        return self._live.get(call_id)

    def final(self, call_id: str) -> CallRecord | None:
        """The last record of a call over, from the recent history, or ``None``; like ``live``
        it expires nothing. Pair replication tells the standby how a call ended with it."""
        return next((r for r in reversed(self._history) if r.call_id == call_id), None)

    def failed_over(self, call_id: str, egress: str, attempt: int, now: float) -> None:
        """A new call entering here went on to ``egress`` (the proxy core's
        ``EgressFailedOver``): its far node changes, and the time so far is extra set-up."""
        record = self._live.get(call_id)
        if record is None or record.state.over:
            return
        self._put(
            dataclasses.replace(
                record, far_node=egress, egress_tries=attempt, setup_extra=now - record.started
            )
        )

    # -- pair replication ---------------------------------------------------------------------

    def restore(self, record: CallRecord) -> None:
        """Take a call's record from the active of this pair (pair replication's standby,
        issue 16): a live record replaces this call's, or joins the live calls (the oldest
        forgotten beyond ``max_calls``, as for a new call); an over one moves a live call to
        the history, and is ignored for a call not live here (restoring it twice changes
        nothing). No event is raised: the active reported the failure already.

        The record's times (``started``, ``answered``, ``ended``) are taken as they are, on
        the clock of the ``now`` this tracker is given: the two members' trio clocks differ
        (trio starts each at a random offset), so pair replication moves them onto this
        node's clock before restoring, or a restored call would time out at once or never.
        """
        if not record.state.over and record.call_id not in self._live:
            self._make_room()
        self._put(record)

    # -- internals ----------------------------------------------------------------------------

    def _start(self, invite: Request, direction: MediaDirection, now: float) -> CallRecord:
        entering = direction is MediaDirection.ENTERING
        record = CallRecord(
            call_id=invite.call_id,
            role=CallRole.INGRESS if entering else CallRole.EGRESS,
            state=CallState.TRYING,
            from_uri=_uri_of(invite.headers.get("From")),
            to_uri=_uri_of(invite.headers.get("To")),
            request_uri=invite.uri,
            far_node=_egress_of(invite) if entering else (invite.top_via.param("ovl") or ""),
            started=now,
        )
        self._make_room()
        self._put(record)
        return record

    def _make_room(self) -> None:
        """Room for one more live call: forget the oldest beyond ``max_calls``."""
        while len(self._live) >= self._max_calls:
            call_id, _ = self._live.popitem(last=False)
            self.evicted += 1
            self._changed(call_id)

    def _response(self, record: CallRecord, response: Response, now: float) -> None:
        record = dataclasses.replace(record, responses=record.responses + 1)
        status = response.status
        initial = response.cseq.method == "INVITE" and record.answered is None
        if not initial or record.state.over or status == 100:
            self._put(record)
            return
        if status < 200:
            self._put(dataclasses.replace(record, state=CallState.RINGING))
        elif status < 300:
            media = self._media_sessions is not None and self._media_sessions(record.call_id) > 0
            self._put(
                dataclasses.replace(
                    record,
                    state=CallState.ANSWERED,
                    answered=now,
                    final_status=status,
                    final_reason=response.reason,
                    had_media=media,
                )
            )
        elif status == 487:
            self._put(self._over(record, CallState.CANCELLED, now, status, response.reason))
        else:
            self._fail(record, now, status, response.reason)

    def _fail(self, record: CallRecord, now: float, status: int, reason: str) -> None:
        record = self._over(record, CallState.FAILED, now, status, reason)
        self._put(record)
        self.failed += 1
        if self._on_failed is not None:
            self._on_failed(CallFailed(record.call_id, record.far_node, status, reason))

    @staticmethod
    def _over(
        record: CallRecord, state: CallState, now: float, status: int, reason: str
    ) -> CallRecord:
        if status == 0:  # ended: keep the final response, say what ended it
            status = record.final_status
        return dataclasses.replace(
            record, state=state, ended=now, final_status=status, final_reason=reason
        )

    def _put(self, record: CallRecord) -> None:
        """Store the new snapshot: over calls move to the history."""
        self._changed(record.call_id)
        if record.state.over:
            if self._live.pop(record.call_id, None) is not None:
                self._history.append(record)
        else:
            self._live[record.call_id] = record

    def _expire(self, now: float) -> None:
        for record in list(self._live.values()):
            if record.answered is None and now - record.started > self._setup_timeout:
                self._put(self._over(record, CallState.ENDED, now, 0, "no final response"))
            elif (
                record.had_media
                and self._media_sessions is not None
                and self._media_sessions(record.call_id) == 0
            ):
                self._put(self._over(record, CallState.ENDED, now, 0, "media timed out"))

    def _changed(self, call_id: str) -> None:
        if self.on_change is not None:
            self.on_change(call_id)


def _bye_reason(bye: Request) -> str:
    """``"BYE"``, with the RFC 3326 Reason text when it has one: ``"BYE (far edge use1 lost)"``."""
    reason = bye.headers.get("Reason") or ""
    start = reason.find('text="')
    if start < 0:
        return "BYE"
    text = reason[start + 6 :].split('"', 1)[0]
    return f"BYE ({text})" if text else "BYE"


def _uri_of(header: str | None) -> str:
    """The URI of a From/To header value ("" when it does not parse)."""
    if header is None:
        return ""
    try:
        return NameAddr.parse_untrusted(header).uri
    except ProtocolError:
        return ""


def _egress_of(invite: Request) -> str:
    """The egress node an ingress pushed as the top Route (``;ovl=<node>``)."""
    route = invite.headers.first_value("Route")
    if route is None:
        return ""
    try:
        uri = parse_uri_untrusted(NameAddr.parse_untrusted(route).uri)
    except ProtocolError:
        return ""
    return (uri.param("ovl") or "") if isinstance(uri, SipUri) else ""
