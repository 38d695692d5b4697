"""The active/standby pair of each AZ: two network interfaces with fixed addresses (the
active's carries the pair's floating secondary address), an Elastic IP on the floating address,
and two instances pinned to the AZ and its placement group, each told its peer by user data."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from deploy._image import write_file
from deploy._walk import PENDING, Walk, first_id, logical_name, tag_map
from deploy.fleet import AzSpec, Fleet, RegionSpec
from deploy.render import Member, floating_ip, member_files
from overlay.aws import ClientFactory, error_code
from overlay.ha import ROLES

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]

#: A pair member's first boot: its files (``deploy.render``), then its services. User data is
#: readable by anyone allowed DescribeInstanceAttribute, so it carries no keys: the mutual-TLS
#: files come from SSM Parameter Store, fetched by overlay-secrets.service (``deploy._secrets``).
MEMBER_USER_DATA = """#!/bin/bash
set -euo pipefail
install -d /etc/overlay
{files}systemctl daemon-reload
systemctl enable --now overlay-secrets.service overlay.service overlay-ha.service
"""


@dataclass(frozen=True)
class Pair:
    """What an active/standby pair is made of."""

    region: str
    az: str
    interfaces: dict[str, str]  # role -> ENI id
    floating_ip: str
    allocation_id: str
    public_ip: str


def converge(
    walk: Walk,
    region: RegionSpec,
    az: AzSpec,
    subnet: str,
    group: str,
    image: str,
    profile: str,
) -> Pair:
    ec2 = walk.ec2(region.name)
    floating = floating_ip(az)
    interfaces = {}
    for role in ROLES:
        addresses = [Member(region, az, role).own_ip()]
        if role == "active":
            addresses.append(floating)
        interfaces[role] = _interface(
            walk, region.name, walk.name(f"{az.name}-{role}"), subnet, group, addresses
        )
    name = walk.name(az.name)
    allocation = walk.find_or_create_tagged(
        "elastic-ip",
        region.name,
        name,
        lambda: _allocate_address(walk, ec2, name, region, az, interfaces["active"]),
        f"on {floating} of {walk.name(az.name + '-active')}",
    )
    public_ip = PENDING
    if allocation != PENDING:
        address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
        public_ip = address["PublicIp"]
        # Associated to either member: the HA agent moves it, the deployer never moves
        # it back. Only an address left without any association is repaired.
        if not address.get("NetworkInterfaceId"):
            walk.act(
                "update",
                "elastic-ip",
                region.name,
                name,
                functools.partial(_associate, ec2, allocation, interfaces["active"], floating),
                f"associate to {floating}",
            )
    for role in ROLES:
        member = Member(region, az, role)
        name = walk.name(member.id)
        walk.find_or_create(
            "instance",
            region.name,
            name,
            functools.partial(_find_member, walk, region.name, name),
            functools.partial(
                _launch, walk, member, name, image, interfaces[role], public_ip, profile
            ),
            f"{walk.fleet.instance_type} in {az.name}, placement group {walk.name(az.name)}",
        )
    return Pair(region.name, az.name, interfaces, floating, allocation, public_ip)


def public_ips(aws: ClientFactory, fleet: Fleet) -> dict[str, str]:
    """Each pair's Elastic IP, by AZ, as apply made them (none before)."""
    found = {}
    for region in fleet.regions:
        addresses = aws.client("ec2", region.name).describe_addresses(
            Filters=[{"Name": "tag:overlay:fleet", "Values": [fleet.name]}]
        )["Addresses"]
        by_name = {tag_map(address).get("overlay:name"): address for address in addresses}
        for az in region.azs:
            address = by_name.get(f"{fleet.name}-{az.name}")
            if address is not None:
                found[az.name] = str(address["PublicIp"])
    return found


def differences(walk: Walk, region: RegionSpec) -> None:
    """Pair members that fleet.toml no longer has, or of another instance type."""
    members = {walk.name(f"{az.name}-{role}") for az in region.azs for role in ROLES}
    for instance in _members(walk, region.name):
        name = logical_name(instance, instance["InstanceId"])
        if name not in members:
            walk.differs("instance", region.name, name, "not in fleet.toml")
        elif instance["InstanceType"] != walk.fleet.instance_type:
            detail = f"{instance['InstanceType']}, fleet.toml says {walk.fleet.instance_type}"
            walk.differs("instance", region.name, name, detail)


def status(walk: Walk, region: str) -> list[dict[str, str]]:
    """One row per pair member: where it runs, its state, who holds the floating address."""
    holders = {
        a.get("NetworkInterfaceId"): a.get("PublicIp", "")
        for a in walk.tagged(region, "elastic-ip")
    }
    rows = []
    for instance in _members(walk, region):
        tags = tag_map(instance)
        eni = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
        rows.append(
            {
                "region": region,
                "az": instance["Placement"]["AvailabilityZone"],
                "name": tags.get("overlay:name", ""),
                "role": tags.get("overlay:role", ""),
                "instance": instance["InstanceId"],
                "state": instance["State"]["Name"],
                "private_ip": instance.get("PrivateIpAddress", ""),
                "floating": holders.get(eni, ""),
            }
        )
    return rows


def destroy(walk: Walk, region: str) -> None:
    """Elastic IPs, then the instances, then their interfaces (terminating detaches them)."""
    ec2 = walk.ec2(region)
    for address in walk.tagged(region, "elastic-ip"):
        if address.get("AssociationId"):
            ec2.disassociate_address(AssociationId=address["AssociationId"])
        walk.change(
            "delete", "elastic-ip", region, logical_name(address), address.get("PublicIp", "")
        )
        ec2.release_address(AllocationId=address["AllocationId"])
    instances = _members(walk, region)
    if instances:
        ids = [instance["InstanceId"] for instance in instances]
        for instance in instances:
            walk.change("delete", "instance", region, logical_name(instance))
        ec2.terminate_instances(InstanceIds=ids)
        ec2.get_waiter("instance_terminated").wait(InstanceIds=ids)
    for interface in walk.tagged(region, "network-interface"):
        walk.change("delete", "network-interface", region, logical_name(interface))
        ec2.delete_network_interface(NetworkInterfaceId=interface["NetworkInterfaceId"])


def _members(walk: Walk, region: str, name: str | None = None) -> list[dict[str, Any]]:
    """The fleet's live pair members; the AMI builder is tagged with another role."""
    filters = [
        *walk.filters(name),
        {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
    ]
    reservations = walk.ec2(region).describe_instances(Filters=filters)["Reservations"]
    return [
        instance
        for reservation in reservations
        for instance in reservation["Instances"]
        if tag_map(instance).get("overlay:role") in ROLES
    ]


def _find_member(walk: Walk, region: str, name: str) -> str | None:
    return first_id(_members(walk, region, name), "InstanceId")


def _interface(
    walk: Walk, region: str, name: str, subnet: str, group: str, addresses: list[str]
) -> str:
    """A network interface with fixed addresses, the first one primary."""
    return walk.find_or_create_tagged(
        "network-interface",
        region,
        name,
        lambda: walk.ec2(region).create_network_interface(
            SubnetId=subnet,
            Groups=[group],
            PrivateIpAddresses=[
                {"PrivateIpAddress": address, "Primary": index == 0}
                for index, address in enumerate(addresses)
            ],
            Description=f"overlay {name}",
            TagSpecifications=walk.tags("network-interface", name),
        )["NetworkInterface"]["NetworkInterfaceId"],
        ", ".join(addresses),
    )


def _allocate_address(
    walk: Walk,
    ec2: Any,  # noqa: ANN401
    name: str,
    region: RegionSpec,
    az: AzSpec,
    interface: str,
) -> str:
    """The pair's Elastic IP: fleet.toml's ``public_ip`` (from the region's BYOIP pool, or
    recovered), else one of Amazon's."""
    chosen = {} if az.public_ip is None else {"Address": az.public_ip}
    if region.public_ipv4_pool is not None:
        chosen["PublicIpv4Pool"] = region.public_ipv4_pool
    allocation: str = ec2.allocate_address(
        Domain="vpc", TagSpecifications=walk.tags("elastic-ip", name), **chosen
    )["AllocationId"]
    _associate(ec2, allocation, interface, floating_ip(az))
    return allocation


def _associate(ec2: Any, allocation: str, interface: str, floating: str) -> None:  # noqa: ANN401
    ec2.associate_address(
        AllocationId=allocation,
        NetworkInterfaceId=interface,
        PrivateIpAddress=floating,
        AllowReassociation=False,
    )


def _launch(
    walk: Walk,
    member: Member,
    name: str,
    image: str,
    interface: str,
    public_ip: str,
    profile: str,
) -> str:
    advertise = None if public_ip == PENDING else public_ip
    files = "".join(
        write_file(path, content)
        for path, content in member_files(walk.fleet, member, advertise).items()
    )
    launch = functools.partial(
        walk.ec2(member.region.name).run_instances,
        ImageId=image,
        InstanceType=walk.fleet.instance_type,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "NetworkInterfaceId": interface}],
        UserData=MEMBER_USER_DATA.format(files=files),
        IamInstanceProfile={"Name": profile},
        Placement={"AvailabilityZone": member.az.name, "GroupName": walk.name(member.az.name)},
        MetadataOptions={"HttpTokens": "required"},
        TagSpecifications=walk.tags("instance", name, role=member.role),
    )
    instance: str = once_profile_propagated(launch)["Instances"][0]["InstanceId"]
    return instance


#: How long a new instance profile may take to reach EC2 (IAM is eventually consistent).
PROFILE_PROPAGATION_S = 60.0
PROFILE_RETRY_S = 5.0


def once_profile_propagated(
    launch: Callable[[], dict[str, Any]], *, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """``launch()``, tried again while EC2 does not know the instance profile IAM just made
    (``InvalidParameterValue`` naming it), for up to PROFILE_PROPAGATION_S."""
    waited = 0.0
    while True:
        try:
            return launch()
        except botocore.exceptions.ClientError as error:
            unknown_profile = error_code(error) == "InvalidParameterValue" and (
                "iamInstanceProfile" in str(error)
            )
            if not unknown_profile or waited >= PROFILE_PROPAGATION_S:
                raise
        sleep(PROFILE_RETRY_S)
        waited += PROFILE_RETRY_S
