"""The overlay's transit relay: messages that only cross this node, and loop freedom while the
nodes' tables disagree (the "Overlay" and "Loop freedom" notes of ``overlay.sip._proxy``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._events import OverlayAnomaly, ProxyEvent
from ._headers import NameAddr, Via
from ._message import Request, Response, serialize
from ._targets import OwnAddresses, overlay_route
from ._transaction import Peer, Transaction
from ._uri import SipUri, parse_uri_untrusted

#: Relays a message may cross inside the overlay: a bound beyond any sane path, which no
#: message reaches while the crossed-nodes rule holds (module notes).
MAX_OVERLAY_RELAYS = 16
#: The header that lists the overlay nodes a request has crossed (module notes); between
#: overlay nodes only: a node removes it from every request it proxies.
OVERLAY_PATH = "Overlay-Path"


@dataclass(frozen=True, slots=True)
class OverlayNodes:
    """This node's place in the overlay: its node id and every other node's SIP address.

    With it the core marks its Vias and Record-Routes with ``ovl=<node id>``, relays requests
    and responses that only cross this node (see ``ProxyCore``), and answers overlay Vias at
    the sending node's configured address.
    """

    node_id: str
    peers: Mapping[str, Peer]


class OverlayRoutes(Protocol):
    """The overlay's current routes from this node, as the core reads them
    (``overlay.routing.RouteView``)."""

    def paths(self, node_id: str) -> Sequence[Sequence[str]]:
        """The best path to ``node_id`` first, then ranked alternates; each lists node ids
        from this node to that one. Empty when there is no route."""
        ...

    def path(self, node_id: str) -> Sequence[str] | None:
        """The path to ``node_id`` this node forwards on, or ``None`` (no route)."""
        ...

    def path_avoiding(self, node_id: str, avoid: Collection[str]) -> Sequence[str] | None:
        """The best path to ``node_id`` that crosses none of ``avoid``, or ``None``."""
        ...

    def heard(self, node_id: str) -> bool:
        """Whether ``node_id`` answers this node's probes now, route or not (a link in
        hold-down after a blip has no route yet, but the node is alive)."""
        ...


class NextHop(Peer):
    """A neighbour's address the shell sends to as it is: the core chose this overlay hop
    itself (a relay avoiding the nodes a message has crossed). Any other overlay node's
    address means "the current next hop toward that node"."""

    __slots__ = ()


class OverlayRelay:
    """One overlay node's relaying, owned by its ``ProxyCore``.

    The core asks it who sent a message (``origin``, ``sender``), hands it the messages that
    only cross this node (``relay_request``, ``relay_response``), and asks it how to resend a
    request over an alternate path (``detour``). What it sends goes through ``send`` (the
    core's output); what a loop caught is queued as an ``OverlayAnomaly`` in ``events``.
    """

    def __init__(
        self,
        nodes: OverlayNodes,
        routes: OverlayRoutes | None,
        own: OwnAddresses,
        *,
        send: Callable[[bytes, Peer], None],
        events: Callable[[ProxyEvent], None],
    ) -> None:
        self.node_id = nodes.node_id
        self.peers = nodes.peers
        self.node_at = {address: node for node, address in nodes.peers.items()}
        # The parameter that marks this node's Vias and Record-Routes as an overlay node's.
        self.mark = f";ovl={nodes.node_id}"
        self._routes = routes
        self._own = own
        self._send = send
        self._events = events
        self.relayed: Counter[str] = Counter()  # messages this node only crossed, by kind
        self.anomalies: Counter[str] = Counter()  # OverlayAnomaly events, by kind
        self.detoured = 0  # retransmissions sent over an alternate path

    def origin(self, via: Via, source: Peer) -> str | None:
        """The overlay node (this one included: a request of ours may come back) that added
        ``via``, on a message that came from an overlay node: anyone else claiming to be one
        is not believed."""
        if source not in self.node_at:
            return None
        node = via.param("ovl")
        return node if node in self.peers or node == self.node_id else None

    def sender(self, via: Via, source: Peer) -> str | None:
        """As ``origin``, another node's Via only."""
        node = self.origin(via, source)
        return None if node == self.node_id else node

    def relay_request(self, request: Request, source: Peer) -> bool:
        """Relay a request from another node that is on its way to a third one (a transit).

        Returns ``False`` when this node is where the request leaves the overlay.
        """
        destination = self._destination(request)
        if destination is None:
            return False
        crossed = self._crossed(
            request.headers.get(OVERLAY_PATH), request.top_via.param("ovl"), source
        )
        hop = self._loop_free_hop(destination, crossed, request.method, request.call_id)
        if hop is not None:
            self._own.pop_routes(request)
            request.headers.set(OVERLAY_PATH, ".".join((*crossed, self.node_id)))
            self.relayed["requests"] += 1
            self._send(serialize(request), hop)
        return True

    def relay_response(self, response: Response, sender: str, source: Peer) -> None:
        """Send a response back toward the node whose Via is on top (a transit)."""
        via = response.top_via
        crossed = self._crossed(via.param("ovp"), None, source)
        hop = self._loop_free_hop(sender, crossed, str(response.status), response.call_id)
        if hop is None:
            return
        path = ".".join((*crossed, self.node_id))
        response.headers.replace_first_value("Via", str(via.with_param("ovp", path)))
        self.relayed["responses"] += 1
        self._send(serialize(response), hop)

    def proxied_twice(self, request: Request, origin: str) -> bool:
        """Whether a request from the overlay, ending here, is one its origin already
        proxied (a loop turned it into a new request there): dropped, not a second call."""
        twice = origin == self.node_id  # ours, come back: we proxied it once already
        if not twice:
            vias = request.headers.values("Via")
            twice = (
                len(vias) > 1
                and f";ovl={origin}" in vias[1]
                and Via.parse_untrusted(vias[1]).param("ovl") == origin
            )
        if twice:
            self._anomaly("duplicate", request.method, request.call_id, origin, (origin,))
        return twice

    def detour(self, txn: Transaction) -> tuple[bytes, Peer]:
        """What a timer-driven retransmission to an overlay node sends: each copy takes the
        next of the best path and its ranked alternates, source-routed through that path's
        intermediate nodes, so a path that silently loses requests is bypassed at once."""
        plain = (txn.request_bytes, txn.peer)
        node = self.node_at.get(txn.peer)
        if node is None or self._routes is None:
            return plain
        paths = self._routes.paths(node)
        if len(paths) < 2:
            return plain
        index = txn.retransmissions % len(paths)
        waypoints = [n for n in paths[index][1:-1] if n in self.peers]
        if index == 0 or not waypoints:
            return plain  # the best path: the shell's route table takes it
        request = txn.request.copy()
        for waypoint in reversed(waypoints):
            request.headers.insert_first("Route", overlay_route(waypoint, self.peers[waypoint]))
        self.detoured += 1
        return serialize(request), self.peers[waypoints[0]]

    def _destination(self, request: Request) -> str | None:
        """The other overlay node the top Route names once this node's own are skipped."""
        for value in request.headers.values("Route"):
            text = NameAddr.parse_untrusted(value).uri
            if self._own.names(text):
                continue
            uri = parse_uri_untrusted(text)
            node = uri.param("ovl") if isinstance(uri, SipUri) else None
            return node if node in self.peers else None
        return None

    def _crossed(self, listed: str | None, origin: str | None, source: Peer) -> tuple[str, ...]:
        """The overlay nodes a relayed message has crossed: its origin, those it lists, and
        the node it came from (the first relay learns the origin and that node only)."""
        nodes = [] if origin is None else [origin]
        if listed:
            nodes.extend(listed.split("."))
        previous = self.node_at.get(source)
        if previous is not None:
            nodes.append(previous)
        return tuple(dict.fromkeys(nodes))

    def _loop_free_hop(
        self, destination: str, crossed: tuple[str, ...], message: str, call_id: str
    ) -> Peer | None:
        """The neighbour to hand a relayed message to: on the way to ``destination``, never a
        node it has crossed (module notes); ``None`` (counted) when it must be dropped."""
        if len(crossed) >= MAX_OVERLAY_RELAYS:
            self._anomaly("relay limit", message, call_id, destination, crossed)
            return None
        if self.node_id in crossed:
            self._anomaly("loop", message, call_id, destination, crossed)
        routes = self._routes
        best = None if routes is None else routes.path(destination)
        if routes is None or best is None:
            return self.peers[destination]  # no route: the shell counts it
        avoid = {*crossed, self.node_id}
        if avoid.isdisjoint(best[1:]):
            return self._neighbour(best[1], destination)
        path = routes.path_avoiding(destination, avoid)
        if path is None:
            self._anomaly("dropped", message, call_id, destination, crossed)
            return None
        self._anomaly("avoided", message, call_id, destination, crossed)
        return self._neighbour(path[1], destination)

    def _neighbour(self, hop: str, destination: str) -> Peer:
        """``hop`` as a ``NextHop``; a node the link state knows but the configuration does
        not (a peer added elsewhere first) is left to the shell, by the destination's address."""
        address = self.peers.get(hop)
        return self.peers[destination] if address is None else NextHop(*address)

    def _anomaly(
        self, kind: str, message: str, call_id: str, destination: str, crossed: tuple[str, ...]
    ) -> None:
        self.anomalies[kind] += 1
        self._events(OverlayAnomaly(kind, message, call_id, destination, crossed))
