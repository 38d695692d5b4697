"""The reference topology (DESIGN.md): four regions, their round-trip times, node configs.

Each lab node is its own OS process on its own loopback address. Inter-region latency is emulated
by the impairment layer: every node adds half of the pair's RTT (``base_delay_ms``) to everything
it sends to the other, so probes, calls and link-state messages all see the backbone's delay.

A lab has one node per region (node id = the region's short name, ``use1``) or, with ``azs=2``,
one per availability zone (``use1-a`` and ``use1-b`` in us-east-1a and us-east-1b, 1 ms apart).
"""

from __future__ import annotations

from collections.abc import Sequence
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

SIP_PORT = 5060
GRPC_PORT = 7000
MEDIA_OVERLAY_PORT = 7100  # the relays' overlay socket
MEDIA_PORTS = (20000, 20999)  # endpoint-facing relay ports


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


def site_node_ids(site: str, azs: int = 1) -> list[str]:
    """The node ids of one region (``site``: its short name) in a lab of ``azs`` AZs."""
    if azs == 1:
        return [site]
    return [f"{site}-{letter}" for letter in AZ_LETTERS[:azs]]


def lab_node_ids(azs: int = 1) -> list[str]:
    """Every node id of the reference topology with ``azs`` (1 or 2) AZs per region."""
    if azs not in (1, 2):
        raise ValueError(f"a lab has 1 or 2 AZs per region, not {azs}")
    return [node_id for site, _ in REGIONS for node_id in site_node_ids(site, azs)]


def lab_nodes(hosts: dict[str, str], *, azs: int = 1) -> list[LabNode]:
    """The reference nodes placed on ``hosts`` (node id -> loopback address)."""
    nodes = []
    for site, region in REGIONS:
        for node_id in site_node_ids(site, azs):
            az = "" if azs == 1 else region + node_id.rpartition("-")[2]
            nodes.append(LabNode(node_id, region, hosts[node_id], site, az))
    return nodes


def rtt_ms(a: LabNode, b: LabNode) -> float:
    """The emulated round-trip time between two lab nodes."""
    if a.region == b.region:
        return INTER_AZ_RTT_MS
    return RTT_MS[frozenset({a.site, b.site})]


def node_config(
    node: LabNode,
    nodes: list[LabNode],
    *,
    egress: Sequence[str],
    target: str,
    probe_interval: float = 0.1,
    inactivity_timeout: float = 60.0,
    grpc_tls: Sequence[str] = ("insecure = true",),
    extra: str = "",
) -> str:
    """TOML for one lab node: full mesh of ``nodes``, every call to ``target`` via one of the
    ``egress`` nodes; ``grpc_tls`` are the ``[grpc]`` TLS keys (``overlay.lab.pki``)."""
    lines = [
        "[node]",
        f'node_id = "{node.node_id}"',
        f'region = "{node.region}"',
        f'az = "{node.az}"',
        "",
        "[sip]",
        f'listen = ["udp:{node.host}:{SIP_PORT}"]',
        "",
        "[grpc]",
        f'listen = "{node.host}:{GRPC_PORT}"',
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
        "",
    ]
    for peer in nodes:
        if peer.node_id == node.node_id:
            continue
        rtt = rtt_ms(node, peer)
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
    lines += ["[[dialplan]]", f'target = "{target}"', f"egress = [{egress_list}]", "", extra]
    return "\n".join(lines)
