"""The media side of an edge node: anchors the media of every call that crosses the overlay's
edge here, sans-IO.

``MediaEdge`` is the proxy core's ``MediaHook``. It sees each SDP offer and answer as it
enters or leaves the overlay at this node and:

* **entering** (from an endpoint): records the endpoint's address, gives each stream a relay
  session with its own ports, points the SDP at the relay, and tags each stream with
  ``a=x-overlay-session: <this node> <session id>`` so the edge at the far end knows where to
  send that stream's packets;
* **leaving** (toward an endpoint): takes the far edge's session of each stream from those
  tags, strips them, gives each stream a relay session here and points the SDP at the relay.

A session can forward once both its endpoint (from the endpoint's SDP; the fastpath latches
the real source) and the far edge's session are known: the edge that sent the offer learns the
far session from the answer, the other edge has it from the offer. ``commands`` then gets an
``AddSession`` (the shell passes it to the fastpath); a BYE, a failed or cancelled INVITE, or
a session silent past the inactivity timeout give ``RemoveSession``s and free the ports.

Which endpoint a message comes from is told by the From tag: the caller's is the initial
INVITE's.

A delayed offer (RFC 3261 §13.2.1: an INVITE without SDP, the offer in the 2xx, the answer in
the ACK) is anchored the same way with the roles turned round: the 2xx's SDP is taken in or sent
out as an offer, and the ACK's as the answer that starts forwarding. The proxy core shows this
hook the ACK of a 2xx for that. An offer in a provisional response (reliable 1xx, RFC 3262) is
not anchored: it is passed through and counted.

Pair replication (issue 16, docs/internal/pair-state-design.md §3, §4): ``call_state`` reads
everything the edge keeps of one call as a plain ``CallMediaState``, and a standby applies it
with ``restore_call``, as a diff, so relay sessions that did not change keep their sockets. A
standby's sessions are foreign until ``MediaSessions.promote``. The call book in front of the
edge tells replication of every message; ``on_change`` tells it of what changes without one:
a source the relay latched anew, a session timed out.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from overlay.sip import (
    LocalProtocolError,
    MediaDirection,
    MediaRefused,
    Message,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)

from ._ports import PortsExhausted
from ._sdp import (
    OriginKeeper,
    OverlaySession,
    Sdp,
    endpoint_of,
    parse_sdp_untrusted,
    rewrite,
    serialize_sdp,
    set_overlay_session,
    strip_overlay_sessions,
)
from ._sessions import EndReason, MediaSession, MediaSessions, SessionState, Side

SDP = "application/sdp"


def media_id(node_id: str) -> int:
    """The 32-bit id the fastpath knows a node by (docs/internal/media.md)."""
    return zlib.crc32(node_id.encode("ascii"))


@dataclass(frozen=True, slots=True)
class AddSession:
    """Start forwarding a session: the shell calls the fastpath's ``add_session``.

    ``rtp_latched`` / ``rtcp_latched``: sources the relay session starts latched on (the
    fastpath's ``latched`` and ``rtcp_latched``), set when a standby restores a session its
    active's relay had latched (``MediaEdge.restore_call``), so that nobody else can take the
    port during a takeover; ``None`` for a session learning its endpoint from its packets.
    """

    session: MediaSession
    rtp_latched: tuple[str, int] | None = None
    rtcp_latched: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class RemoveSession:
    session_id: int


MediaCommand = AddSession | RemoveSession


@dataclass(frozen=True, slots=True)
class CallMediaState:
    """Everything a ``MediaEdge`` keeps of one call, in plain values (strings, numbers, bytes,
    tuples, enums and frozen records), for pair replication (issue 16): ``call_state`` reads it
    on the active, ``restore_call`` applies it on the standby. ``CallMediaState(call_id)``, with
    nothing else, is a call the edge keeps nothing for.

    The sessions travel inside it, not beside it, because restoring what the relay forwards
    needs them restored first; the wire record may still carry them as a list of its own.

    Attributes:
        call_id: the SIP Call-ID.
        caller_tag: the From tag of the initial INVITE, once seen.
        answered: the INVITE got a 2xx.
        delayed: the last INVITE had no SDP (the offer comes in the 2xx).
        origins: the SDP last sent to each endpoint (``OriginKeeper.last``), serialised.
        sessions: the call's media sessions (``MediaSessions.snapshot``).
        forwarding: the sessions as the fastpath was last given them; one may differ from its
            entry in ``sessions`` while a re-offer waits for its answer.
    """

    call_id: str
    caller_tag: str | None = None
    answered: bool = False
    delayed: bool = False
    origins: tuple[tuple[Side, bytes], ...] = ()
    sessions: tuple[SessionState, ...] = ()
    forwarding: tuple[MediaSession, ...] = ()


class MediaEdge:
    """See the module docstring."""

    def __init__(self, node_id: str, media_address: str, sessions: MediaSessions) -> None:
        self.node_id = node_id
        self.media_address = media_address
        self.sessions = sessions
        self.commands: list[MediaCommand] = []
        self._caller_tag: dict[str, str] = {}  # call id -> the caller's From tag
        self._answered: set[str] = set()  # calls whose INVITE got a 2xx
        self._delayed: set[str] = set()  # calls whose last INVITE had no SDP: 2xx offers
        self._origins: dict[tuple[str, Side], OriginKeeper] = {}
        self._forwarding: dict[int, AddSession] = {}  # what the fastpath has, by session id
        self.counters: Counter[str] = Counter()
        #: Called with a call's id when its state changes without a message (module notes).
        self.on_change: Callable[[str], object] | None = None

    # -- MediaHook ----------------------------------------------------------------------------

    def request(self, request: Request, direction: MediaDirection, now: float) -> None:
        call_id = request.call_id
        if request.method == "BYE":
            self._end(call_id, EndReason.BYE)
            return
        if request.method == "INVITE" and request.to_tag is None:
            self._caller_tag.setdefault(call_id, request.from_tag or "")
        if request.method == "ACK":
            if call_id in self._delayed and _has_sdp(request):
                # The answer to a 2xx's offer.
                self._rewrite_unrefusable(request, self._side_of(request), direction, now)
            return
        if not _has_sdp(request):
            if request.method == "INVITE":
                self._delayed.add(call_id)
                self.counters["delayed offer"] += 1
            return
        if request.method == "INVITE":
            self._delayed.discard(call_id)
        try:
            self._rewrite(request, self._side_of(request), direction, now, offer=True)
        except RemoteProtocolError as error:
            self.counters["bad SDP offer"] += 1
            self._refused(call_id)
            raise MediaRefused(error.status_hint or 488, error.reason) from None
        except PortsExhausted:
            self.counters["ports exhausted"] += 1
            self._refused(call_id)
            raise MediaRefused(503, "Media Ports Exhausted") from None

    def response(self, response: Response, direction: MediaDirection, now: float) -> None:
        call_id = response.call_id
        status = response.status
        if response.cseq.method != "INVITE" or status < 101:
            return
        if status >= 300:
            if call_id not in self._answered:  # a failed re-INVITE leaves the call as it was
                self._end(call_id, EndReason.CANCEL if status == 487 else EndReason.FAILED)
            return
        if status >= 200:
            self._answered.add(call_id)
            self.sessions.confirm_call(call_id, now)
        if not _has_sdp(response):
            return
        delayed = call_id in self._delayed
        if delayed and status < 200:
            self.counters["offer in a provisional response (not anchored)"] += 1
            return
        # The SDP comes from the side the request went to: the answer, or with a delayed offer
        # the offer (the answer then comes in the ACK).
        author = _other(self._side_of(response))
        self._rewrite_unrefusable(response, author, direction, now, offer=delayed)

    def _rewrite(
        self, message: Message, author: Side, direction: MediaDirection, now: float, *, offer: bool
    ) -> None:
        """Point the SDP ``author`` wrote (an offer or an answer) at this edge's relay.

        Raises:
            RemoteProtocolError: the SDP does not parse.
            PortsExhausted: no relay port is left for a new stream.
        """
        sdp = parse_sdp_untrusted(message.body)
        if direction is MediaDirection.ENTERING:
            message.body = self._take_in(sdp, message.call_id, author, now, offer=offer)
        else:
            message.body = self._send_out(
                sdp, message.call_id, _other(author), now, answer=not offer
            )

    def _rewrite_unrefusable(
        self,
        message: Message,
        author: Side,
        direction: MediaDirection,
        now: float,
        *,
        offer: bool = False,
    ) -> None:
        """``_rewrite`` for a response or an ACK, which cannot be refused: bad SDP goes on as it
        came, and the call has no relay."""
        try:
            self._rewrite(message, author, direction, now, offer=offer)
        except (ProtocolError, PortsExhausted) as error:
            kind = "an ACK" if isinstance(message, Request) else "a response"
            self.counters[f"bad SDP in {kind}"] += 1
            self.counters[f"unanchored: {type(error).__name__}"] += 1

    # -- time ---------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        for session in self.sessions.expire(now):
            self._stop_forwarding(session.session_id)
            if not self.sessions.of_call(session.call_id):
                self._forget(session.call_id)  # a call that never saw its BYE
            self._changed(session.call_id)

    def activity(
        self,
        session_id: int,
        now: float,
        *,
        rtp_latched: tuple[str, int] | None = None,
        rtcp_latched: tuple[str, int] | None = None,
    ) -> None:
        """The fastpath saw packets of the session since the last look, and its relay session
        has latched these sources (``None``: not yet), kept for pair replication."""
        self.sessions.touch(session_id, now)
        session = self.sessions.get(session_id)
        if session is not None and self.sessions.set_latched(session_id, rtp_latched, rtcp_latched):
            self._changed(session.call_id)

    # -- pair replication ---------------------------------------------------------------------

    def call_state(self, call_id: str) -> CallMediaState:
        """All this edge keeps of ``call_id``, read back for the standby (pair replication,
        issue 16; ``CallMediaState(call_id)`` for a call it keeps nothing for)."""
        sessions = self.sessions.snapshot(call_id)
        forwarding = (self._forwarding.get(state.session.session_id) for state in sessions)
        return CallMediaState(
            call_id=call_id,
            caller_tag=self._caller_tag.get(call_id),
            answered=call_id in self._answered,
            delayed=call_id in self._delayed,
            origins=tuple(
                (side, serialize_sdp(last))
                for side in Side
                if (keeper := self._origins.get((call_id, side))) is not None
                and (last := keeper.last) is not None
            ),
            sessions=sessions,
            forwarding=tuple(command.session for command in forwarding if command is not None),
        )

    def restore_call(self, state: CallMediaState) -> None:
        """Make the call what the active's ``state`` says (pair replication's standby, issue
        16), as a diff: sessions the state no longer has end (``EndReason.REPLICA``), the others
        are restored foreign with their ids and ports (``MediaSessions.restore``), and
        ``commands`` gets a ``RemoveSession`` / ``AddSession`` only for relay sessions that
        changed, so the others keep their sockets. A forwarded session starts latched where the
        active's relay had latched. Restoring ``CallMediaState(call_id)`` forgets the call.

        Raises:
            LocalProtocolError: the state does not fit (a session of another call, a forwarded
                session that is not among the sessions, or what ``MediaSessions.restore``
                refuses).
            ValueError, PortTaken: a new session's ports are outside this node's range or held.
            After an error the call may be partly restored; pair replication then resyncs.
        """
        call_id = state.call_id
        wanted = {item.session.session_id: item for item in state.sessions}
        if any(item.session.call_id != call_id for item in state.sessions):
            raise LocalProtocolError(f"Media state of {call_id!r} has another call's session")
        if any(session.session_id not in wanted for session in state.forwarding):
            raise LocalProtocolError(f"Media state of {call_id!r} forwards an unknown session")
        for session in self.sessions.of_call(call_id):
            if session.session_id not in wanted:
                self.sessions.end(session.session_id, EndReason.REPLICA)
                self._stop_forwarding(session.session_id)
        for item in state.sessions:
            self.sessions.restore(item)
        forwarded = {session.session_id: session for session in state.forwarding}
        for item in state.sessions:
            session_id = item.session.session_id
            relayed = forwarded.get(session_id)
            if relayed is None:
                self._stop_forwarding(session_id)
                continue
            command = AddSession(relayed, item.rtp_latched, item.rtcp_latched)
            if self._forwarding.get(session_id) == command:
                continue  # unchanged: the relay session keeps its sockets
            self._stop_forwarding(session_id)
            self._forwarding[session_id] = command
            self.commands.append(command)
        _put(self._caller_tag, call_id, state.caller_tag)
        _mark(self._answered, call_id, state.answered)
        _mark(self._delayed, call_id, state.delayed)
        origins = dict(state.origins)
        for side in Side:
            data = origins.get(side)
            keeper = self._origins.get((call_id, side))
            if data is None:
                self._origins.pop((call_id, side), None)
            elif keeper is None or keeper.last is None or serialize_sdp(keeper.last) != data:
                self._origins[(call_id, side)] = OriginKeeper(parse_sdp_untrusted(data))

    # -- the two edges ------------------------------------------------------------------------

    def _take_in(self, sdp: Sdp, call_id: str, endpoint: Side, now: float, *, offer: bool) -> bytes:
        """SDP from ``endpoint`` entering the overlay here: our relay ports, our session tags."""
        sdp = strip_overlay_sessions(sdp)  # no endpoint names an overlay session
        sessions = self._legs(sdp, call_id, endpoint, now)
        out = rewrite(sdp, self.media_address, [s.ports if s else None for s in sessions])
        for index, session in enumerate(sessions):
            if session is None:
                continue
            self.sessions.set_endpoint(session.session_id, endpoint_of(sdp, index))
            out = set_overlay_session(out, index, OverlaySession(self.node_id, session.session_id))
        if not offer:
            self._start_forwarding(call_id, endpoint)
        return serialize_sdp(out)

    def _send_out(
        self, sdp: Sdp, call_id: str, endpoint: Side, now: float, *, answer: bool
    ) -> bytes:
        """SDP from the far edge leaving the overlay here, toward ``endpoint``."""
        remotes = [media.overlay_session for media in sdp.media]
        sdp = strip_overlay_sessions(sdp)
        sessions = self._legs(sdp, call_id, endpoint, now)
        for session, remote in zip(sessions, remotes, strict=True):
            if session is not None and remote is not None:
                self.sessions.set_remote(session.session_id, remote)
        out = rewrite(sdp, self.media_address, [s.ports if s else None for s in sessions])
        keeper = self._origins.setdefault((call_id, endpoint), OriginKeeper())
        out = keeper.apply(out)
        if answer:
            self._start_forwarding(call_id, endpoint)
        return serialize_sdp(out)

    def _legs(self, sdp: Sdp, call_id: str, side: Side, now: float) -> list[MediaSession | None]:
        """The session of each active stream of ``side`` (made on first sight)."""
        legs: list[MediaSession | None] = []
        for index, media in enumerate(sdp.media):
            session = self.sessions.by_leg(call_id, side, index)
            if media.disabled:
                if session is not None:
                    self.sessions.end(session.session_id, EndReason.REMOVED)
                    self._stop_forwarding(session.session_id)
                legs.append(None)
                continue
            if session is None:
                session = self.sessions.create(call_id, side, index, now, rtcp_mux=media.rtcp_mux)
            elif media.rtcp_mux != (session.ports.rtcp is None):
                # The answer declined (or a re-offer changed) rtcp-mux: one port or a pair.
                session = self.sessions.set_rtcp_mux(session.session_id, media.rtcp_mux)
            legs.append(session)
        return legs

    def _start_forwarding(self, call_id: str, side: Side) -> None:
        """Hand the fastpath every session of ``side`` that knows both its ends."""
        for session in self.sessions.of_call(call_id):
            if session.side is not side or session.remote is None:
                continue
            forwarded = self._forwarding.get(session.session_id)
            if forwarded is not None and forwarded.session == session:
                continue  # unchanged (a retransmitted 2xx)
            self._stop_forwarding(session.session_id)
            self._forwarding[session.session_id] = command = AddSession(session)
            self.commands.append(command)
            # A new relay session latches afresh: what the old one latched no longer holds.
            self.sessions.set_latched(session.session_id, None, None)

    def _stop_forwarding(self, session_id: int) -> None:
        if self._forwarding.pop(session_id, None) is not None:
            self.commands.append(RemoveSession(session_id))

    def tracked_calls(self) -> int:
        """Calls this edge keeps any state for (0 once every call has ended)."""
        sessions = {session.call_id for session in self.sessions}
        return len(self._caller_tag.keys() | self._delayed | sessions)

    def _refused(self, call_id: str) -> None:
        """A refused offer: a call not answered yet ends here (the core's refusal does not
        pass the hook); an answered one keeps its streams (a refused re-INVITE)."""
        if call_id not in self._answered:
            self._end(call_id, EndReason.FAILED)

    def _end(self, call_id: str, reason: EndReason) -> None:
        for session in self.sessions.end_call(call_id, reason):
            self._stop_forwarding(session.session_id)
        self._forget(call_id)

    def _forget(self, call_id: str) -> None:
        self._caller_tag.pop(call_id, None)
        self._answered.discard(call_id)
        self._delayed.discard(call_id)
        for side in Side:
            self._origins.pop((call_id, side), None)

    def _changed(self, call_id: str) -> None:
        if self.on_change is not None:
            self.on_change(call_id)

    def _side_of(self, message: Message) -> Side:
        """The endpoint that sent ``message`` (a response: the one its request came from)."""
        caller = self._caller_tag.get(message.call_id)
        return Side.CALLER if caller is None or message.from_tag == caller else Side.CALLEE


def _put(book: dict[str, str], call_id: str, value: str | None) -> None:
    if value is None:
        book.pop(call_id, None)
    else:
        book[call_id] = value


def _mark(calls: set[str], call_id: str, member: bool) -> None:
    if member:
        calls.add(call_id)
    else:
        calls.discard(call_id)


def _other(side: Side) -> Side:
    return Side.CALLEE if side is Side.CALLER else Side.CALLER


def _has_sdp(message: Message) -> bool:
    content_type = (message.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return bool(message.body) and content_type == SDP
