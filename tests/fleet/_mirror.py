"""What the fabric reads from moto, and which instance each private address goes to.

Two reads: the topology (the fleet's VPCs, their running instances, active peerings, route
tables), which changes when the fleet is deployed or torn down, and the addresses (every ENI's
private addresses, every Elastic IP's association), which change when an HA agent takes a
pair's address over. Each is a handful of describe calls per region. The choice of holders is
a pure function of the reads and of when the fabric first saw each (address, ENI) pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The target of a route through the VPC's internet gateway.
INTERNET = "internet"

Ec2 = Callable[[str], Any]  # region -> boto3 EC2 client


@dataclass(frozen=True)
class Vpc:
    id: str
    region: str
    cidr: str


@dataclass(frozen=True)
class InstanceView:
    """A running instance, by its primary network interface (device index 0)."""

    id: str
    region: str
    vpc: str
    eni: str
    private_ip: str
    tags: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Topology:
    vpcs: dict[str, Vpc]
    instances: dict[str, InstanceView]
    #: Active peering connections between two of the fleet's VPCs: id -> (requester, accepter).
    peerings: dict[str, tuple[str, str]]
    #: VPC -> destination CIDR -> INTERNET or the peer VPC's id.
    routes: dict[str, dict[str, str]]


@dataclass(frozen=True)
class Eni:
    id: str
    vpc: str
    primary: str
    secondaries: tuple[str, ...]

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.primary, *self.secondaries)


@dataclass(frozen=True)
class Eip:
    public_ip: str
    eni: str | None


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", resource.get("TagSet", ()))}


def read_topology(ec2: Ec2, fleet: str, regions: Sequence[str]) -> Topology:
    """The VPCs tagged ``overlay:fleet=<fleet>`` in ``regions`` and what is in and between
    them: four describe calls per region with a VPC, one per region without."""
    vpcs: dict[str, Vpc] = {}
    for region in regions:
        tagged = [{"Name": "tag:overlay:fleet", "Values": [fleet]}]
        for vpc in ec2(region).describe_vpcs(Filters=tagged)["Vpcs"]:
            vpcs[vpc["VpcId"]] = Vpc(vpc["VpcId"], region, vpc["CidrBlock"])
    instances: dict[str, InstanceView] = {}
    peerings: dict[str, tuple[str, str]] = {}
    tables: list[dict[str, Any]] = []
    for region in regions:
        in_region = [
            {"Name": "vpc-id", "Values": [v.id for v in vpcs.values() if v.region == region]}
        ]
        if not in_region[0]["Values"]:
            continue
        client = ec2(region)
        running = [*in_region, {"Name": "instance-state-name", "Values": ["running"]}]
        for reservation in client.describe_instances(Filters=running)["Reservations"]:
            for instance in reservation["Instances"]:
                for interface in instance.get("NetworkInterfaces", ()):
                    if interface["Attachment"]["DeviceIndex"] == 0:
                        instances[instance["InstanceId"]] = InstanceView(
                            instance["InstanceId"],
                            region,
                            instance["VpcId"],
                            interface["NetworkInterfaceId"],
                            interface["PrivateIpAddress"],
                            _tags(instance),
                        )
        # moto ignores filters here: every connection the region knows, checked below.
        for connection in client.describe_vpc_peering_connections()["VpcPeeringConnections"]:
            ends = (connection["RequesterVpcInfo"]["VpcId"], connection["AccepterVpcInfo"]["VpcId"])
            if connection["Status"]["Code"] == "active" and all(end in vpcs for end in ends):
                peerings[connection["VpcPeeringConnectionId"]] = ends
        tables.extend(client.describe_route_tables(Filters=in_region)["RouteTables"])
    return Topology(vpcs, instances, peerings, _routes(tables, peerings))


def _routes(
    tables: list[dict[str, Any]], peerings: Mapping[str, tuple[str, str]]
) -> dict[str, dict[str, str]]:
    """Every VPC's active routes through its internet gateway or an active peering, from all
    its route tables (subnets' associations are not modelled; the first table by id wins a
    destination two tables route differently)."""
    routes: dict[str, dict[str, str]] = {}
    for table in sorted(tables, key=lambda table: table["RouteTableId"]):
        vpc = table["VpcId"]
        for route in table["Routes"]:
            destination = route.get("DestinationCidrBlock")
            peering = peerings.get(route.get("VpcPeeringConnectionId", ""))
            if route.get("State") != "active" or destination is None:
                continue
            if route.get("GatewayId", "").startswith("igw-"):
                target = INTERNET
            elif peering is not None:
                target = peering[1] if peering[0] == vpc else peering[0]
            else:
                continue
            routes.setdefault(vpc, {}).setdefault(destination, target)
    return routes


def read_addresses(ec2: Ec2, vpcs: Mapping[str, Vpc]) -> tuple[list[Eni], list[Eip]]:
    """Every ENI of ``vpcs`` and every Elastic IP of their regions: two calls per region."""
    enis: list[Eni] = []
    eips: list[Eip] = []
    for region in sorted({vpc.region for vpc in vpcs.values()}):
        client = ec2(region)
        in_region = [v.id for v in vpcs.values() if v.region == region]
        listed = client.describe_network_interfaces(
            Filters=[{"Name": "vpc-id", "Values": in_region}]
        )
        for interface in listed["NetworkInterfaces"]:
            entries = interface.get("PrivateIpAddresses", ())
            enis.append(
                Eni(
                    interface["NetworkInterfaceId"],
                    interface["VpcId"],
                    interface["PrivateIpAddress"],
                    tuple(e["PrivateIpAddress"] for e in entries if not e.get("Primary")),
                )
            )
        for address in client.describe_addresses()["Addresses"]:
            eips.append(Eip(address["PublicIp"], address.get("NetworkInterfaceId") or None))
    return enis, eips


def choose_holders(
    enis: Sequence[Eni],
    instance_of: Mapping[str, str],
    first_seen: dict[tuple[str, str], int],
    generation: int,
) -> dict[str, str]:
    """Which instance each private address is routed to: the instance whose ENI lists it.

    moto leaves a reassigned address on its old ENI too, so an address listed by two ENIs goes
    to the one that has listed it for the shortest time (the latest assignment), as far as the
    fabric saw: ``first_seen`` maps (address, ENI) to the ``generation`` (read number) it was
    first listed in, and is updated here. Two listed since the same read go to the ENI whose id
    sorts last. Only ENIs in ``instance_of`` (ENI -> instance) count.
    """
    listed = {(ip, eni.id) for eni in enis if eni.id in instance_of for ip in eni.addresses}
    for pair in set(first_seen) - listed:
        del first_seen[pair]
    chosen: dict[str, tuple[int, str]] = {}
    for ip, eni in listed:
        rank = (first_seen.setdefault((ip, eni), generation), eni)
        if ip not in chosen or rank > chosen[ip]:
            chosen[ip] = rank
    return {ip: instance_of[eni] for ip, (_, eni) in chosen.items()}


def nat_map(enis: Sequence[Eni], eips: Sequence[Eip]) -> dict[str, dict[str, str]]:
    """VPC -> Elastic IP -> the private address it is NATed to.

    moto reports an association's ENI but not which of its addresses (``PrivateIpAddress`` is
    always the ENI's primary), so an Elastic IP goes to its ENI's first secondary address (a
    pair's floating address) if the ENI has one, else to its primary address.
    """
    by_id = {eni.id: eni for eni in enis}
    nat: dict[str, dict[str, str]] = {}
    for eip in eips:
        eni = by_id.get(eip.eni or "")
        if eni is not None:
            nat.setdefault(eni.vpc, {})[eip.public_ip] = (*eni.secondaries, eni.primary)[0]
    return nat
