"""One overlay node: the trio shell around the sans-IO proxy core.

``Node.serve`` opens one nursery holding the SIP transport, the timer task and one task per
pending DNS lookup. Everything runs on one thread: the transport calls ``_deliver`` for each
message, the core computes, and ``_flush`` sends what the core produced before the next message
is read. The timer task sleeps until the core's next deadline; ``_flush`` wakes it early when a
new deadline comes before the one it sleeps on.

With ``[[peers]]`` the node is an overlay node: the mesh (link state, routes) and the NOC
Control service (``ControlPlane``) run on one gRPC server, mutual TLS unless the configuration
says ``insecure = true``. The proxy's edge hook is then a ``CallTracker`` that keeps the book
of the calls anchored here before passing every message to the media plane. While the node is
draining (``DrainState``, set by the Control service), new INVITEs are refused with 503 and
Retry-After; so are new calls whose egress nodes are all draining (without Retry-After: the
node itself still takes other calls).

With ``[security]`` the core screens every message through the edge guard (``EdgeSecurity``,
docs/security.md), which the transport tells when its receive loop falls behind the socket, and
which screens every TCP and TLS connection's source at accept, before any TLS handshake.

SIP over TLS (``[sip.tls]``, ``overlay.tls._sip``): when ``_resolve`` locates a TLS target by
name, it tells the transport to check the certificates of the connections it opens to the
addresses found against that name (RFC 5922 §7.2); a target given as an IP address is checked
against the address.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import random
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio
import trio.testing

from overlay.config import DnsTarget, NodeConfig, StaticTarget
from overlay.grpc import AccessPolicy, TlsCredentials, open_grpc_bridge
from overlay.linkstate import PROBE_MARK
from overlay.noc import CallFailed, CallTracker
from overlay.routing import Dialplan, choose_egress
from overlay.shell.control import ControlPlane, DrainState, MediaPlaneView
from overlay.shell.events import EventHub
from overlay.shell.media import MediaPlane
from overlay.shell.mesh import Mesh
from overlay.shell.security import EdgeSecurity
from overlay.shell.stall import StallWatchdog
from overlay.shell.telemetry import Telemetry
from overlay.shell.transport import (
    BoundSocket,
    Impairments,
    ResolutionError,
    SipResolver,
    SipTransport,
    Steering,
    TransportStatistics,
    bind_listeners,
)
from overlay.sip import (
    ANOMALY_KINDS,
    Listener,
    MediaHook,
    OverlayAnomaly,
    OverlayNodes,
    OverlayRoutes,
    Peer,
    ProxyConfig,
    ProxyCore,
    ProxyStatistics,
    Refusal,
    Request,
    ResolveTarget,
    SipUri,
    Target,
    TelUri,
    TimerConfig,
    TransactionStatistics,
    call_id_untrusted,
    overlay_route,
)
from overlay.tls import TlsError, load_sip_tls, load_tls

log = structlog.get_logger("overlay.node")

STATISTICS_INTERVAL = 60.0  # seconds between statistics log lines


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    proxy: ProxyStatistics
    transport: TransportStatistics


class Node:
    """A SIP proxy node built from a validated ``NodeConfig``."""

    def __init__(self, config: NodeConfig, *, steering: Steering | None = None) -> None:
        self.config = config
        self._worker = 0 if steering is None else steering.index
        self.internal_errors = 0
        self.listeners: list[Listener] = []
        self._dialplan = Dialplan(config.dialplan)
        self._resolver = SipResolver(config.dns)
        sip = config.sip
        self.impairments: Impairments | None = None
        if config.peers:
            self.impairments = Impairments(
                # Seeded per node: a lab run's losses are reproducible.
                rng=random.Random(config.node.node_id),
                base_delay_ms={peer.node_id: peer.base_delay_ms for peer in config.peers},
                addresses={peer.node_id: [peer.sip] for peer in config.peers},
            )
        self.security = EdgeSecurity.for_config(config)  # None without [security]
        self.events = EventHub(config.node.node_id)
        self.drain = DrainState()  # changed by the Control service only
        self.calls: CallTracker | None = None  # made in serve(), around the media hook
        self._grpc_tls = _grpc_tls(config)
        try:
            sip_tls = load_sip_tls(sip.tls, now=datetime.datetime.now(datetime.UTC))
        except TlsError as exc:
            raise TlsError(f"[sip.tls] {exc}") from None
        self._transport = SipTransport(
            deliver=self._deliver,
            transport_error=self._transport_error,
            max_message_size=sip.max_message_size,
            tcp_idle_timeout=sip.tcp_idle_timeout,
            tcp_connect_timeout=sip.tcp_connect_timeout,
            steering=steering,
            impairments=self.impairments,
            backlog=None if self.security is None else self.security.guard.backlog,
            tls=sip_tls,
            admit_connection=None if self.security is None else self._admit_connection,
            # Link probes never wait behind SIP work: a busy node must not partition itself.
            urgent=_is_probe if config.peers else None,
        )
        self._core: ProxyCore | None = None
        self.mesh: Mesh | None = None
        self.media: MediaPlane | None = None  # made in serve(): it binds the relay's socket
        self.control: ControlPlane | None = None  # made with the mesh's gRPC bridge
        self.telemetry = Telemetry(self, self._worker)
        self.stalls = StallWatchdog()
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    def bind(self) -> list[BoundSocket]:
        """Bind the configured addresses (before forking workers, when there are several).

        Raises:
            OSError: an address cannot be bound.
        """
        return bind_listeners([(a.transport, a.host, a.port) for a in self.config.sip.listen])

    async def serve(
        self,
        bound: list[BoundSocket] | None = None,
        *,
        task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled, on ``bound`` sockets or, by default, on freshly bound ones.

        Reports the listeners (real ports where 0 was configured) via ``task_status``.
        """
        sip = self.config.sip
        if bound is None:
            bound = self.bind()
        self.listeners = [item.listener for item in bound]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._transport.serve, bound)
            if self.config.media is not None:
                self.media = MediaPlane(self.config)
            timers = sip.timers
            self._core = ProxyCore(
                ProxyConfig(
                    listeners=tuple(self.listeners),
                    timers=TimerConfig(t1=timers.t1, t2=timers.t2, t4=timers.t4),
                    timer_c=timers.timer_c,
                    record_route=sip.record_route,
                    user_agent=sip.user_agent,
                    max_message_size=sip.max_message_size,
                    overlay=self._overlay_nodes(),
                ),
                self._locate,
                _MeshRoutes(self) if self.config.peers else None,
                self._edge_hook(),
                admission=None if self.security is None else self.security.guard,
            )
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._log_statistics)
            if self.security is not None:
                nursery.start_soon(self.security.run)
            if self.media is not None:
                await nursery.start(self._run_media, self.media)
            if self.config.peers:
                await nursery.start(self._run_mesh, self._core)
            await nursery.start(self.telemetry.run)
            # Started last: the imports and set-up above are no stall of a serving node. It
            # measures real time: under a test's MockClock it has nothing to measure, and its
            # 10 ms ticks would keep the clock from jumping over minutes of SIP timers.
            if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
                await nursery.start(self.stalls.run)
            log.info(
                "node started",
                node_id=self.config.node.node_id,
                worker=self._worker,
                listeners=len(self.listeners),
            )
            task_status.started(self.listeners)

    async def _run_media(
        self, media: MediaPlane, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The relay's thread for as long as the node runs."""
        media.start()
        try:
            task_status.started()
            await media.run()
        finally:
            media.stop()

    async def _run_mesh(
        self, core: ProxyCore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Link state, flooding and routes; reported started once the gRPC server listens."""
        grpc_section = self.config.grpc
        assert grpc_section is not None
        assert self.impairments is not None
        local = next(item for item in self.listeners if item.transport == "udp")
        access = AccessPolicy(
            self.config.node.node_id,
            [peer.node_id for peer in self.config.peers],
            secure=self._grpc_tls is not None,
        )
        if self._grpc_tls is None:
            log.warning("gRPC without TLS (insecure = true): anyone who reaches it is operator")
        self.mesh = Mesh(
            self.config,
            local_sip=Peer("udp", local.host, local.port),
            send_sip=self._transport.send,
            take_traffic=core.transactions.take_peer_traffic,
            on_reroute=self._rerouted,
            impairments=self.impairments,
            # Wall-clock milliseconds: a restarted node outnumbers its previous LSAs.
            initial_seq=time.time_ns() // 1_000_000,
            now=trio.current_time(),
            echo=self.media,
            events=self.events.publish,
            access=access,
        )
        assert self.calls is not None
        async with open_grpc_bridge(tls=self._grpc_tls) as bridge:
            control = ControlPlane(
                self.config,
                mesh=self.mesh,
                bridge=bridge,
                events=self.events,
                calls=self.calls,
                drain=self.drain,
                access=access,
                counters=self.counters,
                media=None
                if self.media is None
                else MediaPlaneView(
                    self.media.edge.sessions.of_call, self.media.relay, self.media.set_faults
                ),
                # One worker serves an overlay node (sip.workers must be 1 with [[peers]]):
                # this guard holds all of its blocks.
                blocks=None if self.security is None else self.security.guard,
            )
            self.control = control
            port = await bridge.start_server(
                grpc_section.host, grpc_section.port, [*self.mesh.services(), control.service()]
            )
            log.info("grpc listening", host=grpc_section.host, port=port)
            task_status.started()
            await self.mesh.run(bridge)

    def statistics(self) -> NodeStatistics:
        assert self._core is not None
        return NodeStatistics(self._core.statistics(), self._transport.statistics())

    def counters(self) -> dict[str, int]:
        """Every counter of the node, by dotted name (see control.proto)."""
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
        }
        groups: dict[str, dict[str, int]] = {
            "sip.requests": proxy.requests,
            "sip.responses": proxy.responses,
            "sip.relayed": proxy.relayed,
            "overlay.anomalies": proxy.anomalies,
            "sip.drops": proxy.drops,
            "sip.generated": {str(status): n for status, n in proxy.generated.items()},
            "transport": stats.transport.counters,
        }
        for prefix, group in groups.items():
            counters.update({f"{prefix}.{name}": n for name, n in group.items()})
        assert self._core is not None
        counters.update(_call_counters(self._core.transactions.statistics()))
        if self.media is not None:
            counters.update(self.media.counters())
        if self.mesh is not None:
            counters.update(self.mesh.counters())
        counters.update(self.telemetry.counters())
        counters.update(self.stalls.counters())
        if self.security is not None:
            counters.update(self.security.guard.counters())
        if self.control is not None:
            counters.update(self.control.counters())
        return counters

    # -- glue --------------------------------------------------------------------------------

    def _overlay_nodes(self) -> OverlayNodes | None:
        if not self.config.peers:
            return None
        return OverlayNodes(
            self.config.node.node_id,
            {peer.node_id: Peer("udp", *peer.sip) for peer in self.config.peers},
        )

    def _locate(self, request: Request, uri: SipUri | TelUri) -> Target | Refusal | None:
        """The dialplan as the proxy core sees it."""
        if isinstance(uri, SipUri):
            user, host = uri.user, uri.host
        else:
            user, host = uri.number, ""
        match = self._dialplan.match(user, host)
        if match is None:
            return None
        new_call = request.method == "INVITE" and request.to_tag is None
        if new_call and self.drain.draining:
            return self._refuse(request, Refusal(503, "Draining", self.drain.retry_after_s))
        if match.rule.egress:
            mesh = self.mesh
            egress = choose_egress(
                match.rule.egress,
                request.call_id,
                self.config.node.node_id,
                lambda node_id: (
                    mesh is not None
                    and mesh.reachable(node_id)
                    and not (new_call and mesh.draining(node_id))
                ),
            )
            if egress is None:
                if mesh is not None and any(mesh.reachable(n) for n in match.rule.egress):
                    return self._refuse(request, Refusal(503, "Egress Draining"))
                waiting = self._awaiting_route(match.rule.egress, request, new_call=new_call)
                if waiting is not None:
                    return waiting
                return self._refuse(request, Refusal(503, "No Route to Egress"))
            if egress != self.config.node.node_id:
                return self._toward_egress(egress)
        request_uri = None
        if match.user != user and isinstance(uri, SipUri):
            request_uri = str(dataclasses.replace(uri, user=match.user))
        target = match.target
        if isinstance(target, StaticTarget):
            return Target(target.host, target.port, target.transport, "sip", request_uri)
        assert isinstance(target, DnsTarget)
        return Target(target.domain, None, target.transport, target.scheme, request_uri)

    def _refuse(self, request: Request, refusal: Refusal) -> Refusal:
        """A refused new call is a failed call for the NOC (its INVITE never left); one the
        operator did not ask for (no route, every egress draining) is a warning."""
        if request.method == "INVITE" and request.to_tag is None:
            self.events.publish(CallFailed(request.call_id, "", refusal.status, refusal.reason))
            emit = log.info if refusal.reason == "Draining" else log.warning
            emit(
                "call refused",
                call_id=request.call_id,
                status=refusal.status,
                reason=refusal.reason,
            )
        return refusal

    def _edge_hook(self) -> MediaHook | None:
        """What the proxy shows the messages crossing the overlay's edge: the call book (an
        overlay node), which passes them on to the media plane (with ``[media]``)."""
        edge = None if self.media is None else self.media.edge
        if not self.config.peers:
            return edge
        count = None if edge is None else edge.sessions.of_call
        self.calls = CallTracker(
            edge,
            media_sessions=None if count is None else lambda call_id: len(count(call_id)),
            on_failed=self.events.publish,
        )
        return self.calls

    def _awaiting_route(
        self, candidates: tuple[str, ...], request: Request, *, new_call: bool
    ) -> Target | None:
        """With every egress unreachable, the call waits up to ``linkstate.route_wait`` for a
        route to the one it would take (``_await_route``): a peer's pause or a link in
        hold-down then costs set-up time instead of the call. ``None``: refuse at once."""
        mesh = self.mesh
        if mesh is None or not self.config.linkstate.route_wait:
            return None
        egress = choose_egress(
            candidates,
            request.call_id,
            self.config.node.node_id,
            lambda node_id: not (new_call and mesh.draining(node_id)),
        )
        if egress is None:
            return None
        return dataclasses.replace(self._toward_egress(egress), await_route=egress)

    def _toward_egress(self, egress: str) -> Target:
        """An overlay call: to the egress node, which applies the dialplan's target itself."""
        assert self.mesh is not None  # an overlay call: the node has its mesh
        address = self.mesh.sip_address(egress)
        return Target(address.host, address.port, "udp", route=overlay_route(egress, address))

    def _rerouted(self, peers: list[Peer]) -> None:
        assert self._core is not None
        resent = self._core.retransmit_toward(peers)
        if resent:
            log.info("resent pending requests over new paths", requests=resent)
        if self.media is not None and self.mesh is not None:
            self.media.set_routes(self.mesh.routes.next_hops())
        self._flush()

    def _deliver(self, data: bytes, peer: Peer) -> None:
        assert self._core is not None
        mesh = self.mesh
        if mesh is not None and PROBE_MARK in data and mesh.handle_probe(data, peer):
            return
        try:
            self._core.receive_data(data, peer, trio.current_time())
        except Exception:
            # A bug must cost one message, not the node and every call on it.
            self.internal_errors += 1
            log.exception("internal error handling a message", host=peer.host, port=peer.port)
        self._flush()

    def _admit_connection(self, host: str) -> bool:
        """A blocked or denied source gets its TCP/TLS connection closed at accept."""
        assert self.security is not None
        return self.security.guard.screen(host, trio.current_time())

    def _transport_error(self, peer: Peer) -> None:
        assert self._core is not None
        self._core.transport_error(peer, trio.current_time())
        self._flush()

    def _flush(self) -> None:
        core = self._core
        assert core is not None
        assert self._nursery is not None
        outbox = core.outbox
        if outbox:
            send = self._transport.send
            mesh = self.mesh
            for data, peer in outbox:
                if mesh is not None:
                    hop = mesh.forward_address(peer)
                    if hop is None:
                        _log_unroutable(data, peer)
                        continue
                    peer = hop
                send(data, peer)
            outbox.clear()
        if self.media is not None:
            self.media.apply()
        while (event := core.next_event()) is not None:
            if isinstance(event, OverlayAnomaly):
                _log_anomaly(event)
            else:
                self._nursery.start_soon(self._resolve, event)
        deadline = core.get_timer()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()

    async def _resolve(self, event: ResolveTarget) -> None:
        core = self._core
        assert core is not None
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
                    self._transport.verify_as(peer, target.host)
            core.resolved(event.token, peers, trio.current_time())
        self._flush()

    async def _await_route(self, event: ResolveTarget, egress: str) -> None:
        """Hold a request for ``egress`` until the mesh has a route to it, or refuse it."""
        core, mesh = self._core, self.mesh
        assert core is not None
        assert mesh is not None
        waited = self.config.linkstate.route_wait
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

    async def _timer_loop(self) -> None:
        core = self._core
        assert core is not None
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
        """A periodic summary line, until the Control service exposes the counters."""
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


class _MeshRoutes(OverlayRoutes):
    """The mesh's routes as the proxy core reads them (the core is made before the mesh, which
    needs it; until then there are no routes)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def paths(self, node_id: str) -> list[tuple[str, ...]]:
        mesh = self._node.mesh
        return [] if mesh is None else mesh.paths(node_id)

    def path(self, node_id: str) -> tuple[str, ...] | None:
        mesh = self._node.mesh
        return None if mesh is None else mesh.path(node_id)

    def path_avoiding(self, node_id: str, avoid: Collection[str]) -> tuple[str, ...] | None:
        mesh = self._node.mesh
        return None if mesh is None else mesh.path_avoiding(node_id, avoid)


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


def _grpc_tls(config: NodeConfig) -> TlsCredentials | None:
    """The node's mutual-TLS material (``[grpc]``), checked now so that a bad file stops the
    node before it serves anything.

    Raises:
        TlsError: a file is unreadable, not PEM, or the files do not belong together.
    """
    grpc = config.grpc
    if grpc is None or grpc.insecure:
        return None
    now = datetime.datetime.now(datetime.UTC)
    try:
        return load_tls(Path(grpc.ca), Path(grpc.cert), Path(grpc.key), now=now)
    except TlsError as exc:
        raise TlsError(f"[grpc] {exc}") from None
