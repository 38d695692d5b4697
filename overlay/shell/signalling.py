"""The signalling pump: the one loop between the SIP sockets and the proxy core.

Everything runs on the node's trio thread. The transport hands each message to ``_deliver``
(a link probe goes to the mesh instead, an answer to a trunk probe to the ``TrunkProber``);
the proxy core decides everything else itself: the dialplan and the egress of a new call
(``overlay.routing.CallRouter``), the media hook, edge security. ``_flush`` then sends what
the core produced, each message for an overlay node to the current next hop toward it
(``RouteView.forward_address``), passes the media plane's commands to the relay, and acts on
the core's events before the next message is read:

* ``ResolveTarget``: an RFC 3263 lookup, or a wait for a route to an egress node
  (``linkstate.route_wait``), each in its own task, answered back into the core;
* ``CallRefused``: a new call the dialplan's answer refused, logged and published to the NOC
  as a failed call;
* ``EgressFailedOver``: a new call handed to the next egress of its rule, logged and published;
* ``OverlayAnomaly``: a message a routing loop caught, logged.

Last, ``replicate`` (a pair member's ``PairReplication.flush``) sends the standby what the turn
changed, without waiting.

The timer task sleeps until the core's next deadline; ``_flush`` wakes it early when a new
deadline comes before the one it sleeps on. When the mesh moves the path toward some nodes,
``rerouted`` resends their pending requests at once, and fails the calls whose egress it lost
over to their next egress.

SIP over TLS (``[sip.tls]``): when ``_resolve`` locates a TLS target by name, it tells the
transport to check the certificates of the connections it opens to the addresses found against
that name (RFC 5922 §7.2); a target given as an IP address is checked against the address.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from overlay.config import NodeConfig
from overlay.linkstate import PROBE_MARK
from overlay.noc import CallFailed, CallFailedOver, CallTracker, EventSink
from overlay.routing import TRUNK_MARK, RouteView
from overlay.shell.media import MediaPlane, WorkerMedia
from overlay.shell.security import EdgeSecurity
from overlay.shell.transport import (
    BoundSocket,
    Impairments,
    ResolutionError,
    SipResolver,
    SipTransport,
    Steering,
    TransportStatistics,
)
from overlay.shell.trunks import TrunkProber
from overlay.sip import (
    ANOMALY_KINDS,
    CallRefused,
    EgressFailedOver,
    OverlayAnomaly,
    Peer,
    ProxyCore,
    ProxyStatistics,
    Refusal,
    ResolveTarget,
    TransactionStatistics,
    call_id_untrusted,
)
from overlay.tls import TlsContexts

log = structlog.get_logger("overlay.node")

STATISTICS_INTERVAL = 60.0  # seconds between statistics log lines


@dataclass(frozen=True, slots=True)
class SignallingStatistics:
    proxy: ProxyStatistics
    transport: TransportStatistics


class OverlayLinks(Protocol):
    """The overlay's link state as the pump asks it: the node's ``Mesh``, or on an overlay
    node's worker other than the owner, its ``WorkerLink`` (``overlay.shell.workerlink``)."""

    def handle_probe(self, data: bytes, source: Peer) -> bool: ...

    async def wait_reachable(self, node_id: str, *, until: float) -> bool: ...


class SignallingPump:
    """The SIP side of one node: its transport and proxy core; see the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        core: ProxyCore,
        *,
        tls: TlsContexts,
        steering: Steering | None,
        impairments: Impairments | None,
        security: EdgeSecurity | None,
        media: MediaPlane | WorkerMedia | None,
        mesh: OverlayLinks | None,
        view: RouteView | None,
        events: EventSink,
        resolver: SipResolver | None = None,
        trunks: TrunkProber | None = None,
        calls: CallTracker | None = None,
        replicate: Callable[[], None] | None = None,
    ) -> None:
        sip = config.sip
        self.core = core
        self._calls = calls
        self._replicate = replicate
        self.internal_errors = 0
        self._worker = 0 if steering is None else steering.index
        self._route_wait = config.linkstate.route_wait
        self._media = media
        self._mesh = mesh
        self._view = view
        self._events = events
        self._resolver = SipResolver(config.dns) if resolver is None else resolver
        self._trunks = trunks
        self.transport = SipTransport(
            deliver=self._deliver,
            transport_error=self._transport_error,
            max_message_size=sip.max_message_size,
            tcp_idle_timeout=sip.tcp_idle_timeout,
            tcp_connect_timeout=sip.tcp_connect_timeout,
            steering=steering,
            impairments=impairments,
            backlog=None if security is None else security.backlog,
            tls=tls,
            admit_connection=None
            if security is None or security.guard is None
            else security.admit_connection,
            # Link probes never wait behind SIP work: a busy node must not partition itself.
            urgent=_is_probe if mesh is not None else None,
        )
        # Lookups and route waits the core asked for, each run in a task of ``run``'s nursery.
        self._lookups_in, self._lookups_out = trio.open_memory_channel[ResolveTarget](math.inf)
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    async def run(
        self,
        bound: Sequence[BoundSocket],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``bound`` until cancelled; reported started once the transport reads them."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.serve, list(bound))
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._log_statistics)
            task_status.started()
            async for event in self._lookups_out:
                nursery.start_soon(self._resolve, event)

    def rerouted(self, peers: list[Peer], lost: list[str], restarted: list[str]) -> None:
        """The mesh moved the path toward ``peers`` (resend their pending requests now), lost
        every route to the nodes ``lost`` (their calls go to their next egress), and saw the
        nodes ``restarted`` come back without their calls (ours with them end now)."""
        resent = self.core.retransmit_toward(peers)
        if resent:
            log.info("resent pending requests over new paths", requests=resent)
        if lost:
            self.core.overlay_nodes_lost(lost, trio.current_time())
        if restarted:
            self.core.overlay_nodes_lost(restarted, trio.current_time(), restarted=True)
        if self._media is not None and self._view is not None:
            self._media.set_routes(self._view.table.next_hops())
        self._flush()

    def statistics(self) -> SignallingStatistics:
        return SignallingStatistics(self.core.statistics(), self.transport.statistics())

    def counters(self) -> dict[str, int]:
        """The SIP side's counters, by dotted name (see control.proto)."""
        stats = self.statistics()
        proxy = stats.proxy
        counters = {
            "sip.retransmissions_sent": proxy.retransmissions_sent,
            "sip.retransmissions_absorbed": proxy.retransmissions_absorbed,
            "sip.detoured_retransmissions": proxy.detoured,
            "sip.transactions_client": proxy.transactions_client,
            "sip.transactions_server": proxy.transactions_server,
            "sip.contexts": proxy.contexts,
            "node.internal_errors": self.internal_errors,
            "transport.tcp_connections": stats.transport.tcp_connections,
            "transport.tls_connections": stats.transport.tls_connections,
            "sip.sips_refused": proxy.sips_refused,
            "sip.late_answers": proxy.late_answers,
            "sip.calls_ended_far_edge": proxy.calls_ended,
            "sip.dialogs": proxy.dialogs,
        }
        groups: dict[str, dict[str, int]] = {
            "sip.requests": proxy.requests,
            "sip.responses": proxy.responses,
            "sip.relayed": proxy.relayed,
            "overlay.anomalies": proxy.anomalies,
            "sip.drops": proxy.drops,
            "sip.generated": {str(status): n for status, n in proxy.generated.items()},
            "sip.egress_failovers": {c.replace(" ", "_"): n for c, n in proxy.failovers.items()},
            "transport": stats.transport.counters,
        }
        for prefix, group in groups.items():
            counters.update({f"{prefix}.{name}": n for name, n in group.items()})
        counters.update(_call_counters(self.core.transactions.statistics()))
        return counters

    # -- input -------------------------------------------------------------------------------

    def _deliver(self, data: bytes, peer: Peer) -> None:
        mesh = self._mesh
        if mesh is not None and PROBE_MARK in data and mesh.handle_probe(data, peer):
            return
        trunks = self._trunks
        if trunks is not None and TRUNK_MARK in data and trunks.handle_answer(data, peer):
            return
        try:
            self.core.receive_data(data, peer, trio.current_time())
        except Exception:
            # A bug must cost one message, not the node and every call on it.
            self.internal_errors += 1
            log.exception("internal error handling a message", host=peer.host, port=peer.port)
        self._flush()

    def _transport_error(self, peer: Peer) -> None:
        self.core.transport_error(peer, trio.current_time())
        self._flush()

    # -- output ------------------------------------------------------------------------------

    def _flush(self) -> None:
        core = self.core
        send = self.transport.send
        view = self._view
        for data, peer in core.datagrams_to_send():
            if view is not None:
                hop = view.forward_address(peer)
                if hop is None:
                    _log_unroutable(data, peer)
                    continue
                peer = hop
            send(data, peer)
        if self._media is not None:
            self._media.apply()
        while (event := core.next_event()) is not None:
            if isinstance(event, ResolveTarget):
                self._lookups_in.send_nowait(event)
            elif isinstance(event, CallRefused):
                self._refused(event)
            elif isinstance(event, EgressFailedOver):
                self._failed_over(event)
            else:
                _log_anomaly(event)
        if self._replicate is not None:
            self._replicate()
        deadline = core.get_timer()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()

    def _refused(self, event: CallRefused) -> None:
        """A refused new call is a failed call for the NOC (its INVITE never left); one the
        operator did not ask for (no route, every egress draining) is a warning."""
        self._events(CallFailed(event.call_id, "", event.status, event.reason))
        emit = log.info if event.reason == "Draining" else log.warning
        emit("call refused", call_id=event.call_id, status=event.status, reason=event.reason)

    def _failed_over(self, event: EgressFailedOver) -> None:
        log.warning(
            "call failed over to the next egress",
            call_id=event.call_id,
            failed=event.failed,
            egress=event.egress,
            cause=event.cause,
            attempt=event.attempt,
        )
        self._events(
            CallFailedOver(event.call_id, event.failed, event.egress, event.cause, event.attempt)
        )
        if self._calls is not None:
            self._calls.failed_over(event.call_id, event.egress, event.attempt, trio.current_time())

    # -- lookups -----------------------------------------------------------------------------

    async def _resolve(self, event: ResolveTarget) -> None:
        core = self.core
        target = event.target
        if target.await_route is not None:
            await self._await_route(event, target.await_route)
            return
        try:
            resolved = await self._resolver.resolve(
                (target.scheme, target.host, target.port, target.transport)
            )
        except ResolutionError as exc:
            log.info("resolution failed", host=target.host, reason=str(exc))
            core.resolution_failed(event.token, str(exc), trio.current_time())
        except Exception:
            # As in _deliver: a bug costs this request (answered 404), never the node.
            self.internal_errors += 1
            log.exception("internal error resolving a target", host=target.host)
            core.resolution_failed(event.token, "internal error", trio.current_time())
        else:
            peers = [Peer(r.transport, r.host, r.port) for r in resolved]
            for peer in peers:
                if peer.transport == "tls" and peer.host != target.host:
                    self.transport.verify_as(peer, target.host)
            core.resolved(event.token, peers, trio.current_time())
        self._flush()

    async def _await_route(self, event: ResolveTarget, egress: str) -> None:
        """Hold a request for ``egress`` until the mesh has a route to it, or refuse it."""
        core, mesh = self.core, self._mesh
        assert mesh is not None  # only an overlay node's router waits for routes
        waited = self._route_wait
        log.info("no route to egress: call waits", call_id=event.call_id, egress=egress)
        if await mesh.wait_reachable(egress, until=trio.current_time() + waited):
            target = event.target
            peer = Peer(target.transport or "udp", target.host, target.port or 5060)
            core.resolved(event.token, [peer], trio.current_time())
        else:
            refusal = Refusal(503, "No Route to Egress")
            log.warning(
                "call refused",
                call_id=event.call_id,
                status=503,
                reason=refusal.reason,
                waited_s=waited,
            )
            core.resolution_failed(event.token, "no route", trio.current_time(), refusal=refusal)
        self._flush()

    # -- time --------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        core = self.core
        while True:
            deadline = core.get_timer()
            self._sleeping_until = math.inf if deadline is None else deadline
            self._wake = trio.Event()
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            self._sleeping_until = math.inf
            core.handle_timer(trio.current_time())
            self._flush()

    async def _log_statistics(self) -> None:
        """A periodic summary line, for logs read without the Control service."""
        while True:
            await trio.sleep(STATISTICS_INTERVAL)
            stats = self.statistics()
            proxy = stats.proxy
            log.info(
                "statistics",
                worker=self._worker,
                requests=proxy.requests,
                responses=proxy.responses,
                generated=proxy.generated,
                drops=proxy.drops,
                transactions_client=proxy.transactions_client,
                transactions_server=proxy.transactions_server,
                retransmissions_sent=proxy.retransmissions_sent,
                retransmissions_absorbed=proxy.retransmissions_absorbed,
                transport=stats.transport.counters,
                tcp_connections=stats.transport.tcp_connections,
                tls_connections=stats.transport.tls_connections,
                internal_errors=self.internal_errors,
            )


def _is_probe(data: bytes) -> bool:
    """Whether a datagram may be a link probe or its answer (``Mesh.handle_probe`` decides)."""
    return PROBE_MARK in data


def _log_unroutable(data: bytes, peer: Peer) -> None:
    """A message for a node this one has no route to is dropped (its sender's timers retry):
    a warning naming the call, so that a failed call can be traced to here."""
    call_id = call_id_untrusted(data)
    log.warning(
        "no route: message dropped",
        call_id=None if call_id is None else call_id.decode(errors="replace"),
        message=_method_or_status(data),
        host=peer.host,
        port=peer.port,
    )


def _method_or_status(data: bytes) -> str:
    first, _, rest = data[:64].partition(b" ")
    return (rest[:3] if first.startswith(b"SIP/") else first).decode(errors="replace")


def _log_anomaly(event: OverlayAnomaly) -> None:
    """Every message a routing loop caught is a warning; one sent around a loop before it
    could form is worth an info line (tables disagreed, nothing was lost)."""
    emit = log.info if event.kind == "avoided" else log.warning
    emit(
        "overlay loop: " + ANOMALY_KINDS[event.kind],
        kind=event.kind,
        message=event.message,
        call_id=event.call_id,
        destination=event.destination,
        crossed="→".join(event.crossed),
    )


def _call_counters(transactions: TransactionStatistics) -> dict[str, int]:
    """Calls (INVITEs outside a dialog) and ended transactions, by dotted name."""
    answers = transactions.initial_invite_answers
    counters = {
        "sip.calls.offered": transactions.initial_invites,
        "sip.calls.in_setup": transactions.initial_invites_pending,
        "sip.calls.answered": sum(n for status, n in answers.items() if status < 300),
    }
    counters.update({f"sip.calls.failed.{s}": n for s, n in answers.items() if s >= 300})
    for (kind, result), n in transactions.ended.items():
        counters[f"sip.transactions_ended.{kind.name.lower()}.{result}"] = n
    return counters
