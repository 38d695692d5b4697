"""deploy.fleet: fleet.toml's rules, each refused naming file, line and key; the instance type
checked against moto's EC2.

Only the tests that talk to moto carry the ``deploy`` marker: the file rules are plain unit
tests and run in the fast selection too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.fleet import (
    AlarmSpec,
    AzSpec,
    Fleet,
    HaSpec,
    Ports,
    RegionSpec,
    check_instance_type,
    load_fleet,
    parse_fleet,
)
from overlay.aws import ClientFactory
from overlay.config import ConfigError

EXAMPLE = Path(__file__).parents[2] / "deploy" / "fleet.example.toml"

# Line numbers matter: the cases below point at them.
GOOD = """\
[fleet]
name = "voice"
instance_type = "c5n.xlarge"
dns_zone = "Voice.Example.com."
ami_name = "overlay-router (v1)"
builder_region = "us-west-2"
noc_cidrs = ["198.51.100.0/24"]
trunk_cidrs = ["203.0.113.0/24", "192.0.2.0/25"]
peer_cidrs = ["10.20.0.0/16", "10.30.0.0/16"]
base_image_id = "ami-0123456789abcdef0"

[ports]
sip = 5080
sip_tls = 5081
rtp_first = 30000
rtp_last = 39999
grpc = 7100

[ha]
heartbeat_interval = 0.25
dead_after = 4
hold_down = 20

[alarms]
loss_pct = 1
rtt_ms = 200
retrans_pct = 3.5

[[regions]]
name = "us-west-2"
vpc_cidr = "10.20.0.0/16"
srv_priority = 10
srv_weight = 100
[regions.azs]
us-west-2a = "10.20.1.0/24"
us-west-2b = "10.20.2.0/24"

[[regions]]
name = "us-east-1"
vpc_cidr = "10.30.0.0/16"
srv_priority = 20
srv_weight = 0
[regions.azs]
us-east-1a = "10.30.1.0/24"
"""

MINIMAL = """\
[fleet]
name = "v"
instance_type = "c5n.large"
dns_zone = "voice.example.com"
ami_name = "overlay"
builder_region = "us-east-2"
noc_cidrs = ["198.51.100.7/32"]

[[regions]]
name = "us-east-2"
vpc_cidr = "10.22.0.0/16"
srv_priority = 0
srv_weight = 1
azs = { us-east-2c = "10.22.3.0/24", us-east-2a = "10.22.1.0/24" }
"""


def _with_line(number: int, text: str) -> str:
    lines = GOOD.splitlines()
    lines[number - 1] = text
    return "\n".join(lines) + "\n"


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(text)
    return caught.value


def test_example_parses() -> None:
    fleet = load_fleet(EXAMPLE)
    assert [region.name for region in fleet.regions] == [
        "us-west-2",
        "us-west-1",
        "us-east-2",
        "us-east-1",
    ]
    for region in fleet.regions:
        assert [az.name for az in region.azs] == [region.name + "a", region.name + "b"]
    assert fleet.builder_region == "us-west-2"
    assert fleet.peer_cidrs == tuple(region.vpc_cidr for region in fleet.regions)
    assert (fleet.ports, fleet.ha, fleet.alarms) == (Ports(), HaSpec(), AlarmSpec())
    assert fleet.base_image_id is None


def test_good_file() -> None:
    assert parse_fleet(GOOD) == Fleet(
        name="voice",
        instance_type="c5n.xlarge",
        regions=(
            RegionSpec(
                name="us-west-2",
                vpc_cidr="10.20.0.0/16",
                azs=(AzSpec("us-west-2a", "10.20.1.0/24"), AzSpec("us-west-2b", "10.20.2.0/24")),
                srv_priority=10,
                srv_weight=100,
            ),
            RegionSpec(
                name="us-east-1",
                vpc_cidr="10.30.0.0/16",
                azs=(AzSpec("us-east-1a", "10.30.1.0/24"),),
                srv_priority=20,
                srv_weight=0,
            ),
        ),
        ports=Ports(sip=5080, sip_tls=5081, rtp_first=30000, rtp_last=39999, grpc=7100),
        noc_cidrs=("198.51.100.0/24",),
        peer_cidrs=("10.20.0.0/16", "10.30.0.0/16"),
        trunk_cidrs=("203.0.113.0/24", "192.0.2.0/25"),
        dns_zone="voice.example.com",
        ami_name="overlay-router (v1)",
        builder_region="us-west-2",
        base_image_id="ami-0123456789abcdef0",
        ha=HaSpec(heartbeat_interval=0.25, dead_after=4, hold_down=20.0),
        alarms=AlarmSpec(loss_pct=1.0, rtt_ms=200.0, retrans_pct=3.5),
    )


def test_defaults() -> None:
    fleet = parse_fleet(MINIMAL)
    assert fleet.ports == Ports(sip=5060, sip_tls=5061, rtp_first=10000, rtp_last=20000, grpc=7000)
    assert fleet.ha == HaSpec(heartbeat_interval=0.5, dead_after=3, hold_down=10.0)
    assert fleet.alarms == AlarmSpec(loss_pct=2.0, rtt_ms=250.0, retrans_pct=5.0)
    assert fleet.trunk_cidrs == ()
    assert fleet.peer_cidrs == ("10.22.0.0/16",)
    assert fleet.base_image_id is None
    assert fleet.regions[0].azs == (
        AzSpec("us-east-2c", "10.22.3.0/24"),
        AzSpec("us-east-2a", "10.22.1.0/24"),
    )
    assert isinstance(fleet.ha.hold_down, float)


def test_empty_peer_cidrs_stay_empty() -> None:
    assert parse_fleet(_with_line(9, "peer_cidrs = []")).peer_cidrs == ()


# (line to replace, its new text, dotted key, reason fragment); the error is on that line.
BAD_VALUES = [
    (2, 'name = "Voice"', "fleet.name", "must match [a-z0-9-]{1,32}"),
    (2, 'name = ""', "fleet.name", "must match"),
    (2, f'name = "{"a" * 33}"', "fleet.name", "must match"),
    (2, 'name = "voice_1"', "fleet.name", "must match"),
    (2, "name = 1", "fleet.name", "must be a string, not an integer"),
    (3, 'instance_type = "c5n"', "fleet.instance_type", "EC2 instance type"),
    (3, 'instance_type = "C5n.xlarge"', "fleet.instance_type", "EC2 instance type"),
    (3, 'instance_type = "c5n.xlarge "', "fleet.instance_type", "EC2 instance type"),
    (4, 'dns_zone = "voice..example.com"', "fleet.dns_zone", "DNS name"),
    (4, 'dns_zone = "-voice.example.com"', "fleet.dns_zone", "DNS name"),
    (4, 'dns_zone = "voice_1.example.com"', "fleet.dns_zone", "DNS name"),
    (4, 'dns_zone = ""', "fleet.dns_zone", "DNS name"),
    (4, f'dns_zone = "{"a" * 64}.example.com"', "fleet.dns_zone", "DNS name"),
    (5, 'ami_name = "ab"', "fleet.ami_name", "3 to 128"),
    (5, 'ami_name = "overlay*"', "fleet.ami_name", "3 to 128"),
    (6, 'builder_region = "eu-west-1"', "fleet.builder_region", "must be one of the [[regions]]"),
    (6, 'builder_region = "uswest2"', "fleet.builder_region", "AWS region name"),
    (7, "noc_cidrs = []", "fleet.noc_cidrs", "at least one network"),
    (7, 'noc_cidrs = "198.51.100.0/24"', "fleet.noc_cidrs", "array of networks, not a string"),
    (7, 'noc_cidrs = ["198.51.100.1/24"]', "fleet.noc_cidrs[0]", "has host bits set"),
    (7, 'noc_cidrs = ["198.51.100.1"]', "fleet.noc_cidrs[0]", "address/prefix"),
    (7, 'noc_cidrs = ["198.51.100.0/33"]', "fleet.noc_cidrs[0]", "address/prefix"),
    (7, 'noc_cidrs = ["2001:db8::/32"]', "fleet.noc_cidrs[0]", "IPv4"),
    (7, "noc_cidrs = [24]", "fleet.noc_cidrs[0]", "must be a string"),
    (8, 'trunk_cidrs = ["192.0.2.0/24", "192.0.2.0/24"]', "fleet.trunk_cidrs[1]", "twice"),
    (8, 'trunk_cidrs = ["192.0.2.0/24", "nope"]', "fleet.trunk_cidrs[1]", "address/prefix"),
    (9, 'peer_cidrs = ["10.20.0.0/13"]', "fleet.peer_cidrs[0]", "host bits"),
    (10, 'base_image_id = "ami-123"', "fleet.base_image_id", "AMI id"),
    (10, 'base_image_id = ""', "fleet.base_image_id", "AMI id"),
    (13, "sip = 0", "ports.sip", "between 1 and 65535"),
    (13, "sip = 65536", "ports.sip", "between 1 and 65535"),
    (13, 'sip = "5060"', "ports.sip", "must be an integer, not a string"),
    (14, "sip_tls = 5080", "ports.sip_tls", "sip_tls and sip are both port 5080"),
    (17, "grpc = 5080", "ports.grpc", "grpc and sip are both port 5080"),
    (17, "grpc = 5081", "ports.grpc", "both port 5081"),
    (15, "rtp_first = 30001", "ports.rtp_first", "must be even"),
    (16, "rtp_last = 29998", "ports.rtp_last", "below rtp_first"),
    (13, "sip = 30000", "ports.sip", "inside the RTP range 30000..39999"),
    (14, "sip_tls = 39999", "ports.sip_tls", "inside the RTP range"),
    (17, "grpc = 35000", "ports.grpc", "inside the RTP range"),
    (17, "metrics = 5080", "ports.metrics", "metrics and sip are both port 5080"),
    (20, "heartbeat_interval = 0", "ha.heartbeat_interval", "> 0"),
    (20, "heartbeat_interval = inf", "ha.heartbeat_interval", "finite"),
    (21, "dead_after = 0", "ha.dead_after", "between 1 and 100"),
    (21, "dead_after = 2.5", "ha.dead_after", "must be an integer, not a float"),
    (22, "hold_down = -1", "ha.hold_down", "> 0"),
    (25, "loss_pct = 0", "alarms.loss_pct", "> 0 and <= 100"),
    (25, "loss_pct = 100.5", "alarms.loss_pct", "> 0 and <= 100"),
    (25, "loss_pct = nan", "alarms.loss_pct", "> 0 and <= 100"),
    (25, 'loss_pct = "2%"', "alarms.loss_pct", "percentage, not a string"),
    (26, "rtt_ms = 0", "alarms.rtt_ms", "milliseconds > 0"),
    (26, "rtt_ms = inf", "alarms.rtt_ms", "finite"),
    (27, "retrans_pct = 150", "alarms.retrans_pct", "<= 100"),
    (30, 'name = "us-west"', "regions[0].name", "AWS region name"),
    (30, 'name = "US-west-2"', "regions[0].name", "AWS region name"),
    (39, 'name = "us-west-2"', "regions[1].name", "duplicate region 'us-west-2'"),
    (31, 'vpc_cidr = "10.20.0.1/16"', "regions[0].vpc_cidr", "host bits"),
    (31, 'vpc_cidr = "10.0.0.0/8"', "regions[0].vpc_cidr", "/16 to /28"),
    (31, 'vpc_cidr = "fd00::/48"', "regions[0].vpc_cidr", "IPv4"),
    (40, 'vpc_cidr = "10.20.128.0/17"', "regions[1].vpc_cidr", "overlaps the VPC of us-west-2"),
    (32, "srv_priority = 65536", "regions[0].srv_priority", "between 0 and 65535"),
    (32, "srv_priority = -1", "regions[0].srv_priority", "between 0 and 65535"),
    (42, "srv_weight = 70000", "regions[1].srv_weight", "between 0 and 65535"),
    (42, "srv_weight = 1.5", "regions[1].srv_weight", "not a float"),
    (36, 'us-east-1c = "10.20.2.0/24"', "regions[0].azs.us-east-1c", "region's name and one"),
    (36, 'us-west-2ab = "10.20.2.0/24"', "regions[0].azs.us-west-2ab", "region's name and one"),
    (36, 'us-west-2 = "10.20.2.0/24"', "regions[0].azs.us-west-2", "region's name and one"),
    (36, 'us-west-2B = "10.20.2.0/24"', "regions[0].azs.us-west-2B", "region's name and one"),
    (36, 'us-west-2b = "10.30.2.0/24"', "regions[0].azs.us-west-2b", "not inside the region's"),
    (36, 'us-west-2b = "10.20.1.128/25"', "regions[0].azs.us-west-2b", "overlaps the subnet of"),
    (36, 'us-west-2b = "10.20.0.0/20"', "regions[0].azs.us-west-2b", "overlaps the subnet of"),
    (36, 'us-west-2b = "10.20.2.1/24"', "regions[0].azs.us-west-2b", "host bits"),
    (36, 'us-west-2b = "10.20.2.0/29"', "regions[0].azs.us-west-2b", "/16 to /28"),
    (36, "us-west-2b = 24", "regions[0].azs.us-west-2b", "must be a string"),
    # The same AZ twice is already a TOML error; it still names the line and the key.
    (36, 'us-west-2a = "10.20.2.0/24"', "regions[0].azs.us-west-2a", "invalid TOML"),
    (44, 'us-west-2a = "10.30.1.0/24"', "regions[1].azs.us-west-2a", "region's name and one"),
]


@pytest.mark.parametrize(("number", "text", "key", "reason"), BAD_VALUES)
def test_bad_value(number: int, text: str, key: str, reason: str) -> None:
    error = _error(_with_line(number, text))
    assert (error.source, error.key, error.line) == ("fleet.toml", key, number)
    assert reason in error.reason
    assert str(error) == f"fleet.toml:{number}: {key}: {error.reason}"


# (line to drop, the key reported missing, the line of its table)
MISSING = [
    (2, "fleet.name", 1),
    (3, "fleet.instance_type", 1),
    (4, "fleet.dns_zone", 1),
    (5, "fleet.ami_name", 1),
    (6, "fleet.builder_region", 1),
    (7, "fleet.noc_cidrs", 1),
    (30, "regions[0].name", 29),
    (31, "regions[0].vpc_cidr", 29),
    (32, "regions[0].srv_priority", 29),
    (42, "regions[1].srv_weight", 38),
]


@pytest.mark.parametrize(("number", "key", "line"), MISSING)
def test_missing_key(number: int, key: str, line: int) -> None:
    error = _error(_with_line(number, ""))
    assert (error.key, error.line, error.reason) == (key, line, "required key is missing")


@pytest.mark.parametrize(
    ("number", "text", "key"),
    [
        (1, "[flet]", "flet"),
        (2, 'nmae = "voice"', "fleet.nmae"),
        (9, 'peers = ["10.0.0.0/8"]', "fleet.peers"),
        (12, "[port]", "port"),
        (17, "gprc = 7100", "ports.gprc"),
        (22, "holddown = 20", "ha.holddown"),
        (27, "retrans = 3.5", "alarms.retrans"),
        (33, "weight = 100", "regions[0].weight"),
        (34, "[regions.subnets]", "regions[0].subnets"),
    ],
)
def test_unknown_key(number: int, text: str, key: str) -> None:
    error = _error(_with_line(number, text))
    assert (error.key, error.line) == (key, number)
    assert error.reason.startswith("unknown key (expected one of: ")


def test_empty_azs_table() -> None:
    error = _error(GOOD.replace('us-east-1a = "10.30.1.0/24"\n', ""))
    assert (error.key, error.line) == ("regions[1].azs", 43)
    assert error.reason == "needs at least one availability zone"


def test_azs_must_be_a_table() -> None:
    text = MINIMAL.replace(
        'azs = { us-east-2c = "10.22.3.0/24", us-east-2a = "10.22.1.0/24" }',
        'azs = ["10.22.3.0/24"]',
    )
    error = _error(text)
    assert (error.key, error.line) == ("regions[0].azs", 14)
    assert "AZ name = subnet CIDR, not an array" in error.reason


def test_azs_inline_table_errors_point_at_its_line() -> None:
    text = MINIMAL.replace('"10.22.3.0/24"', '"10.23.3.0/24"')
    error = _error(text)
    assert (error.key, error.line) == ("regions[0].azs.us-east-2c", 14)


BYOIP = GOOD.replace(
    'us-east-1a = "10.30.1.0/24"',
    'us-east-1a = { subnet = "10.30.1.0/24", public_ip = "100.64.7.10" }',
).replace(
    "srv_weight = 0\n", 'srv_weight = 0\npublic_ipv4_pool = "ipv4pool-ec2-0123456789abcdef0"\n'
)


def test_an_az_may_bring_its_own_public_address() -> None:
    fleet = parse_fleet(BYOIP)
    east = fleet.regions[1]
    assert east.public_ipv4_pool == "ipv4pool-ec2-0123456789abcdef0"
    assert east.azs == (AzSpec("us-east-1a", "10.30.1.0/24", "100.64.7.10"),)
    assert fleet.regions[0].azs[0].public_ip is None
    assert fleet.regions[0].public_ipv4_pool is None


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        ('"10.1.2.3"', "public_ip", "must be a public IPv4 address (an Elastic IP), got 10.1.2.3"),
        ('"127.0.0.9"', "public_ip", "must be a public IPv4 address"),
        ('"224.0.0.1"', "public_ip", "must be a public IPv4 address"),
        ('"2001:db8::1"', "public_ip", "must be a public IPv4 address"),
        ('"100.64.7"', "public_ip", "must be an IPv4 or IPv6 address"),
    ],
)
def test_a_bad_public_address_is_refused_on_its_line(value: str, key: str, reason: str) -> None:
    error = _error(BYOIP.replace('"100.64.7.10"', value))
    assert (error.key, error.line) == (f"regions[1].azs.us-east-1a.{key}", 45)
    assert error.reason.startswith(reason)


def test_a_bad_pool_is_refused() -> None:
    error = _error(BYOIP.replace("ipv4pool-ec2-0123456789abcdef0", "pool-1"))
    assert error.key == "regions[1].public_ipv4_pool"
    assert "ipv4pool-ec2-" in error.reason


def test_an_overlay_needs_two_pairs() -> None:
    error = _error(MINIMAL.replace(', us-east-2a = "10.22.1.0/24"', ""))
    assert (error.key, error.line) == ("regions[0].azs", 14)
    assert error.reason == "an overlay needs at least two AZs (pairs) in all"


def test_regions_required() -> None:
    error = _error(MINIMAL.split("[[regions]]")[0])
    assert (error.key, error.line, error.reason) == ("regions", None, "required key is missing")


def test_regions_not_empty() -> None:
    error = _error("regions = []\n" + MINIMAL.split("[[regions]]")[0])
    assert (error.key, error.line) == ("regions", 1)
    assert "at least one [[regions]]" in error.reason


def test_fleet_table_required() -> None:
    error = _error(MINIMAL.split("[[regions]]")[1].join(["[[regions]]", ""]))
    assert (error.key, error.line, error.reason) == ("fleet", None, "required key is missing")


def test_rule_broken_by_a_default_blames_the_written_key() -> None:
    # sip stays at its default 5060, inside the range: the range is what was written.
    error = _error(MINIMAL + "[ports]\nrtp_first = 5000\n")
    assert (error.key, error.line) == ("ports.rtp_first", 16)
    assert error.reason == "sip port 5060 is inside the RTP range 5000..20000"
    error = _error(MINIMAL + "[ports]\nrtp_first = 30000\n")
    assert (error.key, error.line) == ("ports.rtp_first", 16)
    assert "below rtp_first" in error.reason


def test_toml_syntax_error() -> None:
    error = _error(_with_line(2, 'name = "voice'))
    assert (error.key, error.line) == ("fleet.name", 2)
    assert error.reason.startswith("invalid TOML: ")


def test_load_fleet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(_with_line(31, 'vpc_cidr = "10.0.0.0/12"'))
    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    assert str(caught.value).startswith(f"{path}:31: regions[0].vpc_cidr: must be a /16 to /28")
    with pytest.raises(ConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.toml")
    path.write_bytes(b'[fleet]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_fleet(path)


@pytest.mark.deploy
def test_instance_type_with_ena_is_accepted(aws: ClientFactory) -> None:
    check_instance_type(parse_fleet(GOOD), aws, "fleet.toml")


@pytest.mark.deploy
def test_unknown_instance_type_is_refused(aws: ClientFactory) -> None:
    fleet = parse_fleet(_with_line(3, 'instance_type = "c99n.mega"'))
    with pytest.raises(ConfigError) as caught:
        check_instance_type(fleet, aws, "fleet.toml")
    assert (caught.value.source, caught.value.key) == ("fleet.toml", "fleet.instance_type")
    assert "no instance type 'c99n.mega'" in caught.value.reason


@pytest.mark.deploy
def test_instance_type_without_ena_is_refused(aws: ClientFactory) -> None:
    ec2 = aws.client("ec2", "us-west-2")
    found = ec2.describe_instance_types(
        Filters=[{"Name": "network-info.ena-support", "Values": ["unsupported"]}]
    )["InstanceTypes"]
    assert found, "moto lists no instance type without ENA"
    old = found[0]["InstanceType"]
    fleet = parse_fleet(_with_line(3, f'instance_type = "{old}"'))
    with pytest.raises(ConfigError) as caught:
        check_instance_type(fleet, aws, "fleet.toml")
    assert caught.value.key == "fleet.instance_type"
    assert "no enhanced networking (ENA unsupported)" in caught.value.reason
