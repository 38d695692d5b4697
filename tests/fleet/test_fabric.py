"""The fabric without the overlay: a world made with boto3 in two regions (a VPC each, peered,
two instances with a floating address and an Elastic IP in one, an instance in the other),
mirrored, booted from user data that enables a UDP echo server, then checked packet by packet.
Needs root and network namespaces; skipped otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import PUBLIC_POOL, ROUTER, Fabric, open_fabric, unavailable
from tests.fleet._netns import namespaces, root_links, run

pytestmark = [pytest.mark.integration, pytest.mark.netns]

FLEET = "fabric-test"
WEST, EAST = "us-west-2", "us-east-1"
EIP = str(PUBLIC_POOL[1])
FLOATING = "10.1.1.10"
PORT = 7000

#: Answers every datagram with the instance's name and the datagram, from the floating
#: address (bound before the address is configured: a non-local bind); READY=1 once bound.
ECHO = (
    "import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
    " s.bind((os.environ['FLOATING'], int(os.environ['PORT'])));"
    " name = open(os.environ['RUNTIME_DIRECTORY'] + '/name', 'rb').read().strip();"
    " socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)"
    ".sendto(b'READY=1', os.environ['NOTIFY_SOCKET']);"
    " [s.sendto(name + b' ' + data, peer) for data, peer in iter(lambda: s.recvfrom(2048), None)]"
)
#: Listed before its dependency: the fabric orders them.
ECHO_USER_DATA = f"""#!/bin/bash
set -euo pipefail
install -d /etc/fleet-test
echo {{name}} >/etc/fleet-test/name
cat >/etc/systemd/system/prep.service <<'UNIT'
[Unit]
Description=puts the instance's name where the echo server reads it
[Service]
Type=oneshot
ExecStart=/bin/cp /etc/fleet-test/name /var/lib/fleet-test.name
UNIT
cat >/etc/systemd/system/echo.service <<'UNIT'
[Unit]
Description=UDP echo on the floating address
Requires=prep.service
After=prep.service
[Service]
Type=notify
User=nobody
RuntimeDirectory=fleet-test
Environment="FLOATING={FLOATING}" PORT={PORT}
ExecStartPre=-/bin/false
ExecStartPre=+/bin/sh -c 'cp /var/lib/fleet-test.name "$RUNTIME_DIRECTORY/name"'
ExecStart=/opt/overlay/bin/python -c "{ECHO}"
UNIT
systemctl daemon-reload
systemctl enable --now echo.service prep.service
"""

#: Sends a datagram every 10 ms until a reply starting with the expected text comes, then
#: prints it, who sent it and when (CLOCK_MONOTONIC is the same in every namespace).
PROBE = """
import json, socket, sys, time
source, target, port, expect, wait = sys.argv[1:6]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
s.settimeout(0.01)
deadline = time.monotonic() + float(wait)
while time.monotonic() < deadline:
    s.sendto(b"hello", (target, int(port)))
    try:
        data, peer = s.recvfrom(2048)
    except TimeoutError:
        continue
    if data.decode().startswith(expect):
        print(json.dumps({"reply": data.decode(), "peer": list(peer), "at": time.monotonic()}))
        break
"""


@dataclass(frozen=True)
class World:
    fabric: Fabric
    vpcs: dict[str, str]  # region -> VPC id
    a: str
    b: str
    c: str
    eni_a: str
    eni_b: str
    allocation: str
    units: dict[str, list[str]]  # instance -> units its boot started


def _tags(kind: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": "overlay:fleet", "Value": FLEET}]}]


def _network(ec2: Any, cidr: str, subnet: str, az: str) -> tuple[str, str, str]:  # noqa: ANN401
    """A tagged VPC with a subnet and an internet gateway: (VPC, subnet, main route table)."""
    vpc = ec2.create_vpc(CidrBlock=cidr, TagSpecifications=_tags("vpc"))["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc, CidrBlock=subnet, AvailabilityZone=az)
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    [table] = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])[
        "RouteTables"
    ]
    table_id = table["RouteTableId"]
    ec2.create_route(RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    return vpc, subnet_id["Subnet"]["SubnetId"], table_id


def _instance(ec2: Any, subnet: str, addresses: list[str], user_data: str) -> tuple[str, str]:  # noqa: ANN401
    """An instance on an ENI with ``addresses`` (the first primary): (instance, ENI)."""
    eni = ec2.create_network_interface(
        SubnetId=subnet,
        PrivateIpAddresses=[
            {"PrivateIpAddress": address, "Primary": index == 0}
            for index, address in enumerate(addresses)
        ],
    )["NetworkInterface"]["NetworkInterfaceId"]
    image = ec2.register_image(
        Name=f"fabric-{eni}",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
    )["ImageId"]
    instance = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "NetworkInterfaceId": eni}],
        UserData=user_data,
        TagSpecifications=_tags("instance"),
    )["Instances"][0]["InstanceId"]
    return instance, eni


def _make_world(fabric: Fabric) -> World:
    west, east = fabric.aws.client("ec2", WEST), fabric.aws.client("ec2", EAST)
    vpc_w, subnet_w, table_w = _network(west, "10.1.0.0/16", "10.1.1.0/24", f"{WEST}a")
    vpc_e, subnet_e, table_e = _network(east, "10.2.0.0/16", "10.2.1.0/24", f"{EAST}a")
    peering = west.create_vpc_peering_connection(VpcId=vpc_w, PeerVpcId=vpc_e, PeerRegion=EAST)
    peering_id = peering["VpcPeeringConnection"]["VpcPeeringConnectionId"]
    east.accept_vpc_peering_connection(VpcPeeringConnectionId=peering_id)
    for ec2, table, cidr in ((west, table_w, "10.2.0.0/16"), (east, table_e, "10.1.0.0/16")):
        ec2.create_route(
            RouteTableId=table, DestinationCidrBlock=cidr, VpcPeeringConnectionId=peering_id
        )
    a, eni_a = _instance(west, subnet_w, ["10.1.1.11", FLOATING], ECHO_USER_DATA.format(name="a"))
    b, eni_b = _instance(west, subnet_w, ["10.1.1.12"], ECHO_USER_DATA.format(name="b"))
    c, _ = _instance(east, subnet_e, ["10.2.1.11"], "#!/bin/bash\necho c >/etc/fleet-test-c\n")
    allocation = west.allocate_address(Domain="vpc", Address=EIP)["AllocationId"]
    west.associate_address(AllocationId=allocation, NetworkInterfaceId=eni_a)
    fabric.sync()
    units = fabric.boot_all(timeout=30)
    for instance in (a, b):
        fabric.wait_ready(instance, "echo.service", 15)
    # What the active's HA agent does at start: configure the floating address.
    _call(fabric, a, ["ip", "addr", "add", f"{FLOATING}/32", "dev", "ens5"])
    return World(fabric, {WEST: vpc_w, EAST: vpc_e}, a, b, c, eni_a, eni_b, allocation, units)


def _call(fabric: Fabric, where: str, argv: list[str], timeout: float = 20) -> str:
    """``argv`` run in ``where`` to success; its stdout."""
    process = fabric.run(where, argv, stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{argv} in {where} failed ({process.returncode})"
    return out.decode()


def _probe(
    fabric: Fabric, where: str, source: str, target: str, expect: str, wait: float = 5
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", PROBE, source, target, str(PORT), expect, str(wait)]
    return fabric.run(where, argv, name="probe", stdout=subprocess.PIPE)


def _reply(probe: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = probe.communicate(timeout=30)
    assert out, "no reply"
    reply: dict[str, Any] = json.loads(out)
    return reply


@pytest.fixture(scope="module")
def module_world() -> Iterator[World]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    began = time.monotonic()
    with open_fabric(fleet=FLEET, regions=(WEST, EAST)) as fabric:
        started = time.monotonic()
        world = _make_world(fabric)
        print(
            f"fabric started in {started - began:.2f} s, world made and booted in"
            f" {time.monotonic() - started:.2f} s"
        )
        yield world


@pytest.fixture
def world(module_world: World) -> Iterator[World]:
    yield module_world
    print(module_world.fabric.report())  # pytest shows it when the test fails


def test_boot_writes_to_the_instance_layer_only(world: World):
    fabric = world.fabric
    a = fabric.instance(world.a)
    assert a.layer("/etc/fleet-test/name").read_text() == "a\n"
    assert a.layer("/var/lib/fleet-test.name").read_text() == "a\n"  # the oneshot unit's
    assert fabric.instance(world.c).layer("/etc/fleet-test-c").read_text() == "c\n"
    assert not Path("/etc/fleet-test").exists()
    assert not Path("/etc/fleet-test-c").exists()
    assert not Path("/var/lib/fleet-test.name").exists()
    assert world.units == {
        world.a: ["prep.service", "echo.service"],
        world.b: ["prep.service", "echo.service"],
        world.c: [],
    }


def test_elastic_ip_is_nated_both_ways(world: World):
    fabric = world.fabric
    trunk = fabric.inet_address()
    reply = _reply(_probe(fabric, "inet", trunk, EIP, "a "))
    assert reply["reply"] == "a hello"
    assert reply["peer"] == [EIP, PORT]


def test_peered_instance_reaches_the_private_address(world: World):
    reply = _reply(_probe(world.fabric, world.c, "0.0.0.0", FLOATING, "a "))
    assert reply["peer"] == [FLOATING, PORT]


def test_instances_reach_moto_with_their_region(world: World):
    code = (
        "import boto3; print(boto3.client('ec2').describe_instances()"
        "['Reservations'][0]['Instances'][0]['PrivateIpAddress'])"
    )
    assert _call(world.fabric, world.c, [sys.executable, "-c", code]).strip() == "10.2.1.11"


def test_no_route_leads_out(world: World):
    fabric = world.fabric
    mine = [name for name in namespaces() if name.startswith(fabric.prefix)]
    assert len(mine) == 2 + 2 + 3  # aws, inet, two gateways, three instances
    for netns in mine:
        default = run(["ip", "-n", netns, "route", "show", "default"]).strip()
        instance = netns.removeprefix(f"{fabric.prefix}-") in fabric.instances
        assert default == (f"default via {ROUTER} dev ens5" if instance else ""), netns
    forwarding = run(
        ["ip", "netns", "exec", fabric.netns("aws"), "sysctl", "-n", "net.ipv4.ip_forward"]
    )
    assert forwarding.strip() == "0"
    assert [link for link in root_links() if link.startswith(fabric.prefix)] == [
        f"{fabric.prefix}h"
    ]


def test_floating_address_move_reaches_the_other_instance(world: World):
    fabric, west = world.fabric, world.fabric.aws.client("ec2", WEST)
    fabric.start_reconciler()
    fabric.kill(world.a)
    assert all(
        process.popen.poll() is not None
        for process in fabric.processes
        if process.where == world.a and process.name != "holder"
    )
    probe = _probe(fabric, "inet", fabric.inet_address(), EIP, "b ")
    # As the standby's HA agent takes over (overlay.ha._ec2.FloatingAddress.take_over).
    began = time.monotonic()
    west.unassign_private_ip_addresses(
        NetworkInterfaceId=world.eni_a, PrivateIpAddresses=[FLOATING]
    )
    west.assign_private_ip_addresses(
        NetworkInterfaceId=world.eni_b, PrivateIpAddresses=[FLOATING], AllowReassignment=True
    )
    west.associate_address(
        AllocationId=world.allocation,
        NetworkInterfaceId=world.eni_b,
        PrivateIpAddress=FLOATING,
        AllowReassociation=True,
    )
    moved = time.monotonic()
    _call(fabric, world.b, ["ip", "addr", "add", f"{FLOATING}/32", "dev", "ens5"])
    reply = _reply(probe)
    latency = reply["at"] - moved
    print(
        f"the move reached the namespaces {latency:.3f} s after its last EC2 call,"
        f" {reply['at'] - began:.3f} s after its first"
    )
    assert reply["reply"] == "b hello"
    assert reply["peer"] == [EIP, PORT]
    assert latency < 1.0
    assert any(f"address {FLOATING} " in change and world.b in change for change in fabric.changes)


def test_close_removes_everything():
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    began = time.monotonic()
    with open_fabric(fleet=FLEET, regions=(WEST,)) as fabric:
        ec2 = fabric.aws.client("ec2", WEST)
        _, subnet, _ = _network(ec2, "10.3.0.0/16", "10.3.1.0/24", f"{WEST}a")
        instance, _ = _instance(
            ec2, subnet, ["10.3.1.11", FLOATING], ECHO_USER_DATA.format(name="x")
        )
        fabric.sync()
        fabric.boot(instance)
        fabric.wait_ready(instance, "echo.service", 15)
        _call(fabric, "inet", ["true"])
        assert len([name for name in namespaces() if name.startswith(fabric.prefix)]) == 4
        assert fabric.run_dir.exists()
        closing = time.monotonic()
        fabric.close()
        print(
            f"started, booted and closed in {closing - began:.2f} s, close took"
            f" {time.monotonic() - closing:.2f} s"
        )
    fabric.close()  # idempotent
    assert [name for name in namespaces() if name.startswith(fabric.prefix)] == []
    assert [link for link in root_links() if link.startswith(fabric.prefix)] == []
    assert not fabric.run_dir.exists()
    assert all(process.popen.poll() is not None for process in fabric.processes)
