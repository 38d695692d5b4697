"""Overlay nodes' proxy cores wired by a hand-driven fabric, for unit tests.

``Fabric`` plays the part of the node shells and the backbone: a message a core addresses to
another node goes to the current next hop toward it (``next_hop``), exactly as ``Mesh.
forward_address`` does; a message to any other address leaves the fabric and is returned to the
test. Nodes listed in ``dead`` swallow whatever is sent to them. ``media`` makes each core's
media hook (``RecordingMedia`` by default).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from overlay.sip import (
    Listener,
    MediaDirection,
    MediaHook,
    MediaRefused,
    OverlayNodes,
    Peer,
    Refusal,
    Request,
    Response,
    Target,
)
from tests.unit.sip_helpers import UAS, ProxyHarness

ADDRESSES = {
    "ing": Peer("udp", "127.0.1.1", 5060),
    "mid": Peer("udp", "127.0.1.2", 5060),
    "egr": Peer("udp", "127.0.1.3", 5060),
    "alt": Peer("udp", "127.0.1.4", 5060),
}
NODE_AT = {address: node for node, address in ADDRESSES.items()}
EGRESS_ROUTE = "<sip:127.0.1.3:5060;lr;ovl=egr>"
TO_EGRESS = Target("127.0.1.3", 5060, "udp", route=EGRESS_ROUTE)


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


def core(
    node: str,
    target: Target | Refusal,
    paths: dict[str, list[list[str]]],
    media: MediaFactory,
) -> ProxyHarness:
    address = ADDRESSES[node]
    return ProxyHarness(
        targets={"": target},
        listeners=(Listener("udp", address.host, address.port),),
        overlay=OverlayNodes(node, {n: a for n, a in ADDRESSES.items() if n != node}),
        overlay_paths=lambda destination: paths.get(destination, []),
        media=media(node),
    )


class Fabric:
    def __init__(
        self, ingress_target: Target | Refusal = TO_EGRESS, media: MediaFactory = RecordingMedia
    ) -> None:
        # The ingress's paths to the egress, best first (what Mesh.paths returns).
        self.paths: dict[str, list[list[str]]] = {}
        unused = Target("127.0.0.99", 5060)  # transits only relay
        self.cores = {
            "ing": core("ing", ingress_target, self.paths, media),
            "mid": core("mid", unused, {}, media),
            "alt": core("alt", unused, {}, media),
            "egr": core("egr", Target(UAS.host, UAS.port), {}, media),
        }
        self.next_hop: dict[tuple[str, str], str] = {}
        self.dead: set[str] = set()
        self.via("mid")

    def via(self, transit: str | None) -> None:
        """Route ing <-> egr through ``transit``, or directly."""
        for a, b in (("ing", "egr"), ("egr", "ing")):
            self.next_hop[a, b] = transit or b

    def inject(self, node: str, source: Peer, data: bytes) -> dict[Peer, list[bytes]]:
        """Deliver ``data`` from outside to ``node``; what reaches non-node addresses."""
        self.cores[node].proxy.receive_data(data, source, self.cores[node].now)
        return self._run()

    def advance(self, node: str, seconds: float) -> dict[Peer, list[bytes]]:
        """Move ``node``'s clock (the others' stand still); what reaches non-node addresses."""
        self.cores[node].run_timers(seconds)
        return self._run()

    def retransmit_toward(self, node: str, destination: str) -> int:
        resent = self.cores[node].proxy.retransmit_toward([ADDRESSES[destination]])
        self.outside = self._run()
        return resent

    def _run(self) -> dict[Peer, list[bytes]]:
        outside: dict[Peer, list[bytes]] = defaultdict(list)
        busy = True
        while busy:
            busy = False
            for node, h in self.cores.items():
                outbox = list(h.proxy.outbox)
                h.proxy.outbox.clear()
                for data, peer in outbox:
                    destination = NODE_AT.get(peer)
                    if destination is None:
                        outside[peer].append(data)
                        continue
                    hop = self.next_hop.get((node, destination), destination)
                    if hop in self.dead:
                        continue
                    busy = True
                    receiver = self.cores[hop]
                    receiver.proxy.receive_data(data, ADDRESSES[node], receiver.now)
        return outside
