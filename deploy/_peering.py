"""Between every two regions a VPC peering connection, so that the overlay's hops between
regions go over private addresses (the overlay's and the relays' source-address checks hold),
and a route each way in both VPCs' main route tables. The security groups let the other
regions' VPCs in already (``peer_cidrs``, by default every region's ``vpc_cidr``).

A connection is requested from the region listed first in fleet.toml, accepted in the other,
named ``<fleet>-<region>-<region>`` and found by that name in the requesting region.
"""

from __future__ import annotations

import functools
from typing import Any

from deploy._network import Network
from deploy._walk import PENDING, Walk, first_id, tag_map
from deploy.fleet import RegionSpec

#: States of a connection that is there, or on its way (AWS keeps deleted and rejected ones
#: listed for a while).
LIVE_STATES = ["initiating-request", "pending-acceptance", "provisioning", "active"]


def converge(walk: Walk, networks: dict[str, Network]) -> None:
    regions = walk.fleet.regions
    for index, requester in enumerate(regions):
        for accepter in regions[index + 1 :]:
            _connect(walk, requester, accepter, networks)


def destroy(walk: Walk) -> None:
    """Before the VPCs: a VPC with a connection cannot be deleted."""
    for region in walk.fleet.regions:
        ec2 = walk.ec2(region.name)
        for connection in _connections(walk, region.name):
            walk.change("delete", "vpc-peering", region.name, _name(connection))
            ec2.delete_vpc_peering_connection(
                VpcPeeringConnectionId=connection["VpcPeeringConnectionId"]
            )


def _connect(
    walk: Walk, requester: RegionSpec, accepter: RegionSpec, networks: dict[str, Network]
) -> None:
    name = walk.name(f"{requester.name}-{accepter.name}")
    found = _connections(walk, requester.name, name)
    connection = walk.find_or_create(
        "vpc-peering",
        requester.name,
        name,
        lambda: first_id(found, "VpcPeeringConnectionId"),
        lambda: _create(walk, requester, accepter, networks, name),
        f"{requester.vpc_cidr} <-> {accepter.name} {accepter.vpc_cidr}",
    )
    if found and found[0]["Status"]["Code"] == "pending-acceptance":
        walk.act(
            "update",
            "vpc-peering",
            requester.name,
            name,
            functools.partial(_accept, walk, accepter.name, connection),
            f"accept in {accepter.name}",
        )
    if connection == PENDING:
        return  # a plan: the routes come with the connection
    for here, there in ((requester, accepter), (accepter, requester)):
        _route(walk, here.name, networks[here.name].vpc, there.vpc_cidr, connection, name)


def _create(
    walk: Walk,
    requester: RegionSpec,
    accepter: RegionSpec,
    networks: dict[str, Network],
    name: str,
) -> str:
    connection: str = walk.ec2(requester.name).create_vpc_peering_connection(
        VpcId=networks[requester.name].vpc,
        PeerVpcId=networks[accepter.name].vpc,
        PeerRegion=accepter.name,
        TagSpecifications=walk.tags("vpc-peering-connection", name),
    )["VpcPeeringConnection"]["VpcPeeringConnectionId"]
    _accept(walk, accepter.name, connection)
    return connection


def _accept(walk: Walk, region: str, connection: str) -> None:
    """In the accepting region, once the request has reached it."""
    ec2 = walk.ec2(region)
    ec2.get_waiter("vpc_peering_connection_exists").wait(VpcPeeringConnectionIds=[connection])
    ec2.accept_vpc_peering_connection(VpcPeeringConnectionId=connection)


def _route(walk: Walk, region: str, vpc: str, cidr: str, connection: str, name: str) -> None:
    ec2 = walk.ec2(region)
    [table] = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    if any(route.get("DestinationCidrBlock") == cidr for route in table["Routes"]):
        return
    walk.act(
        "create",
        "route",
        region,
        name,
        functools.partial(
            ec2.create_route,
            RouteTableId=table["RouteTableId"],
            DestinationCidrBlock=cidr,
            VpcPeeringConnectionId=connection,
        ),
        f"{cidr} via {connection}",
    )


def _connections(walk: Walk, region: str, name: str | None = None) -> list[dict[str, Any]]:
    """The fleet's live connections requested from ``region`` (only ``name`` when given). The
    tags are checked here too: moto 5.2 ignores tag filters on this call."""
    filters = [*walk.filters(name), {"Name": "status-code", "Values": LIVE_STATES}]
    listed = walk.ec2(region).describe_vpc_peering_connections(Filters=filters)
    return [
        connection
        for connection in listed["VpcPeeringConnections"]
        if tag_map(connection).get("overlay:fleet") == walk.fleet.name
        and (name is None or _name(connection) == name)
        and connection["Status"]["Code"] in LIVE_STATES
    ]


def _name(connection: dict[str, Any]) -> str:
    return tag_map(connection).get("overlay:name", "")
