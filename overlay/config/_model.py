"""The node configuration as frozen dataclasses (the schema is docs/internal/config.md).

Every value here has already been validated by ``_schema``: code that receives a ``NodeConfig``
never re-checks it. Hosts are stored as written in the file, lower case for names, IP literals
without brackets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Transport: TypeAlias = Literal["udp", "tcp"]
Scheme: TypeAlias = Literal["sip", "sips"]


@dataclass(frozen=True)
class NodeSection:
    """``[node]``: who this node is in the overlay."""

    node_id: str
    region: str
    az: str = ""


@dataclass(frozen=True)
class ListenAddress:
    """One ``sip.listen`` entry; ``host`` is an IP literal without brackets, port 0 = any."""

    transport: Transport
    host: str
    port: int


@dataclass(frozen=True)
class TimerConfig:
    """``[sip.timers]``: RFC 3261 §17 timers in seconds, read by the transaction layer."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0


@dataclass(frozen=True)
class SipSection:
    """``[sip]``: sockets and message limits."""

    listen: tuple[ListenAddress, ...]
    workers: int = 1  # processes sharing the sockets; UDP calls are steered by Call-ID
    max_message_size: int = 65535
    tcp_idle_timeout: float = 60.0
    record_route: bool = True
    user_agent: str = "overlay"
    timers: TimerConfig = field(default_factory=TimerConfig)


@dataclass(frozen=True)
class DnsSection:
    """``[dns]``: ``nameservers`` empty means "use the system resolv.conf"."""

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 2.0


@dataclass(frozen=True)
class StaticTarget:
    """A fixed egress address; ``host`` may be a name, then only its A/AAAA records are used.

    ``transport`` ``None`` means UDP (RFC 3263 §4.1 default for a port given explicitly).
    """

    host: str
    port: int
    transport: Transport | None = None


@dataclass(frozen=True)
class DnsTarget:
    """An egress domain located per RFC 3263 (NAPTR -> SRV -> A/AAAA).

    ``transport`` set skips NAPTR and asks only for that transport's SRV records (§4.1).
    """

    scheme: Scheme
    domain: str
    transport: Transport | None = None


@dataclass(frozen=True)
class DialplanRule:
    """One ``[[dialplan]]`` entry; ``domain`` is lower case, ``None`` matches any host.

    ``egress`` names the nodes where the call may leave the overlay (empty: this node), e.g.
    both AZs of a region; each call is anchored on one of them (``overlay.routing.choose_egress``).
    Every node of an overlay carries the same dialplan; only an egress node sends to ``target``.
    """

    target: StaticTarget | DnsTarget
    user_prefix: str = ""
    domain: str | None = None
    strip_prefix: bool = False
    egress: tuple[str, ...] = ()


@dataclass(frozen=True)
class GrpcSection:
    """``[grpc]``: the node's gRPC server (link-state flooding and the admin service)."""

    host: str
    port: int


@dataclass(frozen=True)
class MediaSection:
    """``[media]``: the node's media relay (overlay.media, the fastpath).

    ``address`` is where endpoint-facing relay ports are bound and what the SDP tells endpoints;
    ``overlay`` is the relay's socket for the other nodes' relays (their ``[[peers]].media``);
    relay ports come from ``port_first``..``port_last`` (RTP even, RTCP next to it).
    """

    address: str
    overlay: tuple[str, int]
    port_first: int = 20000
    port_last: int = 29999
    inactivity_timeout: float = 60.0


@dataclass(frozen=True)
class LinkstateSection:
    """``[linkstate]``: probe and flooding timers in seconds (see overlay.linkstate)."""

    probe_interval: float = 0.1
    probe_multiplier: int = 3
    hold_down: float = 2.0
    probe_timeout: float = 1.0
    refresh_interval: float = 10.0
    max_age: float = 40.0
    retransmit_interval: float = 1.0
    route_debounce: float = 0.02


@dataclass(frozen=True)
class PeerConfig:
    """One ``[[peers]]`` entry: another node of the overlay.

    ``sip`` is the peer's UDP SIP address (probes and calls), ``grpc`` its gRPC server.
    ``base_delay_ms`` is a one-way delay this node adds to everything it sends to the peer: the
    lab uses it to emulate inter-region latency on loopback (0 in production).
    """

    node_id: str
    region: str
    sip: tuple[str, int]
    grpc: tuple[str, int]
    az: str = ""
    media: tuple[str, int] | None = None  # the peer's [media] overlay address
    admin_cost: float = 0.0
    base_delay_ms: float = 0.0


@dataclass(frozen=True)
class NodeConfig:
    """A whole node configuration file."""

    node: NodeSection
    sip: SipSection
    dns: DnsSection = field(default_factory=DnsSection)
    dialplan: tuple[DialplanRule, ...] = ()
    grpc: GrpcSection | None = None
    media: MediaSection | None = None
    linkstate: LinkstateSection = field(default_factory=LinkstateSection)
    peers: tuple[PeerConfig, ...] = ()
