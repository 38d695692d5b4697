"""The node's NOC Control service (proto/overlay/v1/control.proto), on the trio side.

``ControlPlane`` answers the Control RPCs from the node's pieces, each read through its public
snapshot API and changed only through the methods its owner offers for that: the mesh (links,
LSDB, routes; ``set_draining``, ``set_override``, faults through its ``Impairments``), the
trunk prober (``TrunkHealth.statistics``), the call book (``overlay.noc.CallTracker``), the
media plane's sessions and counters, the SIP edge guard's blocks (``blocks``, ``unblock``),
the dialplan and the node's counters. The pure parts live in ``overlay.noc``: route
explanations, events, overrides, and the records as the service's messages (roles:
``overlay.grpc``).

Every RPC is authorised first (``AccessPolicy``: viewer to read, operator to change; refusals
are logged with the certificate's subject), and every outcome is counted by method and status
(``control.rpc.<Method>.<STATUS>`` in GetCounters). Operator actions are logged at WARNING with
who did them, and published as events with a ``by``.

Draining: ``DrainState`` is read by the node for every new INVITE (``overlay.shell.node``);
Drain sets it, advertises it in the LSA (so other nodes stop using this one as transit and stop
anchoring new calls on it), and sets the gRPC health of the server (``""``) to NOT_SERVING.

With several SIP workers (``sip.workers``) the service runs in worker 0, the owner, and
``workers`` reaches the others (``overlay.shell.workerlink.OwnerLinks``): drain and fault
changes are sent to them, and ListCalls, GetCall and GetCounters ask every worker and merge
the answers (counters summed by name, with ``workers.<n>.sip.calls.*`` per worker). A
worker's call comes with its media sessions, as that worker's edge keeps them; their figures
are the relay's, which is this worker's (``overlay.shell.media``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import structlog
import trio
from google.protobuf.message import Message

from overlay.config import NodeConfig
from overlay.grpc import (
    AccessPolicy,
    BridgedStream,
    Caller,
    GrpcBridge,
    RpcError,
    Service,
    StatusCode,
    StreamBroken,
    current_caller,
    server_stream_handler,
    unary_handler,
)
from overlay.media import MediaSession
from overlay.noc import (
    CallRecord,
    CallTracker,
    Clocks,
    DrainChanged,
    FaultInjected,
    FaultsCleared,
    OverrideCleared,
    OverrideSet,
    SourcesUnblocked,
    blocked_source_message,
    call_message,
    candidate_message,
    dialplan_match_message,
    event_kind,
    event_message,
    explain_route,
    fault_from_message,
    fault_message,
    hostport,
    metrics_message,
    new_override,
    override_message,
    relay_message,
    route_message,
    serialize,
    timestamp,
    topology_node_message,
    trunk_status_message,
)
from overlay.routing import (
    DEFAULT_RETRY_AFTER_S,
    CallRouter,
    DrainState,
    link_cost,
    weight_function,
)
from overlay.security import ALL_SOURCES, BlockedSource, source_key
from overlay.shell.clock import wall_time
from overlay.shell.events import EventHub, WatcherFellBehind
from overlay.shell.mesh import Mesh
from overlay.shell.transport import ALL_PEERS, Fault
from overlay.shell.trunks import TrunkProber
from overlay.shell.workerlink import QUERY_TIMEOUT, merge_calls, sum_counters
from overlay.sip import ProtocolError, Refusal, SipUri, TelUri, parse_uri_untrusted
from overlay.v1 import control_pb2

log = structlog.get_logger("overlay.control")

SERVICE = "overlay.v1.Control"
MAX_RETRY_AFTER_S = 86_400
DEFAULT_CALL_LIMIT = 1000
DEFAULT_BLOCK_LIMIT = 1000
#: An Unblock of "*" logs the first this many sources it lifted (and how many in all).
MAX_LOGGED_SOURCES = 20
#: Free-text fields (reasons) are cut to this many characters.
MAX_TEXT = 200

RequestT = TypeVar("RequestT", bound=Message)


class CallMedia(Protocol):
    """The media plane as the Control service reads it (``overlay.shell.media.MediaPlane``)."""

    def sessions_of(self, call_id: str) -> list[MediaSession]: ...

    def session_counters(self, session_id: int) -> Mapping[str, Any] | None: ...

    def set_faults(self, faults: Mapping[str, tuple[float, bool]]) -> None: ...


class SourceBlocks(Protocol):
    """The SIP edge guard as the Control service reads and lifts its blocks
    (``overlay.security.EdgeGuard``)."""

    def blocks(self, now: float) -> list[BlockedSource]: ...

    def unblock(self, source: str, now: float) -> list[BlockedSource]: ...


class OtherWorkers(Protocol):
    """The node's SIP workers besides the owner, as its Control service tells and asks them
    (``overlay.shell.workerlink.OwnerLinks``)."""

    def drain_changed(self) -> None: ...

    def faults_changed(self) -> None: ...

    async def counters(self) -> list[Mapping[str, int]]: ...

    async def calls(
        self, *, include_ended: bool, call_id: str = ""
    ) -> tuple[list[CallRecord], int, dict[str, tuple[MediaSession, ...]]]: ...


#: Counters GetCounters also gives per worker (``workers.<n>.<name>``) with several workers.
PER_WORKER_COUNTERS = ("sip.calls.offered", "sip.calls.answered")


class ControlPlane:
    """The ``overlay.v1.Control`` service of one node; see the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        mesh: Mesh,
        bridge: GrpcBridge,
        events: EventHub,
        calls: CallTracker,
        router: CallRouter,
        drain: DrainState,
        access: AccessPolicy,
        counters: Callable[[], dict[str, int]],
        media: CallMedia | None = None,
        blocks: SourceBlocks | None = None,
        trunks: TrunkProber | None = None,
        workers: OtherWorkers | None = None,
    ) -> None:
        self.node_id = config.node.node_id
        self._workers = workers
        self._config = config
        self._peers = {peer.node_id: peer for peer in config.peers}
        self._mesh = mesh
        self._bridge = bridge
        self._events = events
        self._calls = calls
        self._drain = drain
        self._access = access
        self._counters = counters
        self._media = media
        self._blocks = blocks
        self._trunks = trunks
        self._router = router
        self._dialplan = router.dialplan
        self._rpcs: Counter[str] = Counter()

    def service(self) -> Service:
        """The gRPC service, for ``GrpcBridge.start_server``."""
        c = control_pb2
        unary: dict[str, tuple[Callable[[Any], Message], Any]] = {
            "ListNodes": (self.list_nodes, c.ListNodesRequest),
            "GetTopology": (self.get_topology, c.GetTopologyRequest),
            "ListLinks": (self.list_links, c.ListLinksRequest),
            "ListTrunks": (self.list_trunks, c.ListTrunksRequest),
            "GetRoutes": (self.get_routes, c.GetRoutesRequest),
            "ExplainRoute": (self.explain_route, c.ExplainRouteRequest),
            "ListCalls": (self.list_calls, c.ListCallsRequest),
            "GetCall": (self.get_call, c.GetCallRequest),
            "GetCounters": (self.get_counters, c.GetCountersRequest),
            "ListBlocks": (self.list_blocks, c.ListBlocksRequest),
            "Drain": (self.drain, c.DrainRequest),
            "Undrain": (self.undrain, c.UndrainRequest),
            "SetLinkOverride": (self.set_link_override, c.SetLinkOverrideRequest),
            "ClearLinkOverride": (self.clear_link_override, c.ClearLinkOverrideRequest),
            "InjectFault": (self.inject_fault, c.InjectFaultRequest),
            "ClearFaults": (self.clear_faults, c.ClearFaultsRequest),
            "Unblock": (self.unblock, c.UnblockRequest),
        }
        if self._workers is not None:
            unary["ListCalls"] = (self.list_every_workers_calls, c.ListCallsRequest)
            unary["GetCall"] = (self.get_any_workers_call, c.GetCallRequest)
            unary["GetCounters"] = (self.get_every_workers_counters, c.GetCountersRequest)
        methods = {
            name: unary_handler(self._counted(name, fn), request.FromString, serialize)
            for name, (fn, request) in unary.items()
        }
        methods["WatchEvents"] = server_stream_handler(
            self.watch_events, c.WatchEventsRequest.FromString, serialize
        )
        return Service(SERVICE, methods, self._authorize)

    def _authorize(self, method: str, caller: Caller) -> None:
        try:
            self._access.authorize_control(method, caller)
        except RpcError as refused:
            self._rpcs[f"{method}.{refused.code.name}"] += 1
            log.warning(
                "control call refused",
                method=method,
                caller=self._access.who(caller),
                status=refused.code.name,
                reason=refused.message,
            )
            raise

    def _counted(
        self, method: str, fn: Callable[[RequestT], Message]
    ) -> Callable[[RequestT], Message]:
        """``fn``, counting its outcomes by status."""
        if inspect.iscoroutinefunction(fn):
            return self._counted_async(method, fn)

        def counted(request: RequestT) -> Message:
            try:
                response = fn(request)
            except RpcError as error:
                self._rpcs[f"{method}.{error.code.name}"] += 1
                raise
            except Exception:  # a bug: the bridge logs it and answers INTERNAL
                self._rpcs[f"{method}.INTERNAL"] += 1
                raise
            self._rpcs[f"{method}.OK"] += 1
            return response

        return counted

    def _counted_async(
        self, method: str, fn: Callable[[RequestT], Awaitable[Message]]
    ) -> Callable[[RequestT], Awaitable[Message]]:
        """``_counted`` for an ``async def`` method (one that asks the other workers)."""

        async def counted(request: RequestT) -> Message:
            try:
                response = await fn(request)
            except RpcError as error:
                self._rpcs[f"{method}.{error.code.name}"] += 1
                raise
            except Exception:
                self._rpcs[f"{method}.INTERNAL"] += 1
                raise
            self._rpcs[f"{method}.OK"] += 1
            return response

        return counted

    def _by(self) -> str:
        """Who is calling, for logs and events."""
        return self._access.who(current_caller())

    # -- nodes and topology -------------------------------------------------------------------

    def list_nodes(self, request: control_pb2.ListNodesRequest) -> control_pb2.ListNodesResponse:
        now = trio.current_time()
        mesh = self._mesh
        lsdb = mesh.flooder.lsdb
        paths = mesh.routes.paths
        sessions = set(mesh.flooder.sessions)
        local = self._config.node
        nodes = []
        for node_id in sorted({self.node_id, *self._peers, *lsdb.origins()}):
            peer = self._peers.get(node_id)
            lsa = lsdb.get(node_id, now)
            info = control_pb2.NodeInfo(
                node_id=node_id,
                local=node_id == self.node_id,
                configured_peer=peer is not None,
                in_lsdb=lsa is not None,
                reachable=node_id in paths or node_id == self.node_id,
                flooding=node_id in sessions,
            )
            if lsa is not None:
                info.region, info.az, info.draining = lsa.region, lsa.az, lsa.draining
                info.lsa_seq, info.lsa_age_s = lsa.seq, lsa.age
                info.links_up = sum(link.up for link in lsa.links)
            elif peer is not None:
                info.region, info.az = peer.region, peer.az
            if peer is not None:
                info.sip, info.grpc = hostport(*peer.sip), hostport(*peer.grpc)
            elif node_id == self.node_id:
                info.region, info.az = local.region, local.az
                listen = self._config.sip.listen[0]
                info.sip = hostport(listen.host, listen.port)
                grpc = self._config.grpc
                if grpc is not None:
                    info.grpc = hostport(grpc.host, grpc.port)
            path = paths.get(node_id)
            if path is not None:
                info.path.extend(path.nodes)
                info.cost_ms = path.cost
            nodes.append(info)
        return control_pb2.ListNodesResponse(
            node_id=self.node_id, nodes=nodes, drain=self._drain_status(now)
        )

    def get_topology(
        self, request: control_pb2.GetTopologyRequest
    ) -> control_pb2.GetTopologyResponse:
        now = trio.current_time()
        mesh = self._mesh
        table = mesh.routes
        graph = table.graph
        weight = weight_function(graph, table.policy, self.node_id)
        nodes = []
        links = []
        lsdb = mesh.flooder.lsdb
        for origin in lsdb.origins():
            lsa = lsdb.get(origin, now)
            assert lsa is not None
            nodes.append(topology_node_message(lsa))
            for link in lsa.links:
                attributes = graph.succ.get(origin, {}).get(link.neighbor)
                cost = None if attributes is None else weight(origin, link.neighbor, attributes)
                links.append(
                    control_pb2.TopologyLink(
                        origin=origin,
                        neighbor=link.neighbor,
                        up=link.up,
                        usable=attributes is not None,
                        metrics=metrics_message(link),
                        cost_ms=cost or 0.0,
                    )
                )
        return control_pb2.GetTopologyResponse(node_id=self.node_id, nodes=nodes, links=links)

    def list_links(self, request: control_pb2.ListLinksRequest) -> control_pb2.ListLinksResponse:
        clocks = _read_clocks()
        now = clocks.now
        mesh = self._mesh
        faults = mesh.impairments.faults()
        sessions = set(mesh.flooder.sessions)
        own = mesh.flooder.lsdb.peek(self.node_id)
        liveness = mesh.liveness()
        links = []
        for neighbor in sorted(mesh.monitors):
            stats = mesh.monitors[neighbor].statistics(now)
            link = control_pb2.LinkStatus(
                neighbor=neighbor,
                state=control_pb2.LinkStatus.State.Value(stats.state.value),
                since_s=now - stats.since,
                measured=metrics_message(stats.metrics),
                probes_sent=stats.probes_sent,
                probes_answered=stats.probes_answered,
                probes_lost=stats.probes_lost,
                flooding=neighbor in sessions,
            )
            echoes = liveness.get(neighbor)
            if echoes is not None:
                link.liveness.CopyFrom(
                    control_pb2.Liveness(
                        silent=echoes["silent"],
                        sent=echoes["sent"],
                        answered=echoes["answered"],
                        detection_ms=round(echoes["detection"] * 1000, 1),
                    )
                )
            advertised = None if own is None else own.link(neighbor)
            if advertised is not None:
                link.advertised_up = advertised.up
                link.advertised.CopyFrom(metrics_message(advertised))
                if advertised.up:
                    link.cost_ms = link_cost(advertised.measurements(), mesh.policy) or 0.0
            override = mesh.overrides.get(neighbor)
            if override is not None:
                link.override.CopyFrom(override_message(override, clocks))
            fault_peer = neighbor if neighbor in faults else ALL_PEERS
            fault = faults.get(fault_peer)
            if fault is not None:
                in_force = FaultInjected(
                    fault_peer, fault.delay_ms, fault.jitter_ms, fault.loss_ratio, fault.blackhole
                )
                link.fault.CopyFrom(fault_message(in_force))
            links.append(link)
        return control_pb2.ListLinksResponse(node_id=self.node_id, links=links)

    def list_trunks(self, request: control_pb2.ListTrunksRequest) -> control_pb2.ListTrunksResponse:
        response = control_pb2.ListTrunksResponse(
            node_id=self.node_id, enabled=self._config.trunks.enabled
        )
        prober = self._trunks
        if prober is None:
            return response
        now = trio.current_time()
        health = prober.health
        response.trunks.extend(trunk_status_message(s, now) for s in health.statistics(now))
        response.unresolved.extend(
            why if why.startswith(name) else f"{name}: {why}"
            for name, why in sorted(prober.unresolved.items())
        )
        response.all_down_tried = health.all_down_tried
        return response

    # -- routes -------------------------------------------------------------------------------

    def get_routes(self, request: control_pb2.GetRoutesRequest) -> control_pb2.GetRoutesResponse:
        table = self._mesh.routes
        routes = [route_message(table.routes[destination]) for destination in sorted(table.routes)]
        return control_pb2.GetRoutesResponse(
            node_id=self.node_id,
            version=table.version,
            computed_age_s=trio.current_time() - table.computed_at,
            routes=routes,
        )

    def explain_route(
        self, request: control_pb2.ExplainRouteRequest
    ) -> control_pb2.ExplainRouteResponse:
        target = request.WhichOneof("target")
        response = control_pb2.ExplainRouteResponse(node_id=self.node_id)
        if target == "node_id":
            destination = request.node_id
            self._check_node("node_id", destination)
        elif target == "request_uri":
            egress, response.outcome = self._explain_dialplan(
                request.request_uri, response.dialplan
            )
            if egress is None:
                return response
            destination = egress
        else:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "give node_id or request_uri")
        table = self._mesh.routes
        explanation = explain_route(
            table, destination, self._peers, self._mesh.flooder.lsdb.snapshot()
        )
        response.destination = destination
        response.hysteresis_margin_ms = explanation.hysteresis_margin_ms
        response.route_version = explanation.version
        if explanation.chosen is not None:
            response.chosen.CopyFrom(candidate_message(explanation.chosen))
        response.rejected.extend(candidate_message(c) for c in explanation.rejected)
        if not response.outcome:
            chosen = explanation.chosen
            if chosen is None:
                response.outcome = f"no route to {destination}: {explanation.no_route}"
            elif len(chosen.path) == 2:
                response.outcome = f"sent straight to {destination}"
            else:
                via = "→".join(chosen.path[1:-1])
                response.outcome = f"sent toward {destination} via {via}"
        return response

    def _explain_dialplan(
        self, text: str, match_out: control_pb2.DialplanMatch
    ) -> tuple[str | None, str]:
        """The dialplan's answer for a new INVITE to ``text``: the egress node to explain the
        route to (``None``: no overlay route to explain) and the outcome in words."""
        user, host = _user_host(text)
        match = self._dialplan.match(user, host)
        if match is None:
            return None, "404 Not Found: no dialplan rule matches"
        rule = match.rule
        match_out.CopyFrom(dialplan_match_message(match, self._dialplan.rules.index(rule)))
        if self._drain.draining:
            return None, f"503 Draining (Retry-After: {self._drain.retry_after_s})"
        if not rule.egress or self.node_id in rule.egress:
            return None, f"leaves the overlay here, to {match_out.target}"
        egress = self._router.choose(rule.egress, "", new_call=True)
        if isinstance(egress, Refusal):
            return None, f"{egress.status} {egress.reason}"
        picked = (
            "" if len(rule.egress) == 1 else " (the egress of each call is picked by its Call-ID)"
        )
        return egress, f"to egress {egress}{picked}, which sends it to {match_out.target}"

    # -- calls --------------------------------------------------------------------------------

    def list_calls(self, request: control_pb2.ListCallsRequest) -> control_pb2.ListCallsResponse:
        clocks = _read_clocks()
        limit = request.limit or DEFAULT_CALL_LIMIT
        records = self._calls.calls(clocks.now, include_ended=request.include_ended)
        return control_pb2.ListCallsResponse(
            node_id=self.node_id,
            calls=[self._call_message(record, clocks) for record in records[:limit]],
            active=self._calls.active(clocks.now),
        )

    def get_call(self, request: control_pb2.GetCallRequest) -> control_pb2.GetCallResponse:
        if not request.call_id:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "call_id: empty")
        clocks = _read_clocks()
        record = self._calls.get(request.call_id, clocks.now)
        if record is None:
            raise RpcError(
                StatusCode.NOT_FOUND,
                f"no call {request.call_id!r} anchored at {self.node_id} (live or recently ended)",
            )
        return control_pb2.GetCallResponse(call=self._call_message(record, clocks))

    async def list_every_workers_calls(
        self, request: control_pb2.ListCallsRequest
    ) -> control_pb2.ListCallsResponse:
        """ListCalls with several workers: every worker's call book, merged."""
        assert self._workers is not None
        include_ended = request.include_ended
        with _workers_answer():
            others, active, media = await self._workers.calls(include_ended=include_ended)
        clocks = _read_clocks()
        own = self._calls.calls(clocks.now, include_ended=include_ended)
        records = merge_calls([own, others])
        limit = request.limit or DEFAULT_CALL_LIMIT
        return control_pb2.ListCallsResponse(
            node_id=self.node_id,
            calls=[
                self._call_message(record, clocks, media.get(record.call_id))
                for record in records[:limit]
            ],
            active=self._calls.active(clocks.now) + active,
        )

    async def get_any_workers_call(
        self, request: control_pb2.GetCallRequest
    ) -> control_pb2.GetCallResponse:
        """GetCall with several workers: the call is in the book of the worker it is steered
        to, whichever that is."""
        assert self._workers is not None
        if not request.call_id:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "call_id: empty")
        clocks = _read_clocks()
        record = self._calls.get(request.call_id, clocks.now)
        sessions = None
        if record is None:
            with _workers_answer():
                found, _, media = await self._workers.calls(
                    include_ended=True, call_id=request.call_id
                )
            record = found[0] if found else None
            sessions = media.get(request.call_id)
            clocks = _read_clocks()
        if record is None:
            raise RpcError(
                StatusCode.NOT_FOUND,
                f"no call {request.call_id!r} anchored at {self.node_id} (live or recently ended)",
            )
        return control_pb2.GetCallResponse(call=self._call_message(record, clocks, sessions))

    def _call_message(
        self,
        record: CallRecord,
        clocks: Clocks,
        sessions: Sequence[MediaSession] | None = None,
    ) -> control_pb2.Call:
        """``record`` with the path to its far node and its media relays: ``sessions`` (those
        another worker's edge reported), or this edge's, with the relay's figures of each."""
        path = self._mesh.routes.paths.get(record.far_node)
        media = self._media
        if media is not None and sessions is None:
            sessions = media.sessions_of(record.call_id)
        relays = (
            []
            if media is None or sessions is None
            else [
                relay_message(session, media.session_counters(session.session_id))
                for session in sessions
            ]
        )
        return call_message(record, clocks, path=() if path is None else path.nodes, media=relays)

    # -- counters -----------------------------------------------------------------------------

    def get_counters(
        self, request: control_pb2.GetCountersRequest
    ) -> control_pb2.GetCountersResponse:
        return control_pb2.GetCountersResponse(node_id=self.node_id, counters=self._counters())

    async def get_every_workers_counters(
        self, request: control_pb2.GetCountersRequest
    ) -> control_pb2.GetCountersResponse:
        """GetCounters with several workers: every worker's counters summed by name."""
        assert self._workers is not None
        with _workers_answer():
            others = await self._workers.counters()
        counters = sum_counters(self._counters(), others, per_worker=PER_WORKER_COUNTERS)
        return control_pb2.GetCountersResponse(node_id=self.node_id, counters=counters)

    def counters(self) -> dict[str, int]:
        """The service's own counters (``control.*``), part of the node's (and its metrics)."""
        counters = {
            "control.events.published": self._events.published,
            "control.events.watchers": self._events.watchers,
            "control.events.dropped_watchers": self._events.dropped_watchers,
            "control.calls.failed": self._calls.failed,
            "control.calls.evicted": self._calls.evicted,
            "control.draining": int(self._drain.draining),
            "control.link_overrides": len(self._mesh.overrides),
        }
        counters.update({f"control.rpc.{key}": n for key, n in self._rpcs.items()})
        return counters

    # -- events -------------------------------------------------------------------------------

    async def watch_events(
        self, request: control_pb2.WatchEventsRequest, stream: BridgedStream
    ) -> None:
        kinds = set()
        for value in request.types:
            name = event_kind(value)
            if name is None:
                self._rpcs["WatchEvents.INVALID_ARGUMENT"] += 1
                raise RpcError(StatusCode.INVALID_ARGUMENT, f"types: unknown event type {value}")
            kinds.add(name)
        self._rpcs["WatchEvents.OK"] += 1
        who = self._by()
        log.info("watching events", caller=who, types=sorted(kinds) or "all")
        with self._events.watch(kinds) as watcher:
            try:
                while True:
                    try:
                        item = await watcher.receive()
                    except WatcherFellBehind as behind:
                        log.warning("event watcher fell behind", caller=who)
                        raise RpcError(
                            StatusCode.RESOURCE_EXHAUSTED,
                            f"{behind}: events were dropped; watch again",
                        ) from None
                    await stream.send(event_message(item))
            except StreamBroken:
                return  # the watcher went away

    # -- drain --------------------------------------------------------------------------------

    def drain(self, request: control_pb2.DrainRequest) -> control_pb2.DrainResponse:
        retry_after = request.retry_after_s or DEFAULT_RETRY_AFTER_S
        if retry_after > MAX_RETRY_AFTER_S:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"retry_after_s: at most {MAX_RETRY_AFTER_S} (a day), got {retry_after}",
            )
        reason = _text("reason", request.reason)
        now = trio.current_time()
        state = self._drain
        already = state.draining
        who = self._by()
        if not already:
            state.draining, state.since, state.by = True, wall_time(), who
            self._mesh.set_draining(True, now)
            self._bridge.set_serving("", False)
        state.reason, state.retry_after_s = reason, retry_after
        if self._workers is not None:
            self._workers.drain_changed()
        log.warning(
            "draining: new calls refused",
            by=who,
            reason=reason,
            retry_after_s=retry_after,
            active_calls=self._calls.active(now),
        )
        self._events.publish(DrainChanged(True, reason), by=who)
        return control_pb2.DrainResponse(drain=self._drain_status(now), already_draining=already)

    def undrain(self, request: control_pb2.UndrainRequest) -> control_pb2.UndrainResponse:
        state = self._drain
        was = state.draining
        if was:
            who = self._by()
            now = trio.current_time()
            state.draining, state.since, state.reason, state.by = False, 0.0, "", ""
            self._mesh.set_draining(False, now)
            self._bridge.set_serving("", True)
            if self._workers is not None:
                self._workers.drain_changed()
            log.warning("no longer draining: new calls accepted", by=who)
            self._events.publish(DrainChanged(False, ""), by=who)
        return control_pb2.UndrainResponse(was_draining=was)

    def _drain_status(self, now: float) -> control_pb2.DrainStatus:
        state = self._drain
        status = control_pb2.DrainStatus(
            draining=state.draining,
            reason=state.reason,
            by=state.by,
            retry_after_s=state.retry_after_s,
            active_calls=self._calls.active(now),
        )
        if state.draining:
            status.since.CopyFrom(timestamp(state.since))
        return status

    # -- link overrides -----------------------------------------------------------------------

    def set_link_override(
        self, request: control_pb2.SetLinkOverrideRequest
    ) -> control_pb2.SetLinkOverrideResponse:
        self._check_peer("peer", request.peer)
        clocks = _read_clocks()
        now = clocks.now
        expiry = request.WhichOneof("expiry")
        expires_at = None
        if expiry == "expires_at":
            expires_at = clocks.node_time(request.expires_at)
        who = self._by()
        try:
            override = new_override(
                request.peer,
                admin_cost_ms=request.admin_cost_ms if request.HasField("admin_cost_ms") else None,
                force_down=request.force_down,
                ttl_s=request.ttl_s if expiry == "ttl_s" else None,
                expires_at=expires_at,
                now=now,
                set_by=who,
                reason=_text("reason", request.reason),
            )
        except ValueError as error:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(error)) from None
        replaced = self._mesh.set_override(override, now)
        log.warning(
            "link override set",
            peer=override.peer,
            override=override.describe(),
            expires_in_s=round(override.expires_at - now),
            by=who,
            reason=override.reason,
            replaced=None if replaced is None else replaced.describe(),
        )
        self._events.publish(OverrideSet(override), by=who)
        return control_pb2.SetLinkOverrideResponse(override=override_message(override, clocks))

    def clear_link_override(
        self, request: control_pb2.ClearLinkOverrideRequest
    ) -> control_pb2.ClearLinkOverrideResponse:
        if request.peer:
            self._check_peer("peer", request.peer)
        who = self._by()
        removed = self._mesh.clear_overrides(request.peer or None, trio.current_time())
        for override in removed:
            log.warning("link override cleared", peer=override.peer, by=who)
            self._events.publish(OverrideCleared(override, expired=False), by=who)
        return control_pb2.ClearLinkOverrideResponse(cleared=len(removed))

    # -- faults -------------------------------------------------------------------------------

    def inject_fault(
        self, request: control_pb2.InjectFaultRequest
    ) -> control_pb2.InjectFaultResponse:
        wire = request.fault
        self._check_peer("fault.peer", wire.peer, wildcard=True)
        try:
            fault = Fault(
                delay_ms=wire.delay_ms,
                jitter_ms=wire.jitter_ms,
                loss_ratio=wire.loss_ratio,
                blackhole=wire.blackhole,
            )
        except ValueError as error:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"fault: {error}") from None
        self._mesh.impairments.inject(wire.peer, fault)
        self._faults_changed()
        who = self._by()
        log.warning("fault injected", peer=wire.peer, fault=str(fault), by=who)
        self._events.publish(fault_from_message(wire), by=who)
        return control_pb2.InjectFaultResponse()

    def clear_faults(
        self, request: control_pb2.ClearFaultsRequest
    ) -> control_pb2.ClearFaultsResponse:
        if request.peer:
            self._check_peer("peer", request.peer, wildcard=True)
        cleared = self._mesh.impairments.clear(request.peer or None)
        self._faults_changed()
        who = self._by()
        log.warning("faults cleared", peer=request.peer or "every peer", cleared=cleared, by=who)
        self._events.publish(FaultsCleared(request.peer, cleared), by=who)
        return control_pb2.ClearFaultsResponse(cleared=cleared)

    def _faults_changed(self) -> None:
        """Faults hit media too: the relay drops what it sends to a faulted peer's relay (loss
        and blackhole; it holds no packet, so delay and jitter stay with signalling). The
        other SIP workers apply them to what they send, as this one does."""
        if self._workers is not None:
            self._workers.faults_changed()
        if self._media is not None:
            faults = self._mesh.impairments.faults()
            self._media.set_faults({p: (f.loss_ratio, f.blackhole) for p, f in faults.items()})

    # -- edge security blocks -----------------------------------------------------------------

    def list_blocks(self, request: control_pb2.ListBlocksRequest) -> control_pb2.ListBlocksResponse:
        response = control_pb2.ListBlocksResponse(
            node_id=self.node_id, security=self._blocks is not None
        )
        if self._blocks is None:
            return response
        clocks = _read_clocks()
        blocks = self._blocks.blocks(clocks.now)
        limit = request.limit or DEFAULT_BLOCK_LIMIT
        response.blocked = len(blocks)
        response.blocks.extend(blocked_source_message(b, clocks) for b in reversed(blocks[-limit:]))
        return response

    def unblock(self, request: control_pb2.UnblockRequest) -> control_pb2.UnblockResponse:
        source = request.source.strip()
        clocks = _read_clocks()
        try:
            if self._blocks is not None:
                lifted = self._blocks.unblock(source, clocks.now)
            else:  # the node blocks nothing, but a bad argument is still one
                lifted = []
                if source != ALL_SOURCES:
                    source_key(source)
        except ValueError as error:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"source: {error}") from None
        who = self._by()
        sources = tuple(block.source for block in lifted)
        log.warning(
            "sources unblocked",
            source=source,
            unblocked=len(lifted),
            sources=list(sources[:MAX_LOGGED_SOURCES]),
            by=who,
        )
        if lifted:
            self._events.publish(SourcesUnblocked(source, sources), by=who)
        return control_pb2.UnblockResponse(
            unblocked=len(lifted), blocks=[blocked_source_message(b, clocks) for b in lifted]
        )

    # -- arguments ----------------------------------------------------------------------------

    def _check_peer(self, field: str, peer: str, *, wildcard: bool = False) -> None:
        """``peer`` names one of this node's peers (or, with ``wildcard``, is ``"*"``)."""
        if peer in self._peers or (wildcard and peer == ALL_PEERS):
            return
        known = ", ".join(sorted(self._peers)) or "none"
        every = "; '*' = every peer" if wildcard else ""
        what = "empty" if not peer else f"{peer!r} is not a peer of {self.node_id}"
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"{field}: {what} (peers: {known}{every})")

    def _check_node(self, field: str, node_id: str) -> None:
        """``node_id`` is another node this node knows."""
        if node_id == self.node_id:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"{field}: {node_id} is this node")
        known = {*self._peers, *self._mesh.flooder.lsdb.origins()} - {self.node_id}
        if node_id not in known:
            names = ", ".join(sorted(known)) or "none"
            what = "empty" if not node_id else f"unknown node {node_id!r}"
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"{field}: {what} (known: {names})")


class _Relay(Protocol):
    def session_counters(self, session_id: int) -> Mapping[str, Any]: ...


class MediaPlaneView:
    """``CallMedia`` over ``overlay.shell.media.MediaPlane``: its edge's sessions, its relay's
    counters and faults."""

    def __init__(
        self,
        sessions_of: Callable[[str], list[MediaSession]],
        relay: _Relay,
        set_faults: Callable[[Mapping[str, tuple[float, bool]]], None],
    ) -> None:
        self._sessions_of = sessions_of
        self._relay = relay
        self.set_faults = set_faults

    def sessions_of(self, call_id: str) -> list[MediaSession]:
        return self._sessions_of(call_id)

    def session_counters(self, session_id: int) -> Mapping[str, Any] | None:
        try:
            counters: Mapping[str, Any] = self._relay.session_counters(session_id)
        except KeyError:  # not handed to the relay (yet), or refused by it
            return None
        return counters


# --- clocks and request arguments ------------------------------------------------------------


@contextlib.contextmanager
def _workers_answer() -> Iterator[None]:
    """A query of the other workers that times out is answered UNAVAILABLE."""
    try:
        yield
    except trio.TooSlowError:
        raise RpcError(
            StatusCode.UNAVAILABLE, f"a SIP worker did not answer within {QUERY_TIMEOUT:g} s"
        ) from None


def _read_clocks() -> Clocks:
    """The node's clock and the wall clock, read now: an answer's times all convert alike."""
    return Clocks(trio.current_time(), wall_time())


def _text(field: str, text: str) -> str:
    """Free text from a request: printable, at most MAX_TEXT characters."""
    if len(text) > MAX_TEXT or not text.isprintable():
        raise RpcError(
            StatusCode.INVALID_ARGUMENT,
            f"{field}: at most {MAX_TEXT} printable characters (no newlines)",
        )
    return text


def _user_host(text: str) -> tuple[str | None, str]:
    """The user and host a dialplan looks at, from a Request-URI or a bare number / user.

    Raises:
        RpcError: INVALID_ARGUMENT for a URI that does not parse or is not SIP or tel.
    """
    text = text.strip()
    if not text:
        raise RpcError(StatusCode.INVALID_ARGUMENT, "request_uri: empty")
    scheme = text.partition(":")[0].lower()
    if scheme not in ("sip", "sips", "tel"):
        if any(char.isspace() or not char.isprintable() for char in text):
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"request_uri: bad number {text!r}")
        return text, ""
    try:
        uri = parse_uri_untrusted(text)
    except ProtocolError as error:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"request_uri: {error}") from None
    if isinstance(uri, SipUri):
        return uri.user, uri.host
    if isinstance(uri, TelUri):
        return uri.number, ""
    raise RpcError(StatusCode.INVALID_ARGUMENT, f"request_uri: not a SIP or tel URI: {text!r}")
