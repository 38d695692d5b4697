"""The reference topology (DESIGN.md): four regions, their round-trip times, node configs.

Each lab node is its own OS process on its own loopback address. Inter-region latency is emulated
by the impairment layer: every node adds half of the pair's RTT (``base_delay_ms``) to everything
it sends to the other, so probes, calls and link-state messages all see the backbone's delay.
"""

from __future__ import annotations

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

SIP_PORT = 5060
GRPC_PORT = 7000
MEDIA_OVERLAY_PORT = 7100  # the relays' overlay socket
MEDIA_PORTS = (20000, 20999)  # endpoint-facing relay ports


@dataclass(frozen=True)
class LabNode:
    node_id: str
    region: str
    host: str

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{GRPC_PORT}"


def lab_nodes(hosts: dict[str, str]) -> list[LabNode]:
    """The reference nodes placed on ``hosts`` (node id -> loopback address)."""
    return [LabNode(node_id, region, hosts[node_id]) for node_id, region in REGIONS]


def node_config(
    node: LabNode,
    nodes: list[LabNode],
    *,
    egress: str,
    target: str,
    probe_interval: float = 0.1,
    extra: str = "",
) -> str:
    """TOML for one lab node: full mesh of ``nodes``, every call to ``target`` via ``egress``."""
    lines = [
        "[node]",
        f'node_id = "{node.node_id}"',
        f'region = "{node.region}"',
        "",
        "[sip]",
        f'listen = ["udp:{node.host}:{SIP_PORT}"]',
        "",
        "[grpc]",
        f'listen = "{node.host}:{GRPC_PORT}"',
        "",
        "[media]",
        f'address = "{node.host}"',
        f'overlay = "{node.host}:{MEDIA_OVERLAY_PORT}"',
        f"port_first = {MEDIA_PORTS[0]}",
        f"port_last = {MEDIA_PORTS[1]}",
        "",
        "[linkstate]",
        f"probe_interval = {probe_interval}",
        "",
    ]
    for peer in nodes:
        if peer.node_id == node.node_id:
            continue
        rtt = RTT_MS[frozenset({node.node_id, peer.node_id})]
        lines += [
            "[[peers]]",
            f'node_id = "{peer.node_id}"',
            f'region = "{peer.region}"',
            f'sip = "{peer.host}:{SIP_PORT}"',
            f'grpc = "{peer.host}:{GRPC_PORT}"',
            f'media = "{peer.host}:{MEDIA_OVERLAY_PORT}"',
            f"base_delay_ms = {rtt / 2}",
            "",
        ]
    lines += ["[[dialplan]]", f'target = "{target}"', f'egress = "{egress}"', "", extra]
    return "\n".join(lines)
