"""The media sessions of the calls anchored on one edge node (sans-IO bookkeeping).

Theory of operation
-------------------
A media session is one stream (one m= line) of one side of a call, on the edge that faces that
side's endpoint (docs/internal/media.md, "Sessions"). It is keyed three ways:

- by its session id: 64 random bits, never 0, unique on this node; the id other relays put in
  the overlay header, and the one advertised in ``a=x-overlay-session``. A node with several SIP
  workers has one edge per worker and one relay for all of them: worker ``i`` of ``n`` draws
  only ids equal to ``i`` modulo ``n`` (``worker_session_ids``), so no two workers' ids meet in
  the relay, with no coordination;
- by its leg, ``(call_id, side, index)``: the SIP Call-ID, which endpoint it faces
  (``Side.CALLER``, the endpoint that sent the initial INVITE and owns the From tag of it, or
  ``Side.CALLEE``, the To-tag side), and the m= index. Sides are dialog roles, not header names:
  in a re-INVITE from the callee, From and To are swapped but the sides are not;
- by call: ``end_call`` ends every session of a Call-ID at once (BYE, CANCEL, a failed INVITE).

``MediaSessions`` is the only owner of this state (STYLE.md §3): readers get frozen
``MediaSession`` snapshots, which every change replaces. It also owns the ``PortAllocator`` it is
given: each session holds one port slot, with the session id as owner, and every way a session
ends (``end``, ``end_call``, ``expire``) goes through one method that releases it, so no path
can forget the ports.

Inactivity (RFC 3550 §6.3.5 style): the node calls ``touch(session_id, now)`` whenever the
fastpath counters show traffic of the session, and ``expire(now)`` when ``get_timer()`` says so;
a session silent for longer than ``timeout`` ends with ``EndReason.TIMEOUT``. Before the call is
answered no media needs to flow (ringing without early media is the rule), so until
``confirm_call`` the longer ``setup_timeout`` applies; it only guards against a call whose
signalling outcome was never reported.

Pair replication (issue 16, docs/internal/pair-state-design.md §3-§5): the active's sessions
are read back per call (``snapshot``, a ``SessionState`` each, with the relay's latched
addresses the node reports through ``set_latched``), and a standby puts them back with
``restore``: same session ids, same ports (``PortAllocator.take``). Restored sessions are
*foreign*: the active owns them, so they have no inactivity clock here, neither expire nor are
touched, and end only when the active's state says so. ``promote(now)``, at takeover, makes them
this node's own, their inactivity clock starting at ``now``.

Deadlines sit in one heap, fixed up lazily: every session has one current entry (its sequence
number is in ``_scheduled``); a touch only records the time, and an entry found due early is
pushed again at the session's real deadline. Entries of ended sessions are dropped as they
surface, and the heap is rebuilt when they outnumber the live ones.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import secrets
from collections.abc import Callable, Iterator

from overlay.sip import LocalProtocolError

from ._ports import PortAllocator, PortPair
from ._sdp import MAX_MEDIA, OverlaySession

__all__ = [
    "EndReason",
    "MediaSession",
    "MediaSessions",
    "MediaStatistics",
    "SessionState",
    "Side",
    "worker_session_ids",
]

_MAX_SESSION_ID = (1 << 64) - 1
_ID_ATTEMPTS = 100


class Side(enum.Enum):
    """Which endpoint of the call a session faces."""

    CALLER = "caller"  # sent the initial INVITE (its From tag)
    CALLEE = "callee"  # answers it (the To tag)


class EndReason(enum.Enum):
    BYE = "bye"
    CANCEL = "cancel"
    FAILED = "failed"  # the INVITE got a final failure response or timed out
    TIMEOUT = "timeout"  # no media for too long
    REMOVED = "removed"  # a re-offer disabled (port 0) or dropped the stream
    REPLICA = "replica"  # a standby: the active's state of the call no longer has it


@dataclasses.dataclass(frozen=True, slots=True)
class MediaSession:
    """A snapshot of one media session.

    Attributes:
        session_id: this node's id of the session (1 .. 2**64 - 1).
        call_id, side, index: the leg (see the module docstring).
        ports: the relay ports the endpoint sends to; ``rtcp`` is ``None`` under rtcp-mux.
        endpoint: where the endpoint wants media (``endpoint_of`` its SDP), if known.
        remote: the other edge's session, once its SDP has been seen.
        created: the ``now`` of ``create``; a restored session keeps its active's value, on
            the active's clock (informational only: nothing here reads it).
    """

    session_id: int
    call_id: str
    side: Side
    index: int
    ports: PortPair
    created: float
    endpoint: tuple[str, int] | None = None
    remote: OverlaySession | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionState:
    """What pair replication carries of one session (issue 16): plain values only (strings,
    numbers, ``None``, tuples, enums and the frozen records ``MediaSession``, ``PortPair``,
    ``OverlaySession``), so the replication's encoder maps it field by field.

    ``MediaSessions.snapshot`` builds them on the active and ``MediaSessions.restore`` puts them
    back on the standby (both through ``MediaEdge.call_state`` / ``restore_call``).

    Attributes:
        session: the session as it is.
        confirmed: its call was answered (``confirm_call``): once promoted it ends after
            ``timeout`` of silence, not ``setup_timeout``.
        rtp_latched, rtcp_latched: the sources the relay latched for RTP and for RTCP (on its
            own RTCP port; ``None`` under rtcp-mux), as last reported by ``set_latched``;
            ``None`` until the endpoint's first packet of that kind.
    """

    session: MediaSession
    confirmed: bool = False
    rtp_latched: tuple[str, int] | None = None
    rtcp_latched: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class MediaStatistics:
    sessions: int
    calls: int
    created: int
    ended: dict[str, int]  # by EndReason value
    ports_in_use: int  # port numbers reserved (two per session, rtcp-mux or not)
    ports_free: int
    ports_exhausted: int  # sessions refused for lack of ports
    timers_pending: int
    # Sessions a standby restored from its active: created + restored = ended + live.
    restored: int = 0
    foreign: int = 0  # live sessions restored and not promoted yet


def _random_session_id() -> int:
    return secrets.randbits(64)


def worker_session_ids(index: int, workers: int) -> Callable[[], int]:
    """``MediaSessions``' ``session_ids`` for worker ``index`` of a node with ``workers`` SIP
    workers: 64 random bits, made equal to ``index`` modulo ``workers`` (module notes). A draw
    that falls out of range (0, or past 2**64 - 1) is skipped by ``MediaSessions``.

    Raises:
        ValueError: ``index`` is not one of the workers.
    """
    if not 0 <= index < workers:
        raise ValueError(f"worker {index} is not one of {workers}")
    if workers == 1:
        return _random_session_id

    def draw() -> int:
        return secrets.randbits(64) // workers * workers + index

    return draw


_Leg = tuple[str, Side, int]


class MediaSessions:
    """The media sessions of one edge node.

    Args:
        ports: the allocator of the node's relay ports; this object becomes its only user.
        timeout: seconds of silence after which a session of an answered call ends.
        setup_timeout: the same before ``confirm_call``.
        session_ids: returns candidate session ids (default: 64 bits from ``secrets``); ids
            that are 0, out of range or in use are skipped. Tests pass a seeded
            ``random.Random``'s ``getrandbits`` for repeatable ids.

    Raises:
        ValueError: a timeout is not positive.
    """

    def __init__(
        self,
        ports: PortAllocator,
        *,
        timeout: float = 60.0,
        setup_timeout: float = 300.0,
        session_ids: Callable[[], int] = _random_session_id,
    ) -> None:
        if not timeout > 0 or not setup_timeout > 0:
            raise ValueError("timeouts must be positive")
        self._ports = ports
        self._timeout = timeout
        self._setup_timeout = setup_timeout
        self._session_ids = session_ids
        self._sessions: dict[int, MediaSession] = {}
        self._by_leg: dict[_Leg, int] = {}
        self._by_call: dict[str, dict[int, None]] = {}  # insertion-ordered sets
        self._confirmed: set[str] = set()
        self._last_active: dict[int, float] = {}  # own sessions only
        self._foreign: set[int] = set()  # restored, not promoted: no inactivity clock
        self._latched: dict[int, tuple[tuple[str, int] | None, tuple[str, int] | None]] = {}
        self._heap: list[tuple[float, int, int]] = []  # (deadline, seq, session id)
        self._scheduled: dict[int, int] = {}  # session id -> seq of its current heap entry
        self._seq = 0
        self._created = 0
        self._restored = 0
        self._ended = dict.fromkeys((reason.value for reason in EndReason), 0)

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[MediaSession]:
        """Every live session, oldest first."""
        return iter(list(self._sessions.values()))

    def get(self, session_id: int) -> MediaSession | None:
        return self._sessions.get(session_id)

    def by_leg(self, call_id: str, side: Side, index: int) -> MediaSession | None:
        session_id = self._by_leg.get((call_id, side, index))
        return None if session_id is None else self._sessions[session_id]

    def of_call(self, call_id: str) -> list[MediaSession]:
        """The sessions of a call, in creation order (empty for an unknown call)."""
        return [self._sessions[key] for key in self._by_call.get(call_id, ())]

    def statistics(self) -> MediaStatistics:
        ports = self._ports.statistics()
        return MediaStatistics(
            sessions=len(self._sessions),
            calls=len(self._by_call),
            created=self._created,
            ended=dict(self._ended),
            ports_in_use=2 * ports.in_use,
            ports_free=2 * ports.free,
            ports_exhausted=ports.exhausted,
            timers_pending=len(self._heap),
            restored=self._restored,
            foreign=len(self._foreign),
        )

    def snapshot(self, call_id: str) -> tuple[SessionState, ...]:
        """The state of every session of a call, in creation order (empty for an unknown
        call), as pair replication carries it to the standby (issue 16; read through
        ``MediaEdge.call_state``)."""
        confirmed = call_id in self._confirmed
        return tuple(
            SessionState(self._sessions[key], confirmed, *self._latched_of(key))
            for key in self._by_call.get(call_id, ())
        )

    # -- changes ------------------------------------------------------------------------------

    def create(
        self,
        call_id: str,
        side: Side,
        index: int,
        now: float,
        *,
        rtcp_mux: bool = False,
        endpoint: tuple[str, int] | None = None,
    ) -> MediaSession:
        """Start a session for one stream of one side of a call, with fresh relay ports.

        Args:
            call_id, side, index: the leg; ``index`` is the m= line's position.
            now: the current time; the inactivity clock starts here.
            rtcp_mux: the endpoint's SDP offers rtcp-mux: ``ports.rtcp`` is ``None`` (the RTCP
                port stays reserved; see ``set_rtcp_mux``).
            endpoint: the address from the endpoint's SDP, if already known.

        Raises:
            PortsExhausted: no free ports; nothing was created.
            LocalProtocolError: the leg already has a session (use ``by_leg`` first), or the
                index is out of range.
            RuntimeError: ``session_ids`` gave no usable id in 100 tries.
        """
        leg = (call_id, side, index)
        if leg in self._by_leg:
            raise LocalProtocolError(f"Media session exists for {side.value} stream {index}")
        if not 0 <= index < MAX_MEDIA:
            raise LocalProtocolError(f"Media index {index} out of range")
        session_id = self._new_session_id()
        pair = self._ports.allocate(session_id, rtcp_mux=rtcp_mux)
        session = MediaSession(session_id, call_id, side, index, pair, now, endpoint)
        self._sessions[session_id] = session
        self._by_leg[leg] = session_id
        self._by_call.setdefault(call_id, {})[session_id] = None
        self._last_active[session_id] = now
        self._schedule(session_id)
        self._created += 1
        return session

    def set_endpoint(
        self, session_id: int, endpoint: tuple[str, int] | None
    ) -> MediaSession | None:
        """Record the endpoint address from its (new) SDP. Returns the updated session, or
        ``None`` when it has ended already (a BYE may cross a 200 OK)."""
        return self._update(session_id, endpoint=endpoint)

    def set_remote(self, session_id: int, remote: OverlaySession) -> MediaSession | None:
        """Record the other edge's session (from its ``a=x-overlay-session``). Returns the
        updated session, or ``None`` when it has ended already."""
        return self._update(session_id, remote=remote)

    def set_rtcp_mux(self, session_id: int, rtcp_mux: bool) -> MediaSession | None:
        """Switch between one port and an RTP/RTCP pair, e.g. when the answer declines the
        rtcp-mux of the offer. The ports stay the same slot. Returns the updated session, or
        ``None`` when it has ended already."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        rtp = session.ports.rtp
        if rtcp_mux:
            self._set_latched(session_id, self._latched_of(session_id)[0], None)
        return self._update(session_id, ports=PortPair(rtp, None if rtcp_mux else rtp + 1))

    def set_latched(
        self,
        session_id: int,
        rtp: tuple[str, int] | None,
        rtcp: tuple[str, int] | None,
    ) -> bool:
        """Record the sources the relay latched for the session (``None``: none yet), as the
        node reads them from the fastpath's counters, so that pair replication can start the
        standby's relay session latched on them (issue 16, ``snapshot``).

        Returns:
            whether this changed what was recorded (False for an unknown session).

        Raises:
            LocalProtocolError: an RTCP source for a session under rtcp-mux (no RTCP port).
        """
        session = self._sessions.get(session_id)
        if session is None:
            return False
        if rtcp is not None and session.ports.rtcp is None:
            raise LocalProtocolError("An rtcp-mux media session has no RTCP source to latch")
        return self._set_latched(session_id, rtp, rtcp)

    def restore(self, state: SessionState) -> MediaSession:
        """Make a session what the active's ``state`` says: same id, leg and ports; a
        *foreign* session (see the module docstring) until ``promote``.

        Pair replication calls it on the standby for every session of a replicated call,
        through ``MediaEdge.restore_call`` (issue 16). It is a diff: a session that exists
        already is updated in place (a state equal to it changes nothing) and keeps its ports;
        a new one takes the active's ports (``PortAllocator.take``). An own session restored
        becomes foreign. Ending the sessions the active no longer has is the caller's part
        (``end`` with ``EndReason.REPLICA``). There is no flag for restoring an own session:
        only a standby restores, and ``promote`` is how its sessions become its own.

        Returns:
            the session, as restored.

        Raises:
            LocalProtocolError: the state does not fit: a session id out of range, an index out
                of range, a leg held by another session, an existing session of another leg or
                slot, RTCP ports that are not RTP + 1, or an RTCP source under rtcp-mux.
            ValueError: the ports are outside this node's range.
            PortTaken: another session holds the ports.
            Nothing is changed when it raises.
        """
        session = state.session
        session_id = session.session_id
        leg = (session.call_id, session.side, session.index)
        ports = session.ports
        if not 0 < session_id <= _MAX_SESSION_ID:
            raise LocalProtocolError(f"Media session id {session_id} out of range")
        if not 0 <= session.index < MAX_MEDIA:
            raise LocalProtocolError(f"Media index {session.index} out of range")
        if ports.rtcp not in (None, ports.rtp + 1):
            raise LocalProtocolError(f"Media ports {ports} are not an RTP/RTCP pair")
        if state.rtcp_latched is not None and ports.rtcp is None:
            raise LocalProtocolError("An rtcp-mux media session has no RTCP source to latch")
        existing = self._sessions.get(session_id)
        if existing is None:
            if leg in self._by_leg:
                raise LocalProtocolError(
                    f"Media session exists for {session.side.value} stream {session.index}"
                )
            self._ports.take(session_id, ports.rtp, rtcp_mux=ports.rtcp is None)
            self._by_leg[leg] = session_id
            self._by_call.setdefault(session.call_id, {})[session_id] = None
            self._restored += 1
        else:
            if (existing.call_id, existing.side, existing.index) != leg:
                raise LocalProtocolError(f"Media session {session_id:#x} is another leg")
            if existing.ports.rtp != ports.rtp:
                raise LocalProtocolError(f"Media session {session_id:#x} holds other ports")
            self._last_active.pop(session_id, None)
            self._scheduled.pop(session_id, None)  # its heap entries are now stale
        self._sessions[session_id] = session
        self._foreign.add(session_id)
        self._set_latched(session_id, state.rtp_latched, state.rtcp_latched)
        call_id = session.call_id
        if not state.confirmed:
            self._confirmed.discard(call_id)  # own deadlines move later: fixed up lazily
        elif call_id not in self._confirmed:
            self._confirmed.add(call_id)
            for key in self._by_call[call_id]:
                if key not in self._foreign:
                    self._schedule(key)  # the deadline may move earlier: a new heap entry
        return session

    def promote(self, now: float) -> list[MediaSession]:
        """Make every foreign session this node's own: the node took over from its active
        (pair replication's takeover, issue 16). Their inactivity clock starts at ``now``.

        Returns:
            the sessions promoted, in creation order.
        """
        promoted = [
            session for session in self._sessions.values() if session.session_id in self._foreign
        ]
        self._foreign.clear()
        for session in promoted:
            self._last_active[session.session_id] = now
            self._schedule(session.session_id)
        return promoted

    def confirm_call(self, call_id: str, now: float) -> None:
        """The call was answered (a 2xx to its INVITE): its sessions now end after ``timeout``
        of silence, counted from ``now`` at the earliest. Call it again for every 2xx to a
        re-INVITE, so that streams added since are covered."""
        sessions = self._by_call.get(call_id)
        if sessions is None:
            return
        self._confirmed.add(call_id)
        for session_id in sessions:
            if session_id in self._foreign:
                continue  # no clock until promoted
            self._last_active[session_id] = max(self._last_active[session_id], now)
            self._schedule(session_id)  # the deadline may move earlier: a new heap entry

    def touch(self, session_id: int, now: float) -> bool:
        """The session had traffic at ``now``. Returns False for an unknown session (the
        counters of an ended one may still be read once). A foreign session is known but keeps
        no clock: the touch changes nothing."""
        last = self._last_active.get(session_id)
        if last is None:
            return session_id in self._foreign
        if now > last:
            self._last_active[session_id] = now
        return True

    def end(self, session_id: int, reason: EndReason) -> MediaSession | None:
        """End one session and free its ports. Returns it, or ``None`` if it was not live."""
        if session_id not in self._sessions:
            return None
        return self._end(session_id, reason)

    def end_call(self, call_id: str, reason: EndReason) -> list[MediaSession]:
        """End every session of a call and free their ports (repeating it is harmless).

        Returns:
            the ended sessions, in creation order.
        """
        return [
            self._end(session_id, reason) for session_id in list(self._by_call.get(call_id, ()))
        ]

    # -- time ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next time a session may time out (absolute, like ``now``), or ``None``."""
        self._settle(None)
        return self._heap[0][0] if self._heap else None

    def expire(self, now: float) -> list[MediaSession]:
        """End the sessions silent for longer than their timeout at ``now``.

        Returns:
            the sessions ended, with ``EndReason.TIMEOUT``, earliest deadline first.
        """
        ended: list[MediaSession] = []
        heap = self._heap
        while True:
            self._settle(now)
            if not heap or heap[0][0] > now:
                return ended
            _, _, session_id = heapq.heappop(heap)
            ended.append(self._end(session_id, EndReason.TIMEOUT))

    # -- internals ----------------------------------------------------------------------------

    def _new_session_id(self) -> int:
        for _ in range(_ID_ATTEMPTS):
            candidate = self._session_ids()
            if 0 < candidate <= _MAX_SESSION_ID and candidate not in self._sessions:
                return candidate
        raise RuntimeError(f"no usable media session id in {_ID_ATTEMPTS} tries")

    def _update(self, session_id: int, **changes: object) -> MediaSession | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        session = dataclasses.replace(session, **changes)  # type: ignore[arg-type]
        self._sessions[session_id] = session
        return session

    def _latched_of(self, session_id: int) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        return self._latched.get(session_id, (None, None))

    def _set_latched(
        self, session_id: int, rtp: tuple[str, int] | None, rtcp: tuple[str, int] | None
    ) -> bool:
        if self._latched_of(session_id) == (rtp, rtcp):
            return False
        if rtp is None and rtcp is None:
            del self._latched[session_id]
        else:
            self._latched[session_id] = (rtp, rtcp)
        return True

    def _deadline(self, session_id: int) -> float:
        call_id = self._sessions[session_id].call_id
        timeout = self._timeout if call_id in self._confirmed else self._setup_timeout
        return self._last_active[session_id] + timeout

    def _schedule(self, session_id: int) -> None:
        self._seq += 1
        self._scheduled[session_id] = self._seq
        heapq.heappush(self._heap, (self._deadline(session_id), self._seq, session_id))
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap = [(self._deadline(key), seq, key) for key, seq in self._scheduled.items()]
            heapq.heapify(self._heap)

    def _settle(self, now: float | None) -> None:
        """Drop stale entries at the top of the heap and push early ones to their real
        deadline, until the top is a current entry due at its real deadline (or, with ``now``,
        due by ``now``)."""
        heap = self._heap
        while heap:
            deadline, seq, session_id = heap[0]
            if self._scheduled.get(session_id) != seq:
                heapq.heappop(heap)
                continue
            real = self._deadline(session_id)
            if real <= deadline or (now is not None and real <= now):
                return
            heapq.heappop(heap)
            self._seq += 1
            self._scheduled[session_id] = self._seq
            heapq.heappush(heap, (real, self._seq, session_id))

    def _end(self, session_id: int, reason: EndReason) -> MediaSession:
        """The one way a session ends: every index forgets it and its ports are freed."""
        session = self._sessions.pop(session_id)
        del self._by_leg[(session.call_id, session.side, session.index)]
        call = self._by_call[session.call_id]
        del call[session_id]
        if not call:
            del self._by_call[session.call_id]
            self._confirmed.discard(session.call_id)
        # A foreign session has neither: it keeps no clock.
        self._last_active.pop(session_id, None)
        self._scheduled.pop(session_id, None)  # its heap entries are now stale
        self._foreign.discard(session_id)
        self._latched.pop(session_id, None)
        self._ports.release(session_id)
        self._ended[reason.value] += 1
        return session
