"""Overlay nodes' proxy cores wired by a hand-driven fabric, for unit tests.

``Fabric`` plays the part of the node shells and the backbone: a message a core addresses to
another node goes to the current next hop toward it (``next_hop``), exactly as ``Mesh.
forward_address`` does, and one addressed to a ``NextHop`` goes straight to that neighbour; a
message to any other address leaves the fabric and is returned to the test. Nodes listed in
``dead`` swallow whatever is sent to them. Each core reads its routes from the fabric
(``FabricRoutes``): the ``next_hop`` table may disagree between nodes, as real tables do while
link state floods. ``media`` makes each core's media hook (``RecordingMedia`` by default).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Collection

from overlay.sip import (
    Listener,
    MediaDirection,
    MediaHook,
    MediaRefused,
    NextHop,
    OverlayNodes,
    Peer,
    Refusal,
    Request,
    Response,
    Target,
)
from tests.unit.sip_helpers import UAS, ProxyHarness, request

ADDRESSES = {
    "ing": Peer("udp", "127.0.1.1", 5060),
    "mid": Peer("udp", "127.0.1.2", 5060),
    "egr": Peer("udp", "127.0.1.3", 5060),
    "alt": Peer("udp", "127.0.1.4", 5060),
}
NODE_AT = {address: node for node, address in ADDRESSES.items()}
EGRESS_ROUTE = "<sip:127.0.1.3:5060;lr;ovl=egr>"
TO_EGRESS = Target("127.0.1.3", 5060, "udp", route=EGRESS_ROUTE, egress="egr")
#: Rounds of delivery a test's messages may take: a message still moving after this is looping.
MAX_ROUNDS = 50


def in_dialog(method: str, cseq: int, branch: str, routes: list[str]) -> bytes:
    """A request of the caller's dialog with the callee at UAS, along the route set ``routes``."""
    return request(
        method,
        uri="sip:alice@127.0.0.3:5062",
        branch=branch,
        cseq=cseq,
        to_tag="callee-tag",
        extra=tuple(f"Route: {route}" for route in routes),
    )


class RecordingMedia:
    """A media hook that tags the bodies it sees, and can refuse requests."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.seen: list[tuple[str, str]] = []  # (method or status, direction)
        self.refuse: MediaRefused | None = None

    def request(self, request: Request, direction: MediaDirection, now: float) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.seen.append((request.method, direction.value))
        request.body += f"{self.node}:{direction.value};".encode()

    def response(self, response: Response, direction: MediaDirection, now: float) -> None:
        self.seen.append((str(response.status), direction.value))
        response.body += f"{self.node}:{direction.value};".encode()


MediaFactory = Callable[[str], MediaHook | None]


class FabricRoutes:
    """One node's routes, read from the fabric: its path is via its own ``next_hop``; paths
    that avoid nodes are searched over the links not ``cut``; the ingress's ranked paths are
    ``Fabric.paths`` when a test sets them."""

    def __init__(self, fabric: Fabric, node: str) -> None:
        self._fabric = fabric
        self._node = node

    def path(self, node_id: str) -> list[str] | None:
        if frozenset((self._node, node_id)) in self._fabric.cut:
            hop = self._fabric.next_hop.get((self._node, node_id))
            if hop is None:
                return None
        else:
            hop = self._fabric.next_hop.get((self._node, node_id), node_id)
        return [self._node, node_id] if hop == node_id else [self._node, hop, node_id]

    def paths(self, node_id: str) -> list[list[str]]:
        ranked = self._fabric.paths.get(node_id) if self._node == "ing" else None
        if ranked is not None:
            return ranked
        path = self.path(node_id)
        return [] if path is None else [path]

    def heard(self, node_id: str) -> bool:
        """A node the fabric lost a route to answers probes unless it is ``dead``."""
        return node_id not in self._fabric.dead and node_id not in self._fabric.silent

    def path_avoiding(self, node_id: str, avoid: Collection[str]) -> list[str] | None:
        """Breadth first over the uncut links (all links are alike here)."""
        previous: dict[str, str] = {}
        queue = deque([self._node])
        while queue:
            node = queue.popleft()
            if node == node_id:
                path = [node]
                while path[-1] != self._node:
                    path.append(previous[path[-1]])
                return path[::-1]
            for other in sorted(ADDRESSES):
                link = frozenset((node, other))
                fresh = other not in previous and other != self._node
                if other != node and fresh and other not in avoid and link not in self._fabric.cut:
                    previous[other] = node
                    queue.append(other)
        return None


def core(
    node: str,
    target: Target | Refusal,
    routes: FabricRoutes,
    media: MediaFactory,
    advertise: str | None = None,
) -> ProxyHarness:
    address = ADDRESSES[node]
    return ProxyHarness(
        targets={"": target},
        listeners=(Listener("udp", address.host, address.port, advertise),),
        overlay=OverlayNodes(node, {n: a for n, a in ADDRESSES.items() if n != node}),
        overlay_routes=routes,
        media=media(node),
    )


class Fabric:
    def __init__(
        self,
        ingress_target: Target | Refusal = TO_EGRESS,
        media: MediaFactory = RecordingMedia,
        advertise: dict[str, str] | None = None,
    ) -> None:
        """``advertise``: the public address of the nodes that have one (``[sip] advertise``)."""
        # The ingress's paths to the egress, best first (what Mesh.paths returns).
        self.paths: dict[str, list[list[str]]] = {}
        self.next_hop: dict[tuple[str, str], str] = {}  # (node, destination) -> next hop
        self.cut: set[frozenset[str]] = set()  # links that are down (for path_avoiding)
        self.dead: set[str] = set()
        self.silent: set[str] = set()  # alive, but no longer answering probes (a partition)
        # Every node-to-node hop: (sender, receiver, method or status of the message).
        self.hops: list[tuple[str, str, str]] = []
        unused = Target("127.0.0.99", 5060)  # transits only relay
        targets = {"ing": ingress_target, "egr": Target(UAS.host, UAS.port)}
        self.cores = {
            node: core(
                node,
                targets.get(node, unused),
                FabricRoutes(self, node),
                media,
                (advertise or {}).get(node),
            )
            for node in ("ing", "mid", "alt", "egr")
        }
        self.via("mid")

    def via(self, transit: str | None) -> None:
        """Route ing <-> egr through ``transit``, or directly."""
        for a, b in (("ing", "egr"), ("egr", "ing")):
            self.next_hop[a, b] = transit or b

    def inject(self, node: str, source: Peer, data: bytes) -> dict[Peer, list[bytes]]:
        """Deliver ``data`` from outside to ``node``; what reaches non-node addresses."""
        self.cores[node].proxy.receive_data(data, source, self.cores[node].now)
        return self.settle()

    def advance(self, node: str, seconds: float) -> dict[Peer, list[bytes]]:
        """Move ``node``'s clock (the others' stand still); what reaches non-node addresses."""
        self.cores[node].run_timers(seconds)
        return self.settle()

    def retransmit_toward(self, node: str, destination: str) -> int:
        resent = self.cores[node].proxy.retransmit_toward([ADDRESSES[destination]])
        self.outside = self.settle()
        return resent

    def settle(self) -> dict[Peer, list[bytes]]:
        """Deliver what the cores queued until nothing moves; what reached non-node addresses."""
        outside: dict[Peer, list[bytes]] = defaultdict(list)
        busy = True
        for _ in range(MAX_ROUNDS):
            if not busy:
                break
            busy = False
            for node, h in self.cores.items():
                for data, peer in h.proxy.datagrams_to_send():
                    destination = NODE_AT.get(peer)
                    if destination is None:
                        outside[peer].append(data)
                        continue
                    if isinstance(peer, NextHop):
                        hop = destination
                    else:
                        hop = self.next_hop.get((node, destination), destination)
                    self.hops.append((node, hop, _label(data)))
                    if hop in self.dead:
                        continue
                    busy = True
                    receiver = self.cores[hop]
                    receiver.proxy.receive_data(data, ADDRESSES[node], receiver.now)
        else:
            raise AssertionError(f"messages still moving after {MAX_ROUNDS} rounds: a loop")
        return outside


def _label(data: bytes) -> str:
    """The method of a request, the status code of a response."""
    first, second = data.split(b" ", 2)[:2]
    return (second if first.startswith(b"SIP/") else first).decode()
