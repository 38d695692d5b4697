"""RFC 3261 §16 stateful proxy core, sans-IO.

Theory of operation
-------------------
``ProxyCore`` is the whole signalling node minus sockets and clocks. The shell calls
``receive_data(data, source, now)`` for each datagram or framed stream message, and after every
call takes ``datagrams_to_send()`` (``(bytes, Peer)`` pairs to send) and drains ``next_event()``
(``overlay.sip._events``: ``ResolveTarget``, a DNS lookup per RFC 3263 or a wait for a route;
``CallRefused`` and ``OverlayAnomaly`` to log and report), answers lookups with ``resolved`` /
``resolution_failed``, and sleeps until ``get_timer()``, then calls ``handle_timer(now)``.

A request goes through the steps of §16 in order:

1. §16.3 validation: Max-Forwards (483), Request-URI scheme (416), Proxy-Require (420), loops
   (482, from the loop hash carried in our own branch parameters, §16.6 step 8).
2. §16.4 route preprocessing: a Request-URI that is one of our Record-Route URIs (a strict router
   upstream) is replaced by the last Route; Route entries naming this node are removed.
3. §16.5 target: the top remaining Route; else, in a dialog (To tag), the Request-URI; else the
   dialplan (``locate``: ``overlay.routing.CallRouter``, which also picks the egress node of
   an overlay call and refuses new calls while draining); a request addressed to the node
   itself is answered here (OPTIONS 200, unknown methods 501, others 404).
4. §16.6 forwarding: Max-Forwards decremented, Record-Route added by dialog-creating requests
   (two entries when the transport changes, RFC 5658), strict-route conversion, a fresh Via.

TLS (RFC 3261 §26, RFC 5630): a sips: URI, or one with ``transport=tls``, names a TLS next hop
(``Peer`` transport "tls"); the shell runs TLS and checks the certificate, this core only picks
the transport. A request whose Request-URI or next Route is sips: never leaves over anything but
TLS, except to another overlay node: a non-TLS egress target gets 480 with Warning 380 "SIPS Not
Allowed" (RFC 5630 §5.3) instead of a silent downgrade. Record-Route entries of a TLS listener
say ``transport=tls``, or are sips: URIs for a sips: request (§16.6 step 4).

A forwarded request owns a ``_Context`` (the §16 "response context"): the server transaction, the
ordered next-hop list (RFC 3263 §4.3: on a transport error, a timeout or a 503 the next one is
tried), the current client transaction and Timer C. Provisional responses other than 100 and every
2xx are forwarded at once; a final error is forwarded when no next hop is left. 503 becomes 500
(§16.7 step 6; toward another overlay node it stays 503, so the ingress can fail the call over), a
timeout becomes 408 for INVITE; for non-INVITE nothing is sent (RFC 4320 §4.2).

An INVITE with somewhere else to go does not wait Timer B for a silent next hop: with no
response at all, not even 100, within ``ProxyConfig.fr`` (Kamailio's ``fr_timer``), its branch
is abandoned (no more retransmissions, no CANCEL before a 1xx: §9.1) and the next hop tried. An
abandoned branch's late 1xx draws a CANCEL, its late 2xx is still forwarded (§16.7 step 5: the
caller ACKs and BYEs the extra dialog, §13.2.2.4), its late error is absorbed.

Egress fail-over: a new call's ``Target.alternates`` are the rule's other egress nodes in order.
When its egress fails it before a final answer (no answer within ``fr``, 408, 503, Timer B or a
transport error, or ``overlay_nodes_lost``), the same request, media offer included, is sent to
the next one on a fresh branch (§16.6) and an ``EgressFailedOver`` event says so; the caller
sees one call, and an error only once every egress has failed.
CANCEL (§16.10) is answered 200 at once and forwarded on the branch once it has a provisional
response. ACKs for 2xx and stray 2xx retransmissions are forwarded statelessly; responses that
match no transaction are dropped (RFC 6026 §8.5).

Overlay
-------
With ``ProxyConfig.overlay`` the core is one node of the overlay fabric, which acts as a single
logical SIP hop between the ingress and the egress node: only those two add a Via and a
Record-Route (marked ``ovl=<node id>``), and the ingress pushes a Route naming the egress node
(``Target.route``). Every message to another node is addressed to that node's own SIP address;
the shell sends it to the current next hop toward it, so every retransmission follows the
current best path. A node the message only crosses (a transit) relays it without state
(``OverlayRelay``, ``overlay.sip._relay``): a
request from another node's Via whose top Route names a third node goes on to that node; a
response whose top Via is another node's goes back to that node. The egress's server
transaction therefore sees the ingress's branch whatever path a copy took, and retransmissions
over a new path match it. ``retransmit_toward`` resends unanswered requests at once when the
path toward their destination changed.

The overlay is one logical hop, whatever the path inside it: a transit changes nothing the
egress passes on (not even Max-Forwards), so what leaves the egress, retransmissions included,
is the same byte for byte over any path.

Loop freedom while tables disagree
----------------------------------
Hop-by-hop forwarding is loop-free only while every node holds the same link-state database.
For the few hundred milliseconds after a link or node fails, two nodes may each have the other
as next hop toward the same node (a microloop). So every relayed message carries the nodes it
has crossed: requests in an ``Overlay-Path`` header, responses in an ``ovp`` parameter of the
Via they are going back to (each a dot-separated list of node ids; the message's origin and
the node it came from count too). A node never hands a message to a node it has crossed: when
its next hop is one of them, it sends the message along its best path that avoids them all
(``OverlayRoutes.path_avoiding``), to that path's first hop, and when there is none it drops the
message (the sender's retransmission timer tries again). As the crossed set grows at every hop
and never admits a node twice, a message crosses each node at most once. A request that comes
back to its origin anyway (a node without this rule on the path) is relayed on like any other,
never taken for a new request; a request proxied twice by one node (its Via twice on top) is
dropped rather than proxied as a second transaction. Each of these is counted and reported as
an ``OverlayAnomaly`` event, which the shell logs.

A ``MediaHook`` (``overlay.sip._media_hook``; the media plane, optional) sees every request that
crosses the overlay's edge at this node, from outside into the overlay or out of it, and every
response sent back to one (forwarded or generated); it may rewrite their bodies (SDP) or refuse
the request.

Edge security
-------------
An ``Admission`` (``overlay.security``, optional) screens every message by its source address
before it is parsed, then every new request from outside the overlay before a transaction is
made for it, and hears of every 4xx the core sends. What it refuses is answered statelessly
(§16.11), so a flood leaves no state and draws no retransmissions; the ACK of such an answer
carries this node's To tag and is absorbed. REGISTER gets 405: this node is no registrar.

Messages that fail to parse are answered (400/413/505/513 from the error's hint) when they carry
a usable Via and dropped otherwise; every drop is counted by reason in ``statistics()``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import itertools
import secrets
import zlib
from collections import Counter, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ._admission import Admission, Reject
from ._dialogs import DialogBook
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import CallRefused, EgressFailedOver, ProxyEvent, ResolveTarget
from ._handover import InviteHandover
from ._headers import KNOWN_METHODS, NameAddr, Via
from ._media_hook import MediaDirection, MediaHook, MediaRefused
from ._message import (
    Headers,
    Request,
    Response,
    make_error_response,
    make_response,
    parse_message_untrusted,
    serialize,
)
from ._relay import OVERLAY_PATH, OverlayNodes, OverlayRelay, OverlayRoutes
from ._targets import (
    DEFAULT_PORTS,
    Listener,
    Locate,
    NextHopHealth,
    OwnAddresses,
    Refusal,
    Target,
    apply_target,
    literal_peer,
    uri_target,
)
from ._transaction import (
    MAGIC_COOKIE,
    Kind,
    Peer,
    State,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionTimeout,
)
from ._uri import SipUri, TelUri, host_bare, parse_uri_untrusted

#: Requests that create a dialog outside one, and so are Record-Routed (RFC 3261, 3265, 3515).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
#: What the node handles (Allow, RFC 3261 §20.5): it is no registrar, and it cannot relay
#: registrations either (that needs Path, RFC 3327), so REGISTER gets 405 (§21.4.6).
ALLOWED_METHODS = ", ".join(sorted(KNOWN_METHODS - {"REGISTER"}))


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listeners: tuple[Listener, ...]
    timers: TimerConfig = field(default_factory=TimerConfig)
    timer_c: float = 180.0
    record_route: bool = True
    user_agent: str = "overlay"
    max_message_size: int = 65535
    overlay: OverlayNodes | None = None
    #: Seconds an INVITE waits for any response before its next hop is tried (0: Timer B).
    fr: float = 1.0
    #: Seconds a call's far edge may stay unreachable before this edge ends the call.
    far_edge_wait: float = 1.0


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    requests: dict[str, int]
    responses: dict[str, int]
    drops: dict[str, int]
    generated: dict[int, int]
    relayed: dict[str, int]  # overlay messages this node only crossed, by kind
    anomalies: dict[str, int]  # OverlayAnomaly events, by kind
    detoured: int  # retransmissions sent over an alternate overlay path
    sips_refused: int  # sips: requests answered 480 as no TLS leads to their next hop
    failovers: dict[str, int]  # EgressFailedOver events, by cause
    calls_ended: int  # calls this edge ended itself with a BYE, their far edge lost
    dialogs: int  # calls in the dialog book (``overlay.sip._dialogs``)
    late_answers: int  # 2xx of abandoned branches, forwarded (the caller ends the extra dialog)
    contexts: int
    pending_resolutions: int
    retransmissions_sent: int
    retransmissions_absorbed: int
    transactions_client: int
    transactions_server: int


class _Context:
    """The response context of one forwarded request (§16)."""

    __slots__ = (
        "alternates",
        "attempts",
        "branch",
        "cancel_pending",
        "cancelled",
        "egress",
        "egress_tries",
        "far_node",
        "forward",
        "fr_gen",
        "from_overlay",
        "media",
        "next_hops",
        "provisional",
        "replied",
        "route",
        "server",
        "timed_out",
        "timer_c_at",
        "timer_c_gen",
    )

    def __init__(self, server: Transaction, forward: Request, target: Target) -> None:
        self.server = server
        self.forward = forward  # the request to send, without our Via
        self.media: MediaDirection | None = None  # set when it crosses the overlay's edge here
        self.from_overlay = False  # its upstream is another overlay node
        self.far_node = ""  # the node it came from, when ``from_overlay``
        self.next_hops: deque[Peer] = deque()
        self.alternates: deque[Target] = deque(target.alternates)
        self.egress = target.egress  # the overlay node it goes to, if any
        self.route = target.route  # the Route pushed for it
        self.egress_tries = 1
        self.attempts = 0  # branches sent so far
        self.branch: Transaction | None = None
        self.provisional = False
        self.cancelled = False
        self.cancel_pending = False
        self.timed_out = False
        self.replied = False
        self.timer_c_gen = 0
        self.timer_c_at = 0.0
        self.fr_gen = 0


class _Abandoned:
    """The owner of a branch its context moved on from (``TransactionLayer.abandon``)."""

    __slots__ = ("cancelled", "context")

    def __init__(self, context: _Context) -> None:
        self.context = context
        self.cancelled = False


class ProxyCore:
    """A stateful SIP proxy; see the module docstring."""

    def __init__(
        self,
        config: ProxyConfig,
        locate: Locate,
        overlay_routes: OverlayRoutes | None = None,
        media: MediaHook | None = None,
        *,
        admission: Admission | None = None,
        next_hop_health: NextHopHealth | None = None,
    ) -> None:
        if not config.listeners:
            raise ValueError("a proxy needs at least one listener")
        self.config = config
        self._locate = locate
        self._media = media
        self._admission = admission
        self._health = next_hop_health
        self._events: deque[ProxyEvent] = deque()
        self._own = OwnAddresses(config.listeners)
        self._relay = (
            None
            if config.overlay is None
            else OverlayRelay(
                config.overlay,
                overlay_routes,
                self._own,
                send=self._send,
                events=self._events.append,
            )
        )
        self._routes = overlay_routes
        #: The edge's answered calls (``overlay.sip._dialogs``); ``None`` outside an overlay.
        self.dialogs = None if config.overlay is None else DialogBook(config.overlay.node_id)
        self._lost_checks: deque[tuple[float, str]] = deque()  # (when, node), by time
        # INVITE contexts at the overlay's edge by Call-ID, for pair replication; and on a
        # standby, the active's, kept until ``promote``.
        self._edge_invites: dict[str, list[_Context]] = {}
        self._handed_over: dict[str, list[InviteHandover]] = {}
        self._calls_ended = 0
        self.transactions = TransactionLayer(
            config.timers, detour=None if self._relay is None else self._relay.detour
        )
        self._pending: dict[int, tuple[_Context | None, Request]] = {}
        self._tokens = itertools.count(1)
        self._branches = itertools.count(1)
        # The To tag of the node's own answers, and part of its branches. An overlay node's
        # derives from its node id, which the two members of a pair share: an ACK or a
        # retransmission that reaches the standby after a takeover still matches.
        self._nonce = (
            secrets.token_hex(4)
            if config.overlay is None
            else hashlib.blake2b(config.overlay.node_id.encode(), digest_size=4).hexdigest()
        )
        self._timer_heap: list[tuple[float, int, _Context]] = []
        self._timer_seq = itertools.count(1)
        self._by_transport: dict[str, Listener] = {}
        for listener in config.listeners:
            self._by_transport.setdefault(listener.transport, listener)
        self._requests: Counter[str] = Counter()
        self._responses: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._generated: Counter[int] = Counter()
        self._sips_refused = 0
        self._failovers: Counter[str] = Counter()
        self._late_answers = 0
        self._contexts = 0
        # Overlay nodes' addresses (empty without an overlay), tested for every message.
        self._overlay_node_at = {} if self._relay is None else self._relay.node_at
        self._mark = "" if self._relay is None else self._relay.mark

    # -- entry points ------------------------------------------------------------------------

    def receive_data(self, data: bytes, source: Peer, now: float) -> None:
        """Process one datagram, or one message framed from a stream."""
        if self._admission is not None and not self._admission.screen(source.host, now):
            return
        try:
            message = parse_message_untrusted(
                data, stream=source.transport != "udp", max_size=self.config.max_message_size
            )
        except RemoteProtocolError as error:
            self._reject_unparseable(error, source, now)
            return
        try:
            if isinstance(message, Request):
                self._receive_request(message, source, now)
            else:
                self._receive_response(message, source, now)
        except RemoteProtocolError as error:
            # A header needed for routing was bad although the message parsed.
            self._drops[f"bad {error.reason}"] += 1
        self._drain_transaction_events(now)

    def next_event(self) -> ProxyEvent | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """What to send since the last call, in order: ``(bytes, Peer)`` pairs. A pair whose
        peer is an overlay node's address (not a ``NextHop``) goes to the current next hop
        toward that node."""
        return self.transactions.datagrams_to_send()

    def resolved(self, token: int, peers: list[Peer], now: float) -> None:
        """Deliver the result of a ``ResolveTarget``: next hops in RFC 3263 order."""
        entry = self._pending.pop(token, None)
        if entry is None:
            return
        context, request = entry
        if context is None:  # a stateless ACK
            if peers:
                self._send_stateless_request(request, peers[0])
            return
        if context.replied:
            return
        if not peers:
            self._reply(context, 404, "Destination Not Found", now)
            return
        self._add_next_hops(context, peers, now)
        self._drain_transaction_events(now)

    def resolution_failed(
        self, token: int, reason: str, now: float, *, refusal: Refusal | None = None
    ) -> None:
        """A ``ResolveTarget`` found nothing: 404 naming ``reason``, or ``refusal``'s answer."""
        entry = self._pending.pop(token, None)
        if entry is None:
            return
        context, _ = entry
        self._drops["resolution failed"] += 1
        if context is not None and not context.replied:
            if refusal is None:
                self._reply(context, 404, _safe_reason(f"Not Found ({reason})"), now)
            else:
                status, why = refusal.status, refusal.reason
                self._reply(context, status, why, now, retry_after=refusal.retry_after)
        self._drain_transaction_events(now)

    def transport_error(self, peer: Peer, now: float) -> None:
        """The shell could not send to ``peer`` (connection refused or reset)."""
        self.transactions.transport_error(peer, now)
        self._drain_transaction_events(now)

    def overlay_nodes_lost(
        self, nodes: Collection[str], now: float, *, restarted: bool = False
    ) -> None:
        """The mesh has no route left to ``nodes`` (or, ``restarted``, they came back without
        their calls): calls whose egress is one of them and that have another egress fail
        over to it now, if the egress had not answered at all. One that had (a 1xx: the callee
        most likely has the INVITE) cannot: the callee would take the same request from another
        egress for a merged one (RFC 3261 §8.2.2.2: 482) while it rings on the lost one, whose
        answer nobody can take. Such a call is answered 503 after ``far_edge_wait`` if the
        node is still unreachable then (a pair's standby may take it over meanwhile), so the
        caller can try elsewhere at once. Established calls with them end then too, or at once
        when ``restarted``."""
        relay = self._relay
        if relay is None:
            return
        peers = {relay.peers[node] for node in nodes if node in relay.peers}
        for context, txn in self._unanswered_invites_to(peers, State.CALLING):
            if context.alternates and not context.cancelled:
                self._abandon_branch(context, txn, now)
                self._fail_over(context, "egress lost", now)
        if restarted:
            for peer in peers:
                self._fail_unanswerable(peer, f"Egress {relay.node_at[peer]} Restarted", now)
        if self.dialogs is not None and restarted:
            for node in nodes:
                for call_id in self.dialogs.toward(node):
                    self.end_call(call_id, f"far edge {node} restarted", now)
        elif self.dialogs is not None:
            when = now + self.config.far_edge_wait
            self._lost_checks.extend((when, node) for node in nodes)
        self._drain_transaction_events(now)

    def end_call(self, call_id: str, text: str, now: float) -> bool:
        """End an established call toward this edge's party: a BYE as its far party would
        have sent it (§12.2.1.1), with ``Reason: Q.850;cause=41;text=...`` (RFC 3326), on a
        transaction of its own whose answer is absorbed. The media hook sees it, so the call
        book and the media plane end the call too. False when the call is not in the book."""
        dialog = None if self.dialogs is None else self.dialogs.end(call_id, now)
        if dialog is None:
            return False
        headers = Headers()
        for route in dialog.route_set:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", dialog.far)
        headers.add("To", dialog.party)
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"{dialog.far_cseq + 1} BYE")
        quoted = _safe_reason(text).replace('"', "")
        headers.add("Reason", f'Q.850;cause=41;text="{quoted}"')
        headers.add("User-Agent", self.config.user_agent)
        bye = Request("BYE", dialog.target, headers)
        if self._media is not None:
            # The media plane ends the call's sessions even if it refuses the request.
            with contextlib.suppress(MediaRefused):
                self._media.request(bye, MediaDirection.LEAVING, now)
        listener = self._listener_for(dialog.peer.transport)
        seed = f"{self._nonce}\0{call_id}\0end".encode("utf-8", "surrogateescape")
        branch = MAGIC_COOKIE + hashlib.blake2b(seed, digest_size=8).hexdigest()
        headers.insert_first("Via", _via(dialog.peer, listener, branch + self._mark))
        self.transactions.send_request(bye, dialog.peer, now).owner = None
        self._calls_ended += 1
        return True

    # -- pair replication (issue 16) ----------------------------------------------------------

    def invite_handovers(self, call_id: str, now: float) -> list[InviteHandover]:
        """The response contexts of a call's INVITEs that cross the overlay's edge here, as
        the active of a pair streams them to its standby: those not answered with an error
        (such a one only waits for its ACK)."""
        return [
            _handover(context, now)
            for context in self._edge_invites.get(call_id, ())
            if context.server.last_status < 300
        ]

    def restore_handovers(self, call_id: str, handovers: Sequence[InviteHandover]) -> None:
        """Keep the active's contexts of a call (the standby), replacing what it had; none:
        the call's INVITEs are over there. They come alive with ``promote``."""
        if handovers:
            self._handed_over[call_id] = list(handovers)
        else:
            self._handed_over.pop(call_id, None)

    def promote(self, now: float) -> int:
        """This standby took its pair's address over: every kept context becomes live, its
        transactions taken over as they were (a branch still Calling sends its INVITE again
        at once), so a call that was being set up completes. Returns how many."""
        adopted = 0
        handed_over, self._handed_over = self._handed_over, {}
        for handovers in handed_over.values():
            for handover in handovers:
                try:
                    self._adopt(handover, now)
                    adopted += 1
                except (RemoteProtocolError, LocalProtocolError):
                    self._drops["hand-over not taken"] += 1
        self._drain_transaction_events(now)
        return adopted

    def _adopt(self, handover: InviteHandover, now: float) -> None:
        request = parse_message_untrusted(handover.request)
        forward = parse_message_untrusted(handover.forward)
        if not isinstance(request, Request) or not isinstance(forward, Request):
            raise RemoteProtocolError("a hand-over that is not a request", status_hint=None)
        server = Transaction(Kind.INVITE_SERVER, handover.server_key, request, handover.server_peer)
        server.last_response = handover.last_response
        server.last_status = handover.last_status
        server.state = State.ACCEPTED if handover.last_status >= 200 else State.PROCEEDING
        target = Target(
            "", alternates=handover.alternates, egress=handover.egress, route=handover.route
        )
        context = _Context(server, forward, target)
        context.media = None if handover.media is None else MediaDirection(handover.media)
        context.from_overlay = handover.from_overlay
        context.far_node = handover.far_node
        context.next_hops.extend(handover.next_hops)
        context.attempts = handover.attempts
        context.egress_tries = handover.egress_tries
        context.provisional = handover.provisional
        context.replied = handover.replied
        context.cancelled = handover.cancelled
        branch = None
        if handover.branch is not None and handover.branch_peer is not None:
            sent = parse_message_untrusted(handover.branch)
            if not isinstance(sent, Request):
                raise RemoteProtocolError(
                    "a hand-over branch that is not a request", status_hint=None
                )
            key = (sent.top_via.branch or "", "INVITE")
            branch = Transaction(Kind.INVITE_CLIENT, key, sent, handover.branch_peer)
            branch.request_bytes = handover.branch
            branch.state = (
                State.ACCEPTED
                if handover.replied
                else State.PROCEEDING
                if handover.provisional
                else State.CALLING
            )
        self.transactions.adopt(server, now)
        server.owner = context
        self._contexts += 1
        if context.media is not None:
            self._edge_invites.setdefault(request.call_id, []).append(context)
        if branch is None:
            if not context.replied and not self._move_on(context, "timeout", now, next_hop=True):
                self._reply(context, 408, "Request Timeout", now)
            return
        self.transactions.adopt(branch, now)
        branch.owner = context
        context.branch = branch
        if not context.replied:
            self._arm_timer_c(context, now, handover.timer_c_left)
            if branch.state is State.CALLING:
                self._arm_fr(context, now)

    def retransmit_toward(self, peers: Collection[Peer]) -> int:
        """The path toward ``peers`` changed: resend their unanswered requests now, over the
        new path, instead of waiting for the retransmission timer. Returns how many."""
        return self.transactions.retransmit_to(peers)

    def get_timer(self) -> float | None:
        deadline = self.transactions.get_timer()
        heap = self._timer_heap
        while heap and heap[0][1] not in (heap[0][2].timer_c_gen, heap[0][2].fr_gen):
            heapq.heappop(heap)
        if heap and (deadline is None or heap[0][0] < deadline):
            deadline = heap[0][0]
        if self._lost_checks and (deadline is None or self._lost_checks[0][0] < deadline):
            deadline = self._lost_checks[0][0]
        return deadline

    def handle_timer(self, now: float) -> None:
        self.transactions.handle_timer(now)
        heap = self._timer_heap
        while heap and heap[0][0] <= now:
            _, gen, context = heapq.heappop(heap)
            if context.timer_c_gen == gen:
                context.timer_c_gen = 0
                self._timer_c_fired(context, now)
            elif context.fr_gen == gen:
                context.fr_gen = 0
                self._fr_fired(context, now)
        checks = self._lost_checks
        while checks and checks[0][0] <= now:
            self._far_edge_wait_over(checks.popleft()[1], now)
        self._drain_transaction_events(now)

    def _far_edge_wait_over(self, node: str, now: float) -> None:
        """``far_edge_wait`` after ``node`` was lost: still unreachable, its calls end here.
        Unreachable but answering probes (its links in hold-down after a blip: it is alive,
        and its calls with it), it is looked at again ``far_edge_wait`` later."""
        routes, dialogs, relay = self._routes, self.dialogs, self._relay
        if dialogs is None or (routes is not None and routes.path(node) is not None):
            return
        if routes is not None and routes.heard(node):
            self._lost_checks.append((now + self.config.far_edge_wait, node))
            return
        if relay is not None and node in relay.peers:
            self._fail_unanswerable(relay.peers[node], "Egress Lost", now)
        for call_id in dialogs.toward(node):
            self.end_call(call_id, f"far edge {node} lost", now)

    def _fail_unanswerable(self, peer: Peer, reason: str, now: float) -> None:
        """Answer 503 the INVITEs whose branch to ``peer``, a lost overlay node, had a 1xx:
        nothing can answer them now (``overlay_nodes_lost``)."""
        for context, txn in self._unanswered_invites_to({peer}, State.PROCEEDING):
            self._abandon_branch(context, txn, now)
            self._drops["branch to a lost node"] += 1
            self._reply(context, 503, reason, now)

    def _unanswered_invites_to(
        self, peers: Collection[Peer], state: State
    ) -> list[tuple[_Context, Transaction]]:
        """The INVITEs not answered upstream yet whose current branch goes to ``peers`` and
        is in ``state`` (Calling: not even a 100 came back; Proceeding: a 1xx did)."""
        return [
            (context, txn)
            for txn in self.transactions.clients_to(peers)
            if isinstance(context := txn.owner, _Context)
            and context.branch is txn
            and txn.kind is Kind.INVITE_CLIENT
            and txn.state is state
            and not context.replied
        ]

    def statistics(self) -> ProxyStatistics:
        txn = self.transactions.statistics()
        relay = self._relay
        return ProxyStatistics(
            requests=dict(self._requests),
            responses=dict(self._responses),
            drops=dict(self._drops),
            generated=dict(self._generated),
            relayed={} if relay is None else dict(relay.relayed),
            anomalies={} if relay is None else dict(relay.anomalies),
            detoured=0 if relay is None else relay.detoured,
            sips_refused=self._sips_refused,
            failovers=dict(self._failovers),
            calls_ended=self._calls_ended,
            dialogs=0 if self.dialogs is None else len(self.dialogs),
            late_answers=self._late_answers,
            contexts=self._contexts,
            pending_resolutions=len(self._pending),
            retransmissions_sent=txn.retransmissions_sent,
            retransmissions_absorbed=txn.retransmissions_absorbed,
            transactions_client=txn.client,
            transactions_server=txn.server,
        )

    # -- requests ----------------------------------------------------------------------------

    def _receive_request(self, request: Request, source: Peer, now: float) -> None:
        # Methods nobody defined are counted together: a scanner's made-up ones must not grow
        # the counters (and the metrics' label values) without bound.
        known = request.method in KNOWN_METHODS
        self._requests[request.method if known else "other"] += 1
        relay = self._relay
        origin = None if relay is None else relay.origin(request.top_via, source)
        from_overlay = origin is not None
        if origin is None:
            _stamp_received(request, source)
        elif relay is not None and (
            relay.relay_request(request, source) or relay.proxied_twice(request, origin)
        ):
            return
        method = request.method
        if method == "ACK":
            if self.transactions.receive_ack(request, now):
                return
            if request.to_tag == self._nonce:
                # The ACK of a response this node sent statelessly (a refusal): nothing owns it.
                self._drops["ACK of a stateless response"] += 1
                return
            self._forward_ack(request, now, from_overlay=from_overlay)
            return
        if method == "CANCEL":
            invite = self.transactions.find_server(request, "INVITE")
            if invite is not None:
                self._receive_cancel(request, source, invite, now)
                return
        admission = self._admission
        if (
            admission is not None
            and not from_overlay
            and self.transactions.find_server(request, method) is None
        ):
            verdict = admission.admit(request, source.host, now)
            if verdict is not None:
                self._refuse(request, source, verdict)
                return
        server = self.transactions.receive_request(
            request, self._response_peer(request.top_via, source), now
        )
        if server is None:
            return  # a retransmission, answered by the transaction layer
        if method == "INVITE":
            self._send_response(server, make_response(request, 100), now)
        try:
            problem = self._validate(request)
            if problem is None:
                self._route(server, request, now, origin=origin)
                return
            status, reason = problem
        except RemoteProtocolError as error:
            # A header the routing needs (Route, Via, Proxy-Require) is malformed.
            status, reason = 400, error.reason
        self._respond(server, status, reason, now)

    def _validate(self, request: Request) -> tuple[int, str] | None:
        """§16.3 steps 2-6; returns the error response to send, if any."""
        max_forwards = request.max_forwards
        if max_forwards == 0:
            return 483, "Too Many Hops"
        try:
            uri = parse_uri_untrusted(request.uri)
        except RemoteProtocolError:
            return 400, "Bad Request-URI"
        if not isinstance(uri, (SipUri, TelUri)):
            return 416, "Unsupported URI Scheme"
        if self._is_loop(request):
            return 482, "Loop Detected"
        if "Proxy-Require" in request.headers:
            return 420, "Bad Extension"
        return None

    def _route(
        self, server: Transaction, request: Request, now: float, *, origin: str | None
    ) -> None:
        from_overlay = origin is not None
        if request.method == "REGISTER":
            self._respond_with_allow(server, 405, now)
            return
        dialogs = self.dialogs
        if (
            request.to_tag is not None
            and dialogs is not None
            and dialogs.ended(request.call_id, now)
        ):
            # This edge ended the call (its far edge was lost): answer for the far party.
            if request.method == "BYE":
                self._respond(server, 200, "OK", now)
            else:
                self._respond(server, 481, "Call/Transaction Does Not Exist", now)
            return
        forward = request.copy()
        headers = forward.headers
        headers.remove(OVERLAY_PATH)  # the overlay's own: its path ends here
        # §16.4: a strict router upstream put our Record-Route URI in the Request-URI.
        if "Route" in headers and self._own.names(forward.uri, record_route=True):
            routes = headers.values("Route")
            forward.uri = NameAddr.parse_untrusted(routes[-1]).uri
            headers.remove("Route")
            for value in routes[:-1]:
                headers.add("Route", value)
        self._own.pop_routes(forward)
        target = self._next_hop_target(server, forward, now)
        if target is None:
            return
        apply_target(forward, target)
        direction = self._media_direction(target, from_overlay=from_overlay)
        if direction is not None:
            assert self._media is not None
            try:
                self._media.request(forward, direction, now)
            except MediaRefused as refused:
                self._respond(server, refused.status, refused.reason, now)
                return
        # §16.6 step 3: Max-Forwards.
        max_forwards = request.max_forwards
        headers.set("Max-Forwards", str(69 if max_forwards is None else max_forwards - 1))
        if direction is not None and dialogs is not None and request.to_tag is not None:
            dialogs.request(forward, direction)
        context = _Context(server, forward, target)
        context.media = direction
        context.from_overlay = from_overlay
        context.far_node = origin or ""
        server.owner = context
        self._contexts += 1
        if direction is not None and request.method == "INVITE":
            self._edge_invites.setdefault(request.call_id, []).append(context)
        self._locate_hops(context, forward, target, now)

    def _media_direction(self, target: Target, *, from_overlay: bool) -> MediaDirection | None:
        """Whether the request crosses the overlay's edge here, and which way."""
        if self._media is None:
            return None
        peer = literal_peer(target)
        to_overlay = peer is not None and peer in self._overlay_node_at
        if to_overlay == from_overlay:
            return None  # outside to outside (no overlay), or a node-to-node hop
        return MediaDirection.ENTERING if to_overlay else MediaDirection.LEAVING

    def _next_hop_target(self, server: Transaction, forward: Request, now: float) -> Target | None:
        """§16.5: where the request goes next, or None after answering it here."""
        request = server.request
        route = forward.headers.first_value("Route")
        if route is not None:
            uri = parse_uri_untrusted(NameAddr.parse_untrusted(route).uri)
            if not isinstance(uri, SipUri):
                self._respond(server, 416, "Unsupported URI Scheme in Route", now)
                return None
            if not uri.lr:  # §16.6 step 6: strict-route conversion
                routes = forward.headers.values("Route")
                forward.headers.remove("Route")
                for value in [*routes[1:], f"<{forward.uri}>"]:
                    forward.headers.add("Route", value)
                forward.uri = str(uri)
            return self._route_target(uri)
        uri = parse_uri_untrusted(forward.uri)
        assert isinstance(uri, (SipUri, TelUri))  # checked by _validate
        ours = isinstance(uri, SipUri) and self._own.names(forward.uri)
        if ours and isinstance(uri, SipUri) and uri.user is None:
            self._answer_locally(server, request, now)
            return None
        target = self._request_uri_target(forward, uri, ours=ours)
        if target is None:
            self._respond(server, 404, "Not Found", now)
        elif isinstance(target, Refusal):
            if request.method == "INVITE" and request.to_tag is None:
                self._events.append(CallRefused(request.call_id, target.status, target.reason))
            self._respond(server, target.status, target.reason, now, retry_after=target.retry_after)
            return None
        return target

    def _route_target(self, uri: SipUri) -> Target:
        """The next hop a Route names. One an overlay node Record-Routed (``ovl=<node id>``)
        is reached at that node's configured address, whatever address it showed the world
        (``Listener.advertise``): between overlay nodes the hop is theirs."""
        relay = self._relay
        node = None if relay is None else uri.param("ovl")
        if relay is not None and node is not None and node in relay.peers:
            address = relay.peers[node]
            return Target(address.host, address.port, address.transport)
        return uri_target(uri)

    def _request_uri_target(
        self, forward: Request, uri: SipUri | TelUri, *, ours: bool
    ) -> Target | Refusal | None:
        """§16.5 without a Route: the remote target of a dialog, else the dialplan.

        A Request-URI naming this node (with a user part) goes to the dialplan even inside a
        dialog: peers that ignore Record-Route send their ACK and BYE to the proxy's address.
        """
        if forward.to_tag is not None and isinstance(uri, SipUri) and not ours:
            return uri_target(uri)
        return self._locate(forward, uri)

    def _answer_locally(self, server: Transaction, request: Request, now: float) -> None:
        if request.method == "OPTIONS":
            response = make_response(request, 200, to_tag=self._nonce)
            response.headers.add("Allow", ALLOWED_METHODS)
            response.headers.add("Accept", "application/sdp")
            response.headers.add("Server", self.config.user_agent)
            self._send_response(server, response, now)
        elif request.method not in KNOWN_METHODS:
            self._respond_with_allow(server, 501, now)
        else:
            self._respond(server, 404, "Not Found", now)

    def _respond_with_allow(self, server: Transaction, status: int, now: float) -> None:
        """501 or 405, which carry the methods this node handles (§21.4.6, §21.5.2)."""
        response = make_response(server.request, status, to_tag=self._nonce)
        response.headers.add("Allow", ALLOWED_METHODS)
        self._generated[status] += 1
        self._send_response(server, response, now)

    def _locate_hops(self, context: _Context, forward: Request, target: Target, now: float) -> None:
        peer = literal_peer(target)
        if peer is not None and target.await_route is None:
            self._add_next_hops(context, [peer], now)
            return
        token = next(self._tokens)
        self._pending[token] = (context, forward)
        self._events.append(ResolveTarget(token, target, forward.call_id))

    def _add_next_hops(self, context: _Context, peers: Sequence[Peer], now: float) -> None:
        """Try ``peers`` in order, leaving out those a sips: request must not be sent to."""
        allowed = [peer for peer in peers if self._secure_enough(context.forward, peer)]
        if not allowed:
            # RFC 3261 §26.2.2, RFC 5630 §3.1.3 and §5.3: never downgrade a sips: request.
            self._sips_refused += 1
            context.replied = True
            warning = f'380 {self._listener_for("tls").hostport} "SIPS Not Allowed"'
            self._respond(
                context.server, 480, "SIPS Not Allowed", now, context.media, warning=warning
            )
            return
        health = self._health
        if health is not None and len(allowed) > 1:
            overlay = self._overlay_node_at
            if not any(peer in overlay for peer in allowed):
                allowed = health.order(allowed, now)
        context.next_hops.extend(allowed)
        self._try_next_hop(context, now)

    def _secure_enough(self, request: Request, peer: Peer) -> bool:
        """Whether ``request`` may go to ``peer``: a sips: one over TLS only, or to another
        overlay node (the overlay is one logical hop, carried over UDP: docs/security.md)."""
        if peer.transport == "tls" or peer in self._overlay_node_at:
            return True
        return not _is_sips_request(request)

    def _try_next_hop(self, context: _Context, now: float) -> None:
        """Send on a new client transaction to the next hop in the list."""
        peer = context.next_hops.popleft()
        context.attempts += 1
        request = self._prepare(context, peer)
        context.provisional = False
        branch = self.transactions.send_request(request, peer, now)
        branch.owner = context
        context.branch = branch
        if request.method == "INVITE":
            self._arm_timer_c(context, now)
            self._arm_fr(context, now)

    def _move_on(self, context: _Context, cause: str, now: float, *, next_hop: bool) -> bool:
        """Try the next hop (when ``next_hop``: RFC 3263 §4.3), else the next egress; False
        when there is neither."""
        if next_hop and context.next_hops:
            self._try_next_hop(context, now)
        elif context.alternates and not context.next_hops:
            self._fail_over(context, cause, now)
        else:
            return False
        return True

    def _fail_over(self, context: _Context, cause: str, now: float) -> None:
        """Send the call to its next egress node: the same request, another pushed Route."""
        target = context.alternates.popleft()
        context.next_hops.clear()
        forward = context.forward
        if context.route is not None and forward.headers.first_value("Route") == context.route:
            forward.headers.pop_first_value("Route")
        apply_target(forward, target)
        failed = context.egress or ""
        context.egress, context.route = target.egress, target.route
        context.egress_tries += 1
        self._failovers[cause] += 1
        self._events.append(
            EgressFailedOver(
                forward.call_id, failed, target.egress or "", cause, context.egress_tries
            )
        )
        self._locate_hops(context, forward, target, now)

    def _abandon_branch(self, context: _Context, branch: Transaction, now: float) -> None:
        """Leave ``branch`` for the next hop: it stops retransmitting, and its late answers
        reach ``_late_response``."""
        self.transactions.abandon(branch, now)
        branch.owner = _Abandoned(context)
        context.branch = None
        context.fr_gen = 0

    def _fr_fired(self, context: _Context, now: float) -> None:
        branch = context.branch
        if context.replied or context.cancelled or branch is None:
            return
        if branch.state is not State.CALLING or not (context.next_hops or context.alternates):
            return  # answered, if only with 100; or nowhere else to go: Timer B decides
        self._drops["next hop silent past fr"] += 1
        self._abandon_branch(context, branch, now)
        self._move_on(context, "no answer", now, next_hop=True)

    def _prepare(self, context: _Context, peer: Peer) -> Request:
        """A copy of the request to forward with Record-Route and our Via for ``peer``."""
        received = context.server.request
        out = context.forward.copy()
        headers = out.headers
        listener = self._listener_for(peer.transport)
        if self.config.record_route and out.method in DIALOG_CREATING and received.to_tag is None:
            sips = _is_sips_request(out)
            inbound = self._listener_for(received.top_via.transport.lower())
            if inbound != listener:  # RFC 5658 double Record-Route
                headers.insert_first("Record-Route", inbound.record_route(self._mark, sips=sips))
            headers.insert_first("Record-Route", listener.record_route(self._mark, sips=sips))
        branch = f"{MAGIC_COOKIE}{self._loop_hash(received)}.{self._branch_id(context)}"
        headers.insert_top_via(*_own_via(peer, listener, branch, self._mark))
        return out

    def _branch_id(self, context: _Context) -> str:
        """The unique part of a forwarded request's branch (§16.6 step 8): for an incoming
        request with an RFC 3261 branch, a hash of what identifies its transaction and of the
        attempt, so the two members of a pair forward a retransmission that reaches the
        standby after a takeover on the branch the active used, and the next hop absorbs it
        as one (no 481 for a BYE the active had forwarded). Random otherwise (RFC 2543)."""
        key = context.server.key
        if key[0] == "2543":
            return f"{self._nonce}{next(self._branches):x}"
        request = context.server.request
        seed = "\0".join(
            (self._nonce, *key, request.call_id, str(request.cseq.number), str(context.attempts))
        )
        return hashlib.blake2b(seed.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()

    def _receive_cancel(
        self, cancel: Request, source: Peer, invite: Transaction, now: float
    ) -> None:
        """§16.10: answer the CANCEL, then cancel the pending branch."""
        server = self.transactions.receive_request(
            cancel, self._response_peer(cancel.top_via, source), now
        )
        if server is None:
            return
        self._send_response(server, make_response(cancel, 200), now)
        context = invite.owner
        if not isinstance(context, _Context) or context.replied:
            return
        context.cancelled = True
        if context.branch is None:  # still resolving
            self._reply(context, 487, "Request Terminated", now)
        elif context.provisional:
            self._send_cancel(context, now)
        else:
            context.cancel_pending = True  # §9.1: wait for a provisional response

    def _send_cancel(self, context: _Context, now: float) -> None:
        branch = context.branch
        assert branch is not None
        self._cancel_branch(branch, now)
        context.cancel_pending = False

    def _cancel_branch(self, branch: Transaction, now: float) -> None:
        """§9.1: a CANCEL for the INVITE of ``branch``, on its own owner-less transaction."""
        invite = branch.request
        cancel = Request("CANCEL", invite.uri, invite.headers.copy())
        headers = cancel.headers
        for name in ("Record-Route", "Contact", "Content-Type", "Content-Length"):
            headers.remove(name)
        via = headers.values("Via")[0]
        headers.remove("Via")
        headers.insert_first("Via", via)
        headers.set("CSeq", f"{invite.cseq.number} CANCEL")
        txn = self.transactions.send_request(cancel, branch.peer, now)
        txn.owner = None

    def _forward_ack(self, ack: Request, now: float, *, from_overlay: bool) -> None:
        """An ACK for a 2xx: routed like any in-dialog request, without a transaction. At an
        edge the media hook sees it: it carries the answer to a delayed offer."""
        forward = ack.copy()
        forward.headers.remove(OVERLAY_PATH)
        self._own.pop_routes(forward)
        route = forward.headers.first_value("Route")
        max_forwards = ack.max_forwards
        if max_forwards == 0:
            self._drops["ACK with Max-Forwards 0"] += 1
            return
        target: Target | Refusal | None
        try:
            if route is not None:
                uri = parse_uri_untrusted(NameAddr.parse_untrusted(route).uri)
                target = self._route_target(uri) if isinstance(uri, SipUri) else None
            else:
                uri = parse_uri_untrusted(forward.uri)
                target = None
                if isinstance(uri, (SipUri, TelUri)):
                    ours = isinstance(uri, SipUri) and self._own.names(forward.uri)
                    target = self._request_uri_target(forward, uri, ours=ours)
        except RemoteProtocolError:
            target = None
        if not isinstance(target, Target):
            self._drops["ACK without a route"] += 1
            return
        apply_target(forward, target)
        direction = self._media_direction(target, from_overlay=from_overlay)
        if direction is not None:
            assert self._media is not None
            self._media.request(forward, direction, now)
        forward.headers.set("Max-Forwards", str(69 if max_forwards is None else max_forwards - 1))
        peer = literal_peer(target)
        if peer is not None and target.await_route is None:
            self._send_stateless_request(forward, peer)
            return
        token = next(self._tokens)
        self._pending[token] = (None, forward)
        self._events.append(ResolveTarget(token, target, forward.call_id))

    def _send_stateless_request(self, request: Request, peer: Peer) -> None:
        if not self._secure_enough(request, peer):
            self._drops["sips ACK to a non-TLS next hop"] += 1
            return
        listener = self._listener_for(peer.transport)
        # Stateless branch (§16.11): derived from the incoming one so retransmissions match.
        incoming = request.top_via.branch or ""
        branch = f"{MAGIC_COOKIE}{self._loop_hash(request)}.s{zlib.crc32(incoming.encode()):x}"
        # The request is this core's own copy (``_forward_ack``): changed in place.
        request.headers.insert_first("Via", _via(peer, listener, branch + self._mark))
        self._send(serialize(request), peer)

    # -- responses ---------------------------------------------------------------------------

    def _receive_response(self, response: Response, source: Peer, now: float) -> None:
        self._responses[f"{response.status // 100}xx"] += 1
        relay = self._relay
        sender = None if relay is None else relay.sender(response.top_via, source)
        if sender is not None:
            assert relay is not None
            relay.relay_response(response, sender, source)
            return
        branch = self.transactions.receive_response(response, now)
        if branch is None:
            # Absorbed retransmission or stray. A stray 2xx retransmission for an INVITE whose
            # transactions ended is still owed to the caller (RFC 6026 covers the rest).
            return
        context = branch.owner
        if isinstance(context, _Abandoned):
            self._late_response(context, branch, response, now)
            return
        if not isinstance(context, _Context) or context.branch is not branch:
            return  # a response to our CANCEL, or to a branch we gave up on
        status = response.status
        upstream = response.copy()
        upstream.headers.pop_first_value("Via")
        if "Via" not in upstream.headers:
            self._drops["response addressed to this node"] += 1
            return
        if status < 200:
            context.provisional = True
            if branch.kind is Kind.INVITE_CLIENT:
                self._arm_timer_c(context, now)
            if context.cancel_pending:
                self._send_cancel(context, now)
            if status != 100 and not context.replied:
                self._send_upstream(context, upstream, now)
            return
        context.timer_c_gen = context.fr_gen = 0
        if status < 300:
            self._forward_success(context, upstream, now, branch.peer)
            return
        if (
            status in (408, 503)
            and not (context.cancelled or context.replied)
            and self._move_on(context, str(status), now, next_hop=status == 503)
        ):
            return
        if context.replied:
            return
        if context.timed_out and status == 487:
            self._reply(context, 408, "Request Timeout", now)
        elif status == 503:
            # §16.7 step 6, except toward the ingress: the overlay is one hop, and it fails over.
            self._reply(context, 503 if context.from_overlay else 500, "Next Hop Unavailable", now)
        else:
            context.replied = True
            self._send_upstream(context, upstream, now)

    def _late_response(
        self, abandoned: _Abandoned, branch: Transaction, response: Response, now: float
    ) -> None:
        """A response on a branch its context moved on from: a 1xx draws a CANCEL (now
        allowed, §9.1), a 2xx still goes upstream (§16.7 step 5); an error is absorbed."""
        status = response.status
        if status < 200:
            if not abandoned.cancelled:
                abandoned.cancelled = True
                self._cancel_branch(branch, now)
            return
        if status < 300:
            upstream = response.copy()
            upstream.headers.pop_first_value("Via")
            if "Via" not in upstream.headers:
                return
            self._late_answers += 1
            context = abandoned.context
            if not context.replied and context.branch is not None:
                # §16.7 step 10: answered; the branch that replaced this one is cancelled.
                context.alternates.clear()
                context.next_hops.clear()
                if context.provisional:
                    self._send_cancel(context, now)
                else:
                    context.cancel_pending = True
            self._forward_success(context, upstream, now, branch.peer)

    def _send_upstream(self, context: _Context, upstream: Response, now: float) -> None:
        """Forward a response on the server transaction, past the media hook at an edge."""
        self._show_media(context, upstream, now)
        self._send_response(context.server, upstream, now)

    def _show_media(self, context: _Context, upstream: Response, now: float) -> None:
        if context.media is not None:
            assert self._media is not None
            self._media.response(upstream, context.media.reverse(), now)

    def _forward_success(
        self, context: _Context, upstream: Response, now: float, source: Peer
    ) -> None:
        """Every 2xx goes upstream, even after another final response (§16.7 step 5). At an
        edge the first one of a call goes in the dialog book."""
        server = context.server
        context.replied = True
        dialogs, request = self.dialogs, server.request
        if (
            dialogs is not None
            and context.media is not None
            and request.method == "INVITE"
            and request.to_tag is None
        ):
            dialogs.answered(
                request,
                upstream,
                context.media,
                far_node=context.far_node or context.egress or "",
                invite_peer=server.peer,
                answer_peer=source,
            )
        if server.state in (State.PROCEEDING, State.TRYING, State.ACCEPTED):
            self._send_upstream(context, upstream, now)
            return
        self._show_media(context, upstream, now)
        via = upstream.top_via
        self._send(serialize(upstream), self._response_peer(via, server.peer))

    def _drain_transaction_events(self, now: float) -> None:
        events = self.transactions.events
        while events:
            batch = events[:]
            events.clear()
            for event in batch:
                if isinstance(event, TransactionTimeout):
                    self._on_timeout(event, now)
                else:
                    txn = event.transaction
                    if isinstance(txn.owner, _Context) and txn is txn.owner.server:
                        self._contexts -= 1
                        self._forget_edge_invite(txn.owner)
                    # Break the transaction <-> context cycle so reference counting frees
                    # both: the node runs with the cyclic collector's full passes off.
                    txn.owner = None

    def _on_timeout(self, event: TransactionTimeout, now: float) -> None:
        txn = event.transaction
        context = txn.owner
        if not isinstance(context, _Context) or context.branch is not txn:
            return  # a server transaction without ACK, or a CANCEL that got no answer
        context.timer_c_gen = 0
        if context.replied:
            return
        if context.cancelled:
            self._reply(context, 487, "Request Terminated", now)
        elif self._move_on(context, "timeout", now, next_hop=True):
            self._drops["next hop timeout" if not event.transport_error else "next hop down"] += 1
        elif txn.request.method != "INVITE":
            # RFC 4320 §4.2: no 408 for non-INVITE; the upstream times out on its own.
            context.replied = True
            self.transactions.abandon(context.server, now)
        elif event.transport_error:
            self._reply(context, 503, "Next Hop Unreachable", now)
        else:
            self._reply(context, 408, "Request Timeout", now)

    # -- Timer C (§16.6 step 11, §16.8) ------------------------------------------------------

    def _arm_timer_c(self, context: _Context, now: float, seconds: float | None = None) -> None:
        gen = next(self._timer_seq)
        context.timer_c_gen = gen
        context.timer_c_at = now + (self.config.timer_c if seconds is None else seconds)
        heapq.heappush(self._timer_heap, (context.timer_c_at, gen, context))

    def _arm_fr(self, context: _Context, now: float) -> None:
        """``fr`` for a branch just sent, when the context has somewhere else to go."""
        if self.config.fr > 0 and (context.next_hops or context.alternates):
            context.fr_gen = gen = next(self._timer_seq)
            heapq.heappush(self._timer_heap, (now + self.config.fr, gen, context))

    def _forget_edge_invite(self, context: _Context) -> None:
        call_id = context.server.request.call_id
        contexts = self._edge_invites.get(call_id)
        if contexts is not None and context in contexts:
            contexts.remove(context)
            if not contexts:
                del self._edge_invites[call_id]

    def _timer_c_fired(self, context: _Context, now: float) -> None:
        if context.replied or context.branch is None:
            return
        context.timed_out = True
        if context.provisional:
            self._send_cancel(context, now)
        else:
            self._reply(context, 408, "Request Timeout", now)

    def _response_peer(self, via: Via, source: Peer) -> Peer:
        """Where a response to ``via`` (received from ``source``) goes: an overlay node at its
        configured address."""
        relay = self._relay
        sender = None if relay is None else relay.sender(via, source)
        if sender is not None:
            assert relay is not None
            return relay.peers[sender]
        return _via_response_peer(via, source)

    # -- helpers -----------------------------------------------------------------------------

    def _send(self, data: bytes, peer: Peer) -> None:
        """Send outside any transaction (stateless forwarding, relaying, stateless answers)."""
        self.transactions.send(data, peer)

    def _respond(
        self,
        server: Transaction,
        status: int,
        reason: str,
        now: float,
        media: MediaDirection | None = None,
        *,
        retry_after: int | None = None,
        warning: str | None = None,
    ) -> None:
        response = make_response(server.request, status, reason, to_tag=self._nonce)
        if retry_after is not None:
            response.headers.add("Retry-After", str(retry_after))
        if warning is not None:
            response.headers.add("Warning", warning)
        if media is not None:
            assert self._media is not None
            self._media.response(response, media.reverse(), now)
        self._generated[status] += 1
        self._send_response(server, response, now)

    def _reply(
        self,
        context: _Context,
        status: int,
        reason: str,
        now: float,
        *,
        retry_after: int | None = None,
    ) -> None:
        context.replied = True
        self._respond(context.server, status, reason, now, context.media, retry_after=retry_after)

    def _send_response(self, server: Transaction, response: Response, now: float) -> None:
        if self._admission is not None and 400 <= response.status < 500:
            self._admission.answered(server.peer.host, response.status, now)
        self.transactions.send_response(server, response, now)

    def _refuse(self, request: Request, source: Peer, verdict: Reject) -> None:
        """Answer a request edge security refused, statelessly (RFC 3261 §16.11): a flood must
        not leave a transaction behind per request, nor make this node retransmit to it."""
        if verdict.status is None:
            return
        response = make_response(request, verdict.status, verdict.reason, to_tag=self._nonce)
        if verdict.retry_after is not None:
            response.headers.add("Retry-After", str(verdict.retry_after))
        self._generated[verdict.status] += 1
        self._send(serialize(response), _via_response_peer(request.top_via, source))

    def _reject_unparseable(self, error: RemoteProtocolError, source: Peer, now: float) -> None:
        self._drops[error.reason] += 1
        response = make_error_response(error)
        if response is None:
            return
        if self._admission is not None and 400 <= response.status < 500:
            self._admission.answered(source.host, response.status, now)
        self._generated[response.status] += 1
        self._send(serialize(response), source)

    def _listener_for(self, transport: str) -> Listener:
        listener = self._by_transport.get(transport)
        return listener if listener is not None else self.config.listeners[0]

    def _loop_hash(self, request: Request) -> str:
        """§16.6 step 8: the fields whose change makes a returning request a spiral."""
        key = "\0".join(
            (
                request.uri,
                request.from_tag or "",
                request.to_tag or "",
                request.call_id,
                str(request.cseq.number),
                request.headers.get("Route") or "",
                request.headers.get("Proxy-Require") or "",
            )
        )
        return f"{zlib.crc32(key.encode('utf-8', 'surrogateescape')):08x}"

    def _is_loop(self, request: Request) -> bool:
        """§16.3 step 4: a Via of ours with the loop hash this request would get again."""
        marker = None  # the loop hash, computed only for a Via that may be ours
        addresses = self._own.addresses
        for index, value in enumerate(request.headers.values("Via")):
            if MAGIC_COOKIE not in value:  # cheap text test first: most Vias are not ours
                continue
            if index == 0:
                top = request.top_via  # parsed already
                if (host_bare(top.host), top.port or 5060) not in addresses:
                    continue
            if marker is None:
                marker = MAGIC_COOKIE + self._loop_hash(request)
            if marker not in value:
                continue
            via = Via.parse_untrusted(value)
            ours = (host_bare(via.host), via.port or 5060) in addresses
            if ours and (via.branch or "").startswith(marker):
                return True
        return False


def _handover(context: _Context, now: float) -> InviteHandover:
    server, branch = context.server, context.branch
    return InviteHandover(
        call_id=server.request.call_id,
        server_key=server.key,
        server_peer=server.peer,
        request=serialize(server.request),
        last_response=server.last_response,
        last_status=server.last_status,
        forward=serialize(context.forward),
        media=None if context.media is None else context.media.value,
        from_overlay=context.from_overlay,
        far_node=context.far_node,
        egress=context.egress,
        route=context.route,
        alternates=tuple(context.alternates),
        next_hops=tuple(context.next_hops),
        attempts=context.attempts,
        egress_tries=context.egress_tries,
        branch=None if branch is None else branch.request_bytes,
        branch_peer=None if branch is None else branch.peer,
        provisional=context.provisional,
        replied=context.replied,
        cancelled=context.cancelled,
        timer_c_left=max(0.0, context.timer_c_at - now) if context.timer_c_gen else None,
    )


def _stamp_received(request: Request, source: Peer) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: note where the request really came from."""
    via = request.top_via
    updated = via
    if host_bare(via.host) != source.host:
        updated = updated.with_param("received", source.host)
    if via.has_param("rport") and not via.param("rport"):
        updated = updated.with_param("rport", str(source.port))
    if updated is not via:
        request.headers.replace_first_value("Via", str(updated))


def _via_response_peer(via: Via, fallback: Peer) -> Peer:
    """§18.2.2 and RFC 3581: where a response to ``via`` goes."""
    transport = via.transport.lower()
    host = via.param("received") or host_bare(via.host)
    rport = via.param("rport")
    port = int(rport) if rport else via.port or DEFAULT_PORTS.get(transport, 5060)
    if transport != "udp":
        return fallback
    return Peer("udp", host, port)


def _is_sips_request(request: Request) -> bool:
    """Whether the Request-URI or the next Route is a sips: URI: then every hop is TLS."""
    if request.uri[:5].lower() == "sips:":
        return True
    route = request.headers.first_value("Route")
    return route is not None and NameAddr.parse_untrusted(route).uri[:5].lower() == "sips:"


def _via(peer: Peer, listener: Listener, branch: str) -> str:
    """Our Via for a request to ``peer``: the transport it really goes over (§18.1.1)."""
    return f"SIP/2.0/{peer.transport.upper()} {listener.hostport};branch={branch}"


def _own_via(peer: Peer, listener: Listener, branch: str, mark: str) -> tuple[str, Via]:
    """``_via`` with ``mark``'s parameters after the branch, and the Via it parses to: the
    parse of its fixed parts is remembered (the branch, a token, is the only new part)."""
    text = _via(peer, listener, branch + mark)
    template = _via_template(peer.transport, listener, mark)
    params = (("branch", branch), *template.params[1:])
    return text, Via(template.transport, template.host, template.port, params)


@functools.lru_cache(maxsize=64)
def _via_template(transport: str, listener: Listener, mark: str) -> Via:
    return Via.parse_untrusted(_via(Peer(transport, "", 0), listener, "z9hG4bK" + mark))


def _safe_reason(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:120]
