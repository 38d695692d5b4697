"""One overlay node: its parts put together, ready, by ``open_node``.

This module is composition only. The parts and what they do:

* ``SignallingPump`` (``overlay.shell.signalling``): the SIP transport and the proxy core, whose
  ``locate`` is the ``CallRouter`` (dialplan, egress choice, drain refusals) and whose media hook
  is the call book (an overlay node) in front of the media plane (with ``[media]``);
* with ``[[peers]]``, an overlay node: the ``Mesh`` (probes, flooding, routes, installed in the
  ``RouteView`` the core and the router read) and the NOC Control service (``ControlPlane``) on
  one gRPC server, mutual TLS unless the configuration says ``insecure = true``;
* ``MediaPlane`` (``[media]``): the relay's sessions, driven by the media edge;
* ``EdgeSecurity``: overload control (every node, ``[overload]``), which the transport tells
  when its receive loop falls behind the socket and which sheds new work past the node's
  capacity, in front of the guard of ``[security]`` (if any), which the core screens every
  message through and which screens every TCP and TLS connection's source at accept, before
  any TLS handshake;
* ``TrunkProber`` (``[trunks]``, ``overlay.shell.trunks``): OPTIONS to the trunks this node
  sends calls to; its ``TrunkHealth`` is the core's ``next_hop_health``, which tries trunks
  that stopped answering after the others;
* ``PairReplication`` (``[pair]``, ``overlay.shell.replication``): the active serves its calls
  to the standby on the gRPC server (``PairState``), the standby follows them into its own call
  book, dialog book and media edge; the call book and the media edge mark the calls that
  changed, and the pump sends them at the end of each turn;
* ``Telemetry`` (``[metrics]``, ``[cloudwatch]``), the stall watchdog, the event hub;
* with ``[[peers]]`` and several SIP workers (``links``, ``overlay.shell.workerlink``): worker
  0, the owner, has all of the above and ``OwnerLinks`` to the others, which its mesh tells of
  every route table and reroute and its Control service asks for their calls and counters;
  workers 1..N-1 have no mesh, no gRPC server and no Control service, but a ``WorkerLink``
  that keeps their ``RouteView``, drain state and faults in step with the owner's, stands in
  for the mesh to their pump, and sends the owner their traffic and events. With ``[media]``
  the node's one relay is the owner's ``MediaPlane``; each other worker has a ``WorkerMedia``,
  its own media edge, whose commands its link sends to the owner's relay and which the
  owner's relay polls report to (``overlay.shell.media``). With ``[pair]`` each worker
  replicates its own calls: worker i of the standby follows worker i of the active, through
  the active's worker 0, which relays the stream over its channel to worker i
  (``overlay.shell.replication``); when the member comes to hold the address, worker 0 takes
  the mesh over and tells the others to promote what they followed (their restored media
  sessions are in worker 0's relay already, or parked at its gate until the sweep).

Every part is made before any task starts; a part a section of the configuration does not ask
for is ``None``. Files are checked before any socket is bound (``NodeTls.load``).

A pair member that holds the pair's address by file (``[pair] hold = "file"``: two members on
one machine, the lab) binds nothing of that address until it holds it: then, in one sweep
(``_serve_grpc``), its SIP sockets (the pump and the trunk prober start on them), its relay
(``MediaPlane.release_relay``) and a second gRPC server at the pair's address, which its peers
dial for flooding and the NOC for control. Its own gRPC address serves from the start: the HA
agent's heartbeats and pair replication reach each member there, whichever holds. With several
workers the sweep is worker 0's: it passes the SIP sockets it bound to the other workers over
their channels (``SCM_RIGHTS``), and each starts its pump on them as it gets them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio
import trio.testing

from overlay.config import NodeConfig
from overlay.grpc import AccessPolicy, GrpcBridge, TlsCredentials, open_grpc_bridge
from overlay.ha import LIVENESS_SERVICE
from overlay.media import MediaEdge
from overlay.noc import CallTracker
from overlay.pairstate import EPOCH_SIZE
from overlay.routing import CallRouter, Dialplan, DrainState, RouteView, TrunkHealth
from overlay.shell.clock import wall_datetime, wall_time
from overlay.shell.control import ControlPlane, MediaPlaneView
from overlay.shell.events import EventHub
from overlay.shell.media import MediaPlane, WorkerMedia
from overlay.shell.mesh import Mesh
from overlay.shell.pair import holds, run_mesh, wait_held
from overlay.shell.replication import PairReplication
from overlay.shell.security import EdgeSecurity
from overlay.shell.signalling import SignallingPump
from overlay.shell.stall import StallWatchdog
from overlay.shell.telemetry import NodeCollector, Telemetry
from overlay.shell.transport import (
    BoundSocket,
    Impairments,
    SipResolver,
    Steering,
    bind_listeners,
)
from overlay.shell.trunks import TrunkProber, trunk_targets
from overlay.shell.workerlink import OwnerLinks, WorkerLink, WorkerSockets
from overlay.sip import (
    Listener,
    OverlayNodes,
    Peer,
    ProxyConfig,
    ProxyCore,
    TimerConfig,
)
from overlay.tls import TlsContexts, TlsError, load_sip_tls, load_tls

log = structlog.get_logger("overlay.node")

#: Seconds the liveness status stays SERVING without a beat from the event loop: far above a
#: stall the node lives through (tens of ms), below the HA agent's detection (1.5 s).
LIVENESS_TTL = 1.0
#: Seconds a member that came to hold the pair's address by file waits for its ports to be let
#: go: a previous holder still running leaves within its check_interval (``PairAddressLost``).
HELD_BIND_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class NodeTls:
    """The node's TLS material: SIP's contexts (``[sip.tls]``) and the gRPC mutual-TLS
    credentials (``[grpc]``; ``None`` without ``[[peers]]`` or with ``insecure = true``)."""

    sip: TlsContexts
    grpc: TlsCredentials | None

    @classmethod
    def load(cls, config: NodeConfig) -> NodeTls:
        """Check and load every file, so that a bad one stops the node before it serves.

        Raises:
            TlsError: a file is unreadable, not PEM, out of its validity period, or the files
                do not belong together; the message names the section and the file.
        """
        now = wall_datetime()
        try:
            sip = load_sip_tls(config.sip.tls, now=now)
        except TlsError as exc:
            raise TlsError(f"[sip.tls] {exc}") from None
        grpc = config.grpc
        if grpc is None or grpc.insecure:
            return cls(sip, None)
        try:
            credentials = load_tls(Path(grpc.ca), Path(grpc.cert), Path(grpc.key), now=now)
        except TlsError as exc:
            raise TlsError(f"[grpc] {exc}") from None
        return cls(sip, credentials)


class CounterSources:
    """Every part's counters, merged by dotted name (GetCounters, ``/metrics``)."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Mapping[str, int]]] = []

    def add(self, source: Callable[[], Mapping[str, int]]) -> None:
        self._sources.append(source)

    def __call__(self) -> dict[str, int]:
        counters: dict[str, int] = {}
        for source in self._sources:
            counters.update(source())
        return counters


@dataclass(frozen=True, eq=False)
class Node:
    """A serving node's parts (see the module docstring); ``None``: not configured."""

    config: NodeConfig
    listeners: list[Listener]
    signalling: SignallingPump
    events: EventHub
    drain: DrainState  # changed by the Control service only
    stalls: StallWatchdog
    telemetry: Telemetry
    counters: CounterSources
    security: EdgeSecurity | None
    media: MediaPlane | None
    calls: CallTracker | None
    mesh: Mesh | None
    control: ControlPlane | None
    trunks: TrunkProber | None = None


def proxy_config(
    config: NodeConfig, listeners: tuple[Listener, ...], overlay: OverlayNodes | None = None
) -> ProxyConfig:
    """The proxy core's settings from the node's (``[sip]`` and its timers, ``[linkstate]``)."""
    timers = config.sip.timers
    return ProxyConfig(
        listeners=listeners,
        timers=TimerConfig(t1=timers.t1, t2=timers.t2, t4=timers.t4),
        timer_c=timers.timer_c,
        fr=timers.fr,
        far_edge_wait=config.linkstate.far_edge_wait,
        record_route=config.sip.record_route,
        user_agent=config.sip.user_agent,
        max_message_size=config.sip.max_message_size,
        overlay=overlay,
    )


def bind(config: NodeConfig) -> list[BoundSocket]:
    """Bind the configured addresses (before forking workers, when there are several).

    Raises:
        OSError: an address cannot be bound.
    """
    return bind_listeners([(a.transport, a.host, a.port) for a in config.sip.listen])


@contextlib.asynccontextmanager
async def open_node(
    config: NodeConfig,
    *,
    bound: list[BoundSocket] | None = None,
    steering: Steering | None = None,
    tls: NodeTls | None = None,
    links: WorkerSockets | None = None,
) -> AsyncIterator[Node]:
    """Serve ``config`` on ``bound`` sockets (by default freshly bound ones) until the block
    ends; the node yielded is serving, its listeners' real ports known.

    A pair member that holds by file binds its SIP sockets once it holds the pair's address
    (module notes): ``bound`` must then be ``None``, and the listeners are the configured ones.
    ``links``: this worker's channels, an overlay node with several workers (module notes).

    Raises:
        TlsError: a TLS file cannot work (checked before any socket is bound).
        OSError: an address cannot be bound.
        ValueError: ``bound`` given to a member that holds by file.
    """
    if tls is None:
        tls = NodeTls.load(config)
    held_by_file = config.pair is not None and config.pair.hold == "file"
    if held_by_file and bound is not None:
        raise ValueError('a [pair] hold = "file" member binds its SIP sockets when it holds')
    if bound is None and not held_by_file:
        bound = bind(config)
    node_id = config.node.node_id
    worker = 0 if steering is None else steering.index
    workers = 1 if steering is None else len(steering.outbound)
    listeners = (
        # Every port is given (the configuration checks): what bind() makes once held.
        [Listener(a.transport, a.host, a.port) for a in config.sip.listen]
        if bound is None
        else [item.listener for item in bound]
    )
    events = EventHub(node_id)
    drain = DrainState()
    security = EdgeSecurity.for_config(config)
    stalls = StallWatchdog()
    # With several workers, the relay is worker 0's; the others' edges send it their commands.
    media = worker_media = None
    if config.media is not None and worker > 0:
        worker_media = WorkerMedia(config, worker=worker, workers=workers)
    elif config.media is not None:
        media = MediaPlane(config, workers=workers)
    edges = media or worker_media
    edge = None if edges is None else edges.edge
    overlay = _OverlayParts.make(config, tls.grpc, edge, events) if config.peers else None
    view = None if overlay is None else overlay.view
    router = CallRouter(
        node_id,
        Dialplan(config.dialplan),
        view,
        drain,
        route_wait=bool(config.linkstate.route_wait),
    )
    public = tuple(
        dataclasses.replace(listener, advertise=config.sip.advertise) for listener in listeners
    )
    resolver = SipResolver(config.dns)  # one cache for calls and trunk probes
    trunks = _trunk_prober(config, public, steering, resolver, events)
    core = ProxyCore(
        proxy_config(config, public, None if view is None else OverlayNodes(node_id, view.peers)),
        router.locate,
        view,
        edge if overlay is None else overlay.calls,
        admission=None if security is None else security.admission,
        next_hop_health=None if trunks is None else trunks.health,
    )
    # This start's call state: peers that see the epoch change end the calls they had here (a
    # standby that takes over keeps its active's: PairReplication.take_over).
    epoch = secrets.token_bytes(EPOCH_SIZE)
    replication = _pair_replication(config, overlay, core, edges, epoch, worker)
    mesh = None
    owner_links = worker_link = None
    probe_interval = config.linkstate.probe_interval
    if overlay is not None and links is not None and links.index > 0:
        worker_link = WorkerLink(
            links.sockets[0],
            view=overlay.view,
            drain=drain,
            impairments=overlay.impairments,
            events=events,
            calls=overlay.calls,
            counters=lambda: counters(),
            take_traffic=core.transactions.take_peer_traffic,
            rerouted=lambda peers, lost, restarted: pump.rerouted(peers, lost, restarted),
            probe_interval=probe_interval,
            media=worker_media,
            pair=replication,
        )
        if worker_media is not None:
            worker_media.send = worker_link.media_commands
        if replication is not None:
            replication.forward = worker_link.pair_batches
    elif overlay is not None:
        if links is not None and links.sockets:
            owner_links = OwnerLinks(
                links.sockets,
                view=overlay.view,
                drain=drain,
                impairments=overlay.impairments,
                events=events,
                probe_interval=probe_interval,
                media=media,
                pair=replication,
            )
            if media is not None:
                media.on_activity = owner_links.media_activity
            if replication is not None:
                replication.workers = owner_links

        def rerouted(peers: list[Peer], lost: list[str], restarted: list[str]) -> None:
            if owner_links is not None:  # first: the workers' pumps act while this one does
                owner_links.rerouted(peers, lost, restarted)
            pump.rerouted(peers, lost, restarted)

        local = next(item for item in listeners if item.transport == "udp")
        # The mesh and the pump call each other: the mesh, made first, reaches the pump
        # through these two closures, which run only once both serve.
        mesh = Mesh(
            config,
            view=overlay.view,
            local_sip=Peer("udp", local.host, local.port),
            send_sip=lambda data, peer: pump.transport.send(data, peer),
            take_traffic=core.transactions.take_peer_traffic
            if owner_links is None
            else owner_links.take_traffic(core.transactions.take_peer_traffic),
            on_reroute=rerouted,
            impairments=overlay.impairments,
            on_routes=None if owner_links is None else owner_links.routes_installed,
            # Wall-clock milliseconds: a restarted node outnumbers its previous LSAs.
            initial_seq=int(wall_time() * 1000),
            now=trio.current_time(),
            state_epoch=epoch,
            echo=media,
            events=events.publish,
            access=overlay.access,
        )
    if replication is not None and mesh is not None:
        # The mesh's LSAs follow the calls to the standby, which keeps them for a takeover.
        replication.log.links = mesh.flooder.lsdb
        if replication.follower is not None:
            replication.follower.store.take_lsa = mesh.flooder.adopt
    pump = SignallingPump(
        config,
        core,
        tls=tls.sip,
        steering=steering,
        impairments=None if overlay is None else overlay.impairments,
        security=security,
        media=media if worker_media is None else worker_media,
        mesh=mesh if worker_link is None else worker_link,
        view=view,
        events=events.publish,
        resolver=resolver,
        trunks=trunks,
        calls=None if overlay is None else overlay.calls,
        replicate=None if replication is None else replication.flush,
    )
    counters = CounterSources()
    counters.add(pump.counters)
    if trunks is not None:
        counters.add(trunks.counters)
    if media is not None:
        counters.add(media.counters)
    if worker_media is not None:
        counters.add(worker_media.counters)
    if mesh is not None:
        counters.add(mesh.counters)
    if replication is not None:
        counters.add(replication.counters)
    if worker_link is not None:
        counters.add(worker_link.counters)
    calls = None if overlay is None else overlay.calls
    collector = NodeCollector(
        config.node,
        worker,
        counters=counters,
        stalls=stalls,
        calls=calls,
        mesh=mesh,
        trunks=None if trunks is None else trunks.health,
    )

    def readiness() -> str | None:
        """Why the node takes no new calls (``[health]``'s ``/ready``), or ``None``."""
        if drain.draining:
            return "draining"
        if mesh is not None and not mesh.joined:
            return "standby: out of the mesh until it holds the pair's address"
        return None

    telemetry = Telemetry(config, worker, collector, mesh, readiness)
    counters.add(telemetry.counters)
    counters.add(stalls.counters)
    if security is not None:
        counters.add(security.counters)
    async with trio.open_nursery() as nursery:

        async def serve_sip(sockets: list[BoundSocket]) -> None:
            await nursery.start(pump.run, sockets)
            if trunks is not None:  # its probes leave through the pump's sockets
                await nursery.start(trunks.run, pump.transport)

        sip_serving = trio.Event()
        if bound is not None:
            await serve_sip(bound)
            sip_serving.set()
        if worker_link is not None and replication is not None:
            assert worker_media is None or isinstance(worker_media, WorkerMedia)

            async def serve_passed(sockets: list[BoundSocket]) -> None:
                await serve_sip(sockets)
                sip_serving.set()
                log.info("serving the SIP sockets passed by worker 0", sockets=len(sockets))

            async def take_over_when_serving() -> None:
                await sip_serving.wait()  # its pump sends what promote makes
                _take_over_worker(core, worker_media, replication, pump, worker)

            worker_link.sip_sockets = lambda sockets: nursery.start_soon(serve_passed, sockets)
            worker_link.take_over = lambda: nursery.start_soon(take_over_when_serving)
            nursery.start_soon(_run_worker_replication, replication, tls.grpc)
        if security is not None:
            nursery.start_soon(security.run)
        if media is not None:
            await nursery.start(_run_media, media)
        if worker_link is not None:
            await nursery.start(worker_link.run)
        if owner_links is not None:
            await nursery.start(owner_links.run)
        control = None
        if overlay is not None and mesh is not None:  # both, with [[peers]]
            make_control = functools.partial(
                ControlPlane,
                config,
                mesh=mesh,
                events=events,
                calls=overlay.calls,
                router=router,
                drain=drain,
                access=overlay.access,
                counters=counters,
                media=None
                if media is None
                else MediaPlaneView(media.edge.sessions.of_call, media, media.set_faults),
                # With several workers each has its own guard: this one lists and lifts the
                # blocks of worker 0 only.
                blocks=None if security is None else security.guard,
                trunks=trunks,
                workers=owner_links,
            )
            take_address = None
            if bound is None:

                async def take_address() -> tuple[int, int]:
                    sockets = await _bind_held(config)
                    await serve_sip(sockets)
                    if owner_links is not None:  # the other workers serve them too
                        owner_links.send_sockets(sockets)
                    return len(sockets), 0 if media is None else media.release_relay()

            control = await nursery.start(
                functools.partial(
                    _serve_grpc,
                    replication=replication,
                    take_over=functools.partial(
                        _take_over, core, media, mesh, replication, owner_links
                    ),
                ),
                config,
                tls.grpc,
                mesh,
                make_control,
                take_address,
            )
            counters.add(control.counters)
        await nursery.start(telemetry.run)
        # Started last: the set-up above is no stall of a serving node. It measures real
        # time: under a test's MockClock it has nothing to measure, and its 10 ms ticks would
        # keep the clock from jumping over minutes of SIP timers.
        if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            await nursery.start(stalls.run)
        log.info("node started", node_id=node_id, worker=worker, listeners=len(listeners))
        try:
            yield Node(
                config=config,
                listeners=listeners,
                signalling=pump,
                events=events,
                drain=drain,
                stalls=stalls,
                telemetry=telemetry,
                counters=counters,
                security=security,
                media=media,
                calls=calls,
                mesh=mesh,
                control=control,
                trunks=trunks,
            )
        finally:
            nursery.cancel_scope.cancel()


@dataclass(frozen=True, slots=True)
class _OverlayParts:
    """What only an overlay node (with ``[[peers]]``) has, before its mesh: the routes' view,
    the call book, who may call its gRPC services, its links' fault injection."""

    view: RouteView
    calls: CallTracker
    access: AccessPolicy
    impairments: Impairments

    @classmethod
    def make(
        cls,
        config: NodeConfig,
        tls: TlsCredentials | None,
        edge: MediaEdge | None,
        events: EventHub,
    ) -> _OverlayParts:
        peers = config.peers
        count = None if edge is None else edge.sessions.of_call
        if tls is None:
            log.warning("gRPC without TLS (insecure = true): anyone who reaches it is operator")
        return cls(
            view=RouteView(
                config.node.node_id, {peer.node_id: Peer("udp", *peer.sip) for peer in peers}
            ),
            # The call book sits in front of the media edge (with [media]).
            calls=CallTracker(
                edge,
                media_sessions=None if count is None else lambda call_id: len(count(call_id)),
                on_failed=events.publish,
            ),
            access=AccessPolicy(
                config.node.node_id, [peer.node_id for peer in peers], secure=tls is not None
            ),
            impairments=Impairments(
                # Seeded per node: a lab run's losses are reproducible.
                rng=random.Random(config.node.node_id),
                base_delay_ms={peer.node_id: peer.base_delay_ms for peer in peers},
                addresses={peer.node_id: [peer.sip] for peer in peers},
            ),
        )


def _take_over(
    core: ProxyCore,
    media: MediaPlane | None,
    mesh: Mesh,
    replication: PairReplication | None,
    owner_links: OwnerLinks | None = None,
) -> None:
    """A pair member now holds the address: what it replicated of its active's calls becomes
    its own (their INVITE transactions, their media sessions' inactivity clocks), and its LSA
    keeps the active's call-state epoch, so the peers keep the calls (module notes). With
    several workers, each other worker promotes its own (``_take_over_worker``)."""
    now = trio.current_time()
    if owner_links is not None and replication is not None:
        owner_links.take_over()
    epoch = None if replication is None else replication.take_over()
    # What was replicated becomes this node's own, whole or not: it must time out here.
    invites = core.promote(now)
    sessions = 0 if media is None else len(media.edge.sessions.promote(now))
    if epoch is None:
        log.info("holding the pair's address with no whole state of an active to take over")
        return
    mesh.take_over(epoch, now)
    log.warning(
        "took over the pair's calls",
        calls=0 if replication is None else replication.log.calls,
        invites=invites,
        media_sessions=sessions,
    )


def _take_over_worker(
    core: ProxyCore,
    media: WorkerMedia | None,
    replication: PairReplication,
    pump: SignallingPump,
    worker: int,
) -> None:
    """``_take_over`` for a worker above 0, told by worker 0: what it followed of the same
    worker of the active becomes its own; the mesh is worker 0's."""
    now = trio.current_time()
    whole = replication.take_over() is not None
    invites = core.promote(now)
    sessions = 0 if media is None else len(media.edge.sessions.promote(now))
    pump.rerouted([], [], [])  # a flush: what promote queued leaves now, timers re-armed
    log.warning(
        "took over the pair's calls",
        worker=worker,
        whole=whole,
        calls=replication.log.calls,
        invites=invites,
        media_sessions=sessions,
    )


async def _run_worker_replication(replication: PairReplication, tls: TlsCredentials | None) -> None:
    """A worker above 0's replication: its flushes, and its follower on a gRPC bridge of its
    own (only worker 0 serves gRPC; a client needs no server)."""
    if replication.follower is None:
        await replication.run(None)
        return
    async with open_grpc_bridge(tls=tls) as bridge:
        await replication.run(bridge)


def _pair_replication(
    config: NodeConfig,
    overlay: _OverlayParts | None,
    core: ProxyCore,
    media: MediaPlane | WorkerMedia | None,
    epoch: bytes,
    worker: int = 0,
) -> PairReplication | None:
    """A pair member's replication, marked by the call book and the media edge whose calls it
    reads; ``None`` outside a pair. ``worker``: which SIP worker (with several, each
    replicates its own calls)."""
    pair = config.pair
    if pair is None or overlay is None:  # [pair] needs [[peers]] (the configuration checks)
        return None
    replication = PairReplication(
        config.node.node_id,
        peer=pair.peer_grpc,
        holds=functools.partial(holds, pair),
        access=overlay.access,
        epoch=epoch,
        calls=overlay.calls,
        core=core,
        edge=None if media is None else media.edge,
        apply_media=None if media is None else media.apply,
        worker=worker,
    )
    overlay.calls.on_change = replication.log.mark
    if media is not None:
        media.edge.on_change = replication.log.mark
    return replication


def _trunk_prober(
    config: NodeConfig,
    listeners: tuple[Listener, ...],
    steering: Steering | None,
    resolver: SipResolver,
    events: EventHub,
) -> TrunkProber | None:
    """The prober of the trunks this node sends calls to, ``None`` with ``[trunks] enabled =
    false`` or no dialplan rule whose calls leave here.

    With several workers each worker probes for itself: workers are processes, each with its
    own proxy core to order next hops for, and probe answers are steered back to the worker
    that sent the probe (``overlay.shell.trunks``).
    """
    targets = trunk_targets(config)
    if not config.trunks.enabled or not targets:
        return None
    health = TrunkHealth(
        config.node.node_id,
        config.trunks,
        listeners=listeners,
        user_agent=config.sip.user_agent,
        now=trio.current_time(),
        # Wall-clock milliseconds: a restarted node does not reuse its probes' Call-IDs.
        first_probe=int(wall_time() * 1000),
        worker=0 if steering is None else steering.index,
        workers=1 if steering is None else len(steering.outbound),
    )
    return TrunkProber(health, targets, resolver=resolver, events=events.publish)


async def _serve_grpc(
    config: NodeConfig,
    tls: TlsCredentials | None,
    mesh: Mesh,
    make_control: Callable[..., ControlPlane],
    take_address: Callable[[], Awaitable[tuple[int, int]]] | None,
    *,
    replication: PairReplication | None = None,
    take_over: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[ControlPlane] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The gRPC server of an overlay node (link-state flooding, the Control service made on
    its bridge; a pair member's ``replication``, its PairState service and its task) and the
    mesh on it; reports the Control service once the server listens.

    ``take_address``: a member that holds by file binds with it, once it holds, what it waits
    to bind (its SIP sockets and relay; it returns how many sockets and relay sessions), then
    serves gRPC at the pair's address too, all timed as one sweep (module notes)."""
    grpc = config.grpc
    assert grpc is not None  # [[peers]] need [grpc] (the configuration checks)
    async with open_grpc_bridge(tls=tls) as bridge, trio.open_nursery() as nursery:
        control = make_control(bridge=bridge)
        services = [*mesh.services(), control.service()]
        if replication is not None:
            services.append(replication.service())
        port = await bridge.start_server(grpc.host, grpc.port, services)
        nursery.start_soon(_beat_liveness, bridge)
        if replication is not None:
            nursery.start_soon(replication.run, bridge)
        log.info("grpc listening", host=grpc.host, port=port)
        task_status.started(control)
        if config.pair is not None and take_address is not None:
            await wait_held(config.pair)
            start = trio.current_time()
            sockets, sessions = await take_address()
            await bridge.start_server(config.pair.address, port, services)
            log.warning(
                "pair address held: bound in one sweep",
                address=config.pair.address,
                sip_sockets=sockets,
                relay_sessions=sessions,
                sweep_ms=round((trio.current_time() - start) * 1000, 2),
            )
        await run_mesh(config.pair, mesh, bridge, take_over)


async def _bind_held(config: NodeConfig) -> list[BoundSocket]:
    """``bind(config)`` for a member that has just come to hold the pair's address by file,
    waiting up to ``HELD_BIND_WAIT`` for a previous holder to let go of its ports.

    Raises:
        OSError: an address cannot be bound (still in use after the wait, or another error).
    """
    assert config.pair is not None
    deadline = trio.current_time() + HELD_BIND_WAIT
    while True:
        try:
            return bind(config)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or trio.current_time() >= deadline:
                raise
            log.warning("pair address held, its ports not yet let go", error=str(exc))
        await trio.sleep(config.pair.check_interval)


async def _beat_liveness(bridge: GrpcBridge) -> None:
    """Keep the liveness status the pair's HA agent checks SERVING while this event loop turns:
    a wedged node then reads dead, a drained one alive (``LIVENESS_SERVICE``)."""
    while True:
        bridge.beat(LIVENESS_SERVICE, ttl=LIVENESS_TTL)
        await trio.sleep(LIVENESS_TTL / 4)


async def _run_media(
    media: MediaPlane, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The relay's thread for as long as the node runs."""
    media.start()
    try:
        task_status.started()
        await media.run()
    finally:
        media.stop()
