"""Where requests go: this node's listeners, the targets the dialplan names, and the next hop
a URI names (RFC 3261 §16.5-16.6, RFC 3263 §4)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._errors import RemoteProtocolError
from ._headers import NameAddr
from ._message import Request
from ._transaction import Peer
from ._uri import SipUri, TelUri, host_bare, host_reference, parse_uri_untrusted

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


@dataclass(frozen=True, slots=True)
class Listener:
    """A local SIP address of this node; ``advertise``: the address the world outside the
    overlay reaches it at, when that is not ``host`` (a public address, 1:1 NAT to ``host``:
    Kamailio's ``advertise``). Other overlay nodes always reach it at ``host``."""

    transport: str
    host: str
    port: int
    advertise: str | None = None

    @property
    def hostport(self) -> str:
        """As the world outside the overlay reaches it."""
        return self.hostport_for(public=True)

    def hostport_for(self, *, public: bool) -> str:
        """As the world outside (``public``) or another overlay node reaches it."""
        host = self.advertise if public and self.advertise is not None else self.host
        return f"{host_reference(host)}:{self.port}"

    def record_route(self, params: str = "", *, sips: bool = False, public: bool = True) -> str:
        """This listener as a Record-Route entry, for the side ``public`` says; a sips: URI
        for a sips: request on a TLS listener (RFC 3261 §16.6 step 4), else sip: with its
        transport."""
        hostport = self.hostport_for(public=public)
        if sips and self.transport == "tls":
            return f"<sips:{hostport};lr{params}>"
        transport = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"<sip:{hostport}{transport};lr{params}>"


@dataclass(frozen=True, slots=True)
class Target:
    """Where the dialplan sends a request, located per RFC 3263 unless ``host`` is an IP."""

    host: str
    port: int | None = None
    transport: str | None = None
    scheme: str = "sip"
    request_uri: str | None = None  # a rewritten Request-URI, or None to keep it
    route: str | None = None  # a Route to push first (the egress node of an overlay call)
    #: An overlay node the shell has no route to yet: it resolves the target (``ResolveTarget``)
    #: once a route appears, or refuses the request when none does in time.
    await_route: str | None = None
    #: The egress node of an overlay call (``route`` names it).
    egress: str | None = None
    #: Where a new call goes next when this target's egress fails it (no answer within
    #: ``ProxyConfig.fr``, 408, 503, or the node is lost): the rule's other egress nodes in
    #: fail-over order (``overlay.routing.order_egress``).
    alternates: tuple[Target, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The dialplan matched, but the request cannot be sent now (its egress is unreachable,
    the node is draining); ``retry_after`` seconds go in a Retry-After header (§20.33)."""

    status: int
    reason: str
    retry_after: int | None = None


#: The dialplan as the proxy core asks it (``overlay.routing.CallRouter.locate``): a target,
#: a refusal, or ``None`` (no rule matches: 404).
Locate = Callable[[Request, SipUri | TelUri], Target | Refusal | None]


class NextHopHealth(Protocol):
    """What the core asks before it tries the next hops of a request outside the overlay (a
    trunk's RFC 3263 list): the same peers, those known to be down moved last
    (``overlay.routing.TrunkHealth``). Never drops one: a trunk that ignores probes must not be
    black-holed."""

    def order(self, peers: Sequence[Peer], now: float) -> list[Peer]: ...


class OwnAddresses:
    """This node's listening addresses, advertised ones too, to recognise URIs that name it
    (§16.4)."""

    __slots__ = ("addresses",)

    def __init__(self, listeners: Iterable[Listener]) -> None:
        self.addresses = {
            (host, listener.port)
            for listener in listeners
            for host in (listener.host, listener.advertise)
            if host is not None
        }

    def names(self, text: str, *, record_route: bool = False) -> bool:
        """Whether ``text`` names this node (with ``record_route``: in our Record-Route form)."""
        try:
            uri = parse_uri_untrusted(text)
        except RemoteProtocolError:
            return False
        if not isinstance(uri, SipUri):
            return False
        if record_route and (uri.user is not None or not uri.lr):
            return False
        port = uri.port if uri.port is not None else DEFAULT_PORTS.get(uri_transport(uri), 5060)
        return (host_bare(uri.host), port) in self.addresses

    def pop_routes(self, request: Request) -> None:
        """Remove the Route entries on top that name this node (§16.4)."""
        headers = request.headers
        while True:
            route = headers.first_value("Route")
            if route is None or not self.names(NameAddr.parse_untrusted(route).uri):
                return
            headers.pop_first_value("Route")


def apply_target(request: Request, target: Target) -> None:
    if target.route is not None:
        request.headers.insert_first("Route", target.route)
    if target.request_uri is not None:
        request.uri = target.request_uri


def uri_target(uri: SipUri) -> Target:
    """The next hop a SIP URI names (RFC 3263 §4: maddr, transport, port)."""
    transport = uri_transport(uri) if uri.transport or uri.scheme == "sips" else None
    return Target(
        host=uri.maddr or host_bare(uri.host), port=uri.port, transport=transport, scheme=uri.scheme
    )


def uri_transport(uri: SipUri) -> str:
    """The transport a URI asks for: sips: is TLS unless it says udp (RFC 3261 §26.2.2:
    ``sips:...;transport=tcp`` is TLS over TCP); sip: defaults to UDP."""
    transport = (uri.transport or "").lower()
    if uri.scheme == "sips":
        return "udp" if transport == "udp" else "tls"
    return transport or "udp"


def literal_peer(target: Target) -> Peer | None:
    """The peer of a target whose host is an IP literal (RFC 3263 §4.2 needs no DNS)."""
    if not _is_ip_literal(target.host):
        return None
    transport = target.transport or "udp"
    port = target.port or DEFAULT_PORTS.get(transport, 5060)
    return Peer(transport, target.host, port)


def overlay_route(node_id: str, address: Peer) -> str:
    """The Route entry that names an overlay node (a waypoint, or the egress of a call)."""
    return f"<sip:{host_reference(address.host)}:{address.port};lr;ovl={node_id}>"


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
