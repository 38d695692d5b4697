"""The lab: node processes, a SIPp callee behind the egress, and the admin calls a NOC tool
would make, for ``overlay lab``, ``overlay demo``, the chaos tests and benchmarks.

``open_lab`` starts a topology (``topology.REFERENCE`` unless told otherwise), every node its
own OS process on its own loopback address, with a dialplan that sends every call to a SIPp UAS
behind the topology's egress; calls enter at its ingresses (``Lab.place_calls``). Everything the
lab does to the nodes goes through their gRPC Control service, as it would in the field, with
mutual TLS: the lab makes a CA and the nodes' certificates for the run (``overlay.lab.pki``)
and calls as an operator. Faults the lab injects are remembered, so that a node it restarts
after a kill gets its share of them again: a partition outlives the restart of one side.

With ``pairs=True`` every node runs as an active/standby pair (``overlay.lab.pairs``): two
member processes, each with its HA agent, arbitrated by moto's EC2 server. The lab reaches a
pair at the node's address, as its peers do: whichever member holds it answers there.
``kill_active`` kills the holder as its machine would die, and ``wait_taken_over`` times the
takeover.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from overlay.grpc import BridgedStream, GrpcBridge, Role, RpcError, open_grpc_bridge
from overlay.lab.node_process import (
    READY_TIMEOUT_S,
    NodeProcess,
    open_node,
    set_niceness,
    wait_answers_options,
)
from overlay.lab.pairs import LabPair, open_ec2, open_pair
from overlay.lab.pki import LabPki, make_lab_pki
from overlay.lab.sipp import SippResult, SippUas, open_uas, run_uac
from overlay.lab.topology import (
    REFERENCE,
    SIP_PORT,
    LabNode,
    PairMember,
    Topology,
    lab_member_names,
    lab_node_ids,
    lab_nodes,
    node_config,
    pair_member_names,
    site_node_ids,
)
from overlay.v1 import control_pb2

INGRESS = REFERENCE.ingresses[0]
EGRESS = REFERENCE.egress
ADMIN_TIMEOUT_S = 2.0
#: A node restarted while the others carry calls starts at this niceness (``set_niceness``).
RESTART_NICENESS = 10
POLL_S = 0.02
#: The lab's callee lives as long as the lab (it is stopped by PID on exit); SIPp's own
#: ``-timeout`` only bounds an orphan's life. The default 15 minutes ended long soaks.
CALLEE_MAX_SECONDS = 24 * 3600.0

T = TypeVar("T")
M = TypeVar("M", bound=Message)

_CONTROL = control_pb2.DESCRIPTOR.services_by_name["Control"]


@dataclass(frozen=True)
class PairTakeover:
    """How a pair took over after ``Lab.kill_active``: seconds from the kill."""

    node_id: str
    killed: str  # the member killed
    holder: str  # the member that took over
    held_s: float  # until its agent held the address (the hold file named it)
    serving_s: float  # until its node answered SIP at the address


@dataclass
class LabControl:
    """Lab nodes as the NOC reaches them: each one's Control service, over ``bridge``."""

    nodes: dict[str, LabNode]
    bridge: GrpcBridge

    async def control(self, node_id: str, method: str, request: Message) -> Message:
        """One unary call of ``node_id``'s Control service."""
        response_type: type[Message] = getattr(
            control_pb2, _CONTROL.methods_by_name[method].output_type.name
        )
        return await self.bridge.unary(
            self.nodes[node_id].grpc_target,
            f"/overlay.v1.Control/{method}",
            request,
            lambda message: message.SerializeToString(),
            response_type.FromString,
            timeout=ADMIN_TIMEOUT_S,
        )

    async def path(self, node_id: str, destination: str) -> list[str]:
        """``node_id``'s current path to ``destination`` ([] when it has none)."""
        response = await self.control(node_id, "GetRoutes", control_pb2.GetRoutesRequest())
        assert isinstance(response, control_pb2.GetRoutesResponse)
        for route in response.routes:
            if route.destination == destination:
                return list(route.path)
        return []

    async def wait_path(
        self,
        node_id: str,
        destination: str,
        accept: Callable[[list[str]], bool],
        *,
        within: float,
    ) -> tuple[list[str], float]:
        """Poll until the path is accepted; returns it and how long that took.

        Raises:
            TimeoutError: not within ``within`` seconds.
        """
        start = trio.current_time()
        with trio.fail_after(within):
            while True:
                path = await self.path(node_id, destination)
                if accept(path):
                    return path, trio.current_time() - start
                await trio.sleep(POLL_S)

    async def call(self, node_id: str, method: str, request: Message, reply: type[M]) -> M:
        """``control``, its response checked to be a ``reply``."""
        response = await self.control(node_id, method, request)
        assert isinstance(response, reply), response
        return response

    async def counters(self, node_id: str) -> dict[str, int]:
        response = await self.control(node_id, "GetCounters", control_pb2.GetCountersRequest())
        assert isinstance(response, control_pb2.GetCountersResponse)
        return dict(response.counters)

    async def wait_serving(self, node_id: str, *, within: float = READY_TIMEOUT_S) -> None:
        """Until ``node_id``'s gRPC server says SERVING."""
        await _wait_serving(self.bridge, self.nodes[node_id].grpc_target, within=within)


@dataclass
class Lab(LabControl):
    """A running lab; see ``open_lab``."""

    processes: dict[str, NodeProcess]
    uas: SippUas | None  # None when the calls go to a callee of the test's own
    uac_host: str
    azs: int = 1
    dead: set[str] = field(default_factory=set)
    pki: LabPki | None = None  # the lab's CA and certificates (mutual TLS)
    topology: Topology = REFERENCE
    #: The faults in force, by the node that applies them and its peer.
    faults: dict[str, dict[str, control_pb2.Fault]] = field(default_factory=dict)
    #: What ``restart`` needs: each node's config and directory, and where its process lives.
    configs: dict[str, str] = field(default_factory=dict, repr=False)
    workdirs: dict[str, Path | None] = field(default_factory=dict, repr=False)
    stack: contextlib.AsyncExitStack | None = field(default=None, repr=False)
    #: With ``open_lab(pairs=True)``: every node's pair (``processes`` has none of them).
    pairs: dict[str, LabPair] = field(default_factory=dict)
    #: A pair's member killed by ``kill_active``, and when, until ``wait_taken_over``.
    killed: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)

    def live(self) -> list[str]:
        return [node_id for node_id in self.nodes if node_id not in self.dead]

    def site(self, site: str) -> list[str]:
        """The node ids of a region (by short name, e.g. ``EGRESS``): one per AZ."""
        return site_node_ids(site, self.azs)

    async def wait_all_links_up(self, *, within: float) -> None:
        """Until every live node sees every link to a live node up."""
        with trio.fail_after(within):
            for node_id in self.live():
                while True:
                    request = control_pb2.ListLinksRequest()
                    response = await self.control(node_id, "ListLinks", request)
                    assert isinstance(response, control_pb2.ListLinksResponse)
                    links = [link for link in response.links if link.neighbor not in self.dead]
                    if all(link.state == control_pb2.LinkStatus.UP for link in links):
                        break
                    await trio.sleep(POLL_S)

    async def degrade(self, a: str, b: str, *, delay_ms: float, loss_ratio: float) -> None:
        """Add delay and loss both ways on the link a-b (replacing any fault on it)."""
        for node_id, peer in ((a, b), (b, a)):
            fault = control_pb2.Fault(peer=peer, delay_ms=delay_ms, loss_ratio=loss_ratio)
            await self._inject(node_id, fault)

    async def partition(self, a: str, b: str) -> None:
        """Blackhole everything a and b send each other (replacing any fault on the link)."""
        for node_id, peer in ((a, b), (b, a)):
            await self._inject(node_id, control_pb2.Fault(peer=peer, blackhole=True))

    async def _inject(self, node_id: str, fault: control_pb2.Fault) -> None:
        self.faults.setdefault(node_id, {})[fault.peer] = fault
        if node_id not in self.dead:
            await self.control(node_id, "InjectFault", control_pb2.InjectFaultRequest(fault=fault))

    async def heal(self) -> None:
        """Clear every injected fault on every live node."""
        self.faults.clear()
        for node_id in self.live():
            await self.control(node_id, "ClearFaults", control_pb2.ClearFaultsRequest())

    def kill(self, node_id: str) -> None:
        """kill -9 the node's process (a region dying); of a pair, both members and agents."""
        pair = self.pairs.get(node_id)
        if pair is None:
            self.processes[node_id].kill()
        else:
            for member in pair.members.keys() - pair.dead:
                pair.kill(member)
        self.dead.add(node_id)

    def active_member(self, node_id: str) -> str | None:
        """The member of ``node_id``'s pair that holds the node's address now, if any."""
        return self.pairs[node_id].holder()

    def kill_active(self, node_id: str) -> str:
        """SIGKILL the node and the HA agent of the member that holds ``node_id``'s address,
        at once, as its machine would die; returns that member. The node is dead (not in
        ``live``) until ``wait_taken_over``.

        Raises:
            ValueError: no live member holds the address.
        """
        pair = self.pairs[node_id]
        member = pair.holder()
        if member is None or member in pair.dead:
            raise ValueError(f"no live member of {node_id} holds its address ({member})")
        pair.kill(member)
        self.killed[node_id] = (member, trio.current_time())
        self.dead.add(node_id)
        return member

    async def wait_taken_over(self, node_id: str, *, within: float) -> PairTakeover:
        """Until another member of ``node_id``'s pair holds the address (its agent declared
        the killed one dead after 3 missed heartbeats and moved the address through the EC2
        API) and its node answers SIP there (it bound its sockets in one sweep); the node is
        live again.

        Raises:
            KeyError: no ``kill_active`` of that node to wait for.
            trio.TooSlowError: not within ``within`` seconds of this call (with the pair's
                logs).
        """
        killed, at = self.killed.pop(node_id)
        pair = self.pairs[node_id]
        try:
            with trio.fail_after(within):
                holder = await pair.wait_holder(lambda member: member != killed)
                held = trio.current_time() - at
                host = self.nodes[node_id].host
                await wait_answers_options(host, SIP_PORT, within=within, every=POLL_S)
        except trio.TooSlowError:
            raise trio.TooSlowError(f"{node_id} not taken over; logs:\n{pair.logs()}") from None
        self.dead.discard(node_id)
        return PairTakeover(node_id, killed, holder, held, trio.current_time() - at)

    async def restart(self, node_id: str) -> None:
        """Start a killed node again with the same config (and log), once its gRPC server is
        up, give it back its share of the faults in force.

        Raises:
            ValueError: the node is not dead, or is a pair (its members are not restarted).
            RuntimeError: it did not come up (the message carries its log).
        """
        if node_id not in self.dead:
            raise ValueError(f"{node_id} is running")
        if node_id in self.pairs:
            raise ValueError(f"{node_id} is a pair: the lab does not restart its members")
        assert self.stack is not None, "a Lab from open_lab"
        await self.processes[node_id].process.wait()  # its ports are free once it is reaped
        node = self.nodes[node_id]
        self.processes[node_id] = await self.stack.enter_async_context(
            open_node(
                self.configs[node_id],
                host=node.host,
                port=SIP_PORT,
                workdir=self.workdirs[node_id],
                niceness=RESTART_NICENESS,
            )
        )
        await self.wait_serving(node.node_id)
        set_niceness(self.processes[node_id].pid, 0)
        self.dead.discard(node_id)
        for fault in self.faults.get(node_id, {}).values():
            await self.control(node_id, "InjectFault", control_pb2.InjectFaultRequest(fault=fault))

    @contextlib.asynccontextmanager
    async def events(self, node_id: str) -> AsyncIterator[BridgedStream]:
        """``node_id``'s WatchEvents stream: receive ``control_pb2.Event`` messages until it
        raises (the node died, or the block ended)."""
        async with self.bridge.open_server_stream(
            self.nodes[node_id].grpc_target,
            "/overlay.v1.Control/WatchEvents",
            control_pb2.WatchEventsRequest(),
            control_pb2.WatchEventsRequest.SerializeToString,
            control_pb2.Event.FromString,
        ) as stream:
            yield stream

    async def member_counters(self, node_id: str, member: str) -> dict[str, int]:
        """The counters of one member of ``node_id``'s pair, at its own address (a standby's
        ``pair.replication.*`` among them); ``counters`` reaches whichever holds."""
        response = await self.bridge.unary(
            self.pairs[node_id].members[member].grpc_target,
            "/overlay.v1.Control/GetCounters",
            control_pb2.GetCountersRequest(),
            control_pb2.GetCountersRequest.SerializeToString,
            control_pb2.GetCountersResponse.FromString,
            timeout=ADMIN_TIMEOUT_S,
        )
        return dict(response.counters)

    async def calls_during(
        self, event: Callable[[], Awaitable[T]], *, calls: int, rate: float, hold_ms: int
    ) -> tuple[SippResult, T]:
        """Place calls and, once a fifth of them reached the egress (so calls are in every
        state), run ``event`` while the rest are placed; returns both results."""
        placed: list[SippResult] = []
        before = await self._invites_at_egress()
        async with trio.open_nursery() as nursery:

            async def place() -> None:
                placed.append(await self.place_calls(calls=calls, rate=rate, duration_ms=hold_ms))

            nursery.start_soon(place)
            # Polls another process: there is no event to wait on.
            with trio.fail_after(calls / rate + 10):
                while True:
                    if await self._invites_at_egress() - before >= calls // 5:
                        break
                    await trio.sleep(POLL_S)
            outcome = await event()
        return placed[0], outcome

    async def _invites_at_egress(self) -> int:
        egress = [n for n in self.site(self.topology.egress) if n not in self.dead]
        return sum([(await self.counters(n)).get("sip.requests.INVITE", 0) for n in egress])

    async def place_calls(
        self,
        *,
        calls: int,
        rate: float,
        duration_ms: int = 0,
        max_seconds: float | None = None,
        ingress: str | None = None,
        uac_host: str | None = None,
        keep_in: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> SippResult:
        """SIPp calls from ``uac_host`` (the lab's by default) into ``ingress`` (the
        topology's first; its first AZ), each held ``duration_ms`` then hung up; ``keep_in``
        and ``extra_args`` are ``run_uac``'s."""
        entry = self.nodes[self.site(ingress or self.topology.ingresses[0])[0]]
        return await run_uac(
            (entry.host, SIP_PORT),
            local_host=uac_host or self.uac_host,
            scenario="uac_rr",
            calls=calls,
            rate=rate,
            max_seconds=max_seconds or calls / rate + duration_ms / 1000 + 30,
            extra_args=["-d", str(duration_ms), *extra_args],
            keep_in=keep_in,
        )


@contextlib.asynccontextmanager
async def open_lab(
    hosts: Mapping[str, str],
    *,
    uas_host: str,
    uac_host: str,
    probe_interval: float = 0.1,
    linkstate: Sequence[str] = (),
    callee: tuple[str, int] | None = None,
    azs: int = 1,
    inactivity_timeout: float = 60.0,
    topology: Topology = REFERENCE,
    routes: Mapping[str, tuple[str, int]] | None = None,
    workdir: Path | None = None,
    pairs: bool = False,
    replicate: bool = True,
    workers: Mapping[str, int] | None = None,
) -> AsyncIterator[Lab]:
    """Start ``topology`` on ``hosts`` (node id → loopback address, see ``lab_node_ids``) with
    a SIPp UAS on ``uas_host`` (or, with ``callee``, calls go to that address instead) behind
    every AZ of its egress; ``inactivity_timeout`` ends silent media sessions.

    Args:
        routes: Request-URI user prefix → another callee's address, for the calls to it.
        linkstate: more ``[linkstate]`` lines for every node (``"liveness_interval = 0"``).
        workdir: keep every node's config and log (``<node id>/node.log``, JSON lines) and the
            UAS's files (``uas/``: its statistics, errors and aborted calls) there; by default
            they are in temporary directories removed on exit.
        pairs: run every node as an active/standby pair (``overlay.lab.pairs``): ``hosts``
            then also gives every member (``lab_member_names``) its own address, and moto's
            server, the pairs' EC2 API, runs on ``uac_host``. Each member's files go in
            ``<member>/`` (node.toml, node.log in JSON lines, ha.toml, agent.log), in
            ``workdir`` or a temporary directory. Returns once the first member of every pair
            holds its node's address.
        replicate: with pairs, whether each member follows the other's calls (``[pair]
            peer_grpc``); without, a standby takes over with no call state (a bench's baseline).
        workers: node id -> its ``sip.workers`` (both members of a pair), 1 if not named.

    Raises:
        ValueError: an address is missing from ``hosts``.
        RuntimeError: a node or pair did not come up, or moto is missing (with pairs).

    Resource handling: everything is stopped, by PID, when the block exits."""
    names = lab_node_ids(azs, topology) + (lab_member_names(azs, topology) if pairs else [])
    missing = set(names) - hosts.keys()
    if missing:
        raise ValueError(f"no address for {', '.join(sorted(missing))}")
    nodes = lab_nodes(hosts, azs=azs, topology=topology)
    egress = site_node_ids(topology.egress, azs)
    async with contextlib.AsyncExitStack() as stack:
        uas = None
        if callee is None:
            uas = await stack.enter_async_context(
                open_uas(
                    uas_host,
                    scenario="uas_rr",
                    max_seconds=CALLEE_MAX_SECONDS,
                    keep_in=None if workdir is None else workdir / "uas",
                    extra_args=() if workdir is None else ("-trace_err", "-trace_calldebug"),
                )
            )
            callee = (uas.host, uas.port)
        target = f"{callee[0]}:{callee[1]}"
        routed = [(prefix, f"{host}:{port}") for prefix, (host, port) in (routes or {}).items()]
        pki_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="overlay-lab-pki-"))
        # Pairs' members (configs, logs), hold files and moto's log.
        pair_dir = workdir or Path(pki_dir)
        pair_dir.mkdir(parents=True, exist_ok=True)
        members = {
            node.node_id: tuple(
                PairMember(
                    name,
                    node.node_id,
                    hosts[name],
                    f"{pair_dir}/{node.node_id}.hold",
                    peer_host=hosts[peer],
                )
                for name, peer in itertools.permutations(pair_member_names(node.node_id))
            )
            for node in nodes
            if pairs
        }
        pki = make_lab_pki(
            Path(pki_dir),
            {node.node_id: node.host for node in nodes},
            also_at={node_id: [m.host for m in both] for node_id, both in members.items()},
        )

        def config(node: LabNode, member: PairMember | None = None) -> str:
            return node_config(
                node,
                nodes,
                egress=egress,
                target=target,
                topology=topology,
                routes=routed,
                probe_interval=probe_interval,
                linkstate=linkstate,
                inactivity_timeout=inactivity_timeout,
                grpc_tls=pki.grpc_lines(node.node_id),
                extra="" if workdir is None and not pairs else '[log]\nformat = "json"\n',
                member=member,
                replicate=replicate,
                workers=(workers or {}).get(node.node_id, 1),
            )

        configs = {node.node_id: config(node) for node in nodes if not pairs}
        workdirs = {node.node_id: _node_dir(workdir, node.node_id) for node in nodes if not pairs}
        operator = pki.client("lab-operator", Role.OPERATOR).credentials()
        bridge = await stack.enter_async_context(open_grpc_bridge(tls=operator))
        processes: dict[str, NodeProcess] = {}
        running_pairs: dict[str, LabPair] = {}
        if pairs:
            ec2 = await stack.enter_async_context(open_ec2(uac_host, directory=pair_dir))
        async with trio.open_nursery() as nursery:

            async def start(node: LabNode) -> None:
                processes[node.node_id] = await stack.enter_async_context(
                    open_node(
                        configs[node.node_id],
                        host=node.host,
                        port=SIP_PORT,
                        workdir=workdirs[node.node_id],
                    )
                )

            async def start_pair(node: LabNode, index: int) -> None:
                both = members[node.node_id]
                running_pairs[node.node_id] = await stack.enter_async_context(
                    open_pair(
                        node,
                        (both[0], both[1]),
                        configs={member.name: config(node, member) for member in both},
                        tls=pki.grpc_lines(node.node_id),
                        ec2=ec2,
                        index=index,
                        directory=pair_dir,
                        member_ready=lambda member: _wait_serving(
                            bridge, member.grpc_target, within=READY_TIMEOUT_S
                        ),
                    )
                )

            for index, node in enumerate(nodes):
                if pairs:
                    nursery.start_soon(start_pair, node, index)
                else:
                    nursery.start_soon(start, node)
        for node in nodes:  # a node answers SIP a moment before its gRPC server listens
            await _wait_serving(bridge, node.grpc_target, within=READY_TIMEOUT_S)
        yield Lab(
            {node.node_id: node for node in nodes},
            bridge,
            processes,
            uas,
            uac_host,
            azs,
            pki=pki,
            topology=topology,
            configs=configs,
            workdirs=workdirs,
            stack=stack,
            pairs=running_pairs,
        )


def _node_dir(workdir: Path | None, node_id: str) -> Path | None:
    if workdir is None:
        return None
    directory = workdir / node_id
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def _wait_serving(bridge: GrpcBridge, target: str, *, within: float) -> None:
    """Until the gRPC server at ``target`` says SERVING (standard health checking)."""
    request = health_pb2.HealthCheckRequest(service="")
    with trio.fail_after(within):
        while True:
            try:
                response = await bridge.unary(
                    target,
                    "/grpc.health.v1.Health/Check",
                    request,
                    health_pb2.HealthCheckRequest.SerializeToString,
                    health_pb2.HealthCheckResponse.FromString,
                    timeout=ADMIN_TIMEOUT_S,
                )
            except RpcError:
                response = None
            if response is not None and response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await trio.sleep(POLL_S)
