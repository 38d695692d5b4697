"""RFC 3261 §17 transactions, sans-IO, with the RFC 6026 "Accepted" state.

Theory of operation
-------------------
A transaction is the request, its retransmissions and its responses between two adjacent SIP
elements. ``TransactionLayer`` owns every transaction of a node; nobody else changes their state.
Callers feed it parsed messages and the current time and read back three things:

- what to send: ``(bytes, Peer)`` pairs from ``datagrams_to_send()``;
- events for the transaction user (the proxy) in ``events``: ``TransactionTimeout`` and
  ``TransactionTerminated`` — requests and responses that must reach the user are returned
  directly by ``receive_request`` / ``receive_response`` instead, which keeps the hot path short;
- when to wake up: ``get_timer()`` is the earliest absolute deadline, ``handle_timer(now)`` fires
  what is due.

The four state machines are one table, ``TRANSITIONS[kind][state][input] = (new_state, action)``.
Only ``_fire`` reads it; an input the table does not list raises ``LocalProtocolError`` naming the
kind, state and input, because every input a *peer* can cause (a late response, a stray ACK) is
listed, usually as a self-transition that absorbs it. Actions are method names, so the table is
plain data that a script can draw.

Timers are entries in one heap, cancelled lazily: each transaction remembers the generation of
each armed timer, and a popped entry whose generation is stale is ignored. Timers that RFC 3261
sets to zero for reliable transports (D, I, J, K) fire on the next ``handle_timer`` call.

Matching follows §17.1.3 (client: top Via branch + CSeq method) and §17.2.3 (server: branch,
sent-by and method, with ACK matching INVITE; RFC 2543 requests without the magic cookie match on
Request-URI, tags, Call-ID, CSeq and top Via).
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

from ._errors import LocalProtocolError, RemoteProtocolError
from ._message import Headers, Request, Response, serialize

MAGIC_COOKIE = "z9hG4bK"


class Peer(NamedTuple):
    """Where a message goes or came from: transport ("udp", "tcp", "tls"), IP literal, port."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17 base timers, in seconds (Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class Kind(enum.Enum):
    INVITE_CLIENT = "INVITE client"
    NON_INVITE_CLIENT = "non-INVITE client"
    INVITE_SERVER = "INVITE server"
    NON_INVITE_SERVER = "non-INVITE server"

    # Members are singletons compared by identity: the identity hash is C code, the default
    # Enum.__hash__ a Python call, and these are dict keys on every transaction step.
    __hash__ = object.__hash__


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    ABANDONED = "Abandoned"
    TERMINATED = "Terminated"

    # Members are singletons compared by identity: the identity hash is C code, the default
    # Enum.__hash__ a Python call, and these are dict keys on every transaction step.
    __hash__ = object.__hash__


class Input(enum.Enum):
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    REQUEST = "request retransmission"
    ACK = "ACK"
    TRANSPORT_ERROR = "transport error"
    ABANDON = "abandoned by the user"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"

    # Members are singletons compared by identity: the identity hash is C code, the default
    # Enum.__hash__ a Python call, and these are dict keys on every transaction step.
    __hash__ = object.__hash__


S, I = State, Input  # noqa: E741 - short names keep the table readable
_Row = dict[Input, tuple[State, str | None]]

# For client transactions, PROVISIONAL/SUCCESS/FAILURE are responses received from the peer; for
# server transactions they are responses the transaction user sends. Action names are methods of
# TransactionLayer prefixed with "_do_".
TRANSITIONS: dict[Kind, dict[State, _Row]] = {
    Kind.INVITE_CLIENT: {  # §17.1.1, Figure 5, with RFC 6026 Figure 3
        S.CALLING: {
            I.TIMER_A: (S.CALLING, "retransmit_request"),
            I.TIMER_B: (S.TERMINATED, "timeout"),
            I.PROVISIONAL: (S.PROCEEDING, "pass_response"),
            I.SUCCESS: (S.ACCEPTED, "accept"),
            I.FAILURE: (S.COMPLETED, "ack_failure"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
            I.ABANDON: (S.ABANDONED, "abandon_client"),
        },
        # Ours: the user moved on to another next hop before any response (``abandon``). No
        # retransmissions; responses still reach the user (a 1xx to CANCEL, a 2xx to forward,
        # §16.7 step 5); Timer B, still armed, ends it quietly.
        S.ABANDONED: {
            I.PROVISIONAL: (S.ABANDONED, "pass_late"),
            I.SUCCESS: (S.ACCEPTED, "accept"),
            I.FAILURE: (S.COMPLETED, "ack_failure"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "terminate"),
            I.TIMER_B: (S.TERMINATED, "terminate"),
        },
        S.PROCEEDING: {
            I.PROVISIONAL: (S.PROCEEDING, "pass_response"),
            I.SUCCESS: (S.ACCEPTED, "accept"),
            I.FAILURE: (S.COMPLETED, "ack_failure"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
            I.ABANDON: (S.ABANDONED, "abandon_client"),
        },
        S.COMPLETED: {
            I.PROVISIONAL: (S.COMPLETED, None),
            I.SUCCESS: (S.COMPLETED, None),
            I.FAILURE: (S.COMPLETED, "resend_ack"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "terminate"),
            I.TIMER_D: (S.TERMINATED, "terminate"),
        },
        S.ACCEPTED: {
            I.PROVISIONAL: (S.ACCEPTED, None),
            I.SUCCESS: (S.ACCEPTED, "pass_response"),
            I.FAILURE: (S.ACCEPTED, None),
            I.TRANSPORT_ERROR: (S.ACCEPTED, None),
            I.TIMER_M: (S.TERMINATED, "terminate"),
        },
    },
    Kind.NON_INVITE_CLIENT: {  # §17.1.2, Figure 6
        S.TRYING: {
            I.TIMER_E: (S.TRYING, "retransmit_request"),
            I.TIMER_F: (S.TERMINATED, "timeout"),
            I.PROVISIONAL: (S.PROCEEDING, "pass_response"),
            I.SUCCESS: (S.COMPLETED, "complete_client"),
            I.FAILURE: (S.COMPLETED, "complete_client"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
        },
        S.PROCEEDING: {
            I.TIMER_E: (S.PROCEEDING, "retransmit_request"),
            I.TIMER_F: (S.TERMINATED, "timeout"),
            I.PROVISIONAL: (S.PROCEEDING, "pass_response"),
            I.SUCCESS: (S.COMPLETED, "complete_client"),
            I.FAILURE: (S.COMPLETED, "complete_client"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
        },
        S.COMPLETED: {
            I.PROVISIONAL: (S.COMPLETED, None),
            I.SUCCESS: (S.COMPLETED, None),
            I.FAILURE: (S.COMPLETED, None),
            I.TRANSPORT_ERROR: (S.COMPLETED, None),
            I.TIMER_K: (S.TERMINATED, "terminate"),
        },
    },
    Kind.INVITE_SERVER: {  # §17.2.1, Figure 7, with RFC 6026 Figure 5
        S.PROCEEDING: {
            I.REQUEST: (S.PROCEEDING, "resend_response"),
            I.PROVISIONAL: (S.PROCEEDING, "send_response"),
            I.SUCCESS: (S.ACCEPTED, "send_success"),
            I.FAILURE: (S.COMPLETED, "send_failure"),
            I.ACK: (S.PROCEEDING, None),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
        },
        S.COMPLETED: {
            I.REQUEST: (S.COMPLETED, "resend_response"),
            I.TIMER_G: (S.COMPLETED, "retransmit_response"),
            I.TIMER_H: (S.TERMINATED, "timeout"),
            I.ACK: (S.CONFIRMED, "confirm"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
        },
        S.CONFIRMED: {
            I.REQUEST: (S.CONFIRMED, None),
            I.ACK: (S.CONFIRMED, None),
            I.TIMER_I: (S.TERMINATED, "terminate"),
        },
        S.ACCEPTED: {
            I.REQUEST: (S.ACCEPTED, None),
            I.ACK: (S.ACCEPTED, None),
            I.SUCCESS: (S.ACCEPTED, "send_response"),
            I.TRANSPORT_ERROR: (S.ACCEPTED, None),
            I.TIMER_L: (S.TERMINATED, "terminate"),
        },
    },
    Kind.NON_INVITE_SERVER: {  # §17.2.2, Figure 8
        S.TRYING: {
            I.REQUEST: (S.TRYING, None),
            I.ABANDON: (S.TERMINATED, "terminate"),
            I.PROVISIONAL: (S.PROCEEDING, "send_response"),
            I.SUCCESS: (S.COMPLETED, "complete_server"),
            I.FAILURE: (S.COMPLETED, "complete_server"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
        },
        S.PROCEEDING: {
            I.REQUEST: (S.PROCEEDING, "resend_response"),
            I.ABANDON: (S.TERMINATED, "terminate"),
            I.PROVISIONAL: (S.PROCEEDING, "send_response"),
            I.SUCCESS: (S.COMPLETED, "complete_server"),
            I.FAILURE: (S.COMPLETED, "complete_server"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
        },
        S.COMPLETED: {
            I.REQUEST: (S.COMPLETED, "resend_response"),
            I.TRANSPORT_ERROR: (S.TERMINATED, "transport_failure"),
            I.TIMER_J: (S.TERMINATED, "terminate"),
        },
    },
}
del S, I

INITIAL_STATE = {
    Kind.INVITE_CLIENT: State.CALLING,
    Kind.NON_INVITE_CLIENT: State.TRYING,
    Kind.INVITE_SERVER: State.PROCEEDING,
    Kind.NON_INVITE_SERVER: State.TRYING,
}


def _status_input(status: int) -> Input:
    if status < 200:
        return Input.PROVISIONAL
    if status < 300:
        return Input.SUCCESS
    return Input.FAILURE


class Transaction:
    """One transaction's state; read its fields, change it only through TransactionLayer.

    ``owner`` is free for the transaction user (the proxy keeps its response context there).
    """

    __slots__ = (
        "_timer_gen",
        "ack",
        "initial_invite",
        "interval",
        "key",
        "kind",
        "last_response",
        "last_status",
        "owner",
        "peer",
        "request",
        "request_bytes",
        "retransmissions",
        "state",
    )

    def __init__(self, kind: Kind, key: tuple[str, ...], request: Request, peer: Peer) -> None:
        self.kind = kind
        self.key = key
        self.state = INITIAL_STATE[kind]
        self.request = request
        self.peer = peer
        self.request_bytes = b""
        self.retransmissions = 0  # timer-driven copies of the request sent so far
        self.last_response: bytes | None = None
        self.last_status = 0
        self.ack: bytes | None = None
        self.interval = 0.0
        self.owner: object = None
        self.initial_invite = False  # an INVITE server transaction outside a dialog: a call
        self._timer_gen: dict[Input, int] = {}

    @property
    def reliable(self) -> bool:
        return self.peer.transport != "udp"

    def __repr__(self) -> str:
        return f"<{self.kind.value} transaction {self.key} {self.state.value}>"


ClientTransaction = Transaction
ServerTransaction = Transaction


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """A client transaction got no final response (Timer B/F or a transport error), or a
    server INVITE transaction got no ACK (Timer H)."""

    transaction: Transaction
    transport_error: bool


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """A transaction ended; its user can forget it."""

    transaction: Transaction


TransactionEvent = TransactionTimeout | TransactionTerminated


@dataclass(frozen=True, slots=True)
class TransactionStatistics:
    client: int
    server: int
    timers_pending: int
    retransmissions_sent: int
    retransmissions_absorbed: int
    timeouts: int
    #: Transactions ended, by kind and result: the final status class ("2xx".."6xx") or how
    #: one ended without it ("timeout", "transport error", "abandoned", "no ACK").
    ended: dict[tuple[Kind, str], int]
    #: Server transactions of INVITEs outside a dialog (calls offered), those still without a
    #: final response, and the first final status each was answered with.
    initial_invites: int
    initial_invites_pending: int
    initial_invite_answers: dict[int, int]


def server_key(request: Request) -> tuple[str, ...]:
    """The §17.2.3 matching key of a request (ACK and CANCEL handled by the caller)."""
    via = request.top_via
    branch = via.branch
    method = "INVITE" if request.method == "ACK" else request.method
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        port = via.port if via.port is not None else 0
        return (branch, via.host.lower(), str(port), method)
    # RFC 2543 peers: §17.2.3 second half. The To tag is left out so an ACK (which carries
    # the tag of our response) still finds its INVITE transaction.
    cseq = request.cseq
    return (
        "2543",
        request.uri,
        request.from_tag or "",
        request.call_id,
        str(cseq.number),
        str(via),
        method,
    )


class TransactionLayer:
    """Every transaction of one SIP element. See the module docstring."""

    def __init__(
        self,
        timers: TimerConfig | None = None,
        *,
        detour: Callable[[Transaction], tuple[bytes, Peer]] | None = None,
    ) -> None:
        """``detour``, when given, chooses what a timer-driven retransmission of a request
        sends and where (the overlay sends some over alternate paths); by default it is the
        same bytes to the same peer."""
        self.timers = timers or TimerConfig()
        self._detour = detour
        self._outbox: list[tuple[bytes, Peer]] = []
        self.events: list[TransactionEvent] = []
        self._client: dict[tuple[str, ...], Transaction] = {}
        self._server: dict[tuple[str, ...], Transaction] = {}
        self._heap: list[tuple[float, int, Transaction, Input, int]] = []
        self._seq = 0
        self._retransmissions_sent = 0
        self._retransmissions_absorbed = 0
        # Per next hop, since the last take_peer_traffic(): requests sent, and retransmissions
        # of them. Link state turns these into each overlay link's retransmission ratio.
        self._requests_to: Counter[Peer] = Counter()
        self._retransmissions_to: Counter[Peer] = Counter()
        self._timeouts = 0
        self._ended: Counter[tuple[Kind, str]] = Counter()
        self._initial_invites = 0
        self._initial_invites_pending = 0
        self._initial_invite_answers: Counter[int] = Counter()
        self._actions: dict[str, Callable[[Transaction, Response | None, float], None]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_do_")
        }

    # -- server side -------------------------------------------------------------------------

    def receive_request(self, request: Request, source: Peer, now: float) -> Transaction | None:
        """Match an incoming request to a server transaction.

        Returns:
            A new server transaction the user must answer, or ``None`` when the request was a
            retransmission or an ACK absorbed by an existing transaction. ACKs that match no
            transaction (ACK for a 2xx) and CANCELs are not handled here: see
            ``find_server`` and ``receive_ack``.
        Raises:
            RemoteProtocolError: the request's Via/CSeq/Call-ID cannot be used for matching.
        """
        key = server_key(request)
        txn = self._server.get(key)
        if txn is not None:
            self._retransmissions_absorbed += 1
            self._fire(txn, Input.REQUEST, None, now)
            return None
        kind = Kind.INVITE_SERVER if request.method == "INVITE" else Kind.NON_INVITE_SERVER
        txn = Transaction(kind, key, request, source)
        if kind is Kind.INVITE_SERVER and _outside_dialog(request):
            txn.initial_invite = True
            self._initial_invites += 1
            self._initial_invites_pending += 1
        self._server[key] = txn
        return txn

    def receive_ack(self, request: Request, now: float) -> bool:
        """Give an ACK to the INVITE server transaction it belongs to.

        Returns ``True`` when a transaction absorbed it (ACK for a non-2xx final response, or a
        retransmitted ACK); ``False`` when it matches none and the user must route it.
        """
        txn = self._server.get(server_key(request))
        if txn is None:
            return False
        self._fire(txn, Input.ACK, None, now)
        return True

    def find_server(self, request: Request, method: str) -> Transaction | None:
        """The server transaction ``request`` would match if its method were ``method``.

        Used for CANCEL (§9.2): find the INVITE transaction the CANCEL refers to.
        """
        key = server_key(request)
        return self._server.get((*key[:-1], method))

    def send_response(self, txn: Transaction, response: Response, now: float) -> None:
        """Send a response on a server transaction (retransmitted as §17.2 requires)."""
        if txn.initial_invite and txn.last_status < 200 <= response.status:
            self._initial_invite_answers[response.status] += 1
            self._initial_invites_pending -= 1
        txn.last_status = response.status
        self._fire(txn, _status_input(response.status), response, now)

    def abandon(self, txn: Transaction, now: float) -> None:
        """End a non-INVITE server transaction without a final response (RFC 4320 §4.2), or
        stop an INVITE client transaction that got no response at all from retransmitting:
        its user tries another next hop (its late responses still come back)."""
        self._fire(txn, Input.ABANDON, None, now)

    # -- client side -------------------------------------------------------------------------

    def send_request(self, request: Request, peer: Peer, now: float) -> Transaction:
        """Start a client transaction for ``request`` (its top Via must carry a fresh branch)."""
        if request.method == "ACK":
            raise LocalProtocolError("ACK is not sent in a client transaction", status_hint=None)
        branch = request.top_via.branch or ""
        key = (branch, request.method)
        if key in self._client:
            raise LocalProtocolError(f"branch {branch} already in use", status_hint=None)
        kind = Kind.INVITE_CLIENT if request.method == "INVITE" else Kind.NON_INVITE_CLIENT
        txn = Transaction(kind, key, request, peer)
        txn.request_bytes = serialize(request)
        self._client[key] = txn
        self._outbox.append((txn.request_bytes, peer))
        self._requests_to[peer] += 1
        t1 = self.timers.t1
        if kind is Kind.INVITE_CLIENT:
            if not txn.reliable:
                txn.interval = t1
                self._arm(txn, Input.TIMER_A, now + t1)
            self._arm(txn, Input.TIMER_B, now + 64 * t1)
        else:
            if not txn.reliable:
                txn.interval = t1
                self._arm(txn, Input.TIMER_E, now + t1)
            self._arm(txn, Input.TIMER_F, now + 64 * t1)
        return txn

    def receive_response(self, response: Response, now: float) -> Transaction | None:
        """Match a response to its client transaction (§17.1.3).

        Returns:
            The transaction when the user must see this response (its ``last_status`` updated),
            or ``None`` when it was absorbed (a retransmission) or matches no transaction (a
            stray response, which a proxy must not forward: RFC 6026 §8.5).
        """
        branch = response.top_via.branch or ""
        txn = self._client.get((branch, response.cseq.method))
        if txn is None:
            return None
        if not self._fire(txn, _status_input(response.status), response, now):
            self._retransmissions_absorbed += 1
            return None
        txn.last_status = response.status
        return txn

    def transport_error(self, peer: Peer, now: float) -> None:
        """A connection to ``peer`` failed: every transaction sending to it fails (§17.1.4)."""
        for table in (self._client, self._server):
            for txn in [t for t in table.values() if t.peer == peer]:
                self._fire(txn, Input.TRANSPORT_ERROR, None, now)

    def adopt(self, txn: Transaction, now: float) -> None:
        """Take over an INVITE transaction another node ran (a pair's standby promoted, issue
        16), in the state it had there: its timers start afresh from ``now``, and one still
        Calling sends its request again at once.

        Raises:
            LocalProtocolError: its key is in use, or its kind and state cannot be taken over.
        """
        client = txn.kind is Kind.INVITE_CLIENT
        table = self._client if client else self._server
        if txn.key in table:
            raise LocalProtocolError(f"transaction {txn.key} already exists", status_hint=None)
        t1 = self.timers.t1
        state = txn.state
        if client and state is State.CALLING:
            self._outbox.append((txn.request_bytes, txn.peer))
            self._requests_to[txn.peer] += 1
            if not txn.reliable:
                txn.interval = t1
                self._arm(txn, Input.TIMER_A, now + t1)
            self._arm(txn, Input.TIMER_B, now + 64 * t1)
        elif state is State.ACCEPTED:
            self._arm(txn, Input.TIMER_M if client else Input.TIMER_L, now + 64 * t1)
        elif state is not State.PROCEEDING or txn.kind not in _INVITE_KINDS:
            raise LocalProtocolError(f"cannot adopt {txn!r}", status_hint=None)
        table[txn.key] = txn

    def clients_to(self, peers: Collection[Peer]) -> list[Transaction]:
        """The client transactions sending to ``peers``."""
        return [txn for txn in self._client.values() if txn.peer in peers]

    def retransmit_to(self, peers: Collection[Peer]) -> int:
        """Resend now every request to ``peers`` that no response has reached yet (its path
        changed, so the copy in flight may be lost on the old one); timers are unchanged.

        Returns how many were resent.
        """
        count = 0
        for txn in self._client.values():
            if txn.peer not in peers or txn.reliable:
                continue
            waiting = txn.state in (State.CALLING, State.TRYING) or (
                txn.state is State.PROCEEDING and txn.kind is Kind.NON_INVITE_CLIENT
            )
            if waiting:
                # Not counted in the peer's traffic: the new path did not lose anything.
                self._outbox.append((txn.request_bytes, txn.peer))
                count += 1
        self._retransmissions_sent += count
        return count

    # -- time --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest absolute deadline, or ``None`` when no timer is armed."""
        heap = self._heap
        while heap:
            _, _, txn, which, gen = heap[0]
            if txn._timer_gen.get(which) == gen:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, txn, which, gen = heapq.heappop(heap)
            if txn._timer_gen.get(which) != gen:
                continue
            del txn._timer_gen[which]
            self._fire(txn, which, None, now)

    def send(self, data: bytes, peer: Peer) -> None:
        """Queue a message sent outside any transaction (stateless forwarding, relaying,
        stateless answers), in order with the transactions' own."""
        self._outbox.append((data, peer))

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """What to send since the last call, in order: ``(bytes, Peer)`` pairs."""
        out = self._outbox
        self._outbox = []
        return out

    def take_peer_traffic(self) -> dict[Peer, tuple[int, int]]:
        """``{next hop: (requests sent, retransmissions sent)}`` since the last call."""
        traffic = {
            peer: (count, self._retransmissions_to.get(peer, 0))
            for peer, count in self._requests_to.items()
        }
        for peer, count in self._retransmissions_to.items():
            traffic.setdefault(peer, (0, count))
        self._requests_to.clear()
        self._retransmissions_to.clear()
        return traffic

    def statistics(self) -> TransactionStatistics:
        return TransactionStatistics(
            client=len(self._client),
            server=len(self._server),
            timers_pending=len(self._heap),
            retransmissions_sent=self._retransmissions_sent,
            retransmissions_absorbed=self._retransmissions_absorbed,
            timeouts=self._timeouts,
            ended=dict(self._ended),
            initial_invites=self._initial_invites,
            initial_invites_pending=self._initial_invites_pending,
            initial_invite_answers=dict(self._initial_invite_answers),
        )

    # -- the machine -------------------------------------------------------------------------

    def _fire(self, txn: Transaction, event: Input, response: Response | None, now: float) -> bool:
        """Apply one input; returns True when the action passed a response to the user."""
        try:
            new_state, action = TRANSITIONS[txn.kind][txn.state][event]
        except KeyError:
            raise LocalProtocolError(
                f"{txn.kind.value} transaction in state {txn.state.value} "
                f"cannot take {event.value}",
                status_hint=None,
            ) from None
        old_state, txn.state = txn.state, new_state
        passed = action in _PASSING_ACTIONS
        if action is not None:
            self._actions[action](txn, response, now)
        if new_state is State.TERMINATED:
            self._count_end(txn, Input.ABANDON if old_state is State.ABANDONED else event)
            self._forget(txn)
        return passed

    def _arm(self, txn: Transaction, which: Input, deadline: float) -> None:
        self._seq += 1
        txn._timer_gen[which] = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, txn, which, self._seq))

    def _count_end(self, txn: Transaction, event: Input) -> None:
        if txn.last_status >= 200:
            result = "no ACK" if event is Input.TIMER_H else f"{txn.last_status // 100}xx"
        else:
            result = _END_WITHOUT_FINAL.get(event, "no final response")
            if txn.initial_invite:
                self._initial_invites_pending -= 1
        self._ended[txn.kind, result] += 1

    def _forget(self, txn: Transaction) -> None:
        txn._timer_gen.clear()
        table = self._client if txn.kind in _CLIENT_KINDS else self._server
        if table.get(txn.key) is txn:
            del table[txn.key]
        self.events.append(TransactionTerminated(txn))

    def _send(self, txn: Transaction, response: Response) -> None:
        data = serialize(response)
        txn.last_response = data
        self._outbox.append((data, txn.peer))

    # Actions, named in TRANSITIONS. Each takes (txn, response or None, now).

    def _do_retransmit_request(self, txn: Transaction, _r: Response | None, now: float) -> None:
        txn.retransmissions += 1
        detour = self._detour
        self._outbox.append((txn.request_bytes, txn.peer) if detour is None else detour(txn))
        self._retransmissions_sent += 1
        self._retransmissions_to[txn.peer] += 1
        if txn.kind is Kind.INVITE_CLIENT:
            txn.interval *= 2
            self._arm(txn, Input.TIMER_A, now + txn.interval)
        else:
            # §17.1.2.2: E doubles up to T2; in Proceeding it stays at T2.
            if txn.state is State.PROCEEDING:
                txn.interval = self.timers.t2
            else:
                txn.interval = min(2 * txn.interval, self.timers.t2)
            self._arm(txn, Input.TIMER_E, now + txn.interval)

    def _do_timeout(self, txn: Transaction, _r: Response | None, _now: float) -> None:
        self._timeouts += 1
        self.events.append(TransactionTimeout(txn, transport_error=False))

    def _do_transport_failure(self, txn: Transaction, _r: Response | None, _now: float) -> None:
        self.events.append(TransactionTimeout(txn, transport_error=True))

    def _do_pass_response(self, txn: Transaction, _r: Response | None, _now: float) -> None:
        txn._timer_gen.pop(Input.TIMER_A, None)
        if txn.kind is Kind.INVITE_CLIENT:
            # §17.1.1.2: a provisional response stops Timer B as well; the proxy's Timer C
            # takes over.
            txn._timer_gen.pop(Input.TIMER_B, None)

    def _do_abandon_client(self, txn: Transaction, _r: Response | None, now: float) -> None:
        txn._timer_gen.pop(Input.TIMER_A, None)
        if Input.TIMER_B not in txn._timer_gen:  # Proceeding: a 1xx had stopped it
            self._arm(txn, Input.TIMER_B, now + 64 * self.timers.t1)

    def _do_pass_late(self, _txn: Transaction, _r: Response | None, _now: float) -> None:
        pass

    def _do_accept(self, txn: Transaction, _r: Response | None, now: float) -> None:
        txn._timer_gen.clear()
        self._arm(txn, Input.TIMER_M, now + 64 * self.timers.t1)

    def _do_ack_failure(self, txn: Transaction, response: Response | None, now: float) -> None:
        assert response is not None
        txn._timer_gen.clear()
        txn.ack = serialize(_ack_for(txn.request, response))
        self._outbox.append((txn.ack, txn.peer))
        self._arm(txn, Input.TIMER_D, now + (0.0 if txn.reliable else 32.0))

    def _do_resend_ack(self, txn: Transaction, _r: Response | None, _now: float) -> None:
        if txn.ack is not None:
            self._outbox.append((txn.ack, txn.peer))

    def _do_complete_client(self, txn: Transaction, _r: Response | None, now: float) -> None:
        txn._timer_gen.clear()
        self._arm(txn, Input.TIMER_K, now + (0.0 if txn.reliable else self.timers.t4))

    def _do_terminate(self, _txn: Transaction, _r: Response | None, _now: float) -> None:
        pass

    def _do_send_response(self, txn: Transaction, response: Response | None, _now: float) -> None:
        assert response is not None
        self._send(txn, response)

    def _do_resend_response(self, txn: Transaction, _r: Response | None, _now: float) -> None:
        if txn.last_response is not None:
            self._outbox.append((txn.last_response, txn.peer))

    def _do_send_success(self, txn: Transaction, response: Response | None, now: float) -> None:
        assert response is not None
        self._send(txn, response)
        self._arm(txn, Input.TIMER_L, now + 64 * self.timers.t1)

    def _do_send_failure(self, txn: Transaction, response: Response | None, now: float) -> None:
        assert response is not None
        self._send(txn, response)
        if not txn.reliable:
            txn.interval = self.timers.t1
            self._arm(txn, Input.TIMER_G, now + txn.interval)
        self._arm(txn, Input.TIMER_H, now + 64 * self.timers.t1)

    def _do_retransmit_response(self, txn: Transaction, _r: Response | None, now: float) -> None:
        if txn.last_response is not None:
            self._outbox.append((txn.last_response, txn.peer))
            self._retransmissions_sent += 1
        txn.interval = min(2 * txn.interval, self.timers.t2)
        self._arm(txn, Input.TIMER_G, now + txn.interval)

    def _do_confirm(self, txn: Transaction, _r: Response | None, now: float) -> None:
        txn._timer_gen.clear()
        self._arm(txn, Input.TIMER_I, now + (0.0 if txn.reliable else self.timers.t4))

    def _do_complete_server(self, txn: Transaction, response: Response | None, now: float) -> None:
        assert response is not None
        self._send(txn, response)
        self._arm(txn, Input.TIMER_J, now + (0.0 if txn.reliable else 64 * self.timers.t1))


#: How a transaction that never saw a final response ended, by the input that ended it.
_END_WITHOUT_FINAL = {
    Input.TIMER_B: "timeout",
    Input.TIMER_F: "timeout",
    Input.TRANSPORT_ERROR: "transport error",
    Input.ABANDON: "abandoned",
}


def _outside_dialog(request: Request) -> bool:
    """No To tag: the request starts a dialog (§12.1). A To header too bad to tell counts as
    outside one: such a request is answered 400 like any other call attempt."""
    try:
        return request.to_tag is None
    except RemoteProtocolError:
        return True


_PASSING_ACTIONS = frozenset(
    {"pass_response", "pass_late", "accept", "ack_failure", "complete_client"}
)
_CLIENT_KINDS = frozenset({Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT})
_INVITE_KINDS = frozenset({Kind.INVITE_CLIENT, Kind.INVITE_SERVER})


def _ack_for(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (§17.1.1.3): hop-by-hop, same branch."""
    src = invite.headers
    headers = Headers()
    headers.add("Via", src.values("Via")[0])
    for name in ("Route",):
        for value in src.get_all(name):
            headers.add(name, value)
    headers.add("Max-Forwards", "70")
    for name in ("From", "Call-ID"):
        field_value = src.get(name)
        if field_value is None:  # pragma: no cover - parse guarantees these
            raise RemoteProtocolError(f"Missing {name} header", status_hint=None)
        headers.add(name, field_value)
    to = response.headers.get("To")
    headers.add("To", to if to is not None else src.get("To") or "")
    headers.add("CSeq", f"{invite.cseq.number} ACK")
    return Request("ACK", invite.uri, headers)
