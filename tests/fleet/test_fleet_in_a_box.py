"""A fleet in a box (issue 15): deploy a three-region fleet into moto, boot every instance from
its own user data in network namespaces, call through it from one trunk to another, kill the
ingress pair's active, call again, destroy.

What is real: the deployer (``Deployer.apply``, what ``overlay deploy apply`` runs), the user
data and units it writes, every member's node and HA agent as processes running the units'
command lines, the TLS files fetched from SSM, the HA agent's takeover through the EC2 API and
its ``ip addr`` in the OS, the overlay's hop between regions over VPC peering with private
addresses, 1:1 NAT for the Elastic IPs, DNS (the zone's SRV and A records) and SIPp trunks with
RTP both ways. What stands in (and why), besides the fabric's own limits (``tests.fleet``):

* placement groups are kept in memory: moto has no placement-group API (notes/moto.md);
* the AMI bake's builder is powered off by the waiter and its console read as a success, and
  the wheelhouse is a fake one: the bake has its own tests (tests/deploy/test_bake.py); the
  instances run the checkout's virtualenv as /opt/overlay;
* Elastic IPs come from RFC 6598 space (``PUBLIC_POOL``), which Route 53 health checks refuse
  (``allow_special_use_addresses``): nothing here is routed beyond the namespaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy._image import wait_for_bake
from deploy.deployer import Deployer
from deploy.fleet import load_fleet
from deploy.placement import MemoryPlacementGroups
from overlay.aws import ClientFactory
from overlay.lab.sipp import parse_stat_csv
from tests.deploy.bake import any_wheelhouse, console_says, debian_image, debian_parameter
from tests.deploy.route53_dns import hosted_zone
from tests.fleet import PUBLIC_POOL, Fabric, open_fabric, unavailable
from tests.fleet.dns import write_zone

pytestmark = [
    pytest.mark.netns,
    pytest.mark.integration,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

FLEET = "box"
ZONE = "voice.box.example"
INGRESS, EGRESS, OTHER = "us-west-2", "us-east-1", "us-east-2"
BUILDER = OTHER
SCENARIOS = Path(__file__).parent / "scenarios"
OVERLAY = Path(sys.executable).parent / "overlay"
CALLS = 200
RATE = 20  # calls per second
HOLD_MS = 3000
#: The HA agent's detection: dead_after heartbeats (fleet.toml's [ha] defaults, 3 x 0.5 s).
DETECTION_S = 1.5
#: After it, the EC2 moves on moto (measured: the address moved 1.7 s after the kill).
MOVE_S = 1.0
#: The first call after the kill (measured 5.1-8.4 s, in steps of a failed probe call): the
#: move, the OS address, the standby's node joining the mesh and its links and routes coming up.
TAKEOVER_BOUND_S = 12.0
#: The packet rate of g711a.pcap (SIPp's own file: 236 packets in 7.05 s), which each side
#: plays from the ACK until the BYE: about HOLD_MS of it per call and direction.
PCAP_PPS = 236 / 7.05
#: Of that, what must arrive (measured: 100.4% at the caller; the playing starts a little
#: before the hold and ends a little after).
RTP_DELIVERED = 0.97


#: Each region's VPC, the SRV priority of its routers (the ingress's first) and its AZs, each a
#: /24 of the VPC in turn.
VPCS = {
    INGRESS: (ipaddress.ip_network("10.20.0.0/16"), 10, "a"),
    EGRESS: (ipaddress.ip_network("10.30.0.0/16"), 20, "a"),
    OTHER: (ipaddress.ip_network("10.40.0.0/16"), 20, "ab"),
}
REGIONS = list(VPCS)


#: Where no trunk may see an address of: every VPC of the fleet, and more.
PRIVATE = ipaddress.ip_network("10.0.0.0/8")


def fleet_toml(callee: str, public: Iterator[ipaddress.IPv4Address]) -> str:
    regions = ""
    for region, (vpc, priority, azs) in VPCS.items():
        subnets = itertools.islice(vpc.subnets(new_prefix=24), 1, None)
        lines = [
            f'{region}{az} = {{ subnet = "{subnet}", public_ip = "{next(public)}" }}'
            for az, subnet in zip(azs, subnets, strict=False)
        ]
        regions += (
            f"""
[[regions]]
name = "{region}"
vpc_cidr = "{vpc}"
srv_priority = {priority}
srv_weight = 100
[regions.azs]
"""
            + "\n".join(lines)
            + "\n"
        )
    return f"""\
[fleet]
name = "{FLEET}"
instance_type = "c5n.large"
dns_zone = "{ZONE}"
ami_name = "overlay"
builder_region = "{BUILDER}"
noc_cidrs = ["100.64.0.0/16"]
trunk_cidrs = ["100.64.0.0/16"]
{regions}
[[dialplan]]
user_prefix = "+1212"
target = "{callee}:5060"
egress = ["{EGRESS}"]
"""


@dataclasses.dataclass
class Box:
    """The deployed fleet in the fabric, and what the test needs to reach it."""

    fabric: Fabric
    deployer: Deployer
    aws: ClientFactory
    fleet_file: Path
    certs: Path
    caller: str
    callee: str
    dns: tuple[str, int]
    members: dict[str, str]  # "<AZ>-<role>" -> instance id

    def run(self, where: str, argv: list[str], timeout: float) -> str:
        """``argv`` in ``where``; its standard output, or the failure with its output."""
        process = self.fabric.run(where, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = process.communicate(timeout=timeout)
        text = output.decode(errors="replace")
        assert process.returncode == 0, f"{argv} in {where}: exit {process.returncode}\n{text}"
        return text

    def ctl(self, member: str, *args: str) -> Any:  # noqa: ANN401 - JSON
        """overlayctl, as the NOC, against a member's node at its own address, from its
        machine."""
        instance = self.fabric.instance(self.members[member])
        argv = [
            str(OVERLAY.with_name("overlayctl")),
            "--target",
            f"{instance.private_ip}:7000",
            "--ca",
            str(self.certs / "ca.pem"),
            "--cert",
            str(self.certs / "noc.pem"),
            "--key",
            str(self.certs / "noc.key"),
            "--json",
            *args,
        ]
        return json.loads(self.run(instance.id, argv, timeout=30))


def deploy(fabric: Fabric, tmp: Path) -> Box:
    public = PUBLIC_POOL.hosts()
    caller, callee, dns_host = (fabric.inet_address() for _ in range(3))
    fleet_file = tmp / "fleet.toml"
    fleet_file.write_text(fleet_toml(callee, public))
    certs = tmp / "ca"
    for argv in (
        ["certs", "init", str(certs)],
        ["deploy", "certs", "-f", str(fleet_file), str(certs)],
        ["certs", "client", str(certs), "noc", "--role", "operator"],
    ):
        subprocess.run([str(OVERLAY), *argv], check=True, capture_output=True, timeout=60)

    aws = fabric.aws
    debian_parameter(aws, BUILDER, debian_image(aws, BUILDER))
    ec2 = aws.client("ec2", BUILDER)
    console_says(ec2, "overlay-bake: ok\n")
    deployer = Deployer(
        load_fleet(fleet_file),
        aws,
        MemoryPlacementGroups(),
        wheelhouse=any_wheelhouse(),
        wait_for_builder=lambda ec2, instance: wait_for_bake(
            ec2, instance, sleep=lambda _: ec2.stop_instances(InstanceIds=[instance])
        ),
        allow_special_use_addresses=True,
        certs=certs,
    )
    deployer.apply()
    members = {row["name"].removeprefix(f"{FLEET}-"): row["instance"] for row in deployer.status()}

    zone_id = aws.client("route53", "us-east-1").list_hosted_zones()["HostedZones"][0]["Id"]
    zone_file = tmp / "zone.json"
    write_zone(hosted_zone(aws, zone_id, client_region=INGRESS), zone_file)
    server = fabric.run(
        "inet",
        [sys.executable, "-m", "tests.fleet.dns", "serve", str(zone_file), dns_host],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    with server.stdout:  # it prints its port once, then only serves
        port = int(server.stdout.readline())
    return Box(fabric, deployer, aws, fleet_file, certs, caller, callee, (dns_host, port), members)


def trunk_target(box: Box) -> tuple[str, int]:
    """Where the caller trunk sends, found as a trunk finds it: SRV, then A, from the zone."""
    host, port = box.dns
    answer = box.run(
        "inet",
        [sys.executable, "-m", "tests.fleet.dns", "resolve", host, str(port), ZONE],
        timeout=30,
    )
    [(address, sip_port), *_] = json.loads(answer)
    return address, sip_port


def wait_converged(box: Box, timeout: float) -> None:
    """Until every pair's active node reaches every other pair's node."""
    actives = [member for member in box.members if member.endswith("-active")]
    pairs = {member.removesuffix("-active") for member in actives}
    deadline = time.monotonic() + timeout
    for member in actives:
        while True:
            nodes = box.ctl(member, "nodes")["nodes"]
            reachable = {node["node_id"] for node in nodes if node["reachable"]}
            if pairs - {member.removesuffix("-active")} <= reachable:
                break
            assert time.monotonic() < deadline, f"{member} reaches only {sorted(reachable)}"
            time.sleep(0.5)


@dataclasses.dataclass
class Calls:
    successful: int
    failed: int
    caller_rtp: int  # RTP packets the caller trunk received
    callee_rtp: int
    private_seen: list[str]  # private addresses in what the trunks received


def place_calls(
    box: Box,
    target: tuple[str, int],
    calls: int,
    tag: str,
    *,
    hold_ms: int = HOLD_MS,
    recv_timeout_ms: int = 10_000,
) -> Calls:
    """``calls`` from the caller trunk to +1212... at ``target``, each held ``hold_ms``, audio
    both ways (SIPp playing g711a.pcap on both sides), counted at the trunks."""
    run = box.fabric.run_dir / f"sipp-{tag}"
    run.mkdir()
    counters = RtpCounters(box, {"caller": (box.caller, 16000), "callee": (box.callee, 18000)})
    uas = box.fabric.run(
        "inet",
        [
            "sipp", "-sf", str(SCENARIOS / "uas_media.xml"), "-i", box.callee, "-p", "5060",
            "-mi", box.callee, "-mp", "18000", "-trace_msg", "-message_file",
            str(run / "callee.msg"), "-nostdin",
        ],
        name=f"uas-{tag}",
    )  # fmt: skip
    try:
        time.sleep(0.5)  # SIPp binds at once; no readiness signal to wait for
        address, port = target
        uac = box.fabric.run(
            "inet",
            [
                "sipp", f"{address}:{port}", "-sf", str(SCENARIOS / "uac_media.xml"),
                "-i", box.caller, "-p", "5060", "-mi", box.caller, "-mp", "16000",
                "-s", "+12125550100", "-m", str(calls), "-r", str(RATE), "-l", str(calls),
                "-d", str(hold_ms), "-timeout", "90", "-timeout_error", "-nostdin",
                "-trace_stat", "-stf", str(run / "stat.csv"), "-trace_msg",
                "-message_file", str(run / "caller.msg"), "-recv_timeout", str(recv_timeout_ms),
            ],
            name=f"uac-{tag}",
        )  # fmt: skip
        uac.wait(timeout=120)
        time.sleep(1.0)  # the last calls' RTP in flight
    finally:
        uas.terminate()
        uas.wait(timeout=10)
    stats = parse_stat_csv((run / "stat.csv").read_text())
    received = counters.read()
    private = sorted(
        {
            found
            for name in ("caller.msg", "callee.msg")
            for found in re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", (run / name).read_text())
            if ipaddress.ip_address(found) in PRIVATE
        }
    )
    return Calls(
        int(stats["SuccessfulCall(C)"]),
        int(stats["FailedCall(C)"]),
        received["caller"],
        received["callee"],
        private,
    )


class RtpCounters:
    """iptables counters in inet of the UDP datagrams reaching each trunk's media port."""

    def __init__(self, box: Box, trunks: dict[str, tuple[str, int]]) -> None:
        self._box = box
        self._rules = {
            name: ["-d", host, "-p", "udp", "--dport", str(port), "-m", "comment", "--comment",
                   f"rtp-{name}", "-j", "ACCEPT"]
            for name, (host, port) in trunks.items()
        }  # fmt: skip
        for rule in self._rules.values():
            self._iptables("-I", "INPUT", *rule)

    def read(self) -> dict[str, int]:
        listing = self._iptables("-L", "INPUT", "-v", "-n", "-x")
        counts = {}
        for name in self._rules:
            [line] = [line for line in listing.splitlines() if f"rtp-{name}" in line]
            counts[name] = int(line.split()[0])
        for rule in self._rules.values():
            self._iptables("-D", "INPUT", *rule)
        return counts

    def _iptables(self, *args: str) -> str:
        return self._box.run("inet", ["iptables", *args], timeout=30)


@contextlib.contextmanager
def reported(fabric: Fabric) -> Iterator[None]:
    """On failure, what the fabric did and the end of every log."""
    try:
        yield
    except BaseException:
        print(fabric.report(lines=40))
        raise


def test_fleet_in_a_box(tmp_path: Path) -> None:
    started = time.monotonic()
    with open_fabric(fleet=FLEET, regions=REGIONS) as fabric, reported(fabric):
        box = deploy(fabric, tmp_path)
        deployed = time.monotonic()
        fabric.sync()
        fabric.boot_all(timeout=120)
        for instance in box.members.values():
            fabric.wait_ready(instance, "overlay.service", 60)
        fabric.start_reconciler()
        wait_converged(box, timeout=60)
        booted = time.monotonic()

        target = trunk_target(box)
        ingress = box.members[f"{INGRESS}a-active"]
        assert target == (
            box.aws.client("ec2", INGRESS).describe_addresses()["Addresses"][0]["PublicIp"],
            5060,
        )
        first = place_calls(box, target, CALLS, "before")
        assert (first.successful, first.failed) == (CALLS, 0)
        assert first.private_seen == []
        # Audio both ways: every call's packets, both directions.
        expected = CALLS * HOLD_MS / 1000 * PCAP_PPS
        assert first.caller_rtp >= expected * RTP_DELIVERED
        assert first.callee_rtp >= expected * RTP_DELIVERED

        # A drained active keeps its address: its standby's agent sees it live.
        drained = f"{OTHER}b-active"
        holder = holding(box, OTHER, drained)
        box.ctl(drained, "drain", "--reason", "fleet in a box")
        time.sleep(4 * 3 * 0.5)  # four times the agent's dead_after x heartbeat_interval
        assert holding(box, OTHER, drained) == holder == box.members[drained]
        box.ctl(drained, "undrain")

        killed = time.monotonic()
        fabric.kill(ingress)
        standby = box.members[f"{INGRESS}a-standby"]
        while holding(box, INGRESS, f"{INGRESS}a-active") != standby:
            assert time.monotonic() - killed < DETECTION_S + MOVE_S, "no takeover in time"
            time.sleep(0.05)  # polling the EC2 API, as the fabric does
        moved = time.monotonic() - killed
        recovered = None
        for attempt in itertools.count():
            probe = place_calls(box, target, 1, f"probe-{attempt}", hold_ms=0, recv_timeout_ms=2000)
            if probe.successful == 1:
                recovered = time.monotonic() - killed
                break
            assert time.monotonic() - killed < TAKEOVER_BOUND_S, "no call after the takeover"
        after = place_calls(box, target, CALLS, "after")
        assert (after.successful, after.failed) == (CALLS, 0)
        assert after.private_seen == []
        assert min(after.caller_rtp, after.callee_rtp) >= expected * RTP_DELIVERED
        assert recovered is not None

        box.deployer.destroy()
        left = tagged_resources(box)
        assert left == [], left
        print(
            f"fleet in a box: deploy {deployed - started:.1f} s, boot and converge "
            f"{booted - deployed:.1f} s; after the kill: address moved {moved:.1f} s, first "
            f"call {recovered:.1f} s; RTP "
            f"received per direction {first.caller_rtp}/{first.callee_rtp} before, "
            f"{after.caller_rtp}/{after.callee_rtp} after ({expected:.0f} played), "
            f"total {time.monotonic() - started:.1f} s"
        )


def holding(box: Box, region: str, member: str) -> str:
    """The instance whose interface has the Elastic IP of ``member``'s pair (the EC2 API)."""
    pair = member.rsplit("-", 1)[0]
    ec2 = box.aws.client("ec2", region)
    [address] = ec2.describe_addresses(
        Filters=[{"Name": "tag:overlay:name", "Values": [f"{FLEET}-{pair}"]}]
    )["Addresses"]
    [interface] = ec2.describe_network_interfaces(
        NetworkInterfaceIds=[address["NetworkInterfaceId"]]
    )["NetworkInterfaces"]
    return str(interface["Attachment"]["InstanceId"])


def tagged_resources(box: Box) -> list[str]:
    """Everything in the account still tagged with the fleet (the tagging API; a terminated
    instance and a deleted peering are listed for a while, as on AWS, and not counted), and the
    routers' role and the artifacts bucket by name."""
    left = []
    for region in REGIONS:
        tagging = box.aws.client("resourcegroupstaggingapi", region)
        for page in tagging.get_paginator("get_resources").paginate(
            TagFilters=[{"Key": "overlay:fleet", "Values": [FLEET]}]
        ):
            left += [item["ResourceARN"] for item in page["ResourceTagMappingList"]]
        ec2 = box.aws.client("ec2", region)
        gone = {
            instance["InstanceId"]
            for reservation in ec2.describe_instances()["Reservations"]
            for instance in reservation["Instances"]
            if instance["State"]["Name"] == "terminated"
        } | {
            peering["VpcPeeringConnectionId"]
            for peering in ec2.describe_vpc_peering_connections()["VpcPeeringConnections"]
            if peering["Status"]["Code"] == "deleted"
        }
        left = [arn for arn in left if arn.rsplit("/", 1)[-1] not in gone]
    iam = box.aws.client("iam", "us-east-1")
    left += [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(FLEET)]
    s3 = box.aws.client("s3", BUILDER)
    left += [b["Name"] for b in s3.list_buckets()["Buckets"] if f"-{FLEET}-" in b["Name"]]
    return left
