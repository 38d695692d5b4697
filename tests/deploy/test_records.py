"""The SIP service's Route 53 record sets: built exactly, refused where AWS would refuse them
(moto would not), and, written to moto, resolved by dnspython through a loopback DNS server.

The addresses are from 198.51.100.0/24 (RFC 5737): DNS data only, never contacted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import botocore.session
import dns.asyncresolver
import dns.resolver
import pytest

from deploy.records import (
    AWS_REGIONS,
    RecordError,
    RegionEndpoint,
    health_check_config,
    region_host,
    sip_record_sets,
    validate_change_batch,
    validate_record_set,
)
from overlay.aws import ClientFactory
from tests.deploy.route53_dns import serve_hosted_zone

ZONE = "voice.example.com"

#: Four regions; us-west-1 has two AZs, so one AZ pair and one address.
FLEET = (
    RegionEndpoint("us-west-2", ("198.51.100.10", "198.51.100.11"), 10, 60),
    RegionEndpoint("us-west-1", ("198.51.100.20",), 10, 40),
    RegionEndpoint("us-east-2", ("198.51.100.30", "198.51.100.31"), 20, 60),
    RegionEndpoint("us-east-1", ("198.51.100.40", "198.51.100.41"), 20, 40),
)
ADDRESSES = {endpoint.region: list(endpoint.addresses) for endpoint in FLEET}


def _sets(**changes: object) -> list[dict[str, Any]]:
    options: dict[str, Any] = {"sip_port": 5060, "sip_tls_port": 5061} | changes
    endpoints = options.pop("endpoints", FLEET)
    return sip_record_sets(ZONE, endpoints, **options)


def _find(rrsets: Sequence[Mapping[str, Any]], name: str, rdtype: str) -> list[Mapping[str, Any]]:
    return [rrset for rrset in rrsets if rrset["Name"] == name and rrset["Type"] == rdtype]


def _values(rrset: Mapping[str, Any]) -> list[str]:
    return [record["Value"] for record in rrset["ResourceRecords"]]


def _create(*rrsets: Mapping[str, Any]) -> dict[str, Any]:
    return {"Changes": [{"Action": "CREATE", "ResourceRecordSet": rrset} for rrset in rrsets]}


# ---------------------------------------------------------------------------------------------
# The record scheme


def test_region_host() -> None:
    assert region_host(ZONE, "us-west-2") == "us-west-2.sip.voice.example.com."
    assert region_host("Voice.Example.COM.", "us-east-1") == "us-east-1.sip.voice.example.com."
    with pytest.raises(RecordError, match="'mars-1' is not an AWS region"):
        region_host(ZONE, "mars-1")


def test_naptr_orders_tls_then_tcp_then_udp() -> None:
    [naptr] = _find(_sets(), "voice.example.com.", "NAPTR")
    assert naptr["TTL"] == 60
    assert _values(naptr) == [
        '10 0 "S" "SIPS+D2T" "" _sips._tcp.voice.example.com.',
        '20 0 "S" "SIP+D2T" "" _sip._tcp.voice.example.com.',
        '30 0 "S" "SIP+D2U" "" _sip._udp.voice.example.com.',
    ]


def test_without_tls_neither_naptr_nor_srv_names_it() -> None:
    """Routers that serve no TLS: a client must not be sent to try it first."""
    rrsets = _sets(sip_tls_port=None)
    [naptr] = _find(rrsets, "voice.example.com.", "NAPTR")
    assert _values(naptr) == [
        '20 0 "S" "SIP+D2T" "" _sip._tcp.voice.example.com.',
        '30 0 "S" "SIP+D2U" "" _sip._udp.voice.example.com.',
    ]
    assert not [r for r in rrsets if r["Name"].startswith("_sips.")]


@pytest.mark.parametrize(
    ("service", "port"),
    [("_sip._udp", 5060), ("_sip._tcp", 5060), ("_sips._tcp", 5061)],
)
def test_srv_lists_every_region_host(service: str, port: int) -> None:
    [srv] = _find(_sets(), f"{service}.voice.example.com.", "SRV")
    assert srv == {
        "Name": f"{service}.voice.example.com.",
        "Type": "SRV",
        "TTL": 60,
        "ResourceRecords": [
            {"Value": f"10 60 {port} us-west-2.sip.voice.example.com."},
            {"Value": f"10 40 {port} us-west-1.sip.voice.example.com."},
            {"Value": f"20 60 {port} us-east-2.sip.voice.example.com."},
            {"Value": f"20 40 {port} us-east-1.sip.voice.example.com."},
        ],
    }


def test_region_hosts_have_all_the_region_addresses() -> None:
    rrsets = _sets(ttl=30)
    for endpoint in FLEET:
        [host] = _find(rrsets, region_host(ZONE, endpoint.region), "A")
        assert host == {
            "Name": f"{endpoint.region}.sip.voice.example.com.",
            "Type": "A",
            "TTL": 30,
            "ResourceRecords": [{"Value": address} for address in endpoint.addresses],
        }


def test_latency_sets_one_per_region_with_its_health_check() -> None:
    endpoints = [dataclasses.replace(e, health_check_id=f"hc-{e.region}") for e in FLEET[:3]]
    endpoints.append(FLEET[3])  # no health check: no HealthCheckId key at all
    latency = _find(_sets(endpoints=endpoints), "sip.voice.example.com.", "A")
    assert latency == [
        {
            "Name": "sip.voice.example.com.",
            "Type": "A",
            "TTL": 60,
            "ResourceRecords": [{"Value": address} for address in e.addresses],
            "SetIdentifier": e.region,
            "Region": e.region,
        }
        | ({"HealthCheckId": e.health_check_id} if e.health_check_id else {})
        for e in endpoints
    ]


def test_record_set_order_and_count() -> None:
    assert [(rrset["Name"], rrset["Type"]) for rrset in _sets()] == [
        ("voice.example.com.", "NAPTR"),
        ("_sips._tcp.voice.example.com.", "SRV"),
        ("_sip._tcp.voice.example.com.", "SRV"),
        ("_sip._udp.voice.example.com.", "SRV"),
        *[(region_host(ZONE, e.region), "A") for e in FLEET],
        *[("sip.voice.example.com.", "A")] * 4,
    ]


def test_the_record_sets_form_a_valid_change_batch() -> None:
    validate_change_batch(_create(*_sets()), zone=ZONE)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"endpoints": ()}, "no region endpoints"),
        ({"endpoints": (FLEET[0], FLEET[0])}, "region 'us-west-2' is given twice"),
        (
            {"endpoints": (RegionEndpoint("us-west-2", (), 10, 60),)},
            "region 'us-west-2' has no addresses",
        ),
        (
            {"endpoints": (RegionEndpoint("mars-1", ("198.51.100.1",), 10, 60),)},
            "'mars-1' is not an AWS region",
        ),
        (
            {"endpoints": (RegionEndpoint("us-west-2", ("198.51.100.300",), 10, 60),)},
            "'198.51.100.300' is not an IPv4 address",
        ),
        (
            {"endpoints": (RegionEndpoint("us-west-2", ("198.51.100.1",), 65536, 60),)},
            "SRV priority 65536 is out of range 0..65535",
        ),
        ({"sip_port": 0}, "SRV port 0 is out of range 1..65535"),
        ({"sip_tls_port": 70000}, "SRV port 70000 is out of range 1..65535"),
        ({"ttl": -1}, "TTL -1 is out of range 0..2147483647"),
    ],
)
def test_sip_record_sets_refuses(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        _sets(**changes)


def test_region_list_is_route53s() -> None:
    """Every region accepted is one the Route 53 API accepts as a latency Region."""
    model = botocore.session.get_session().get_service_model("route53")
    route53 = set(model.shape_for("ResourceRecordSetRegion").enum)
    assert route53 >= AWS_REGIONS
    assert {endpoint.region for endpoint in FLEET} <= AWS_REGIONS


# ---------------------------------------------------------------------------------------------
# Health checks


def test_health_check_asks_the_node_whether_it_is_ready() -> None:
    # A public address as data only; nothing is sent to it.
    assert health_check_config("3.1.2.3", 9101) == {
        "Type": "HTTP",
        "IPAddress": "3.1.2.3",
        "Port": 9101,
        "ResourcePath": "/ready",
        "RequestInterval": 10,
        "FailureThreshold": 3,
    }
    assert health_check_config("198.51.100.10", 5061, allow_special_use=True)["Port"] == 5061


@pytest.mark.parametrize(
    ("address", "port", "message"),
    [
        ("sip1.example.com", 5060, "'sip1.example.com' is not an IP address"),
        ("3.1.2.3", 0, "port 0 is out of range 1..65535"),
        ("3.1.2.3", 65536, "port 65536 is out of range 1..65535"),
        ("198.51.100.10", 5060, "cannot health-check 198.51.100.10"),  # RFC 5737 documentation
        ("10.0.0.1", 5060, "cannot health-check 10.0.0.1"),  # private
        ("127.9.37.201", 5060, "cannot health-check 127.9.37.201"),  # loopback (moto's EIPs)
        ("100.64.0.1", 5060, "cannot health-check 100.64.0.1"),  # RFC 6598 shared
        ("224.0.0.1", 5060, "cannot health-check 224.0.0.1"),  # multicast
        ("fe80::1", 5060, "cannot health-check fe80::1"),  # link-local
    ],
)
def test_health_check_refuses(address: str, port: int, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        health_check_config(address, port)


# ---------------------------------------------------------------------------------------------
# One record set


def _rrset(rdtype: str, *values: str, **fields: object) -> dict[str, Any]:
    rrset = {
        "Name": "x.voice.example.com.",
        "Type": rdtype,
        "TTL": 60,
        "ResourceRecords": [{"Value": value} for value in values],
    }
    return {key: value for key, value in (rrset | fields).items() if value is not None}


LATENCY = _rrset(
    "A",
    "198.51.100.1",
    Name="sip.voice.example.com.",
    SetIdentifier="us-west-2",
    Region="us-west-2",
)

VALID = {
    "a": _rrset("A", "198.51.100.1", "198.51.100.2"),
    "aaaa": _rrset("AAAA", "2001:db8::1"),
    "srv": _rrset("SRV", "0 0 1 a.example.net.", "65535 65535 65535 b.example.net."),
    "naptr replacement": _rrset("NAPTR", '10 0 "s" "SIP+D2U" "" _sip._udp.example.net.'),
    "naptr regexp": _rrset("NAPTR", '100 10 "U" "E2U+sip" "!^.*$!sip:info@example.net!" .'),
    "naptr no flags": _rrset("NAPTR", '100 10 "" "" "" next.example.net.'),
    "no trailing dot, upper case": _rrset("A", "198.51.100.1", Name="X.Voice.Example.Com"),
    "apex": _rrset("TXT", '"v=spf1 -all"', Name="voice.example.com."),
    "wildcard": _rrset("A", "198.51.100.1", Name="*.voice.example.com."),
    "ttl 0": _rrset("A", "198.51.100.1", TTL=0),
    "ttl max": _rrset("A", "198.51.100.1", TTL=2**31 - 1),
    "cname": _rrset("CNAME", "sip.voice.example.com."),
    "latency": LATENCY,
    "latency with health check": LATENCY | {"HealthCheckId": "abcdef01-2345-6789"},
    "weighted": _rrset("A", "198.51.100.1", SetIdentifier="w", Weight=0),
    "failover": _rrset("A", "198.51.100.1", SetIdentifier="p", Failover="PRIMARY"),
    "alias": {
        "Name": "x.voice.example.com.",
        "Type": "A",
        "AliasTarget": {
            "HostedZoneId": "Z2",
            "DNSName": "sip.voice.example.com.",
            "EvaluateTargetHealth": True,
        },
    },
}


@pytest.mark.parametrize("rrset", VALID.values(), ids=VALID.keys())
def test_valid_record_set(rrset: dict[str, Any]) -> None:
    validate_record_set(rrset, zone=ZONE)


#: (id, record set, part of the message): what moto stores and AWS refuses, and more.
INVALID = [
    ("no name", _rrset("A", "198.51.100.1", Name=""), "without a Name"),
    ("unknown type", _rrset("SPOON", "x"), "type 'SPOON' is not one Route 53 hosts"),
    ("bad name", _rrset("A", "198.51.100.1", Name="a..voice.example.com."), "is not a DNS name"),
    (
        "label too long",
        _rrset("A", "198.51.100.1", Name="a" * 64 + ".voice.example.com."),
        "is not a DNS name",
    ),
    ("outside the zone", _rrset("A", "198.51.100.1", Name="x.example.com."), "not inside the zone"),
    (
        "suffix is not a parent",
        _rrset("A", "198.51.100.1", Name="xvoice.example.com."),
        "not inside the zone",
    ),
    ("no ttl", _rrset("A", "198.51.100.1", TTL=None), "TTL is required"),
    ("negative ttl", _rrset("A", "198.51.100.1", TTL=-1), r"TTL -1 is out of range"),
    ("huge ttl", _rrset("A", "198.51.100.1", TTL=2**31), r"TTL 2147483648 is out of range"),
    ("ttl as text", _rrset("A", "198.51.100.1", TTL="60"), r"TTL '60' is out of range"),
    ("no values", _rrset("A"), "ResourceRecords needs at least one value"),
    (
        "value not a dict",
        _rrset("A") | {"ResourceRecords": ["198.51.100.1"]},
        "is not a {'Value': text} record",
    ),
    ("duplicate value", _rrset("A", "198.51.100.1", "198.51.100.1"), "given twice"),
    ("value too long", _rrset("TXT", '"' + "x" * 4000 + '"'), "longer than 4000"),
    ("a is a name", _rrset("A", "sip.voice.example.com."), "is not an IPv4 address"),
    ("a is ipv6", _rrset("A", "2001:db8::1"), "is not an IPv4 address"),
    ("a leading zero", _rrset("A", "198.051.100.1"), "is not an IPv4 address"),
    ("aaaa is ipv4", _rrset("AAAA", "198.51.100.1"), "is not an IPv6 address"),
    ("srv not an srv", _rrset("SRV", "not-an-srv"), "is not 'priority weight port target.'"),
    ("srv three fields", _rrset("SRV", "10 60 5060"), "is not 'priority weight port target.'"),
    ("srv negative", _rrset("SRV", "-1 60 5060 a.example.net."), "is not 'priority weight"),
    ("srv priority", _rrset("SRV", "65536 0 5060 a.example.net."), "priority 65536 is out of"),
    ("srv weight", _rrset("SRV", "0 65536 5060 a.example.net."), "weight 65536 is out of"),
    ("srv port 0", _rrset("SRV", "0 0 0 a.example.net."), "port 0 is out of range 1..65535"),
    ("srv port", _rrset("SRV", "0 0 65536 a.example.net."), "port 65536 is out of range"),
    ("srv relative", _rrset("SRV", "0 0 5060 sip1"), "target 'sip1' is not absolute"),
    ("srv not available", _rrset("SRV", "0 0 0 ."), "port 0 is out of range"),
    ("naptr unquoted junk", _rrset("NAPTR", "10 0 s SIP+D2U"), "is not 'order preference"),
    (
        "naptr order",
        _rrset("NAPTR", '70000 0 "s" "SIP+D2U" "" a.example.net.'),
        "is not 'order preference",
    ),
    (
        "naptr extra field",
        _rrset("NAPTR", '1 0 "s" "SIP" "" a.example.net. b.'),
        "is not 'order preference",
    ),
    ("naptr flags", _rrset("NAPTR", '10 0 "X" "SIP+D2U" "" a.example.net.'), "flags 'X'"),
    ("naptr relative", _rrset("NAPTR", '10 0 "s" "SIP+D2U" "" _sip._udp'), "not absolute"),
    ("naptr both", _rrset("NAPTR", '1 0 "U" "E2U+sip" "!^.*$!sip:a@b!" a.example.net.'), "'.'"),
    ("naptr neither", _rrset("NAPTR", '10 0 "s" "SIP+D2U" "" .'), "regexp or a replacement"),
    ("cname two values", _rrset("CNAME", "a.example.net.", "b.example.net."), "exactly one"),
    ("mx syntax", _rrset("MX", "mail.example.net."), "is not MX data"),
    ("latency no identifier", _rrset("A", "198.51.100.1", Region="us-west-2"), "latency record"),
    (
        "latency unknown region",
        LATENCY | {"Region": "mars-1"},
        "latency Region 'mars-1' is not an AWS region",
    ),
    ("latency az", LATENCY | {"Region": "us-west-2a"}, "'us-west-2a' is not an AWS region"),
    ("failover no identifier", _rrset("A", "198.51.100.1", Failover="PRIMARY"), "needs a SetId"),
    ("failover value", _rrset("A", "198.51.100.1", SetIdentifier="p", Failover="MAIN"), "PRIMARY"),
    ("weighted no identifier", _rrset("A", "198.51.100.1", Weight=10), "weighted record set"),
    ("weight", _rrset("A", "198.51.100.1", SetIdentifier="w", Weight=256), "Weight 256 is out"),
    ("two policies", LATENCY | {"Weight": 10}, "one routing policy at most"),
    ("identifier alone", _rrset("A", "198.51.100.1", SetIdentifier="x"), "without a routing"),
    ("identifier too long", LATENCY | {"SetIdentifier": "x" * 129}, "1 to 128 characters"),
    ("health check id", LATENCY | {"HealthCheckId": ""}, "HealthCheckId must be 1 to 64"),
    ("alias with ttl", VALID["alias"] | {"TTL": 60}, "alias record set has no TTL"),
    ("alias incomplete", VALID["alias"] | {"AliasTarget": {"DNSName": "a."}}, "lacks Evaluate"),
]


@pytest.mark.parametrize(
    ("rrset", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_record_set(rrset: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        validate_record_set(rrset, zone=ZONE)
    assert isinstance(caught.value, ValueError)


def test_zone_check_only_with_a_zone() -> None:
    validate_record_set(_rrset("A", "198.51.100.1", Name="x.example.org."))


# ---------------------------------------------------------------------------------------------
# Change batches

#: Shaped as moto lists a zone after create_hosted_zone (its SOA value is a stringified dict).
MOTO_EXISTING = [
    {
        "Name": "voice.example.com.",
        "Type": "NS",
        "TTL": 172800,
        "ResourceRecords": [{"Value": "ns-2048.awsdns-64.com"}],
    },
    {
        "Name": "voice.example.com.",
        "Type": "SOA",
        "TTL": 900,
        "ResourceRecords": [{"Value": "{'Value': 'ns-2048.awsdns-64.com. hostmaster. 1 7200'}"}],
    },
    LATENCY,
    _rrset("A", "198.51.100.9", Name="host.voice.example.com."),
]


def _batch(*changes: tuple[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {"Changes": [{"Action": a, "ResourceRecordSet": rrset} for a, rrset in changes]}


LATENCY_EAST = LATENCY | {"SetIdentifier": "us-east-1", "Region": "us-east-1"}
HOST = MOTO_EXISTING[3]
PAIR = _rrset("A", "198.51.100.1", "198.51.100.2", Name="pair.voice.example.com.")
PAIR_REORDERED = PAIR["ResourceRecords"][::-1]

VALID_BATCHES = {
    "create new": _batch(("CREATE", _rrset("A", "198.51.100.1"))),
    "create another latency region": _batch(("CREATE", LATENCY_EAST)),
    "upsert existing": _batch(("UPSERT", HOST | {"TTL": 300})),
    "delete exact": _batch(("DELETE", HOST)),
    "delete, other spelling": _batch(("DELETE", HOST | {"Name": "HOST.voice.example.com"})),
    "delete, values reordered": _batch(("DELETE", PAIR | {"ResourceRecords": PAIR_REORDERED})),
    "delete then create": _batch(("DELETE", HOST), ("CREATE", HOST | {"TTL": 300})),
    "replace simple by latency": _batch(
        ("DELETE", HOST),
        ("CREATE", HOST | {"SetIdentifier": "us-west-2", "Region": "us-west-2"}),
    ),
    "cname elsewhere": _batch(("CREATE", _rrset("CNAME", "sip.voice.example.com."))),
}


@pytest.mark.parametrize("batch", VALID_BATCHES.values(), ids=VALID_BATCHES.keys())
def test_valid_change_batch(batch: dict[str, Any]) -> None:
    validate_change_batch(batch, [*MOTO_EXISTING, PAIR], zone=ZONE)


INVALID_BATCHES = [
    ("no changes", {"Changes": []}, "at least one change"),
    ("no changes key", {}, "at least one change"),
    ("change not a dict", {"Changes": ["CREATE"]}, "change 0: 'CREATE' is not a change"),
    ("no record set", {"Changes": [{"Action": "CREATE"}]}, "change 0: no ResourceRecordSet"),
    ("bad action", _batch(("INSERT", HOST)), "Action must be CREATE, DELETE or UPSERT"),
    (
        "bad record set, named by index",
        _batch(("CREATE", _rrset("A", "198.51.100.1")), ("CREATE", LATENCY | {"Region": "x"})),
        r"change 1 \(CREATE\): sip.voice.example.com. A: latency Region 'x' is not",
    ),
    ("create existing", _batch(("CREATE", HOST)), "already exists"),
    (
        "create existing, other spelling",
        _batch(("CREATE", HOST | {"Name": "Host.Voice.Example.Com", "TTL": 5})),
        "already exists",
    ),
    ("create existing latency", _batch(("CREATE", LATENCY)), "already exists"),
    ("create twice", _batch(("CREATE", LATENCY_EAST), ("CREATE", LATENCY_EAST)), "already exists"),
    ("create existing ns", _batch(("CREATE", MOTO_EXISTING[0])), "already exists"),
    ("delete missing", _batch(("DELETE", _rrset("A", "198.51.100.1"))), "no such record set"),
    ("delete twice", _batch(("DELETE", HOST), ("DELETE", HOST)), "no such record set"),
    ("delete other ttl", _batch(("DELETE", HOST | {"TTL": 61})), "does not match"),
    (
        "delete other values",
        _batch(("DELETE", _rrset("A", "198.51.100.7", Name="host.voice.example.com."))),
        "does not match",
    ),
    (
        "delete, routing differs",
        _batch(("DELETE", LATENCY | {"HealthCheckId": "h"})),
        "does not match",
    ),
    (
        "simple beside latency",
        _batch(("CREATE", _rrset("A", "198.51.100.1", Name=LATENCY["Name"]))),
        "without SetIdentifier cannot share",
    ),
    (
        "latency beside simple",
        _batch(("CREATE", HOST | {"SetIdentifier": "us-west-2", "Region": "us-west-2"})),
        "without SetIdentifier cannot share",
    ),
    (
        "weighted beside latency",
        _batch(
            (
                "CREATE",
                _rrset("A", "198.51.100.1", Name=LATENCY["Name"], SetIdentifier="w", Weight=1),
            )
        ),
        "must share a routing policy, not mix latency, weighted",
    ),
    (
        "cname beside a",
        _batch(("CREATE", _rrset("CNAME", "a.example.net.", Name=HOST["Name"]))),
        "a CNAME cannot share its name with other types",
    ),
    (
        "cname at apex",
        _batch(("CREATE", _rrset("CNAME", "a.example.net.", Name="voice.example.com."))),
        "a CNAME cannot be at the zone apex",
    ),
    (
        "outside the zone",
        _batch(("CREATE", _rrset("A", "198.51.100.1", Name="x.example.org."))),
        "not inside the zone voice.example.com.",
    ),
]


@pytest.mark.parametrize(
    ("batch", "message"), [c[1:] for c in INVALID_BATCHES], ids=[c[0] for c in INVALID_BATCHES]
)
def test_invalid_change_batch(batch: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        validate_change_batch(batch, MOTO_EXISTING, zone=ZONE)


# ---------------------------------------------------------------------------------------------
# Against moto, resolved over DNS


Published = tuple[str, tuple[RegionEndpoint, ...]]


@pytest.fixture
def published(aws: ClientFactory) -> Published:
    """The zone and a health check per region created in moto, the SIP record sets written:
    the zone's Id and the endpoints with their health check ids."""
    route53 = aws.client("route53", "us-east-1")
    zone = route53.create_hosted_zone(Name=ZONE, CallerReference="records-test")
    zone_id = zone["HostedZone"]["Id"]
    endpoints = []
    for endpoint in FLEET:
        # Documentation addresses: real Route 53 would refuse to check them, moto does not.
        config = health_check_config(endpoint.addresses[0], 9101, allow_special_use=True)
        check = route53.create_health_check(
            CallerReference=f"sip-{endpoint.region}", HealthCheckConfig=config
        )["HealthCheck"]
        assert check["HealthCheckConfig"]["Type"] == "HTTP"
        endpoints.append(dataclasses.replace(endpoint, health_check_id=check["Id"]))
    batch = _create(*sip_record_sets(ZONE, endpoints, sip_port=5060, sip_tls_port=5061))
    existing = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    validate_change_batch(batch, existing, zone=ZONE)
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=batch)
    return zone_id, tuple(endpoints)


async def _resolve(address: tuple[str, int], name: str, rdtype: str) -> dns.resolver.Answer:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [address[0]]
    resolver.port = address[1]
    return await resolver.resolve(name, rdtype, lifetime=5.0)


async def _addresses(address: tuple[str, int], name: str) -> list[str]:
    return sorted(rdata.to_text() for rdata in await _resolve(address, name, "A"))


@pytest.mark.deploy
@pytest.mark.trio
async def test_published_zone_resolves(
    aws: ClientFactory, published: Published, loopback_host: Callable[[], str]
) -> None:
    zone_id, _ = published
    serving = serve_hosted_zone(aws, zone_id, client_region="us-east-1", host=loopback_host())
    async with serving as address:
        srv = await _resolve(address, "_sip._udp.voice.example.com.", "SRV")
        assert sorted((r.priority, r.weight, r.port, r.target.to_text()) for r in srv) == [
            (10, 40, 5060, "us-west-1.sip.voice.example.com."),
            (10, 60, 5060, "us-west-2.sip.voice.example.com."),
            (20, 40, 5060, "us-east-1.sip.voice.example.com."),
            (20, 60, 5060, "us-east-2.sip.voice.example.com."),
        ]
        tls = await _resolve(address, "_sips._tcp.voice.example.com.", "SRV")
        assert {r.port for r in tls} == {5061}

        naptr = await _resolve(address, "voice.example.com.", "NAPTR")
        assert [
            (r.order, r.flags, r.service, r.replacement.to_text())
            for r in sorted(naptr, key=lambda r: (r.order, r.preference))
        ] == [
            (10, b"S", b"SIPS+D2T", "_sips._tcp.voice.example.com."),
            (20, b"S", b"SIP+D2T", "_sip._tcp.voice.example.com."),
            (30, b"S", b"SIP+D2U", "_sip._udp.voice.example.com."),
        ]

        assert await _addresses(address, "us-west-1.sip.voice.example.com.") == ["198.51.100.20"]
        assert await _addresses(address, "sip.voice.example.com.") == ADDRESSES["us-east-1"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            await _resolve(address, "nope.voice.example.com.", "A")


@pytest.mark.deploy
@pytest.mark.trio
@pytest.mark.parametrize("client_region", ["us-east-1", "us-west-2"])
async def test_latency_name_answers_the_client_region(
    aws: ClientFactory, published: Published, loopback_host: Callable[[], str], client_region: str
) -> None:
    zone_id, _ = published
    serving = serve_hosted_zone(aws, zone_id, client_region=client_region, host=loopback_host())
    async with serving as address:
        assert await _addresses(address, "sip.voice.example.com.") == ADDRESSES[client_region]


@pytest.mark.deploy
@pytest.mark.trio
async def test_a_region_outside_the_fleet_gets_the_first_latency_set(
    aws: ClientFactory, published: Published, loopback_host: Callable[[], str]
) -> None:
    zone_id, _ = published
    listed = aws.client("route53", "us-east-1").list_resource_record_sets(HostedZoneId=zone_id)
    first = _find(listed["ResourceRecordSets"], "sip.voice.example.com.", "A")[0]
    serving = serve_hosted_zone(aws, zone_id, client_region="eu-west-1", host=loopback_host())
    async with serving as address:
        assert await _addresses(address, "sip.voice.example.com.") == sorted(_values(first))


@pytest.mark.deploy
@pytest.mark.trio
async def test_the_listing_follows_pages(
    aws: ClientFactory, loopback_host: Callable[[], str]
) -> None:
    """Pages of 2 record sets. Only simple record sets here: moto ignores StartRecordIdentifier,
    so a page boundary inside the latency set group would restart the group (see route53_dns)."""
    route53 = aws.client("route53", "us-east-1")
    zone_id = route53.create_hosted_zone(Name=ZONE, CallerReference="pages")["HostedZone"]["Id"]
    simple = [rrset for rrset in _sets() if "SetIdentifier" not in rrset]
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=_create(*simple))
    serving = serve_hosted_zone(
        aws, zone_id, client_region="us-east-1", host=loopback_host(), page_size=2
    )
    async with serving as address:
        for endpoint in FLEET:
            host = region_host(ZONE, endpoint.region)
            assert await _addresses(address, host) == ADDRESSES[endpoint.region]
        assert len(await _resolve(address, "_sip._tcp.voice.example.com.", "SRV")) == 4
        with pytest.raises(dns.resolver.NoAnswer):  # no latency sets: an empty non-terminal
            await _resolve(address, "sip.voice.example.com.", "A")


@pytest.mark.deploy
def test_moto_listing_feeds_the_validation(aws: ClientFactory, published: Published) -> None:
    """What moto lists back is what validate_change_batch compares against: the duplicate
    CREATE that moto would store is refused, and a DELETE repeating a listed set passes."""
    zone_id, endpoints = published
    route53 = aws.client("route53", "us-east-1")
    listed = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    rrsets = sip_record_sets(ZONE, endpoints, sip_port=5060, sip_tls_port=5061)
    with pytest.raises(RecordError, match=r"change 0 \(CREATE voice.example.com. NAPTR\).*exists"):
        validate_change_batch(_create(*rrsets), listed, zone=ZONE)

    latency = _find(listed, "sip.voice.example.com.", "A")
    assert {(r["SetIdentifier"], r["Region"], r["HealthCheckId"]) for r in latency} == {
        (e.region, e.region, e.health_check_id) for e in endpoints
    }
    delete = {"Changes": [{"Action": "DELETE", "ResourceRecordSet": latency[0]}]}
    validate_change_batch(delete, listed, zone=ZONE)
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=delete)
    after = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    assert len(_find(after, "sip.voice.example.com.", "A")) == 3
