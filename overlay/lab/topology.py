"""Lab topologies: regions, their round-trip times, where calls enter and leave; node configs.

``REFERENCE`` is the four-region topology of DESIGN.md (the demo's, the default of every lab);
``random_topology`` draws others, 5 to 8 regions, for the seeded chaos runs. Each lab node is
its own OS process on its own loopback address. Inter-region latency is emulated by the
impairment layer: every node adds half of the pair's RTT (``base_delay_ms``) to everything it
sends to the other, so probes, calls and link-state messages all see the backbone's delay.

A lab has one node per region (node id = the region's short name, ``use1``) or, with ``azs=2``,
one per availability zone (``use1-a`` and ``use1-b`` in us-east-1a and us-east-1b, 1 ms apart).
With pairs (``overlay.lab.pairs``) each node runs as two member processes, ``use1.1`` and
``use1.2``, which share its node id and address (``PairMember``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: (node id, region), west to east.
REGIONS: tuple[tuple[str, str], ...] = (
    ("usw2", "us-west-2"),
    ("usw1", "us-west-1"),
    ("use2", "us-east-2"),
    ("use1", "us-east-1"),
)

#: Base round-trip times between regions, ms (typical published figures, rounded).
RTT_MS: dict[frozenset[str], float] = {
    frozenset({"usw2", "usw1"}): 22.0,
    frozenset({"usw2", "use2"}): 50.0,
    frozenset({"usw2", "use1"}): 68.0,
    frozenset({"usw1", "use2"}): 52.0,
    frozenset({"usw1", "use1"}): 62.0,
    frozenset({"use2", "use1"}): 12.0,
}

#: Round-trip time between two AZs of one region, ms.
INTER_AZ_RTT_MS = 1.0
AZ_LETTERS = ("a", "b")

#: Regions a random topology draws from: (node id, region).
REGION_POOL: tuple[tuple[str, str], ...] = (
    ("usw2", "us-west-2"),
    ("usw1", "us-west-1"),
    ("use2", "us-east-2"),
    ("use1", "us-east-1"),
    ("cac1", "ca-central-1"),
    ("sae1", "sa-east-1"),
    ("euw1", "eu-west-1"),
    ("euc1", "eu-central-1"),
    ("eun1", "eu-north-1"),
    ("apne1", "ap-northeast-1"),
    ("apse1", "ap-southeast-1"),
    ("aps1", "ap-south-1"),
)
MIN_RTT_MS = 2.0
MAX_RTT_MS = 150.0


@dataclass(frozen=True)
class Topology:
    """Regions (``(short name, region)``), the RTT of every pair of them, the regions where
    calls enter (``ingresses``) and the one where they leave (``egress``, the callee behind it).
    """

    regions: tuple[tuple[str, str], ...]
    rtt: Mapping[frozenset[str], float]
    ingresses: tuple[str, ...]
    egress: str

    def __post_init__(self) -> None:
        sites = self.sites()
        missing = [
            f"{a}-{b}"
            for a, b in itertools.combinations(sites, 2)
            if frozenset({a, b}) not in self.rtt
        ]
        if missing:
            raise ValueError(f"no RTT for {', '.join(missing)}")
        if self.egress not in sites or not set(self.ingresses) <= set(sites):
            raise ValueError("ingresses and egress must be regions of the topology")
        if self.egress in self.ingresses:
            raise ValueError(f"{self.egress} is both an ingress and the egress")

    def sites(self) -> list[str]:
        return [site for site, _ in self.regions]

    def edges(self) -> set[str]:
        """The regions calls are anchored on: the ingresses and the egress."""
        return {*self.ingresses, self.egress}

    def transits(self) -> list[str]:
        return [site for site in self.sites() if site not in self.edges()]

    def rtt_ms(self, a: LabNode, b: LabNode) -> float:
        """The emulated round-trip time between two lab nodes."""
        if a.region == b.region:
            return INTER_AZ_RTT_MS
        return self.rtt[frozenset({a.site, b.site})]

    def describe(self) -> str:
        """The regions, their roles and the RTT matrix, for a run's header."""
        sites = self.sites()
        role = {site: "ingress" for site in self.ingresses} | {self.egress: "egress"}
        width = max(len(site) for site in sites) + 1
        lines = [
            "  ".join(
                f"{site} ({region}, {role.get(site, 'transit')})" for site, region in self.regions
            ),
            "RTT ms".ljust(width) + "".join(site.rjust(7) for site in sites),
        ]
        for a in sites:
            cells = ("-" if a == b else f"{self.rtt[frozenset({a, b})]:g}" for b in sites)
            lines.append(a.ljust(width) + "".join(cell.rjust(7) for cell in cells))
        return "\n".join(lines)


def random_topology(rng: random.Random, *, regions: int | None = None) -> Topology:
    """A topology of ``regions`` (default 5 to 8) regions drawn with ``rng``.

    Regions are points on a plane; a pair's RTT is their distance, stretched on some pairs (a
    backbone that takes the long way round) and clamped to MIN_RTT_MS..MAX_RTT_MS. The RTTs are
    therefore roughly metric, and a detour is sometimes better than the direct path. Two or
    three regions are ingresses, one other the egress; at least two are left as transits.
    """
    count = regions if regions is not None else rng.randint(5, 8)
    if not 4 <= count <= len(REGION_POOL):
        raise ValueError(f"a random topology has 4 to {len(REGION_POOL)} regions, not {count}")
    chosen = rng.sample(REGION_POOL, count)
    where = {site: (rng.uniform(0, 110), rng.uniform(0, 60)) for site, _ in chosen}
    rtt: dict[frozenset[str], float] = {}
    for (a, _), (b, _) in itertools.combinations(chosen, 2):
        stretch = rng.uniform(1.3, 1.8) if rng.random() < 0.25 else rng.uniform(1.0, 1.1)
        ms = math.dist(where[a], where[b]) * stretch
        rtt[frozenset({a, b})] = round(min(MAX_RTT_MS, max(MIN_RTT_MS, ms)), 1)
    sites = [site for site, _ in chosen]
    ingresses = 2 if count < 7 else rng.choice((2, 3))
    return Topology(tuple(chosen), rtt, tuple(sites[:ingresses]), sites[ingresses])


SIP_PORT = 5060
GRPC_PORT = 7000
MEDIA_OVERLAY_PORT = 7100  # the relays' overlay socket
MEDIA_PORTS = (20000, 20999)  # endpoint-facing relay ports
#: A pair member's own [metrics] and [health] ports, at its own address.
MEMBER_METRICS_PORT = 9100
MEMBER_HEALTH_PORT = 9101
#: A member's first metrics port when its node runs several SIP workers (worker i: + i).
MEMBER_WORKERS_METRICS_PORT = 9110


def member_metrics_port(workers: int) -> int:
    """A pair member's ``[metrics]`` port: worker i serves on it + i, clear of the health
    port."""
    return MEMBER_METRICS_PORT if workers == 1 else MEMBER_WORKERS_METRICS_PORT


#: How often a lab pair's members read their hold file ([pair] check_interval).
PAIR_CHECK_INTERVAL = 0.05


@dataclass(frozen=True)
class LabNode:
    node_id: str
    region: str
    host: str
    site: str = ""  # the region's short name ("use1"); the node id in a one-AZ lab
    az: str = ""  # "us-east-1a" in a two-AZ lab

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{GRPC_PORT}"


@dataclass(frozen=True)
class PairMember:
    """One of the two processes a lab pair runs for node ``node_id``: its node serves SIP and
    media at the node's address while ``hold_file`` names it (``[pair] hold = "file"``), and
    gRPC, metrics and health at its own address ``host`` from the start. While the other
    member holds the address, it follows that member's calls at ``peer_host`` (its own
    address; pair replication)."""

    name: str  # "use1.1"
    node_id: str
    host: str
    hold_file: str
    peer_host: str

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{GRPC_PORT}"


#: The four reference regions: calls enter in us-west-2 and leave in us-east-1.
REFERENCE = Topology(REGIONS, RTT_MS, ("usw2",), "use1")


def site_node_ids(site: str, azs: int = 1) -> list[str]:
    """The node ids of one region (``site``: its short name) in a lab of ``azs`` AZs."""
    if azs == 1:
        return [site]
    return [f"{site}-{letter}" for letter in AZ_LETTERS[:azs]]


def lab_node_ids(azs: int = 1, topology: Topology = REFERENCE) -> list[str]:
    """Every node id of ``topology`` with ``azs`` (1 or 2) AZs per region."""
    if azs not in (1, 2):
        raise ValueError(f"a lab has 1 or 2 AZs per region, not {azs}")
    return [node_id for site in topology.sites() for node_id in site_node_ids(site, azs)]


def pair_member_names(node_id: str) -> tuple[str, str]:
    """The names of the two members a lab pair runs for ``node_id``; the first holds the
    node's address when the lab starts."""
    return f"{node_id}.1", f"{node_id}.2"


def lab_member_names(azs: int = 1, topology: Topology = REFERENCE) -> list[str]:
    """Every pair member's name in a lab of pairs (``hosts`` gives each its own address)."""
    return [name for node_id in lab_node_ids(azs, topology) for name in pair_member_names(node_id)]


def lab_nodes(
    hosts: Mapping[str, str], *, azs: int = 1, topology: Topology = REFERENCE
) -> list[LabNode]:
    """The nodes of ``topology`` placed on ``hosts`` (node id -> loopback address)."""
    nodes = []
    for site, region in topology.regions:
        for node_id in site_node_ids(site, azs):
            az = "" if azs == 1 else region + node_id.rpartition("-")[2]
            nodes.append(LabNode(node_id, region, hosts[node_id], site, az))
    return nodes


def node_config(
    node: LabNode,
    nodes: list[LabNode],
    *,
    egress: Sequence[str],
    target: str,
    topology: Topology = REFERENCE,
    routes: Sequence[tuple[str, str]] = (),
    probe_interval: float = 0.1,
    linkstate: Sequence[str] = (),
    inactivity_timeout: float = 60.0,
    grpc_tls: Sequence[str] = ("insecure = true",),
    extra: str = "",
    member: PairMember | None = None,
    replicate: bool = True,
    workers: int = 1,
) -> str:
    """TOML for one lab node: full mesh of ``nodes`` (latencies from ``topology``), every call
    to ``target`` via one of the ``egress`` nodes, except those whose Request-URI user starts
    with the prefix of one of ``routes`` (``(user prefix, target)``), which go to that target;
    ``grpc_tls`` are the ``[grpc]`` TLS keys (``overlay.lab.pki``); ``linkstate`` more lines of
    ``[linkstate]`` (``"liveness_interval = 0"``).

    With ``member``, the node is that member of a pair: gRPC, metrics and health at the
    member's own address, SIP and media at the node's. Peers reach a pair at the node's
    address for everything, its gRPC included: a member serves gRPC there too while it holds
    the address (``overlay.shell.node``), so flooding follows the holder as SIP and media do,
    and no peer needs to know the members. The members' own addresses are for what must reach
    one member whichever holds: its peer's HA agent, pair replication, the lab's readiness.
    Without ``replicate`` the member follows none of its peer's calls (no ``peer_grpc``): a
    takeover then starts with no call state, for comparison. ``workers``: ``sip.workers``.
    """
    lines = [
        "[node]",
        f'node_id = "{node.node_id}"',
        f'region = "{node.region}"',
        f'az = "{node.az}"',
        "",
        "[sip]",
        f'listen = ["udp:{node.host}:{SIP_PORT}"]',
        *([f"workers = {workers}"] if workers > 1 else []),
        "",
        "[grpc]",
        f'listen = "{node.host if member is None else member.host}:{GRPC_PORT}"',
        *grpc_tls,
        "",
        "[media]",
        f'address = "{node.host}"',
        f'overlay = "{node.host}:{MEDIA_OVERLAY_PORT}"',
        f"port_first = {MEDIA_PORTS[0]}",
        f"port_last = {MEDIA_PORTS[1]}",
        f"inactivity_timeout = {inactivity_timeout}",
        "",
        "[linkstate]",
        f"probe_interval = {probe_interval}",
        *linkstate,
        "",
    ]
    if member is not None:
        lines += [
            "[pair]",
            f'address = "{node.host}"',
            'hold = "file"',
            f'hold_file = "{member.hold_file}"',
            f'member = "{member.name}"',
            *([f'peer_grpc = "{member.peer_host}:{GRPC_PORT}"'] if replicate else []),
            f"check_interval = {PAIR_CHECK_INTERVAL}",
            "",
            "[metrics]",
            # Worker i serves on the port + i: past the health port with several.
            f'listen = "{member.host}:{member_metrics_port(workers)}"',
            "",
            "[health]",
            f'listen = "{member.host}:{MEMBER_HEALTH_PORT}"',
            "",
        ]
    for peer in nodes:
        if peer.node_id == node.node_id:
            continue
        rtt = topology.rtt_ms(node, peer)
        lines += [
            "[[peers]]",
            f'node_id = "{peer.node_id}"',
            f'region = "{peer.region}"',
            f'az = "{peer.az}"',
            f'sip = "{peer.host}:{SIP_PORT}"',
            f'grpc = "{peer.host}:{GRPC_PORT}"',
            f'media = "{peer.host}:{MEDIA_OVERLAY_PORT}"',
            f"base_delay_ms = {rtt / 2}",
            "",
        ]
    egress_list = ", ".join(f'"{node_id}"' for node_id in egress)
    for prefix, routed in routes:
        lines += ["[[dialplan]]", f'user_prefix = "{prefix}"', f'target = "{routed}"']
        lines += [f"egress = [{egress_list}]", ""]
    lines += ["[[dialplan]]", f'target = "{target}"', f"egress = [{egress_list}]", "", extra]
    return "\n".join(lines)
