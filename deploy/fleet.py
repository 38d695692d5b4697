"""The fleet description, ``fleet.toml``: which regions and AZs, their networks, ports, HA, alarms.

``load_fleet`` reads it into frozen dataclasses; ``deploy/fleet.example.toml`` is a complete,
commented example. A bad file is refused with ``overlay.config.ConfigError``, whose message is
``"<file>:<line>: <dotted.key>: <reason>"`` exactly as for a node's configuration (the same
reader checks both), e.g. ``fleet.toml:31: regions[1].azs.us-west-1c: must be inside ...``.

Layout: a ``[fleet]`` table (name, instance type, DNS zone, image, the networks let in), the
optional ``[ports]``, ``[ha]`` and ``[alarms]`` tables, and one ``[[regions]]`` table per region
whose ``[regions.azs]`` sub-table maps each availability zone to its subnet, one per line, so
that an error points at the AZ's own line. Every AZ runs one active/standby pair of routers.

The overlay itself: ``[[dialplan]]`` rules, as in a node's ``node.toml`` except that ``egress``
names regions (a call leaves the overlay at one of that region's pairs); the optional
``[linkstate]`` and ``[security]`` tables, and ``[media]``'s ``inactivity_timeout``, are every
node's, with ``node.toml``'s keys. Each is checked here by the node's own parsers, so an error
names fleet.toml's line; ``deploy.render`` makes every member's ``node.toml`` from them.

Everything that can be checked without AWS is checked here. ``check_instance_type`` asks EC2
whether the instance type exists and has enhanced networking; nothing else here calls AWS.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions

from overlay.aws import ClientFactory, error_code
from overlay.config import (
    ConfigError,
    Invalid,
    KeyPath,
    Table,
    dialplan_rule,
    integer,
    ip_address,
    kind,
    linkstate_section,
    matching,
    network,
    parse_toml,
    read_text,
    seconds,
    security_section,
    string,
)


@dataclass(frozen=True)
class Ports:
    """The routers' ports: SIP over UDP/TCP, SIP over TLS, the RTP range, gRPC (control), the
    relays' overlay port (media between routers), Prometheus metrics, and the readiness
    Route 53 checks (``[health]``'s ``/ready``)."""

    sip: int = 5060
    sip_tls: int = 5061
    rtp_first: int = 10000
    rtp_last: int = 20000
    grpc: int = 7000
    relay: int = 7001
    metrics: int = 9100
    health: int = 9101


@dataclass(frozen=True)
class AzSpec:
    """An availability zone (``"us-west-2a"``) and the subnet of its active/standby pair;
    ``public_ip``: the pair's Elastic IP when the carrier brings its own (an address of the
    region's ``public_ipv4_pool``, or one the account held before), else Amazon's choice."""

    name: str
    subnet_cidr: str
    public_ip: str | None = None


@dataclass(frozen=True)
class RegionSpec:
    """A region (``"us-west-2"``), its VPC, its AZs and the DNS SRV record of its routers."""

    name: str
    vpc_cidr: str
    azs: tuple[AzSpec, ...]
    srv_priority: int
    srv_weight: int
    public_ipv4_pool: str | None = None  # BYOIP: the pool the AZs' public_ip come from


@dataclass(frozen=True)
class HaSpec:
    """Failover within an AZ's pair: heartbeat period and hold-down in seconds, and how many
    missed heartbeats make the active router dead."""

    heartbeat_interval: float = 0.5
    dead_after: int = 3
    hold_down: float = 10.0


@dataclass(frozen=True)
class AlarmSpec:
    """Alarm thresholds on the links between routers."""

    loss_pct: float = 2.0
    rtt_ms: float = 250.0
    retrans_pct: float = 5.0


@dataclass(frozen=True)
class OverlaySpec:
    """What every node of the fleet is told, as fleet.toml has it (checked by the node's own
    parsers): its dialplan (``egress`` naming regions), ``[linkstate]``, ``[security]``
    (``None``: no edge security) and ``[media]``."""

    dialplan: tuple[Mapping[str, object], ...] = ()
    linkstate: Mapping[str, object] = field(default_factory=dict)
    security: Mapping[str, object] | None = None
    media: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Fleet:
    """A validated ``fleet.toml``; CIDRs are in ``ipaddress``'s normal form.

    ``peer_cidrs`` defaults to the regions' VPC CIDRs; ``base_image_id`` is ``None`` when the
    file names no base image (the tool then finds one itself).
    """

    name: str
    instance_type: str
    regions: tuple[RegionSpec, ...]
    ports: Ports
    noc_cidrs: tuple[str, ...]
    peer_cidrs: tuple[str, ...]
    trunk_cidrs: tuple[str, ...]
    dns_zone: str
    ami_name: str
    builder_region: str
    base_image_id: str | None
    ha: HaSpec
    alarms: AlarmSpec
    overlay: OverlaySpec = field(default_factory=OverlaySpec)


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# EC2 CreateVpc and CreateSubnet accept IPv4 blocks from /16 to /28.
_AWS_PREFIXES = range(16, 29)
# What DescribeInstanceTypes answers for a type that does not exist.
_NO_SUCH_TYPE = "InvalidInstanceType"

_FLEET_KEYS = (
    "name",
    "instance_type",
    "dns_zone",
    "ami_name",
    "builder_region",
    "base_image_id",
    "noc_cidrs",
    "trunk_cidrs",
    "peer_cidrs",
)

_port = integer(1, 65535)
_srv_field = integer(0, 65535)
_dead_after = integer(1, 100)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet description.

    Args:
        path: the TOML file; it is named as given in error messages.

    Returns:
        The validated fleet, defaults filled in.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 TOML, or breaks the rules above.
    """
    return parse_fleet(read_text(path), source=str(path))


def parse_fleet(text: str, source: str = "fleet.toml") -> Fleet:
    """Parse and validate the TOML ``text`` of a fleet description.

    Args:
        text: the file contents.
        source: the file name used in error messages.

    Returns:
        The validated fleet, defaults filled in.

    Raises:
        ConfigError: on a TOML syntax error, an unknown key, a missing required key or a bad
            value; only the first problem is reported.
    """
    return parse_toml(text, source=source, build=_fleet)


def check_instance_type(fleet: Fleet, aws: ClientFactory, source: str) -> None:
    """Ask EC2, in the builder region, whether ``fleet.instance_type`` can carry the fleet.

    Args:
        fleet: a parsed fleet.
        aws: where the EC2 client comes from.
        source: the file name used in error messages.

    Raises:
        ConfigError: naming ``fleet.instance_type`` (without a line: the fleet no longer has
            its text) when EC2 does not know the type, or when the type has no enhanced
            networking (ENA).
        botocore.exceptions.ClientError: any other refusal by EC2 (credentials, throttling).
    """
    ec2 = aws.client("ec2", fleet.builder_region)
    try:
        types = ec2.describe_instance_types(InstanceTypes=[fleet.instance_type])["InstanceTypes"]
    except botocore.exceptions.ClientError as error:
        if error_code(error) != _NO_SUCH_TYPE:
            raise
        types = []
    key = "fleet.instance_type"
    if not types:
        reason = f"EC2 has no instance type {fleet.instance_type!r} (in {fleet.builder_region})"
        raise ConfigError(source, None, key, reason)
    if types[0].get("NetworkInfo", {}).get("EnaSupport") == "unsupported":
        reason = (
            f"{fleet.instance_type!r} has no enhanced networking (ENA unsupported): the routers"
            " relay carriers' RTP and need its packet rate; choose e.g. c5n.xlarge"
        )
        raise ConfigError(source, None, key, reason)


def _fleet(data: dict[str, object]) -> Fleet:
    root = Table(
        data,
        (),
        ("fleet", "ports", "ha", "alarms", "regions", "dialplan", "linkstate", "security", "media"),
    )
    # [fleet] is read here, key by key, because builder_region must name one of the regions.
    fleet = root.require("fleet", lambda value, path: Table(value, path, _FLEET_KEYS))
    name = fleet.require("name", _fleet_name)
    instance_type = fleet.require("instance_type", _instance_type)
    dns_zone = fleet.require("dns_zone", _dns_zone)
    ami_name = fleet.require("ami_name", _ami_name)
    builder_region = fleet.require("builder_region", _region_name)
    base_image_id = fleet.get("base_image_id", _image_id, None)
    noc_cidrs = fleet.require("noc_cidrs", _nonempty_cidrs)
    trunk_cidrs: tuple[str, ...] = fleet.get("trunk_cidrs", _cidrs, ())
    peer_cidrs = fleet.get("peer_cidrs", _cidrs, None)
    ports = root.get("ports", _ports, Ports())
    ha = root.get("ha", _ha, HaSpec())
    alarms = root.get("alarms", _alarms, AlarmSpec())
    regions = root.require("regions", _regions)
    if sum(len(region.azs) for region in regions) < 2:
        # A node's gRPC server (the HA agents' health checks), relay and link state need peers.
        raise Invalid(("regions", 0, "azs"), "an overlay needs at least two AZs (pairs) in all")
    if builder_region not in {region.name for region in regions}:
        raise Invalid(
            ("fleet", "builder_region"),
            f"must be one of the [[regions]] ({', '.join(r.name for r in regions)}),"
            f" got {builder_region!r}",
        )
    overlay = OverlaySpec(
        dialplan=root.get("dialplan", _dialplan(regions), ()),
        linkstate=root.get("linkstate", _checked(linkstate_section), {}),
        security=root.get("security", _checked(security_section), None),
        media=root.get("media", _media, {}),
    )
    return Fleet(
        name=name,
        instance_type=instance_type,
        regions=regions,
        ports=ports,
        noc_cidrs=noc_cidrs,
        peer_cidrs=tuple(r.vpc_cidr for r in regions) if peer_cidrs is None else peer_cidrs,
        trunk_cidrs=trunk_cidrs,
        dns_zone=dns_zone,
        ami_name=ami_name,
        builder_region=builder_region,
        base_image_id=base_image_id,
        ha=ha,
        alarms=alarms,
        overlay=overlay,
    )


def _checked(parse: Callable[[object, KeyPath], object]) -> Callable[..., Mapping[str, object]]:
    """A node.toml table as written, once the node's own ``parse`` accepted it."""

    def check(value: object, path: KeyPath) -> Mapping[str, object]:
        parse(value, path)
        assert isinstance(value, dict)  # the node's parser takes tables only
        return value

    return check


def _media(value: object, path: KeyPath) -> Mapping[str, object]:
    table = Table(value, path, ("inactivity_timeout",))
    table.get("inactivity_timeout", seconds, None)
    assert isinstance(value, dict)
    return value


def _dialplan(
    regions: tuple[RegionSpec, ...],
) -> Callable[[object, KeyPath], tuple[Mapping[str, object], ...]]:
    """The fleet's ``[[dialplan]]``: node.toml's rules, whose ``egress`` names regions."""
    names = [region.name for region in regions]

    def rules(value: object, path: KeyPath) -> tuple[Mapping[str, object], ...]:
        if not isinstance(value, list):
            raise Invalid(path, f"must be an array of tables ([[dialplan]]), not {kind(value)}")
        for index, entry in enumerate(value):
            rule = dialplan_rule(entry, (*path, index))
            for position, egress in enumerate(rule.egress):
                if egress not in names:
                    at = (*path, index, "egress")
                    raise Invalid(
                        (*at, position) if len(rule.egress) > 1 else at,
                        f"must name regions of this fleet ({', '.join(names)}), got {egress!r}",
                    )
        return tuple(value)

    return rules


def _ports(value: object, path: KeyPath) -> Ports:
    table = Table(
        value,
        path,
        ("sip", "sip_tls", "rtp_first", "rtp_last", "grpc", "relay", "metrics", "health"),
    )
    d = Ports()
    ports = Ports(
        sip=table.get("sip", _port, d.sip),
        sip_tls=table.get("sip_tls", _port, d.sip_tls),
        rtp_first=table.get("rtp_first", _port, d.rtp_first),
        rtp_last=table.get("rtp_last", _port, d.rtp_last),
        grpc=table.get("grpc", _port, d.grpc),
        relay=table.get("relay", _port, d.relay),
        metrics=table.get("metrics", _port, d.metrics),
        health=table.get("health", _port, d.health),
    )

    # A rule broken by a default is blamed on the key that was written.
    def given(preferred: str, other: str) -> KeyPath:
        return (*path, preferred if table.has(preferred) or not table.has(other) else other)

    first, last = ports.rtp_first, ports.rtp_last
    if first > last:
        raise Invalid(
            given("rtp_last", "rtp_first"), f"rtp_last ({last}) is below rtp_first ({first})"
        )
    if first % 2:
        raise Invalid(
            (*path, "rtp_first"),
            f"must be even (RTP takes even ports, RTCP the next odd one), got {first}",
        )
    signalling = {
        "sip": ports.sip,
        "sip_tls": ports.sip_tls,
        "grpc": ports.grpc,
        "relay": ports.relay,
        "metrics": ports.metrics,
        "health": ports.health,
    }
    seen: dict[int, str] = {}
    for key, port in signalling.items():
        if port in seen:
            raise Invalid(given(key, seen[port]), f"{key} and {seen[port]} are both port {port}")
        seen[port] = key
        if first <= port <= last:
            range_key = "rtp_first" if table.has("rtp_first") else "rtp_last"
            raise Invalid(
                given(key, range_key),
                f"{key} port {port} is inside the RTP range {first}..{last}",
            )
    return ports


def _ha(value: object, path: KeyPath) -> HaSpec:
    table = Table(value, path, ("heartbeat_interval", "dead_after", "hold_down"))
    d = HaSpec()
    return HaSpec(
        heartbeat_interval=table.get("heartbeat_interval", seconds, d.heartbeat_interval),
        dead_after=table.get("dead_after", _dead_after, d.dead_after),
        hold_down=table.get("hold_down", seconds, d.hold_down),
    )


def _alarms(value: object, path: KeyPath) -> AlarmSpec:
    table = Table(value, path, ("loss_pct", "rtt_ms", "retrans_pct"))
    d = AlarmSpec()
    return AlarmSpec(
        loss_pct=table.get("loss_pct", _percent, d.loss_pct),
        rtt_ms=table.get("rtt_ms", _rtt_ms, d.rtt_ms),
        retrans_pct=table.get("retrans_pct", _percent, d.retrans_pct),
    )


def _regions(value: object, path: KeyPath) -> tuple[RegionSpec, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of tables ([[regions]]), not {kind(value)}")
    if not value:
        raise Invalid(path, "needs at least one [[regions]] table")
    regions: list[RegionSpec] = []
    for index, entry in enumerate(value):
        region = _region(entry, (*path, index), regions)
        regions.append(region)
    return tuple(regions)


def _region(value: object, path: KeyPath, previous: list[RegionSpec]) -> RegionSpec:
    table = Table(
        value,
        path,
        ("name", "vpc_cidr", "srv_priority", "srv_weight", "azs", "public_ipv4_pool"),
    )
    name = table.require("name", _region_name)
    if name in {other.name for other in previous}:
        raise Invalid((*path, "name"), f"duplicate region {name!r}")
    vpc = table.require("vpc_cidr", _aws_network)
    for other in previous:
        # The regions' VPCs reach each other by their private addresses.
        if vpc.overlaps(ipaddress.IPv4Network(other.vpc_cidr)):
            raise Invalid(
                (*path, "vpc_cidr"), f"{vpc} overlaps the VPC of {other.name} ({other.vpc_cidr})"
            )

    def azs(value: object, path: KeyPath) -> tuple[AzSpec, ...]:
        return _azs(value, path, name, vpc)

    return RegionSpec(
        name=name,
        vpc_cidr=str(vpc),
        azs=table.require("azs", azs),
        srv_priority=table.require("srv_priority", _srv_field),
        srv_weight=table.require("srv_weight", _srv_field),
        public_ipv4_pool=table.get("public_ipv4_pool", _ipv4_pool, None),
    )


_ipv4_pool = matching(r"ipv4pool-ec2-[0-9a-f]{8,17}", "be a public IPv4 pool id (ipv4pool-ec2-...)")


def _azs(
    value: object, path: KeyPath, region: str, vpc: ipaddress.IPv4Network
) -> tuple[AzSpec, ...]:
    if not isinstance(value, dict):
        raise Invalid(path, f"must be a table of AZ name = subnet CIDR, not {kind(value)}")
    public_ips: set[str] = set()
    if not value:
        raise Invalid(path, "needs at least one availability zone")
    azs: list[AzSpec] = []
    az_name = re.compile(re.escape(region) + "[a-z]")
    for name, cidr in value.items():
        az_path = (*path, name)
        if not az_name.fullmatch(name):
            raise Invalid(
                az_path,
                f"must be the region's name and one letter (e.g. {region}a), got {name!r}",
            )
        public_ip = None
        if isinstance(cidr, dict):  # { subnet = "...", public_ip = "..." }
            table = Table(cidr, az_path, ("subnet", "public_ip"))
            cidr = table.require("subnet", lambda value, _: value)
            public_ip = table.get("public_ip", _public_ip, None)
            if public_ip in public_ips:
                raise Invalid((*az_path, "public_ip"), f"{public_ip} is another AZ's")
            if public_ip is not None:
                public_ips.add(public_ip)
        subnet = _aws_network(cidr, az_path)
        if not subnet.subnet_of(vpc):
            raise Invalid(az_path, f"subnet {subnet} is not inside the region's vpc_cidr {vpc}")
        for other in azs:
            if subnet.overlaps(ipaddress.IPv4Network(other.subnet_cidr)):
                raise Invalid(
                    az_path,
                    f"subnet {subnet} overlaps the subnet of {other.name} ({other.subnet_cidr})",
                )
        azs.append(AzSpec(name, str(subnet), public_ip))
    return tuple(azs)


def _public_ip(value: object, path: KeyPath) -> str:
    """An address trunks can reach: not private, loopback, link-local, multicast or reserved
    (RFC 6598's shared space passes: the fleet-in-a-box test's "internet" uses it)."""
    text = ip_address(value, path)
    address = ipaddress.ip_address(text)
    special = (address.is_private, address.is_loopback, address.is_link_local)
    if address.version != 4 or any(special) or address.is_multicast or address.is_reserved:
        raise Invalid(path, f"must be a public IPv4 address (an Elastic IP), got {text}")
    return text


# Leaf readers: (value, path) -> typed value, or Invalid naming the path.


_fleet_name = matching(r"[a-z0-9-]{1,32}", "match [a-z0-9-]{1,32} (it goes into tags and names)")
_region_name = matching(r"[a-z]{2}-[a-z]+-\d", 'be an AWS region name such as "us-west-2"')
# "c5n.xlarge", "m7i-flex.large", "u-6tb1.metal", "c7i.metal-48xl".
_instance_type = matching(
    r"[a-z][a-z0-9-]*\.[a-z0-9]+(?:-[a-z0-9]+)*", 'be an EC2 instance type such as "c5n.xlarge"'
)


def _dns_zone(value: object, path: KeyPath) -> str:
    text = string(value, path)
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise Invalid(
            path,
            "must be a DNS name (labels of letters, digits and inner hyphens, up to 63"
            f" characters each), got {text!r}",
        )
    return name


_ami_name = matching(
    r"[A-Za-z0-9()\[\] ./'@_-]{3,128}",
    "be 3 to 128 letters, digits, spaces or ( ) [ ] . / - ' @ _ (EC2's rule for image names)",
)
_image_id = matching(
    r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})", 'be an AMI id such as "ami-0123456789abcdef0"'
)


def _ipv4_network(value: object, path: KeyPath) -> ipaddress.IPv4Network:
    net = network(value, path)
    if not isinstance(net, ipaddress.IPv4Network):
        # The security groups are written with IPv4 rules only.
        raise Invalid(path, f"must be an IPv4 network, got {net}")
    return net


def _aws_network(value: object, path: KeyPath) -> ipaddress.IPv4Network:
    net = _ipv4_network(value, path)
    if net.prefixlen not in _AWS_PREFIXES:
        raise Invalid(path, f"must be a /16 to /28 (EC2's limits for VPCs and subnets), got {net}")
    return net


def _cidrs(value: object, path: KeyPath) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of networks, not {kind(value)}")
    seen: dict[ipaddress.IPv4Network, int] = {}
    for index, item in enumerate(value):
        net = _ipv4_network(item, (*path, index))
        if net in seen:
            raise Invalid((*path, index), f"{net} is listed twice (also at index {seen[net]})")
        seen[net] = index
    return tuple(str(net) for net in seen)


def _nonempty_cidrs(value: object, path: KeyPath) -> tuple[str, ...]:
    cidrs = _cidrs(value, path)
    if not cidrs:
        raise Invalid(path, "needs at least one network")
    return cidrs


def _percent(value: object, path: KeyPath) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Invalid(path, f"must be a percentage, not {kind(value)}")
    if not 0 < value <= 100:
        raise Invalid(path, f"must be a percentage > 0 and <= 100, got {value}")
    return float(value)


def _rtt_ms(value: object, path: KeyPath) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Invalid(path, f"must be a number of milliseconds, not {kind(value)}")
    if not math.isfinite(value) or value <= 0:
        raise Invalid(path, f"must be a finite number of milliseconds > 0, got {value}")
    return float(value)
