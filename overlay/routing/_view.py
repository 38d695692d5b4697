"""The overlay's routes as the SIP side reads them: one object, made before the mesh and the
proxy core, that the mesh installs every new route table into."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from overlay.sip import NextHop, Peer

from ._routes import NoRoute, RouteTable

#: Paths ``RouteView.paths`` offers per destination: the best and two ranked alternates, for
#: the retransmissions that take another path (``OverlayRelay.detour``).
MAX_PATHS = 3


class RouteView:
    """The current route table of one node, and its peers' SIP addresses.

    The mesh installs each new table by assigning ``table`` (a ``RouteTable`` is immutable, so
    a reader never sees half of one); the proxy core reads paths through it (it is the core's
    ``OverlayRoutes``), the call router asks which egress nodes are reachable or draining, and
    the signalling pump asks where each message for an overlay node goes (``forward_address``).
    Until the mesh installs its first table there are no routes.
    """

    def __init__(self, node_id: str, peers: Mapping[str, Peer]) -> None:
        self.table = RouteTable(node_id, 0, 0.0, {})
        #: Whether a node answers this node's probes now (the mesh installs its monitors' say).
        self.heard: Callable[[str], bool] = lambda _node_id: False
        self.peers = peers  # node id -> configured SIP address
        self.node_at = {address: node for node, address in peers.items()}
        self.unroutable = 0  # SIP messages for a node this one has no route to

    def forward_address(self, peer: Peer) -> Peer | None:
        """Where a SIP message for ``peer`` goes: unchanged unless ``peer`` is an overlay
        node, then the current next hop toward it; ``None`` (counted) when there is none. A
        ``NextHop`` is a neighbour the proxy core chose itself: unchanged too."""
        node_id = self.node_at.get(peer)
        if node_id is None or isinstance(peer, NextHop):
            return peer
        try:
            hop = self.table.next_hop(node_id)
        except NoRoute:
            self.unroutable += 1
            return None
        return self.peers[hop]

    def paths(self, node_id: str) -> list[tuple[str, ...]]:
        """The best path to ``node_id`` and its ranked alternates, at most MAX_PATHS."""
        try:
            route = self.table.route(node_id)
        except NoRoute:
            return []
        alternates = route.alternates[: MAX_PATHS - 1]
        return [tuple(route.path), *(tuple(path.nodes) for path in alternates)]

    def path(self, node_id: str) -> tuple[str, ...] | None:
        """The path this node forwards on toward ``node_id``, or ``None`` (no route)."""
        path = self.table.paths.get(node_id)
        return None if path is None else path.nodes

    def path_avoiding(self, node_id: str, avoid: Collection[str]) -> tuple[str, ...] | None:
        """The best path to ``node_id`` that crosses none of ``avoid`` (see RouteTable)."""
        return self.table.path_avoiding(node_id, avoid)

    def reachable(self, node_id: str) -> bool:
        return node_id in self.table.paths

    def draining(self, node_id: str) -> bool:
        """Whether ``node_id`` advertises that it is draining (takes no new calls)."""
        graph = self.table.graph
        return node_id in graph and bool(graph.nodes[node_id].get("draining", False))

    def in_grace(self, node_id: str) -> bool:
        """Whether ``node_id`` is a pair member its peers hold in takeover grace: reachable
        for its calls, not for new ones (``build_graph``)."""
        graph = self.table.graph
        return node_id in graph and bool(graph.nodes[node_id].get("grace", False))

    def region(self, node_id: str) -> str | None:
        """The region ``node_id`` advertises, or ``None`` (unknown, or not reachable)."""
        graph = self.table.graph
        return graph.nodes[node_id].get("region") or None if node_id in graph else None

    def sip_address(self, node_id: str) -> Peer:
        """A peer node's configured SIP address."""
        return self.peers[node_id]
