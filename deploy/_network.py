"""A region's network: VPC, internet gateway and default route, a subnet per AZ, the security
group, and a spread placement group per AZ (its pair's members on distinct racks); in the
builder region, an S3 gateway endpoint (the AMI builder's only way out)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from deploy._walk import Walk, first_id, logical_name
from deploy.fleet import AzSpec, RegionSpec
from deploy.placement import STRATEGY


@dataclass(frozen=True)
class Network:
    """What a region's pairs are placed in."""

    vpc: str
    subnets: dict[str, str]  # AZ -> subnet id
    security_group: str


def converge(walk: Walk, region: RegionSpec) -> Network:
    name = walk.name(region.name)
    ec2 = walk.ec2(region.name)
    vpc = walk.find_or_create_tagged(
        "vpc",
        region.name,
        name,
        lambda: _create_vpc(walk, ec2, region.vpc_cidr, name),
        f"{region.vpc_cidr}, DNS hostnames (the API endpoints' private names)",
    )
    walk.find_or_create_tagged(
        "internet-gateway",
        region.name,
        name,
        lambda: _create_gateway(walk, ec2, vpc, name),
        "attached, default route",
    )
    subnets = {az.name: _subnet(walk, region.name, vpc, az) for az in region.azs}
    checkers = _health_checkers(ec2, region.name)
    if checkers is None:
        walk.change(
            "differs",
            "prefix-list",
            region.name,
            _HEALTH_CHECKERS.format(region=region.name),
            "not in this region: Route 53's health checks of its pairs cannot reach /ready; add"
            " AWS's ROUTE53_HEALTHCHECKS ranges to the security group by hand",
        )
    group = walk.find_or_create_tagged(
        "security-group",
        region.name,
        name,
        lambda: _create_security_group(walk, ec2, vpc, name, checkers),
        "SIP/TLS/RTP from trunks and peers, the relays' port and gRPC from peers, gRPC from"
        " the NOC, /ready from Route 53's health checkers",
    )
    existing = set(walk.placement.names(region.name, walk.fleet.name))
    for az in region.azs:
        group_name = walk.name(az.name)
        if group_name not in existing:
            walk.act(
                "create",
                "placement-group",
                region.name,
                group_name,
                functools.partial(walk.placement.create, region.name, walk.fleet.name, group_name),
                STRATEGY,
            )
    api_endpoints(walk, region.name, vpc, list(subnets.values()))
    return Network(vpc, subnets, group)


def s3_endpoint(walk: Walk, region: str, vpc: str) -> str:
    """The VPC's S3 gateway endpoint, on the main route table the subnets use: the AMI builder,
    with no public address, reaches the artifacts bucket through it and nothing else."""
    name = walk.name(f"{region}-s3")
    return walk.find_or_create(
        "vpc-endpoint",
        region,
        name,
        functools.partial(_endpoint_id, walk, region, name),
        lambda: _create_s3_endpoint(walk, region, vpc, name),
        f"S3 gateway ({_S3.format(region=region)}) on the main route table",
    )


#: The AWS APIs a member calls: the HA agent (EC2, its takeover metric), the node's exporter
#: (CloudWatch), the TLS files' fetch and Run Command (SSM and the agent's two channels).
API_SERVICES = ("ec2", "monitoring", "ssm", "ssmmessages", "ec2messages")


def api_endpoints(walk: Walk, region: str, vpc: str, subnets: list[str]) -> None:
    """An interface endpoint per AWS API the members call, in every AZ's subnet, with private
    DNS: members have no public address of their own (only the active's floating one has an
    Elastic IP), and the standby must reach EC2 to take over. Reached on 443 from the VPC."""
    ec2 = walk.ec2(region)
    group_name = walk.name(f"{region}-endpoints")
    group = walk.find_or_create_tagged(
        "security-group",
        region,
        group_name,
        lambda: _create_endpoint_group(walk, ec2, vpc, group_name),
        "HTTPS from the VPC, to the AWS API endpoints",
    )
    for service in API_SERVICES:
        name = walk.name(f"{region}-{service}")
        walk.find_or_create(
            "vpc-endpoint",
            region,
            name,
            functools.partial(_endpoint_id, walk, region, name),
            functools.partial(
                _create_api_endpoint, walk, ec2, f"com.amazonaws.{region}.{service}", name,
                vpc, subnets, group,
            ),
            f"interface, private DNS, in {len(subnets)} subnet(s)",
        )  # fmt: skip


def _endpoint_id(walk: Walk, region: str, name: str) -> str | None:
    return first_id(_endpoints(walk, region, name), "VpcEndpointId")


def _create_api_endpoint(
    walk: Walk,
    ec2: Any,  # noqa: ANN401
    service: str,
    name: str,
    vpc: str,
    subnets: list[str],
    group: str,
) -> str:
    endpoint: str = ec2.create_vpc_endpoint(
        VpcEndpointType="Interface",
        VpcId=vpc,
        ServiceName=service,
        SubnetIds=subnets,
        SecurityGroupIds=[group],
        PrivateDnsEnabled=True,
        TagSpecifications=walk.tags("vpc-endpoint", name),
    )["VpcEndpoint"]["VpcEndpointId"]
    return endpoint


def _create_endpoint_group(walk: Walk, ec2: Any, vpc: str, name: str) -> str:  # noqa: ANN401
    cidr = ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"]
    https = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": cidr}]}
    return _security_group(walk, ec2, vpc, name, "AWS API endpoints", [https])


def _security_group(
    walk: Walk,
    ec2: Any,  # noqa: ANN401
    vpc: str,
    name: str,
    purpose: str,
    permissions: list[dict[str, Any]],
) -> str:
    """A tagged security group of the fleet that lets ``permissions`` in."""
    group: str = ec2.create_security_group(
        GroupName=name,
        Description=f"overlay {walk.fleet.name}: {purpose}",
        VpcId=vpc,
        TagSpecifications=walk.tags("security-group", name),
    )["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions)
    return group


def differences(walk: Walk, region: RegionSpec) -> None:
    """The region's VPC and subnets that are not as fleet.toml says."""
    for vpc in walk.tagged(region.name, "vpc"):
        if vpc["CidrBlock"] != region.vpc_cidr:
            walk.differs(
                "vpc",
                region.name,
                logical_name(vpc, vpc["VpcId"]),
                f"CIDR {vpc['CidrBlock']}, fleet.toml says {region.vpc_cidr}",
            )
    subnets = {walk.name(az.name): az for az in region.azs}
    for subnet in walk.tagged(region.name, "subnet"):
        name = logical_name(subnet, subnet["SubnetId"])
        az = subnets.get(name)
        if az is None:
            walk.differs("subnet", region.name, name, "not in fleet.toml")
        elif (subnet["CidrBlock"], subnet["AvailabilityZone"]) != (az.subnet_cidr, az.name):
            detail = f"{subnet['CidrBlock']} in {subnet['AvailabilityZone']}"
            walk.differs("subnet", region.name, name, detail)


def destroy_placement_groups(walk: Walk, region: str) -> None:
    """Once their instances are gone."""
    for group in walk.placement.names(region, walk.fleet.name):
        walk.change("delete", "placement-group", region, group)
        walk.placement.delete(region, group)


def destroy(walk: Walk, region: str) -> None:
    """Once nothing is left in the VPC."""
    ec2 = walk.ec2(region)
    for endpoint in _endpoints(walk, region):
        walk.change("delete", "vpc-endpoint", region, logical_name(endpoint))
        ec2.delete_vpc_endpoints(VpcEndpointIds=[endpoint["VpcEndpointId"]])
    for group in walk.tagged(region, "security-group"):
        walk.change("delete", "security-group", region, group["GroupName"])
        ec2.delete_security_group(GroupId=group["GroupId"])
    for subnet in walk.tagged(region, "subnet"):
        walk.change("delete", "subnet", region, logical_name(subnet))
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in walk.tagged(region, "internet-gateway"):
        for attachment in gateway.get("Attachments", []):
            ec2.detach_internet_gateway(
                InternetGatewayId=gateway["InternetGatewayId"], VpcId=attachment["VpcId"]
            )
        walk.change("delete", "internet-gateway", region, logical_name(gateway))
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    for vpc in walk.tagged(region, "vpc"):
        walk.change("delete", "vpc", region, logical_name(vpc))
        ec2.delete_vpc(VpcId=vpc["VpcId"])


def _create_vpc(walk: Walk, ec2: Any, cidr: str, name: str) -> str:  # noqa: ANN401
    vpc: str = ec2.create_vpc(CidrBlock=cidr, TagSpecifications=walk.tags("vpc", name))["Vpc"][
        "VpcId"
    ]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    return vpc


def _subnet(walk: Walk, region: str, vpc: str, az: AzSpec) -> str:
    name = walk.name(az.name)
    return walk.find_or_create_tagged(
        "subnet",
        region,
        name,
        lambda: walk.ec2(region).create_subnet(
            VpcId=vpc,
            CidrBlock=az.subnet_cidr,
            AvailabilityZone=az.name,
            TagSpecifications=walk.tags("subnet", name),
        )["Subnet"]["SubnetId"],
        f"{az.subnet_cidr} in {az.name}",
    )


def _create_gateway(walk: Walk, ec2: Any, vpc: str, name: str) -> str:  # noqa: ANN401
    gateway = ec2.create_internet_gateway(TagSpecifications=walk.tags("internet-gateway", name))
    gateway_id: str = gateway["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc)
    table = _main_route_table(ec2, vpc)
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway_id)
    return gateway_id


def _main_route_table(ec2: Any, vpc: str) -> str:  # noqa: ANN401
    """The VPC's main route table: the subnets are associated with no other."""
    tables = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    return str(tables[0]["RouteTableId"])


_S3 = "com.amazonaws.{region}.s3"
#: Endpoints gone or going, which EC2 lists for a while (its docs capitalize states, its
#: answers do not).
_DEAD_ENDPOINT_STATES = {"deleting", "deleted", "rejected", "failed", "expired"}


def _endpoints(walk: Walk, region: str, name: str | None = None) -> list[dict[str, Any]]:
    """The fleet's live VPC endpoints in ``region`` (only ``name`` when given)."""
    listed = walk.ec2(region).describe_vpc_endpoints(Filters=walk.filters(name))["VpcEndpoints"]
    return [e for e in listed if e["State"].lower() not in _DEAD_ENDPOINT_STATES]


def _create_s3_endpoint(walk: Walk, region: str, vpc: str, name: str) -> str:
    ec2 = walk.ec2(region)
    endpoint: str = ec2.create_vpc_endpoint(
        VpcEndpointType="Gateway",
        VpcId=vpc,
        ServiceName=_S3.format(region=region),
        RouteTableIds=[_main_route_table(ec2, vpc)],
        TagSpecifications=walk.tags("vpc-endpoint", name),
    )["VpcEndpoint"]["VpcEndpointId"]
    return endpoint


#: AWS's managed prefix list of the Route 53 health checkers, where a region has one.
_HEALTH_CHECKERS = "com.amazonaws.{region}.route53-healthchecks"


def _health_checkers(ec2: Any, region: str) -> str | None:  # noqa: ANN401
    """The id of the region's Route 53 health-checker prefix list, or ``None``."""
    name = _HEALTH_CHECKERS.format(region=region)
    lists = ec2.describe_managed_prefix_lists(
        Filters=[{"Name": "prefix-list-name", "Values": [name]}]
    )["PrefixLists"]
    return None if not lists else str(lists[0]["PrefixListId"])


def _create_security_group(
    walk: Walk,
    ec2: Any,  # noqa: ANN401
    vpc: str,
    name: str,
    health_checkers: str | None,
) -> str:
    fleet = walk.fleet
    media = [*fleet.trunk_cidrs, *fleet.peer_cidrs]
    ports = fleet.ports
    rules = [
        ("udp", ports.sip, ports.sip, media),
        ("tcp", ports.sip, ports.sip, media),
        ("udp", ports.rtp_first, ports.rtp_last, media),
        ("udp", ports.relay, ports.relay, fleet.peer_cidrs),  # media between the relays
        ("tcp", ports.grpc, ports.grpc, [*fleet.peer_cidrs, *fleet.noc_cidrs]),
        ("tcp", ports.metrics, ports.metrics, fleet.noc_cidrs),  # Prometheus scrapes
        ("tcp", ports.health, ports.health, fleet.noc_cidrs),
    ]
    permissions: list[dict[str, Any]] = [
        {
            "IpProtocol": protocol,
            "FromPort": first,
            "ToPort": last,
            "IpRanges": [{"CidrIp": cidr} for cidr in sorted(set(cidrs))],
        }
        for protocol, first, last, cidrs in rules
        if cidrs
    ]
    if health_checkers is not None:
        # Route 53 asks each pair's node whether it takes new calls (HTTP /ready).
        permissions.append(
            {
                "IpProtocol": "tcp",
                "FromPort": ports.health,
                "ToPort": ports.health,
                "PrefixListIds": [
                    {"PrefixListId": health_checkers, "Description": "Route 53 health checkers"}
                ],
            }
        )
    return _security_group(walk, ec2, vpc, name, "SIP edge and overlay peers", permissions)
