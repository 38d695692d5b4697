"""The overlay's trio shell: probes, link-state flooding over gRPC, route computation.

``Mesh`` drives the sans-IO pieces of ``overlay.linkstate`` and ``overlay.routing`` for one node:

* **Probes.** Every ``probe_interval`` an OPTIONS probe goes to every peer through the node's
  SIP transport (so it crosses the same impairment layer as calls). The node hands datagrams that
  carry the probe mark to ``handle_probe``: a peer's probe is answered at once, an answer to ours
  feeds that peer's ``LinkMonitor``. With a media relay, each round also sends an echo to every
  neighbour's relay (``MediaEcho``) and feeds the answers to the same monitors, so the links'
  loss and jitter include the media path's.
* **Liveness.** With a media relay and ``[linkstate] liveness_interval``, the relay thread
  exchanges liveness echoes with every neighbour's relay and wakes ``_follow_liveness`` when
  one falls silent for ``liveness_multiplier`` intervals or comes back; the monitor takes the
  link down (or into grace) at once. Detection then takes ~120-140 ms instead of the probes'
  ``probe_multiplier * probe_interval``, with no Python at either end on the echoes' path.
* **Flooding.** For every peer one task keeps a gRPC ``LinkState.Flood`` stream open to it (the
  *client* stream: our LSAs go out on it, the peer's acks come back); the peer's own stream to us
  arrives at ``_serve_flood`` (the *server* stream: its LSAs come in, our acks go out). A session
  is up while our client stream is. Everything sent to a peer passes ``Impairments`` first.
* **Routes.** When the LSDB changes, a route computation is scheduled ``route_debounce`` seconds
  later (a burst of LSAs costs one computation); the new ``RouteTable`` is installed in the
  node's ``RouteView`` in one assignment, so readers always see a whole table, and every change
  is logged with its reason. ``on_routes`` is told of every new table (the node's other SIP
  workers install it in their own views: ``overlay.shell.workerlink``).
* **Forwarding.** The proxy addresses every SIP message for another node to that node's own
  address; the view turns it into the current next hop's address (``forward_address``), and
  when the next hop toward some nodes changes, ``on_reroute`` tells the signalling pump so it
  resends what is pending, which nodes it lost every route to (their calls fail over), and
  which advertise a new call-state epoch (restarted without their calls: ours with them end).
* **Operators.** The Control service (``overlay.shell.control``) drains the node
  (``set_draining``: advertised in the LSA, so others stop using it as transit) and overrides
  links (``set_override``; ``overrides`` are applied to every set of links given to the
  flooder and expire by themselves). Link and route changes and expired overrides are reported
  to ``events``.

One timer task sleeps until the earliest deadline of all of these (next probe round, a monitor's
detection time, the flooder's retransmissions, refresh and aging, the debounced computation).
That deadline is never more than a probe interval away, so the mesh knows when the node itself
stalled: when the timer wakes, or a probe arrives, more than ``STALL_THRESHOLD`` of an interval
after the deadline, the event loop could not run meanwhile. The monitors are then told to
excuse that time (``LinkMonitor.excuse``), so the node's own pause (a long collector pass, an
overload burst) never makes it declare a healthy neighbour dead; the stall is logged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog
import trio

from fastpath import LivenessCounters
from overlay.config import NodeConfig, PeerConfig
from overlay.grpc import (
    AccessPolicy,
    BridgedStream,
    GrpcBridge,
    RpcError,
    Service,
    StatusCode,
    StreamBroken,
    current_caller,
    node_of,
    stream_handler,
)
from overlay.linkstate import (
    BadLsa,
    FloodConfig,
    Flooder,
    LinkMonitor,
    LinkState,
    Lsa,
    LsaAck,
    ProbeAnswer,
    ProbeConfig,
    ProbeRequest,
    answer_probe,
    lsa_from_message_untrusted,
    lsa_to_message,
    probe_request,
    read_probe_untrusted,
)
from overlay.noc import (
    EventSink,
    LinkChanged,
    LinkOverride,
    LinkOverrides,
    OverrideCleared,
    RouteChanged,
)
from overlay.routing import RouteTable, RouteView, RoutingPolicy, compute_routes
from overlay.shell.transport import DelayLine, Impairments
from overlay.sip import Peer
from overlay.v1 import linkstate_pb2

log = structlog.get_logger("overlay.mesh")

FLOOD_METHOD = "/overlay.v1.LinkState/Flood"
HELLO_TIMEOUT = 2.0
RECONNECT_DELAY = 0.2
#: A wake-up this late (in probe intervals) means the event loop stalled (module notes).
STALL_THRESHOLD = 0.5


class MediaEcho(Protocol):
    """The media relay's echo, as the mesh uses it (``MediaPlane``)."""

    def send_echo(self, neighbor: str, seq: int) -> None: ...

    def take_echo_replies(self) -> list[tuple[str, int, float]]: ...

    def start_liveness(
        self, neighbors: Iterable[str], interval: float, detection_time: float
    ) -> None: ...

    async def wait_liveness(self) -> None: ...

    def liveness(self) -> Mapping[str, LivenessCounters]: ...


class Mesh:
    """Link state and routing of one node; see the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        view: RouteView,
        local_sip: Peer,
        send_sip: Callable[[bytes, Peer], None],
        take_traffic: Callable[[], dict[Peer, tuple[int, int]]],
        on_reroute: Callable[[list[Peer], list[str], list[str]], None],
        impairments: Impairments,
        on_routes: Callable[[RouteTable], None] | None = None,
        initial_seq: int,
        now: float,
        state_epoch: bytes = b"",
        echo: MediaEcho | None = None,
        events: EventSink | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        node = config.node
        linkstate = config.linkstate
        self.node_id = node.node_id
        self._config = config
        self._local_sip = local_sip
        self._send_sip = send_sip
        self._take_traffic = take_traffic
        self._on_reroute = on_reroute
        self._on_routes = on_routes
        self._echo = echo
        self._echo_peers = {peer.node_id for peer in config.peers if peer.media is not None}
        self._events = events
        self._access = access
        self.overrides = LinkOverrides()
        self.impairments = impairments
        self._peers = {peer.node_id: peer for peer in config.peers}
        self.view = view
        view.heard = self._heard
        self._probe = ProbeConfig(
            interval=linkstate.probe_interval,
            multiplier=linkstate.probe_multiplier,
            hold_down=linkstate.hold_down,
            probe_timeout=linkstate.probe_timeout,
        )
        self._debounce = linkstate.route_debounce
        self._liveness = (linkstate.liveness_interval, linkstate.liveness_multiplier)
        self.monitors = {
            peer.node_id: LinkMonitor(peer.node_id, self._probe, now, admin_cost=peer.admin_cost)
            for peer in config.peers
        }
        self.flooder = Flooder(
            node.node_id,
            node.region,
            node.az,
            FloodConfig(
                refresh_interval=linkstate.refresh_interval,
                max_age=linkstate.max_age,
                retransmit_interval=linkstate.retransmit_interval,
            ),
            initial_seq=initial_seq,
            now=now,
            takeover_grace_s=0.0 if config.pair is None else config.pair.takeover_grace,
            state_epoch=state_epoch,
        )
        self._epochs: dict[str, bytes] = {}  # the call-state epoch each origin advertised
        self.policy = RoutingPolicy()
        view.table, _ = compute_routes(
            self.flooder.lsdb.snapshot(), self.node_id, self.policy, None, now
        )
        self._routes_due: float | None = None
        self._routes_changed = trio.Event()  # set, and replaced, with every new route table
        self._lsdb_version = self.flooder.lsdb.version
        self._next_probe = now
        self._client_streams: dict[str, BridgedStream] = {}
        self._server_streams: dict[str, BridgedStream] = {}
        self._delay_line = DelayLine()
        self._wake = trio.Event()
        self._sleeping_until = math.inf
        self._excused_until = now  # the end of the last stall the monitors were told of
        self.stalls_excused = 0
        self.bad_messages = 0
        self.flood_send_drops = 0
        #: Whether the node takes part in the mesh: ``False`` for a pair's standby, which
        #: neither probes nor floods, so it has no links to report (``overlay.shell.pair``).
        self.joined = False

    @property
    def routes(self) -> RouteTable:
        """The route table in force (the one installed in the view)."""
        return self.view.table

    # -- services -----------------------------------------------------------------------------

    def services(self) -> list[Service]:
        """The gRPC service of link-state flooding (the Control service is ``ControlPlane``)."""
        return [
            Service(
                "overlay.v1.LinkState",
                {
                    "Flood": stream_handler(
                        self._serve_flood,
                        linkstate_pb2.FloodMessage.FromString,
                        linkstate_pb2.FloodReply.SerializeToString,
                    )
                },
                None if self._access is None else self._access.authorize_flood,
            ),
        ]

    async def run(self, bridge: GrpcBridge) -> None:
        """Probe, flood and compute routes until cancelled (the gRPC server runs elsewhere)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._delay_line.run)
            nursery.start_soon(self._timer_loop)
            interval, multiplier = self._liveness
            if self._echo is not None and self._echo_peers and interval:
                self._echo.start_liveness(self._echo_peers, interval, interval * multiplier)
                nursery.start_soon(self._follow_liveness, self._echo)
            for peer in self._peers.values():
                nursery.start_soon(self._dial, bridge, peer)

    # -- probes -------------------------------------------------------------------------------

    def handle_probe(self, data: bytes, source: Peer) -> bool:
        """Consume a datagram if it is a probe or a probe answer; ``False`` hands it to SIP."""
        probe = read_probe_untrusted(data)
        if probe is None:
            return False
        now = trio.current_time()
        self._excuse_stall(now)
        if isinstance(probe, ProbeRequest):
            user_agent = self._config.sip.user_agent
            self._send_sip(answer_probe(probe, user_agent=user_agent), source)
            return True
        self._probe_answered(probe, source, now)
        return True

    def _probe_answered(self, answer: ProbeAnswer, source: Peer, now: float) -> None:
        monitor = self.monitors.get(answer.responder)
        expected = self.view.peers.get(answer.responder)
        if answer.sender != self.node_id or monitor is None or expected != source:
            self.bad_messages += 1
            return
        if answer.status != 200:
            return  # a peer still starting: its SIP core answered (483), its mesh is not up
        # An answer that changes no state only moves deadlines later: the timer, which wakes
        # every probe interval anyway, needs no re-arming (this runs for every answer).
        if monitor.probe_answered(answer.seq, now) is not None:
            self._link_changed(monitor, now)
            self._after_input(now)

    def _send_probes(self, now: float) -> None:
        echo = self._echo
        if echo is not None:
            for node_id, seq, received_at in echo.take_echo_replies():
                self.monitors[node_id].echo_answered(seq, received_at)
        for node_id, monitor in self.monitors.items():
            seq = monitor.next_probe(now)
            peer = self.view.peers[node_id]
            self._send_sip(probe_request(self.node_id, self._local_sip, node_id, peer, seq), peer)
            if echo is not None and node_id in self._echo_peers:
                echo.send_echo(node_id, monitor.next_echo(now))

    async def _follow_liveness(self, echo: MediaEcho) -> None:
        """Apply the relay's liveness verdicts as they come (module notes)."""
        while True:
            await echo.wait_liveness()
            now = trio.current_time()
            changed = False
            for node_id, state in echo.liveness().items():
                monitor = self.monitors[node_id]
                if monitor.liveness_changed(state["silent"], now) is not None:
                    changed = True
                    self._link_changed(monitor, now)
            if changed:
                self._after_input(now)

    def liveness(self) -> Mapping[str, LivenessCounters]:
        """Each neighbour's liveness echoes, where they run (``ListLinks``)."""
        interval, _ = self._liveness
        if self._echo is None or not interval or not self.joined:
            return {}
        return self._echo.liveness()

    def _link_changed(self, monitor: LinkMonitor, now: float) -> None:
        metrics = monitor.metrics(now)
        # A link going down reroutes calls and starts a hold-down: the NOC must see it at
        # WARNING, with how long the neighbour had been silent.
        emit = log.info if monitor.state is LinkState.UP else log.warning
        emit(
            "link " + monitor.state.value.lower(),
            neighbor=monitor.neighbor,
            rtt_ms=metrics.rtt_ms,
            loss_ratio=metrics.loss_ratio,
            silent_ms=monitor.silent_ms(now),
            cause=None if monitor.state is LinkState.UP else monitor.cause,
        )
        if self._events is not None:
            up = monitor.state is LinkState.UP
            self._events(LinkChanged(monitor.neighbor, up, metrics, "" if up else monitor.cause))
        self._update_links(now)

    def _update_links(self, now: float) -> None:
        for override in self.overrides.expire(now):
            log.warning("link override expired", peer=override.peer, was=override.describe())
            if self._events is not None:
                self._events(OverrideCleared(override, expired=True))
        links = self.overrides.apply(m.metrics(now) for m in self.monitors.values())
        self.flooder.set_links(links, now)

    def _heard(self, node_id: str) -> bool:
        """Whether ``node_id`` answered a probe within the detection time (``RouteView.heard``)."""
        monitor = self.monitors.get(node_id)
        silent = None if monitor is None else monitor.silent_ms(trio.current_time())
        return silent is not None and silent <= self._probe.detection_time * 1000

    def take_over(self, epoch: bytes, now: float) -> None:
        """This node is a pair's standby about to join in place of the active whose calls it
        followed: its LSA keeps that active's call-state ``epoch``; the links its active had
        up start UP (the others come up on their first answer), and routes are computed at
        once from the link-state database replicated from the active, so neither the peers
        nor the calls' media lose the node for a detection time."""
        followed = self.flooder.followed
        up = set() if followed is None else {link.neighbor for link in followed.links if link.up}
        for neighbor, monitor in self.monitors.items():
            if neighbor in up:
                monitor.assume_up(now)
            monitor.up_on_first_answer = True
        self.flooder.set_epoch(epoch, now)
        self._update_links(now)
        self._compute_routes(now)

    # -- operators ----------------------------------------------------------------------------

    def set_draining(self, draining: bool, now: float) -> None:
        """Advertise (or stop advertising) that this node takes no new calls."""
        self.flooder.set_draining(draining, now)
        self._after_input(now)

    def set_override(self, override: LinkOverride, now: float) -> LinkOverride | None:
        """Put ``override`` in force and advertise it at once; returns the one it replaced."""
        replaced = self.overrides.set(override)
        self._update_links(now)
        self._after_input(now)
        return replaced

    def clear_overrides(self, peer: str | None, now: float) -> list[LinkOverride]:
        """Remove the override of ``peer`` (``None``: all) and advertise the links without."""
        removed = self.overrides.clear(peer)
        if removed:
            self._update_links(now)
            self._after_input(now)
        return removed

    def record_traffic(self, traffic: dict[Peer, tuple[int, int]], now: float) -> None:
        """Requests and retransmissions the proxy sent per destination node, for the retrans
        ratio of the link they left on (the first hop toward that node)."""
        next_hops = self.routes.next_hops()
        for peer, (requests, retransmissions) in traffic.items():
            hop = next_hops.get(self.view.node_at.get(peer, ""))
            if hop is not None:
                self.monitors[hop].record_traffic(requests, retransmissions, now)

    # -- forwarding ---------------------------------------------------------------------------

    async def wait_reachable(self, node_id: str, *, until: float) -> bool:
        """Wait until there is a route to ``node_id`` (``True``) or ``until`` passes."""
        with trio.move_on_at(until):
            while not self.view.reachable(node_id):
                await self._routes_changed.wait()
        return self.view.reachable(node_id)

    # -- flooding -----------------------------------------------------------------------------

    async def _dial(self, bridge: GrpcBridge, peer: PeerConfig) -> None:
        """Keep our Flood stream to ``peer`` open; the session is up while it is."""
        target = f"{peer.grpc[0]}:{peer.grpc[1]}"
        hello = linkstate_pb2.FloodMessage(
            hello=linkstate_pb2.Hello(node_id=self.node_id, region=self._config.node.region)
        )
        while True:
            try:
                async with bridge.open_stream(
                    target,
                    FLOOD_METHOD,
                    linkstate_pb2.FloodMessage.SerializeToString,
                    linkstate_pb2.FloodReply.FromString,
                ) as stream:
                    self._impaired_send(peer.node_id, stream, hello)
                    with trio.move_on_after(HELLO_TIMEOUT) as scope:
                        reply = await stream.receive()
                    if scope.cancelled_caught or reply.hello.node_id != peer.node_id:
                        raise StreamBroken(StatusCode.UNAVAILABLE, "no hello")
                    await self._client_session(peer.node_id, stream)
            except (StreamBroken, trio.EndOfChannel):
                pass
            await trio.sleep(RECONNECT_DELAY)

    async def _client_session(self, neighbor: str, stream: BridgedStream) -> None:
        self._client_streams[neighbor] = stream
        log.info("flooding session up", neighbor=neighbor)
        try:
            self.flooder.session_up(neighbor, trio.current_time())
            self._after_input(trio.current_time())
            while True:
                reply = await stream.receive()
                if reply.HasField("ack"):
                    ack = LsaAck(reply.ack.origin, reply.ack.seq)
                    self.flooder.receive_ack(neighbor, ack)
        finally:
            del self._client_streams[neighbor]
            self.flooder.session_down(neighbor)
            log.info("flooding session down", neighbor=neighbor)

    async def _serve_flood(self, stream: BridgedStream) -> None:
        """A peer's Flood stream to us: its LSAs in, our acks out."""
        first = await stream.receive()
        neighbor = first.hello.node_id
        if neighbor not in self._peers:
            raise RpcError(StatusCode.PERMISSION_DENIED, f"unknown node {neighbor!r}")
        authenticated = node_of(current_caller())
        if authenticated is not None and authenticated != neighbor:
            # A node may flood only as itself: its certificate names it (overlay.grpc).
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"hello from {neighbor!r} over a connection authenticated as {authenticated!r}",
            )
        hello = linkstate_pb2.Hello(node_id=self.node_id, region=self._config.node.region)
        self._impaired_send(neighbor, stream, linkstate_pb2.FloodReply(hello=hello))
        self._server_streams[neighbor] = stream
        try:
            while True:
                message = await stream.receive()
                if not message.HasField("lsa"):
                    continue
                try:
                    lsa = lsa_from_message_untrusted(message.lsa)
                except BadLsa as error:
                    self.bad_messages += 1
                    log.warning("bad LSA dropped", neighbor=neighbor, reason=str(error))
                    continue
                now = trio.current_time()
                self.flooder.receive_lsa(neighbor, lsa, now)
                self._after_input(now)
        except (trio.EndOfChannel, StreamBroken):
            pass  # the peer closed its stream, or died: its dial loop reconnects when it can
        finally:
            if self._server_streams.get(neighbor) is stream:
                del self._server_streams[neighbor]

    def _flush_flooding(self) -> None:
        for neighbor, message in self.flooder.messages_to_send():
            if isinstance(message, Lsa):
                client = self._client_streams.get(neighbor)
                if client is not None:
                    wire = linkstate_pb2.FloodMessage(lsa=lsa_to_message(message))
                    self._impaired_send(neighbor, client, wire)
            else:
                server = self._server_streams.get(neighbor)
                if server is not None:
                    ack = linkstate_pb2.LsaAck(origin=message.origin, seq=message.seq)
                    self._impaired_send(neighbor, server, linkstate_pb2.FloodReply(ack=ack))

    def _impaired_send(self, neighbor: str, stream: BridgedStream, message: object) -> None:
        delay = self.impairments.verdict(neighbor)
        if delay is None:
            return
        send = functools.partial(self._send_quietly, stream, message)
        if delay > 0:
            self._delay_line.schedule(delay, send, ordered_key=stream)
        else:
            send()

    def _send_quietly(self, stream: BridgedStream, message: object) -> None:
        """Send on a stream that may have broken or filled meanwhile: what is lost here is
        retransmitted by the flooder (LSAs) or by the peer (unacknowledged LSAs)."""
        try:
            stream.send_nowait(message)
        except (StreamBroken, trio.WouldBlock, trio.ClosedResourceError):
            self.flood_send_drops += 1

    # -- time ---------------------------------------------------------------------------------

    def _after_input(self, now: float) -> None:
        """After anything changed: send what is owed, schedule routes, re-arm the timer."""
        self._flush_flooding()
        version = self.flooder.lsdb.version
        if version != self._lsdb_version and self._routes_due is None:
            self._routes_due = now + self._debounce
        self._lsdb_version = version
        deadline = self._next_deadline()
        if deadline < self._sleeping_until:
            self._wake.set()

    def _next_deadline(self) -> float:
        deadlines = [self._next_probe]
        for monitor in self.monitors.values():
            timer = monitor.get_timer()
            if timer is not None:
                deadlines.append(timer)
        timer = self.flooder.get_timer()
        if timer is not None:
            deadlines.append(timer)
        if self._routes_due is not None:
            deadlines.append(self._routes_due)
        return min(deadlines)

    async def _timer_loop(self) -> None:
        while True:
            self._sleeping_until = self._next_deadline()
            self._wake = trio.Event()
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            now = trio.current_time()
            self._excuse_stall(now)
            self._sleeping_until = math.inf
            self._handle_timer(now)

    def _excuse_stall(self, now: float) -> None:
        """If the event loop could not run since the timer's deadline, excuse the neighbours'
        silence meanwhile (module notes)."""
        start = max(self._sleeping_until, self._excused_until)
        if now - start <= STALL_THRESHOLD * self._probe.interval:
            return
        self._excused_until = now
        self.stalls_excused += 1
        # The stall watchdog (overlay.shell.stall) warns of the stall itself; this says its cost.
        log.info("link detection paused for a stall", stalled_ms=round((now - start) * 1e3))
        for monitor in self.monitors.values():
            monitor.excuse(start, now)

    def _handle_timer(self, now: float) -> None:
        changed = False
        for monitor in self.monitors.values():
            if monitor.handle_timer(now) is not None:
                changed = True
                self._link_changed(monitor, now)
        if now >= self._next_probe:
            self._send_probes(now)
            self._next_probe = now + self._probe.interval
            self.record_traffic(self._take_traffic(), now)
            if not changed:
                self._update_links(now)  # metrics drift: the flooder decides if it matters
        self.flooder.handle_timer(now)
        if self._routes_due is not None and now >= self._routes_due:
            self._routes_due = None
            self._compute_routes(now)
        self._after_input(now)

    def _compute_routes(self, now: float) -> None:
        lsdb = self.flooder.lsdb.snapshot()
        for neighbor, monitor in self.monitors.items():
            lsa = lsdb.get(neighbor)
            monitor.grace = 0.0 if lsa is None else lsa.takeover_grace_s
        restarted = []
        for origin, lsa in lsdb.items():
            known = self._epochs.get(origin)
            if known and lsa.state_epoch and known != lsa.state_epoch and origin != self.node_id:
                restarted.append(origin)  # its calls are gone: end ours with them at once
                log.warning("peer restarted without its calls", peer=origin)
            if lsa.state_epoch:
                self._epochs[origin] = lsa.state_epoch
        table, changes = compute_routes(lsdb, self.node_id, self.policy, self.routes, now)
        before = self.routes.next_hops()
        graced_before = {node for node in before if self.view.in_grace(node)}
        self.view.table = table
        if self._on_routes is not None:
            self._on_routes(table)  # before on_reroute: the workers' pumps read the new table
        self._routes_changed.set()
        self._routes_changed = trio.Event()
        moved = [
            self.view.peers[destination]
            for destination, hop in table.next_hops().items()
            if before.get(destination) != hop and destination in self.view.peers
        ]
        # Lost: no route left, or (new calls' fail-over) a pair member just taken into grace.
        lost = [
            destination
            for destination in before
            if destination not in table.paths
            or (destination not in graced_before and self.view.in_grace(destination))
        ]
        if moved or lost or restarted:
            self._on_reroute(moved, lost, restarted)
        for change in changes:
            log.info(
                "route changed",
                destination=change.destination,
                old=None if change.old_path is None else "→".join(change.old_path),
                new=None if change.new_path is None else "→".join(change.new_path),
                reason=change.reason,
                version=table.version,
            )
            if self._events is not None:
                self._events(
                    RouteChanged(
                        change.destination,
                        change.old_path,
                        change.new_path,
                        change.reason,
                        table.version,
                    )
                )

    # -- reading ------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The mesh's own counters, by dotted name (the Control service's GetCounters)."""
        return {
            "overlay.unroutable": self.view.unroutable,
            "overlay.bad_messages": self.bad_messages,
            "overlay.flood_send_drops": self.flood_send_drops,
            "overlay.stalls_excused": self.stalls_excused,
        }
