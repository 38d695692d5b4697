"""plan → apply → apply → status → destroy of the four-region example fleet, against moto's server.

moto cannot show everything (notes/moto.md): it has no placement groups (the deployer runs with
``MemoryPlacementGroups``, and the EC2 requests of ``Ec2PlacementGroups`` are checked with
botocore's Stubber), it drops ``Placement.GroupName`` from run_instances (the request is
recorded on its way out and checked), and it runs no user data and has canned console output
(the AMI builder's power-off and verdict are stood in for by tests/deploy/bake.py).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import dns.asyncresolver
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from deploy._image import BAKE_OK
from deploy._network import API_SERVICES
from deploy._pairs import (
    PROFILE_PROPAGATION_S,
    PROFILE_RETRY_S,
    once_profile_propagated,
    public_ips,
)
from deploy._wheelhouse import Wheelhouse
from deploy.deployer import ALARM_METRICS, ALARM_NAMESPACE, NODE_TLS_FILES, Deployer
from deploy.fleet import Fleet, load_fleet
from deploy.placement import Ec2PlacementGroups, MemoryPlacementGroups
from deploy.render import HA_TOML, NODE_TOML, member_files, members
from overlay.aws import ClientFactory
from overlay.config import parse_config
from overlay.ha import find_pair, parse_ha_config
from tests.deploy.bake import console_says, debian_image, fake_wheelhouse, powers_off
from tests.deploy.fleet_certs import fleet_certs
from tests.deploy.route53_dns import serve_hosted_zone

pytestmark = pytest.mark.deploy

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.toml"


def stop_builder(ec2: Any, instance: str) -> None:  # noqa: ANN401
    """What the builder's user data does last on EC2 (moto runs no user data): it prints its
    verdict, which the deployer's waiter reads from its console, and powers off."""
    console_says(ec2, f"{BAKE_OK} 0.1.0\n")
    powers_off(ec2, instance)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Wheelhouse:
    return fake_wheelhouse(tmp_path / "wheelhouse")


@pytest.fixture
def fleet(aws: ClientFactory) -> Fleet:
    example = load_fleet(EXAMPLE)
    base = debian_image(aws, example.builder_region)
    # The first AZ brings its own public address (BYOIP), the others get Amazon's.
    first, *others = example.regions
    byoip = dataclasses.replace(first.azs[0], public_ip=BYOIP_ADDRESS)
    first = dataclasses.replace(first, azs=(byoip, *first.azs[1:]))
    return dataclasses.replace(example, base_image_id=base, regions=(first, *others))


#: RFC 6598 shared space: public to the fleet's checks, routed nowhere.
BYOIP_ADDRESS = "100.64.7.10"


def tagged(aws: ClientFactory, fleet: Fleet, region: str) -> dict[str, int]:
    """How many of each kind of EC2 resource carry the fleet's tag in ``region``."""
    ec2 = aws.client("ec2", region)
    filters = [{"Name": "tag:overlay:fleet", "Values": [fleet.name]}]
    live = [*filters, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    return {
        "vpc": len(ec2.describe_vpcs(Filters=filters)["Vpcs"]),
        "subnet": len(ec2.describe_subnets(Filters=filters)["Subnets"]),
        "instance": sum(
            len(r["Instances"]) for r in ec2.describe_instances(Filters=live)["Reservations"]
        ),
        "elastic-ip": len(ec2.describe_addresses(Filters=filters)["Addresses"]),
        "image": len(ec2.describe_images(Owners=["self"], Filters=filters)["Images"]),
        "snapshot": len(ec2.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]),
        "network-interface": len(
            ec2.describe_network_interfaces(Filters=filters)["NetworkInterfaces"]
        ),
    }


@pytest.mark.trio
async def test_plan_apply_again_status_destroy(
    aws: ClientFactory, fleet: Fleet, wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    placement = MemoryPlacementGroups()
    launched: list[dict[str, Any]] = []
    for region in fleet.regions:
        aws.client("ec2", region.name).meta.events.register(
            "provide-client-params.ec2.RunInstances",
            # A copy: botocore base64-encodes UserData in the same dict afterwards.
            lambda params, **_: launched.append(copy.deepcopy(params)),
        )
    # Something of the account's own, which destroy must leave alone.
    foreign = aws.client("ec2", "us-east-1").create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    # AWS's managed list of the Route 53 health checkers, which moto lacks, in all regions
    # but one (the deployer says where it is missing).
    *checked, unchecked = fleet.regions
    checkers = {region.name: health_checker_list(aws, region.name) for region in checked}
    # moto's Elastic IPs are 127.x addresses, which Route 53 would refuse to health-check.
    deployer = Deployer(
        fleet,
        aws,
        placement,
        wheelhouse=wheelhouse,
        wait_for_builder=stop_builder,
        allow_special_use_addresses=True,
        certs=fleet_certs(tmp_path / "tls", EXAMPLE),
    )

    # plan: everything to create, nothing created.
    planned = deployer.plan()
    kinds = Counter(change.kind for change in planned)
    pairs = sum(len(region.azs) for region in fleet.regions)
    assert kinds["vpc"] == len(fleet.regions)
    assert kinds["instance"] == 2 * pairs
    assert kinds["image"] == len(fleet.regions)  # baked once, copied to the three others
    assert kinds["placement-group"] == pairs
    # The AMI's: the artifacts bucket, the wheelhouse in it, the builder's way to it; per
    # region, the members' ways to the AWS APIs (they have no public address of their own).
    assert (kinds["bucket"], kinds["wheelhouse"]) == (1, 1)
    assert kinds["vpc-endpoint"] == 1 + len(API_SERVICES) * len(fleet.regions)
    assert kinds["parameter"] == 3 * 2 * pairs  # the CA, the certificate and the key of each
    # Per pair: node down, pair degraded and takeover.
    assert kinds["alarm"] == len(ALARM_METRICS) * len(fleet.regions) + 3 * pairs
    assert {change.action for change in planned if change.kind != "prefix-list"} <= {
        "create",
        "update",
    }
    [missing] = [change for change in planned if change.kind == "prefix-list"]
    assert (missing.action, missing.region) == ("differs", unchecked.name)
    assert "cannot reach /ready" in missing.detail
    assert all(count == 0 for count in tagged(aws, fleet, "us-west-2").values())

    # apply: what the plan said, then nothing on a second run.
    applied = deployer.apply()
    # The routes over each peering come with it: a plan shows the connection alone.
    later = {"record-sets", "route"}
    assert Counter(c.kind for c in applied if c.kind not in later) == Counter(
        c.kind for c in planned if c.kind not in later
    )
    links = len(fleet.regions) * (len(fleet.regions) - 1) // 2
    assert kinds["vpc-peering"] == links
    assert Counter(c.kind for c in applied)["route"] == 2 * links
    assert [c.kind for c in deployer.apply()] == ["prefix-list"]
    assert [c.kind for c in deployer.plan()] == ["prefix-list"]
    for region in fleet.regions:
        azs = len(region.azs)
        assert tagged(aws, fleet, region.name) == {
            "vpc": 1,
            "subnet": azs,
            "instance": 2 * azs,
            "elastic-ip": azs,
            "image": 1,
            "snapshot": 1,  # the image's, tagged (the operator's policy fences its deletion)
            "network-interface": 2 * azs,
        }
        assert placement.names(region.name, fleet.name) == sorted(
            f"{fleet.name}-{az.name}" for az in region.azs
        )
    # Every pair member went into its AZ's placement group (moto drops the group: the
    # request is what shows it).
    # The AMI builder launches into a subnet, each member on its own interface.
    pair_launches = [p for p in launched if "SubnetId" not in p["NetworkInterfaces"][0]]
    assert len(pair_launches) == 2 * pairs
    for params in pair_launches:
        az = params["Placement"]["AvailabilityZone"]
        assert params["Placement"]["GroupName"] == f"{fleet.name}-{az}"
        assert params["InstanceType"] == fleet.instance_type
        assert params["IamInstanceProfile"] == {"Name": f"{fleet.name}-router"}
        # It boots with the files `overlay deploy render` prints for it.
        files = {
            path: text.split("FILE\n", 1)[0]
            for path, text in (
                chunk.split(" <<'FILE'\n", 1) for chunk in params["UserData"].split("cat >")[1:]
            )
        }
        tags = {tag["Key"]: tag["Value"] for tag in params["TagSpecifications"][0]["Tags"]}
        [member] = [m for m in members(fleet) if tags["overlay:name"] == f"{fleet.name}-{m.id}"]
        # The node shows the trunks its pair's Elastic IP, in SIP and in SDP.
        public_ip = public_ips(aws, fleet)[member.az.name]
        if member.az.public_ip is not None:
            assert public_ip == member.az.public_ip
        assert files == member_files(fleet, member, public_ip)
        node = parse_config(files[NODE_TOML], source=member.id, check_files=False)
        assert node.media is not None
        assert (node.sip.advertise, node.media.advertise) == (public_ip, public_ip)
        # Its HA agent finds its own and its peer's interface and the pair's EIP by the tags
        # the deployer gave them; the node's certificate, fetched from Parameter Store at boot
        # (user data carries no keys), is only named.
        ha = parse_ha_config(files[HA_TOML], check_files=False)
        assert ha.tls_files == tuple(NODE_TLS_FILES.values())
        found = find_pair(
            aws.client("ec2", member.region.name), fleet=ha.fleet, pair=ha.pair, role=ha.role
        )
        assert found.own_eni == params["NetworkInterfaces"][0]["NetworkInterfaceId"]
        assert found.peer_eni != found.own_eni
        config = ha.config(found)
        assert config.heartbeat_interval == fleet.ha.heartbeat_interval
        assert config.peer_grpc_target == f"{member.own_ip(member.peer_role)}:{fleet.ports.grpc}"

    # The security group: SIP from trunks and peers, gRPC only from peers and the NOC, metrics
    # only from the NOC.
    ec2 = aws.client("ec2", "us-west-2")
    [group] = ec2.describe_security_groups(
        Filters=[{"Name": "tag:overlay:name", "Values": [f"{fleet.name}-us-west-2"]}]
    )["SecurityGroups"]
    grpc_rule = next(r for r in group["IpPermissions"] if r.get("FromPort") == fleet.ports.grpc)
    assert {r["CidrIp"] for r in grpc_rule["IpRanges"]} == {*fleet.peer_cidrs, *fleet.noc_cidrs}
    metrics = next(r for r in group["IpPermissions"] if r.get("FromPort") == fleet.ports.metrics)
    assert {r["CidrIp"] for r in metrics["IpRanges"]} == set(fleet.noc_cidrs)
    relay = next(r for r in group["IpPermissions"] if r.get("FromPort") == fleet.ports.relay)
    assert (relay["IpProtocol"], {r["CidrIp"] for r in relay["IpRanges"]}) == (
        "udp",
        set(fleet.peer_cidrs),
    )
    # The members reach the AWS APIs they call through interface endpoints (private DNS).
    interfaces = [
        e
        for e in ec2.describe_vpc_endpoints()["VpcEndpoints"]
        if e["VpcEndpointType"] == "Interface"
    ]
    assert sorted(
        e["ServiceName"].removeprefix("com.amazonaws.us-west-2.") for e in interfaces
    ) == (sorted(API_SERVICES))
    assert all(e["PrivateDnsEnabled"] for e in interfaces)
    # Route 53's checkers ask /ready on the health port (the NOC may too), nothing else.
    health = [r for r in group["IpPermissions"] if r.get("FromPort") == fleet.ports.health]
    assert [p["PrefixListId"] for r in health for p in r.get("PrefixListIds", ())] == [
        checkers["us-west-2"]
    ]
    assert {c["CidrIp"] for r in health for c in r["IpRanges"]} == set(fleet.noc_cidrs)
    assert not [r for r in group["IpPermissions"] if r.get("PrefixListIds") and r not in health]

    # status: each active holds its pair's floating address.
    rows = deployer.status()
    assert len(rows) == 2 * pairs
    assert all(row["state"] == "running" for row in rows)
    assert all(bool(row["floating"]) == (row["role"] == "active") for row in rows)

    # The zone answers, from a DNS server on loopback fed with what Route 53 holds.
    route53 = aws.client("route53", "us-east-1")
    [zone] = route53.list_hosted_zones_by_name(DNSName=fleet.dns_zone)["HostedZones"]
    zone_id = zone["Id"].split("/")[-1]
    async with serve_hosted_zone(aws, zone_id, client_region="us-east-1") as (host, port):
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
        answer = await resolver.resolve(f"_sip._udp.{fleet.dns_zone}", "SRV")
        by_priority = sorted((r.priority, r.weight, r.port) for r in answer)
        assert by_priority == sorted(
            (region.srv_priority, region.srv_weight, fleet.ports.sip) for region in fleet.regions
        )
        nearest = await resolver.resolve(f"sip.{fleet.dns_zone}", "A")
        east = [row for row in rows if row["region"] == "us-east-1" and row["role"] == "active"]
        assert sorted(r.address for r in nearest) == sorted(row["floating"] for row in east)
    checks = route53.list_health_checks()["HealthChecks"]
    assert len(checks) == pairs + sum(1 for region in fleet.regions if len(region.azs) > 1)
    # Each pair's: whether its node takes new calls (503 while it drains).
    asked = [c["HealthCheckConfig"] for c in checks if c["HealthCheckConfig"]["Type"] == "HTTP"]
    assert len(asked) == pairs
    assert {(c["Port"], c["ResourcePath"]) for c in asked} == {(fleet.ports.health, "/ready")}

    # Alarms on the link metrics, wired to the region's topic.
    east2 = next(region for region in fleet.regions if region.name == "us-east-2")
    alarms = aws.client("cloudwatch", "us-east-2").describe_alarms()["MetricAlarms"]
    assert sorted(alarm["MetricName"] for alarm in alarms) == sorted(
        [*ALARM_METRICS, *["NodeUp", "PeerUp", "Takeovers"] * len(east2.azs)]
    )
    assert all(alarm["AlarmActions"] for alarm in alarms)
    # Links: no data is no fault. A node: no heartbeat is a node down. A pair: no takeover
    # reported is none made.
    missing = {alarm["MetricName"]: alarm["TreatMissingData"] for alarm in alarms}
    assert missing == {
        **dict.fromkeys(ALARM_METRICS, "notBreaching"),
        "NodeUp": "breaching",
        "PeerUp": "breaching",
        "Takeovers": "notBreaching",
    }
    for metric in ("NodeUp", "PeerUp", "Takeovers"):
        pair_alarms = [alarm for alarm in alarms if alarm["MetricName"] == metric]
        assert sorted(
            d["Value"] for a in pair_alarms for d in a["Dimensions"] if d["Name"] == "Node"
        ) == [az.name for az in east2.azs]

    # plan against a changed description: what exists unlike it is shown, never touched.
    first, *others = fleet.regions
    changed = dataclasses.replace(
        fleet,
        instance_type="c6in.xlarge",
        regions=(dataclasses.replace(first, azs=first.azs[:1]), *others),
    )
    report = Deployer(changed, aws, placement, wheelhouse=wheelhouse).plan()
    # The records would follow the description (one address fewer); nothing else is touched.
    assert {(c.action, c.kind) for c in report if c.action != "differs"} == {
        ("update", "record-sets")
    }
    report = [c for c in report if c.action == "differs" and c.kind != "prefix-list"]
    differs = Counter((c.kind, c.region) for c in report)
    assert differs[("instance", first.name)] == 2 * len(first.azs)  # type, and the AZ dropped
    assert differs[("subnet", first.name)] == len(first.azs) - 1
    assert all("destroy and apply to replace" in c.detail for c in report)

    # Every VPC routes to every other over its peering connection.
    for region in fleet.regions:
        ec2 = aws.client("ec2", region.name)
        [vpc] = ec2.describe_vpcs(Filters=[{"Name": "tag:overlay:fleet", "Values": [fleet.name]}])[
            "Vpcs"
        ]
        [table] = ec2.describe_route_tables(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
                {"Name": "association.main", "Values": ["true"]},
            ]
        )["RouteTables"]
        peered = {
            route["DestinationCidrBlock"]
            for route in table["Routes"]
            if route.get("VpcPeeringConnectionId")
        }
        assert peered == {other.vpc_cidr for other in fleet.regions if other != region}

    # The routers' role: find and move their own pair's address, publish link metrics.
    iam = aws.client("iam", "us-east-1")
    role = f"{fleet.name}-router"
    [profile_role] = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]["Roles"]
    assert profile_role["RoleName"] == role
    document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
    statements = {s["Sid"]: s for s in document["Statement"]}
    assert statements["MoveTheFloatingAddress"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/overlay:fleet": fleet.name}
    }
    assert statements["PublishLinkMetrics"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": ALARM_NAMESPACE}
    }

    # destroy: everything the fleet made, and only that.
    destroyed = deployer.destroy()
    assert destroyed
    for region in fleet.regions:
        assert all(count == 0 for count in tagged(aws, fleet, region.name).values())
        assert placement.names(region.name, fleet.name) == []
        assert aws.client("cloudwatch", region.name).describe_alarms()["MetricAlarms"] == []
        connections = aws.client("ec2", region.name).describe_vpc_peering_connections()
        assert {c["Status"]["Code"] for c in connections["VpcPeeringConnections"]} <= {"deleted"}
    zone_name = fleet.dns_zone.rstrip(".") + "."
    assert all(z["Name"] != zone_name for z in route53.list_hosted_zones()["HostedZones"])
    assert route53.list_health_checks()["HealthChecks"] == []
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"] == role]
    assert not [
        p
        for p in iam.list_instance_profiles()["InstanceProfiles"]
        if p["InstanceProfileName"] == role
    ]
    east = aws.client("ec2", "us-east-1")
    assert [v["VpcId"] for v in east.describe_vpcs(VpcIds=[foreign])["Vpcs"]] == [foreign]
    assert aws.client("s3", fleet.builder_region).list_buckets()["Buckets"] == []
    endpoints = aws.client("ec2", fleet.builder_region).describe_vpc_endpoints()
    assert {e["State"] for e in endpoints["VpcEndpoints"]} <= {"deleted"}
    assert deployer.destroy() == []


def health_checker_list(aws: ClientFactory, region: str) -> str:
    """A stand-in for AWS's managed prefix list of the Route 53 health checkers."""
    created = aws.client("ec2", region).create_managed_prefix_list(
        PrefixListName=f"com.amazonaws.{region}.route53-healthchecks",
        MaxEntries=4,
        AddressFamily="IPv4",
        Entries=[{"Cidr": "15.177.0.0/18"}],
    )
    return str(created["PrefixList"]["PrefixListId"])


def test_placement_group_requests(aws: ClientFactory) -> None:
    """What Ec2PlacementGroups asks EC2 for (moto implements none of it)."""
    ec2 = aws.client("ec2", "us-west-2")
    groups = Ec2PlacementGroups(aws)
    with Stubber(ec2) as stub:
        stub.add_response(
            "create_placement_group",
            {},
            {
                "GroupName": "voice-us-west-2a",
                "Strategy": "spread",
                "TagSpecifications": [
                    {
                        "ResourceType": "placement-group",
                        "Tags": [
                            {"Key": "overlay:fleet", "Value": "voice"},
                            {"Key": "overlay:name", "Value": "voice-us-west-2a"},
                            {"Key": "Name", "Value": "voice-us-west-2a"},
                        ],
                    }
                ],
            },
        )
        stub.add_response(
            "describe_placement_groups",
            {"PlacementGroups": [{"GroupName": "voice-us-west-2a", "State": "available"}]},
            {"Filters": [{"Name": "tag:overlay:fleet", "Values": ["voice"]}]},
        )
        stub.add_response("delete_placement_group", {}, {"GroupName": "voice-us-west-2a"})
        groups.create("us-west-2", "voice", "voice-us-west-2a")
        assert groups.names("us-west-2", "voice") == ["voice-us-west-2a"]
        groups.delete("us-west-2", "voice-us-west-2a")
        stub.assert_no_pending_responses()


def test_a_launch_waits_for_the_new_instance_profile_to_reach_ec2() -> None:
    unknown = ClientError(
        {
            "Error": {
                "Code": "InvalidParameterValue",
                "Message": "Value (voice-router) for"
                " parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile"
                " name",
            }
        },
        "RunInstances",
    )
    answers: list[Exception | dict[str, Any]] = [unknown, unknown, {"Instances": ["i-1"]}]
    slept: list[float] = []

    def launch() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert once_profile_propagated(launch, sleep=slept.append) == {"Instances": ["i-1"]}
    assert slept == [PROFILE_RETRY_S, PROFILE_RETRY_S]
    # Any other refusal, or one that lasts, is the operator's to see.
    other = ClientError({"Error": {"Code": "InvalidParameterValue", "Message": "x"}}, "Run")

    def refused() -> dict[str, Any]:
        raise other

    with pytest.raises(ClientError):
        once_profile_propagated(refused, sleep=slept.append)

    def never() -> dict[str, Any]:
        raise unknown

    with pytest.raises(ClientError):
        once_profile_propagated(never, sleep=slept.append)
    assert sum(slept) >= PROFILE_PROPAGATION_S
