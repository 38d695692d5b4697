"""Route 53 record sets for a fleet's SIP service, built and checked without calling AWS.

Theory of operation
-------------------
A SIP client finds the fleet the RFC 3263 §4 way: NAPTR at the zone apex picks the transport,
SRV (RFC 2782) picks a host by priority and weight, A gives the host's addresses. A client that
only does A lookups uses ``sip.<zone>``, which Route 53 answers by latency from the nearest
region whose health check passes. For the zone ``voice.example.com``::

    voice.example.com.             NAPTR 10 0 "S" "SIPS+D2T" "" _sips._tcp.voice.example.com.
                                   NAPTR 20 0 "S" "SIP+D2T" "" _sip._tcp.voice.example.com.
                                   NAPTR 30 0 "S" "SIP+D2U" "" _sip._udp.voice.example.com.
    _sips._tcp.voice.example.com.  SRV   <priority> <weight> <TLS port> <region host>, per region
    _sip._tcp.voice.example.com.   SRV   <priority> <weight> <port> <region host>, per region
    _sip._udp.voice.example.com.   SRV   <priority> <weight> <port> <region host>, per region
    <region>.sip.voice.example.com. A    every public address of the region (the region host)
    sip.voice.example.com.         A     latency: SetIdentifier = Region = the region, per region

The SRV targets are the per-region hosts, not ``sip.<zone>``: an SRV client already gets every
region with its priority and weight, and fails over to the next target itself (RFC 3263 §4.3).
Route 53 health checks only steer the latency set.

Why validate here
-----------------
moto stores whatever it is given: a duplicate CREATE, a latency Region of ``mars-1``, SRV rdata
``not-an-srv``, a failover record without SetIdentifier. AWS refuses those with
``InvalidChangeBatch``, and only when the change reaches it, i.e. in the middle of a production
deploy. ``validate_record_set`` and ``validate_change_batch`` refuse them first, so the tests
against moto catch what AWS would. The checks are stricter than Route 53 in one way: names in
record values (SRV targets, NAPTR replacements) must be absolute, with the final dot, because
Route 53 reads them as absolute while zone-file tools and dnspython read them as relative.

Names are compared as Route 53 compares them: case-insensitively, with or without the final dot.
Route 53 escapes unusual characters in octal (``\\052`` for ``*``), unlike zone files (decimal),
so names are compared as text and never decoded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.IN.NAPTR import NAPTR

from overlay.config import READY_PATH

__all__ = [
    "AWS_REGIONS",
    "RecordError",
    "RegionEndpoint",
    "health_check_config",
    "region_host",
    "sip_record_sets",
    "validate_change_batch",
    "validate_record_set",
]

#: Every region Route 53 accepts as the ``Region`` of a latency record set (the
#: ``ResourceRecordSetRegion`` enumeration of the Route 53 API), by partition.
AWS_REGIONS = frozenset(
    {
        # aws (commercial)
        "af-south-1",
        "ap-east-1",
        "ap-east-2",
        "ap-northeast-1",
        "ap-northeast-2",
        "ap-northeast-3",
        "ap-south-1",
        "ap-south-2",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "ap-southeast-4",
        "ap-southeast-5",
        "ap-southeast-6",
        "ap-southeast-7",
        "ca-central-1",
        "ca-west-1",
        "eu-central-1",
        "eu-central-2",
        "eu-north-1",
        "eu-south-1",
        "eu-south-2",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "il-central-1",
        "me-central-1",
        "me-south-1",
        "mx-central-1",
        "sa-east-1",
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        # aws-cn
        "cn-north-1",
        "cn-northwest-1",
        # aws-us-gov
        "us-gov-east-1",
        "us-gov-west-1",
        # aws-eusc (European Sovereign Cloud)
        "eusc-de-east-1",
    }
)

#: Record types Route 53 hosts (the ``RRType`` enumeration of its API).
RECORD_TYPES = frozenset(
    {
        "A",
        "AAAA",
        "CAA",
        "CNAME",
        "DS",
        "HTTPS",
        "MX",
        "NAPTR",
        "NS",
        "PTR",
        "SOA",
        "SPF",
        "SRV",
        "SSHFP",
        "SVCB",
        "TLSA",
        "TXT",
    }
)

#: The keys that choose a routing policy; a record set has at most one, and then a SetIdentifier.
ROUTING_POLICIES = {
    "Region": "latency",
    "Weight": "weighted",
    "Failover": "failover",
    "GeoLocation": "geolocation",
    "GeoProximityLocation": "geoproximity",
    "MultiValueAnswer": "multivalue answer",
    "CidrRoutingConfig": "IP-based",
}

MAX_TTL = 2**31 - 1  # RFC 2181 §8; the Route 53 API's TTL range is 0..2147483647
MAX_VALUE_CHARS = 4000  # Route 53's limit on one ResourceRecord Value
NAPTR_FLAGS = frozenset({"", "A", "P", "S", "U"})  # RFC 3404 §4.3 (case-insensitive)

_UINT = re.compile(r"[0-9]+")


class RecordError(ValueError):
    """A record set or change batch that Route 53 would refuse; the message says why."""


@dataclass(frozen=True)
class RegionEndpoint:
    """One region of the fleet, as DNS sees it.

    Attributes:
        region: the AWS region name, e.g. ``"us-west-2"``.
        addresses: the region's public floating addresses (EIPs), one per AZ pair.
        srv_priority: SRV priority of the region's host (lower is tried first, RFC 2782).
        srv_weight: SRV weight among hosts of the same priority.
        health_check_id: the Route 53 health check that gates the region's latency record set.
    """

    region: str
    addresses: tuple[str, ...]
    srv_priority: int
    srv_weight: int
    health_check_id: str | None = None


def region_host(zone: str, region: str) -> str:
    """The host name of ``region``'s SIP routers: ``<region>.sip.<zone>.``.

    Raises:
        RecordError: ``zone`` is not a DNS name, or ``region`` is not an AWS region.
    """
    if region not in AWS_REGIONS:
        raise RecordError(f"{region!r} is not an AWS region")
    return f"{region}.sip.{_zone_name(zone)}"


def sip_record_sets(
    zone: str,
    endpoints: Sequence[RegionEndpoint],
    *,
    sip_port: int,
    sip_tls_port: int | None,
    ttl: int = 60,
) -> list[dict[str, Any]]:
    """The Route 53 record sets that publish the fleet's SIP service in ``zone``.

    The scheme is described at the top of this module. SRV values follow the order of
    ``endpoints``.

    Args:
        zone: the hosted zone's name, e.g. ``"voice.example.com"`` (final dot optional).
        endpoints: one per region, each region once.
        sip_port: the SIP port for UDP and TCP (``_sip._udp``, ``_sip._tcp``).
        sip_tls_port: the SIP-over-TLS port (``_sips._tcp``); ``None``: the routers serve no
            TLS, and neither the NAPTR nor an SRV set names it (a client would try it first).
        ttl: TTL of every record set, in seconds.

    Returns:
        ``ResourceRecordSet`` dicts, in this order: NAPTR; SRV for ``_sips._tcp``, ``_sip._tcp``,
        ``_sip._udp``; the region hosts' A sets; the latency A sets of ``sip.<zone>``.

    Raises:
        RecordError: no endpoints, a region twice, a region without addresses, or any record
            set that ``validate_record_set`` refuses (a bad address, port or SRV field).
    """
    origin = _zone_name(zone)
    if not endpoints:
        raise RecordError("no region endpoints: the SIP service would have no address")
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.region in seen:
            raise RecordError(f"region {endpoint.region!r} is given twice")
        seen.add(endpoint.region)
        if not endpoint.addresses:
            raise RecordError(f"region {endpoint.region!r} has no addresses")
    hosts = [(endpoint, region_host(origin, endpoint.region)) for endpoint in endpoints]

    def record_set(name: str, rdtype: str, values: Sequence[str]) -> dict[str, Any]:
        return {
            "Name": name,
            "Type": rdtype,
            "TTL": ttl,
            "ResourceRecords": [{"Value": value} for value in values],
        }

    def srv(service: str, port: int) -> dict[str, Any]:
        values = [f"{e.srv_priority} {e.srv_weight} {port} {host}" for e, host in hosts]
        return record_set(f"{service}.{origin}", "SRV", values)

    # RFC 3263 §4.1: the client takes the lowest order it supports; TLS first, UDP last.
    services = [(20, "SIP+D2T", "_sip._tcp", sip_port), (30, "SIP+D2U", "_sip._udp", sip_port)]
    if sip_tls_port is not None:
        services.insert(0, (10, "SIPS+D2T", "_sips._tcp", sip_tls_port))
    naptr = [
        f'{order} 0 "S" "{service}" "" {target}.{origin}' for order, service, target, _ in services
    ]
    rrsets = [
        record_set(origin, "NAPTR", naptr),
        *(srv(target, port) for _, _, target, port in services),
    ]
    rrsets += [record_set(host, "A", endpoint.addresses) for endpoint, host in hosts]
    for endpoint, _ in hosts:
        latency = record_set(f"sip.{origin}", "A", endpoint.addresses)
        latency |= {"SetIdentifier": endpoint.region, "Region": endpoint.region}
        if endpoint.health_check_id is not None:
            latency["HealthCheckId"] = endpoint.health_check_id
        rrsets.append(latency)
    for rrset in rrsets:
        validate_record_set(rrset, zone=origin)
    return rrsets


def health_check_config(
    address: str, port: int, *, allow_special_use: bool = False
) -> dict[str, Any]:
    """A Route 53 ``HealthCheckConfig`` that asks a SIP router whether it takes new calls.

    Route 53 cannot check UDP, and a TCP connect to SIP would not see a node that drains, so the
    check asks the node's ``[health]`` endpoint (``GET /ready``: 200, or 503 while it drains or
    stands by) every 10 s and calls the endpoint unhealthy after 3 failures in a row. One check
    per address; a region whose latency record set lists several addresses can gate it on a
    CALCULATED check over them.

    Args:
        address: the public IPv4 or IPv6 address to check.
        port: the node's ``[health]`` port.
        allow_special_use: accept addresses Route 53 refuses to check (RFC 5735, RFC 6598,
            RFC 5156 ranges: private, loopback, documentation, multicast...). Only for tests:
            moto's EIPs come from 127.0.0.0/8 and test data from the documentation ranges.

    Raises:
        RecordError: not an IP address, a port out of 1..65535, or a special-use address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise RecordError(f"health check address {address!r} is not an IP address") from None
    _check_range(port, 1, 65535, f"health check port {port!r}")
    if not allow_special_use and (not ip.is_global or ip.is_multicast):
        raise RecordError(
            f"Route 53 cannot health-check {address}: it is in a private, non-routable or"
            " special-use range (RFC 5735, RFC 6598, RFC 5156)"
        )
    return {
        "Type": "HTTP",
        "IPAddress": address,
        "Port": port,
        "ResourcePath": READY_PATH,
        "RequestInterval": 10,
        "FailureThreshold": 3,
    }


def validate_record_set(rrset: Mapping[str, Any], *, zone: str | None = None) -> None:
    """Check one ``ResourceRecordSet`` as Route 53 would, and more strictly where noted above.

    Checked: the name (a DNS name, inside ``zone`` when given), the type, the TTL range, the
    values of A, AAAA, SRV and NAPTR in detail and of other types as zone-file syntax, a single
    value for CNAME, no value twice, alias targets, and the routing policy (at most one, always
    with a SetIdentifier, a real AWS region for latency, PRIMARY/SECONDARY for failover, a
    weight of 0..255).

    Args:
        rrset: the record set, as given to ``change_resource_record_sets``.
        zone: the hosted zone's name; ``None`` skips the "inside the zone" check.

    Raises:
        RecordError: naming the record set and the first problem found.
    """
    name = rrset.get("Name")
    rdtype = rrset.get("Type")
    if not isinstance(name, str) or not name:
        raise RecordError(f"record set without a Name: {dict(rrset)!r}")
    if rdtype not in RECORD_TYPES:
        raise RecordError(f"{name}: type {rdtype!r} is not one Route 53 hosts")
    where = f"{name} {rdtype}"
    _check_name(name, where)
    if zone is not None and not _in_zone(name, _zone_name(zone)):
        raise RecordError(f"{where}: the name is not inside the zone {_zone_name(zone)}")
    if "AliasTarget" in rrset:
        _check_alias(rrset, where)
    else:
        _check_values(rrset, rdtype, where)
    _check_routing(rrset, where)


def validate_change_batch(
    batch: Mapping[str, Any],
    existing: Sequence[Mapping[str, Any]] = (),
    *,
    zone: str | None = None,
) -> None:
    """Check a ``ChangeBatch`` against the zone's current record sets, as Route 53 would.

    Every record set must pass ``validate_record_set``. The changes apply in order to a copy of
    ``existing``: CREATE of a (Name, Type, SetIdentifier) that exists is refused (moto accepts it
    and ends up with two record sets); DELETE must name an existing record set and repeat it
    exactly (TTL, values, routing fields); UPSERT creates or replaces. Then each name the batch
    touched must be consistent: a CNAME alone at its name and not at the apex, and the record
    sets of one (Name, Type) either one without SetIdentifier or all with the same routing policy.

    Args:
        batch: ``{"Changes": [{"Action": ..., "ResourceRecordSet": ...}, ...]}``.
        existing: the zone's record sets, as ``list_resource_record_sets`` returns them (moto's
            malformed SOA included: existing record sets are only compared, never checked).
        zone: the hosted zone's name; ``None`` skips the "inside the zone" check.

    Raises:
        RecordError: naming the change (index, action, name, type) and the problem.
    """
    origin = None if zone is None else _zone_name(zone)
    changes = batch.get("Changes")
    if not isinstance(changes, Sequence) or isinstance(changes, str) or not changes:
        raise RecordError("a change batch needs at least one change in 'Changes'")
    state = {_key(rrset): rrset for rrset in existing}
    touched: set[str] = set()
    for index, change in enumerate(changes):
        if not isinstance(change, Mapping):
            raise RecordError(f"change {index}: {change!r} is not a change")
        action = change.get("Action")
        rrset = change.get("ResourceRecordSet")
        if not isinstance(rrset, Mapping):
            raise RecordError(f"change {index}: no ResourceRecordSet")
        what = f"change {index} ({action} {rrset.get('Name')} {rrset.get('Type')})"
        if action not in ("CREATE", "DELETE", "UPSERT"):
            raise RecordError(f"{what}: Action must be CREATE, DELETE or UPSERT")
        try:
            validate_record_set(rrset, zone=origin)
        except RecordError as error:  # the message names the record set already
            raise RecordError(f"change {index} ({action}): {error}") from None
        key = _key(rrset)
        if action == "CREATE" and key in state:
            raise RecordError(f"{what}: the record set already exists (UPSERT replaces it)")
        if action == "DELETE":
            if key not in state:
                raise RecordError(f"{what}: there is no such record set to delete")
            if _comparable(state[key]) != _comparable(rrset):
                raise RecordError(
                    f"{what}: it does not match the record set in the zone; DELETE must repeat"
                    " its TTL, values and routing fields exactly"
                )
            del state[key]
        else:
            state[key] = rrset
        touched.add(key[0])
    for name in sorted(touched):
        rrsets = [rrset for key, rrset in state.items() if key[0] == name]
        _check_name_consistent(name, rrsets, apex=name == origin)


# ---------------------------------------------------------------------------------------------
# Names


def _canonical(name: str) -> str:
    """``name`` as Route 53 compares it: lower case, with the final dot."""
    return name.lower() if name.endswith(".") else f"{name.lower()}."


def _zone_name(zone: str) -> str:
    _check_name(zone, "zone")
    return _canonical(zone)


def _in_zone(name: str, origin: str) -> bool:
    name = _canonical(name)
    return name == origin or name.endswith(f".{origin}")


def _check_name(name: str, where: str) -> None:
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as error:
        raise RecordError(f"{where}: {name!r} is not a DNS name ({error})") from None


def _key(rrset: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """What identifies a record set in a zone: (Name, Type, SetIdentifier)."""
    return (
        _canonical(str(rrset.get("Name", ""))),
        str(rrset.get("Type", "")).upper(),
        rrset.get("SetIdentifier"),
    )


def _comparable(rrset: Mapping[str, Any]) -> dict[str, Any]:
    """``rrset`` normalized for "is this the same record set" (the DELETE rule)."""
    result = {key: value for key, value in rrset.items() if value is not None}
    result["Name"] = _canonical(str(result.get("Name", "")))
    if "ResourceRecords" in result:
        result["ResourceRecords"] = sorted(
            str(record.get("Value", "")) for record in result["ResourceRecords"]
        )
    if "AliasTarget" in result:
        alias = dict(result["AliasTarget"])
        alias["DNSName"] = _canonical(str(alias.get("DNSName", "")))
        result["AliasTarget"] = alias
    return result


def _check_name_consistent(name: str, rrsets: Sequence[Mapping[str, Any]], *, apex: bool) -> None:
    types = {str(rrset.get("Type")).upper() for rrset in rrsets}
    if apex and "CNAME" in types:
        raise RecordError(f"{name}: a CNAME cannot be at the zone apex (RFC 1912 §2.4)")
    if "CNAME" in types and len(types) > 1:
        others = ", ".join(sorted(types - {"CNAME"}))
        raise RecordError(f"{name}: a CNAME cannot share its name with other types ({others})")
    for rdtype in sorted(types):
        group = [rrset for rrset in rrsets if str(rrset.get("Type")).upper() == rdtype]
        if len(group) < 2:
            continue
        if any("SetIdentifier" not in rrset for rrset in group):
            raise RecordError(
                f"{name} {rdtype}: a record set without SetIdentifier cannot share its name and"
                " type with other record sets"
            )
        policies = {_policy(rrset) for rrset in group}
        if len(policies) > 1:
            raise RecordError(
                f"{name} {rdtype}: record sets of one name and type must share a routing policy,"
                f" not mix {', '.join(sorted(p or 'none' for p in policies))}"
            )


# ---------------------------------------------------------------------------------------------
# Values


def _check_values(rrset: Mapping[str, Any], rdtype: str, where: str) -> None:
    ttl = rrset.get("TTL")
    if ttl is None:
        raise RecordError(f"{where}: TTL is required (only alias record sets have none)")
    _check_range(ttl, 0, MAX_TTL, f"{where}: TTL {ttl!r}")
    records = rrset.get("ResourceRecords")
    if not isinstance(records, Sequence) or not records:
        raise RecordError(f"{where}: ResourceRecords needs at least one value")
    values: list[str] = []
    for record in records:
        value = record.get("Value") if isinstance(record, Mapping) else None
        if not isinstance(value, str) or not value:
            raise RecordError(f"{where}: {record!r} is not a {{'Value': text}} record")
        if len(value) > MAX_VALUE_CHARS:
            raise RecordError(f"{where}: a value is longer than {MAX_VALUE_CHARS} characters")
        if value in values:
            raise RecordError(f"{where}: the value {value!r} is given twice")
        values.append(value)
        _VALUE_CHECKS.get(rdtype, _check_zone_file_syntax)(value, rdtype, where)
    if rdtype == "CNAME" and len(values) > 1:
        raise RecordError(f"{where}: a CNAME record set has exactly one value")


def _check_a(value: str, rdtype: str, where: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise RecordError(f"{where}: {value!r} is not an IPv4 address") from None


def _check_aaaa(value: str, rdtype: str, where: str) -> None:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        raise RecordError(f"{where}: {value!r} is not an IPv6 address") from None


def _check_srv(value: str, rdtype: str, where: str) -> None:
    # RFC 2782: "priority weight port target"; a target of "." (service not offered, port 0)
    # is refused too: the fleet never publishes it, so it can only be a mistake.
    fields = value.split()
    if len(fields) != 4 or not all(_UINT.fullmatch(field) for field in fields[:3]):
        raise RecordError(f"{where}: {value!r} is not 'priority weight port target.'")
    priority, weight, port = (int(field) for field in fields[:3])
    _check_range(priority, 0, 65535, f"{where}: SRV priority {priority}")
    _check_range(weight, 0, 65535, f"{where}: SRV weight {weight}")
    _check_range(port, 1, 65535, f"{where}: SRV port {port}")
    _check_target(fields[3], f"{where}: SRV target")


def _check_naptr(value: str, rdtype: str, where: str) -> None:
    # RFC 3403 §4.1: order preference "flags" "services" "regexp" replacement.
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NAPTR, value)
    except dns.exception.DNSException as error:
        raise RecordError(
            f'{where}: {value!r} is not \'order preference "flags" "service" "regexp"'
            f" replacement.' ({error})"
        ) from None
    assert isinstance(rdata, NAPTR)
    flags = rdata.flags.decode("ascii", "replace")
    if flags.upper() not in NAPTR_FLAGS:
        raise RecordError(f"{where}: NAPTR flags {flags!r} are not one of '', A, P, S, U")
    replacement = value.split()[-1]
    _check_target(replacement, f"{where}: NAPTR replacement")
    # RFC 3403 §4.1: regexp and replacement are mutually exclusive; "." means "no replacement".
    if rdata.regexp and replacement != ".":
        raise RecordError(f"{where}: a NAPTR with a regexp needs '.' as its replacement")
    if not rdata.regexp and replacement == ".":
        raise RecordError(f"{where}: a NAPTR needs a regexp or a replacement, it has neither")


def _check_zone_file_syntax(value: str, rdtype: str, where: str) -> None:
    try:
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), value)
    except dns.exception.DNSException as error:
        raise RecordError(f"{where}: {value!r} is not {rdtype} data ({error})") from None


_VALUE_CHECKS = {"A": _check_a, "AAAA": _check_aaaa, "SRV": _check_srv, "NAPTR": _check_naptr}


def _check_target(target: str, what: str) -> None:
    if not target.endswith("."):
        raise RecordError(f"{what} {target!r} is not absolute: end it with a dot")
    _check_name(target, what)


def _check_alias(rrset: Mapping[str, Any], where: str) -> None:
    if "TTL" in rrset or "ResourceRecords" in rrset:
        raise RecordError(f"{where}: an alias record set has no TTL and no ResourceRecords")
    alias = rrset["AliasTarget"]
    missing = {"HostedZoneId", "DNSName", "EvaluateTargetHealth"} - set(alias)
    if missing:
        raise RecordError(f"{where}: AliasTarget lacks {', '.join(sorted(missing))}")
    _check_name(str(alias["DNSName"]), f"{where}: AliasTarget DNSName")


# ---------------------------------------------------------------------------------------------
# Routing policies


def _policy(rrset: Mapping[str, Any]) -> str | None:
    for key, policy in ROUTING_POLICIES.items():
        if key in rrset:
            return policy
    return None


def _check_routing(rrset: Mapping[str, Any], where: str) -> None:
    keys = [key for key in ROUTING_POLICIES if key in rrset]
    if len(keys) > 1:
        raise RecordError(f"{where}: one routing policy at most, not {' and '.join(keys)}")
    identifier = rrset.get("SetIdentifier")
    if keys and identifier is None:
        raise RecordError(
            f"{where}: a {ROUTING_POLICIES[keys[0]]} record set needs a SetIdentifier"
        )
    if identifier is not None:
        if not keys:
            raise RecordError(f"{where}: SetIdentifier without a routing policy")
        if not isinstance(identifier, str) or not 1 <= len(identifier) <= 128:
            raise RecordError(f"{where}: SetIdentifier must be 1 to 128 characters")
    if "Region" in rrset and rrset["Region"] not in AWS_REGIONS:
        raise RecordError(f"{where}: latency Region {rrset['Region']!r} is not an AWS region")
    if "Failover" in rrset and rrset["Failover"] not in ("PRIMARY", "SECONDARY"):
        raise RecordError(f"{where}: Failover must be PRIMARY or SECONDARY")
    if "Weight" in rrset:
        _check_range(rrset["Weight"], 0, 255, f"{where}: Weight {rrset['Weight']!r}")
    health_check = rrset.get("HealthCheckId")
    if health_check is not None and (
        not isinstance(health_check, str) or not 1 <= len(health_check) <= 64
    ):
        raise RecordError(f"{where}: HealthCheckId must be 1 to 64 characters")


def _check_range(value: object, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecordError(f"{what} is out of range {low}..{high}")
