"""The node configuration as frozen dataclasses (the schema is docs/internal/config.md).

Every value here has already been validated by ``_schema``: code that receives a ``NodeConfig``
never re-checks it. Hosts are stored as written in the file, lower case for names, IP literals
without brackets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Literal, TypeAlias

Transport: TypeAlias = Literal["udp", "tcp", "tls"]
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
    #: An INVITE with another next hop or egress to try waits this long for any response,
    #: not Timer B (Kamailio's fr_timer); 0: Timer B only.
    fr: float = 1.0


@dataclass(frozen=True)
class SipTlsSection:
    """``[sip.tls]``: SIP over TLS (RFC 3261 §26, RFC 5922) with trunks; docs/security.md.

    ``cert`` and ``key`` are this node's certificate chain (leaf first) and key, PEM: presented
    by the ``tls:`` listeners and, as a client certificate, on connections the node opens.
    ``ca`` is a PEM bundle that verifies the trunks' certificates instead of the system's
    store; ``verify_client`` makes a trunk that connects present a certificate ``ca`` signed.
    """

    cert: str
    key: str
    ca: str | None = None
    verify_client: bool = False
    handshake_timeout: float = 5.0


@dataclass(frozen=True)
class SipSection:
    """``[sip]``: sockets and message limits."""

    listen: tuple[ListenAddress, ...]
    workers: int = 1  # processes sharing the sockets; UDP calls are steered by Call-ID
    max_message_size: int = 65535
    tcp_idle_timeout: float = 60.0
    tcp_connect_timeout: float = 2.0  # a dead TCP/TLS target fails over after this, not Timer B
    record_route: bool = True
    user_agent: str = "overlay"
    timers: TimerConfig = field(default_factory=TimerConfig)
    tls: SipTlsSection | None = None  # None: no TLS listener; outgoing TLS uses the system store
    #: The address the world outside the overlay reaches the listeners at (a public address,
    #: 1:1 NAT to theirs): in Via and Record-Route toward trunks; None: the listeners' own.
    advertise: str | None = None


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
    """``[grpc]``: the node's gRPC server (link-state flooding and the Control service).

    ``ca``, ``cert`` and ``key`` are the PEM files of mutual TLS (the CA that signs every
    node's and NOC client's certificate, this node's certificate and key), for the server and
    for the node's own calls to its peers; all three are set unless ``insecure`` (no TLS, no
    authentication: a lab on loopback only).
    """

    host: str
    port: int
    ca: str = ""
    cert: str = ""
    key: str = ""
    insecure: bool = False


@dataclass(frozen=True)
class MediaSection:
    """``[media]``: the node's media relay (overlay.media, the fastpath).

    ``address`` is where endpoint-facing relay ports are bound and what the SDP tells endpoints,
    unless ``advertise`` names the address they reach it at (a public address, 1:1 NAT to it);
    ``overlay`` is the relay's socket for the other nodes' relays (their ``[[peers]].media``);
    relay ports come from ``port_first``..``port_last`` (RTP even, RTCP next to it).
    ``thread_realtime`` (1-99, 0: off) runs the relay thread under SCHED_FIFO at that priority,
    ahead of every ordinary thread of the machine, so that media and the liveness echoes keep
    their timing however busy the node or the machine is; refused (no CAP_SYS_NICE), or 0, the
    thread runs at ``thread_niceness``, ahead of the node's own Python work at least.
    """

    address: str
    overlay: tuple[str, int]
    port_first: int = 20000
    port_last: int = 29999
    inactivity_timeout: float = 60.0
    advertise: str | None = None
    thread_niceness: int = -10
    thread_realtime: int = 1


@dataclass(frozen=True)
class LinkstateSection:
    """``[linkstate]``: probe and flooding timers in seconds (see overlay.linkstate)."""

    probe_interval: float = 0.1
    probe_multiplier: int = 6
    #: Liveness echoes between the media relays (BFD's echo function, answered in C): one
    #: every ``liveness_interval`` to every peer with ``media``; silence for
    #: ``liveness_multiplier`` intervals takes the link down. 0: off (probes decide alone).
    liveness_interval: float = 0.02
    liveness_multiplier: int = 6
    hold_down: float = 2.0
    probe_timeout: float = 1.0
    refresh_interval: float = 10.0
    max_age: float = 40.0
    retransmit_interval: float = 1.0
    route_debounce: float = 0.02
    #: How long a new call whose egress nodes are all unreachable waits for a route before
    #: 503: a blip (a peer's pause, a link in hold-down) costs set-up time, not the call.
    route_wait: float = 2.5
    #: How long a call's far edge node may stay unreachable (a transit reroute may repair
    #: it) before this edge ends the call toward its own party with a BYE.
    far_edge_wait: float = 1.0


@dataclass(frozen=True)
class TrunksSection:
    """``[trunks]``: OPTIONS probes to the trunks this node sends calls to, each address of
    their RFC 3263 lists (``overlay.routing.TrunkHealth``): a trunk silent for
    ``probe_multiplier * probe_interval`` is tried after the live ones, never left out.

    ``reply_codes`` are the final responses that prove a trunk alive; empty: any final
    response (a 404 or 405 comes from a live SIP stack). A 408 never does: a proxy in front
    of a dead trunk makes one itself (the trap Kamailio's ``ds_ping_reply_codes`` warns of).
    """

    enabled: bool = True
    probe_interval: float = 0.25
    probe_multiplier: int = 4
    hold_down: float = 5.0
    probe_timeout: float = 1.0
    reply_codes: tuple[int, ...] = ()

    @property
    def detection_time(self) -> float:
        return self.probe_multiplier * self.probe_interval


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: the Prometheus ``/metrics`` HTTP endpoint (``overlay.shell.telemetry``).

    With several workers, worker ``i`` serves its own counters on ``port + i`` (port 0: each
    worker an ephemeral port of its own, logged at start).
    """

    host: str
    port: int


LogFormat: TypeAlias = Literal["console", "json"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LogSection:
    """``[log]``: what the node writes to stderr (the command line's ``--log-*`` options win)."""

    format: LogFormat = "console"
    level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR


@dataclass(frozen=True)
class CloudwatchSection:
    """``[cloudwatch]``: push the per-link metrics to CloudWatch for the fleet's alarms.

    ``fleet`` and ``region`` are the ``Fleet`` and ``Region`` dimensions the deployer's alarms
    watch; ``endpoint_url`` overrides the regional endpoint (a VPC endpoint, or a test server).
    """

    fleet: str
    region: str
    namespace: str = "Overlay/Links"
    interval: float = 60.0  # seconds between PutMetricData rounds
    sample_interval: float = 1.0  # seconds between samples of every link
    endpoint_url: str | None = None


#: Where ``[health]`` answers (the deployer's Route 53 checks ask there).
READY_PATH = "/ready"


@dataclass(frozen=True)
class HealthSection:
    """``[health]``: ``GET /ready`` for load balancers and DNS health checks (Route 53): 200
    while the node takes new calls, 503 with the reason while it drains or, as a pair's
    standby, is out of the mesh. Nothing else is served there: no counter leaves through it.
    With several workers, worker 0 serves it.
    """

    host: str
    port: int


PairHold: TypeAlias = Literal["kernel", "file"]


@dataclass(frozen=True)
class PairSection:
    """``[pair]``: this node is one member of an active/standby pair reached at ``address``.

    Both members run the node; it joins the mesh (probes, flooding, dialling its peers) only
    while it holds ``address``, which the pair's HA agent gives the active. The standby's node
    is otherwise serving: gRPC and liveness up, ready the moment it holds. ``check_interval``
    is how often the node looks.

    ``hold`` says how it knows. ``"kernel"``: the address is assigned to one of this
    machine's interfaces; the standby binds it beforehand (a non-local bind). ``"file"``: the
    file ``hold_file`` names ``member`` (the HA agent writes it in place of the interface).
    That is the lab's mode, where two members share one machine and every 127/8 address is
    local to both, so neither a kernel test nor two binds of one address:port can work: the
    standby binds its SIP sockets, its relay and the pair's gRPC address only once it holds.
    """

    address: str
    check_interval: float = 0.1
    #: Advertised in the LSA: how long peers keep this node as a destination after it falls
    #: silent (its standby taking over: detection plus the address move, with a margin).
    takeover_grace: float = 4.0
    #: The other member's ``[grpc]`` address: while this member does not hold the pair's
    #: address it dials there to follow the active's calls (pair replication,
    #: ``overlay.shell.replication``); ``None``: it never follows.
    peer_grpc: tuple[str, int] | None = None
    hold: PairHold = "kernel"
    hold_file: str | None = None  # with hold = "file" only, and then required
    member: str | None = None  # with hold = "file" only, and then required


Network: TypeAlias = IPv4Network | IPv6Network
DenyAction: TypeAlias = Literal["drop", "reject"]
LimitAction: TypeAlias = Literal["reject", "drop"]

#: User-Agent fragments of the SIP scanners seen on the internet: the first five are those
#: Kamailio's default configuration drops ("scanner" covers SIPVicious' "friendly-scanner"),
#: the rest later tools and botnets.
SCANNER_USER_AGENTS = (
    "scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "pplsip",
    "sundayddr",
    "iwar",
    "sip-scan",
    "sipscan",
)


@dataclass(frozen=True)
class TrunkLimit:
    """One ``[[security.trunks]]`` entry: a known trunk, always let in, with its own rate and
    never blocked by scanner detection."""

    cidr: Network
    rate: float
    burst: int


@dataclass(frozen=True)
class SecuritySection:
    """``[security]``: SIP edge security (``overlay.security``); docs/security.md.

    Rates and counts are per source: an IPv4 address or an IPv6 /64. User-Agent fragments are
    lower case. ``0`` turns a detector off. Overload control is ``[overload]``'s, not this
    section's: every node has it.
    """

    allow: tuple[Network, ...] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))
    deny_action: DenyAction = "drop"
    rate: float = 20.0  # out-of-dialog requests per second
    burst: int = 40
    limit_action: LimitAction = "reject"
    retry_after: int = 5  # seconds, in the rate limit's 503s
    block_time: float = 600.0
    window: float = 60.0  # seconds over which the detectors count
    sweep_users: int = 20
    max_failures: int = 20
    max_limited: int = 100
    scanner_user_agents: tuple[str, ...] = SCANNER_USER_AGENTS
    trunks: tuple[TrunkLimit, ...] = ()


@dataclass(frozen=True)
class OverloadSection:
    """``[overload]``: what a node past its capacity refuses (``overlay.security.Overload``).

    The node is past its capacity when its UDP receive loop has been behind its socket for a
    while: out-of-dialog requests from unknown sources (neither an overlay peer, a
    ``[[security.trunks]]`` network nor a static dialplan target) get 503 past
    ``unknown_backlog`` seconds, new INVITEs past ``backlog``; requests inside a dialog, ACKs,
    CANCELs, retransmissions and responses never. On for every node unless ``enabled`` is false.
    """

    enabled: bool = True
    #: Seconds behind before new INVITEs get 503: well under T1 (0.5 s), after which callers
    #: retransmit and the queue grows faster.
    backlog: float = 0.2
    #: Seconds behind before unknown sources' OPTIONS, REGISTER and other out-of-dialog
    #: requests get 503 (<= ``backlog``: they are shed first).
    unknown_backlog: float = 0.1
    retry_after: int = 5  # seconds, in the 503s' Retry-After (RFC 3261 §21.5.4)


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
    metrics: MetricsSection | None = None
    log: LogSection = field(default_factory=LogSection)
    cloudwatch: CloudwatchSection | None = None
    security: SecuritySection | None = None  # None: no edge security at all
    overload: OverloadSection = field(default_factory=OverloadSection)
    pair: PairSection | None = None  # None: not one of a pair, always in the mesh
    health: HealthSection | None = None
    trunks: TrunksSection = field(default_factory=TrunksSection)
