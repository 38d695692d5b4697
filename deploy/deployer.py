"""Plan, apply, destroy and report a fleet: the AWS resources of ``fleet.toml``.

Theory of operation
-------------------
Every resource the deployer makes carries two tags, ``overlay:fleet`` (the fleet's name) and
``overlay:name`` (its logical name, e.g. ``voice-us-west-2a-active``), and is found again by
them; nothing is remembered between runs, so the account itself is the state. ``converge``
walks the fleet in dependency order and, for each resource, finds it by its tags or creates
it: with ``execute=False`` (``plan``) it only records what it would create, with
``execute=True`` (``apply``) it creates it. The same walk is both, so a plan shows exactly what
an apply does, and a second apply finds everything and changes nothing. ``destroy`` deletes, in
reverse order, every resource carrying the fleet's tag: exactly what apply created, nothing
else in the account.

Per region: a VPC with an internet gateway and a default route, a subnet per AZ, one security
group (SIP, TLS and RTP from the trunks and the peer regions, gRPC only from the peers and the
NOC), a cluster placement group per AZ, the overlay AMI, and per AZ an active/standby pair:
two network interfaces with fixed addresses (the active's carries the pair's floating
secondary address), two instances pinned to the AZ and its placement group, and an Elastic
IP on the floating address. Globally: the DNS zone with SIP SRV/NAPTR and latency records
(``deploy.records``) behind Route 53 health checks, and per region an SNS topic with CloudWatch
alarms on the link metrics the nodes publish.

The AMI is baked once, in the builder region, from a builder instance whose user data installs
the appliance, and copied to every other region. Placement groups go through
``deploy.placement`` (moto has none). Every AWS call goes through ``overlay.aws.ClientFactory``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.fleet import AzSpec, Fleet, HaSpec, RegionSpec
from deploy.placement import PlacementGroups
from deploy.records import (
    RegionEndpoint,
    health_check_config,
    sip_record_sets,
    validate_change_batch,
)
from overlay.aws import ClientFactory

ROLES = ("active", "standby")
#: Host numbers inside each AZ's subnet (AWS reserves .0-.3): the floating address, then the
#: active's and the standby's own addresses.
FLOATING_HOST, ROLE_HOSTS = 10, {"active": 11, "standby": 12}
ALARM_NAMESPACE = "Overlay/Links"
#: Link metrics the nodes publish (per Fleet and Region), and the fleet's threshold for each.
ALARM_METRICS = {"LinkLossPct": "loss_pct", "LinkRttMs": "rtt_ms", "LinkRetransPct": "retrans_pct"}
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
PENDING = "(new)"  # the id of a resource a plan would create

BUILDER_USER_DATA = """#!/bin/bash
# Builder instance: install the overlay appliance, then stop; the deployer images the disk.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y python3 python3-venv sip-tester
python3 -m venv /opt/overlay
/opt/overlay/bin/pip install 'overlay=={version}'
install -d /etc/overlay
cat >/etc/systemd/system/overlay.service <<'UNIT'
[Unit]
Description=overlay SIP router
After=network-online.target
[Service]
ExecStart=/opt/overlay/bin/overlay node --config /etc/overlay/node.toml --log-json
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
cat >/etc/systemd/system/overlay-ha.service <<'UNIT'
[Unit]
Description=overlay HA agent (floating address of the pair)
After=network-online.target
[Service]
ExecStart=/opt/overlay/bin/overlay ha --config /etc/overlay/ha.toml
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl enable overlay.service overlay-ha.service
# Done: power off, so that the deployer (waiting for "stopped") images a quiet disk.
shutdown -h now
"""


@dataclass(frozen=True)
class Change:
    """One thing a plan would do, or an apply or a destroy did."""

    action: str  # "create", "update", "delete"; "differs": found unlike fleet.toml, left alone
    kind: str  # "vpc", "subnet", "instance", "record-sets", ...
    region: str  # "global" for Route 53
    name: str
    detail: str = ""

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-", "differs": "!"}[self.action]
        detail = f"  {self.detail}" if self.detail else ""
        return f"{sign} {self.kind:<16} {self.region:<10} {self.name}{detail}"


#: Where a member's mutual-TLS files live (``overlay certs node``). The operator installs them:
#: user data is readable by anyone allowed DescribeInstanceAttribute, so it carries no keys.
NODE_TLS_FILES = {
    "ca": "/etc/overlay/tls/ca.pem",
    "cert": "/etc/overlay/tls/node.pem",
    "key": "/etc/overlay/tls/node.key",
}

MEMBER_USER_DATA = """#!/bin/bash
# A pair member: the HA agent's settings, then (re)start it.
set -euo pipefail
install -d /etc/overlay
cat >/etc/overlay/ha.toml <<'TOML'
{ha_toml}TOML
systemctl restart overlay-ha.service
"""


@dataclass(frozen=True)
class HaAgentSettings:
    """What ``overlay ha`` on one pair member needs (``overlay/ha/_config.py``)."""

    region: str
    own_eni_id: str
    peer_eni_id: str
    floating_private_ip: str
    allocation_id: str
    peer_grpc: str

    def toml(self, timers: HaSpec) -> str:
        lines = ["[ha]"]
        lines += [f'{key} = "{value}"' for key, value in dataclasses.asdict(self).items()]
        lines += [
            f"heartbeat_interval = {timers.heartbeat_interval}",
            f"dead_after = {timers.dead_after}",
            f"hold_down = {timers.hold_down}",
        ]
        lines += [f'{key} = "{path}"' for key, path in NODE_TLS_FILES.items()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Pair:
    """What an active/standby pair is made of."""

    region: str
    az: str
    interfaces: dict[str, str]  # role -> ENI id
    floating_ip: str
    allocation_id: str
    public_ip: str


class Deployer:
    """One fleet in one account; see the module docstring."""

    def __init__(
        self,
        fleet: Fleet,
        aws: ClientFactory,
        placement: PlacementGroups,
        *,
        version: str = "0.1.0",
        report: Callable[[Change], None] = lambda change: None,
        wait_for_builder: Callable[[Any, str], None] | None = None,
        allow_special_use_addresses: bool = False,
    ) -> None:
        """``wait_for_builder(ec2, instance_id)`` returns once the AMI builder has installed
        the appliance and stopped itself (its user data ends with a shutdown); by default it
        is EC2's ``instance_stopped`` waiter. ``allow_special_use_addresses`` lets health
        checks name Elastic IPs Route 53 would refuse: only for an API stand-in (moto hands
        out EIPs from 127.0.0.0/8)."""
        self._allow_special_use = allow_special_use_addresses
        self.fleet = fleet
        self._wait_for_builder = wait_for_builder or _wait_stopped
        self._aws = aws
        self._placement = placement
        self._version = version
        self._report = report
        self._execute = False
        self._changes: list[Change] = []

    # -- entry points -------------------------------------------------------------------------

    def plan(self) -> list[Change]:
        """What ``apply`` would do now (nothing is changed)."""
        return self._converge(execute=False)

    def apply(self) -> list[Change]:
        """Create what is missing; returns what was done (empty when nothing was missing)."""
        return self._converge(execute=True)

    def destroy(self) -> list[Change]:
        """Delete every resource tagged with the fleet, in reverse dependency order."""
        self._changes = []
        self._execute = True
        self._destroy_global()
        for region in self.fleet.regions:
            self._destroy_region(region.name)
        return self._changes

    def status(self) -> list[dict[str, str]]:
        """One row per pair member: where it runs, its state, who holds the floating address."""
        rows = []
        for region in self.fleet.regions:
            ec2 = self._ec2(region.name)
            holders = {
                a.get("NetworkInterfaceId"): a.get("PublicIp", "")
                for a in ec2.describe_addresses(Filters=self._filters())["Addresses"]
            }
            for instance in self._instances(region.name):
                tags = _tag_map(instance)
                eni = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
                rows.append(
                    {
                        "region": region.name,
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

    # -- the walk -----------------------------------------------------------------------------

    def _converge(self, *, execute: bool) -> list[Change]:
        self._execute = execute
        self._changes = []
        networks = {region.name: self._network(region) for region in self.fleet.regions}
        images = self._images(networks)
        endpoints = []
        for region in self.fleet.regions:
            subnets, group = networks[region.name]
            pairs = [
                self._pair(region, az, subnets[az.name], group, images[region.name])
                for az in region.azs
            ]
            endpoints.append((region, pairs))
            self._alarms(region.name)
        self._dns(endpoints)
        for region in self.fleet.regions:
            self._differences(region)
        return self._changes

    def _differences(self, region: RegionSpec) -> None:
        """What exists under the fleet's tag but not as fleet.toml says. apply creates only
        what is missing, so these stay until destroy (and a new apply) replaces them."""
        ec2 = self._ec2(region.name)
        replace = "apply leaves it; destroy and apply to replace"
        for vpc in ec2.describe_vpcs(Filters=self._filters())["Vpcs"]:
            if vpc["CidrBlock"] != region.vpc_cidr:
                name = _tag_map(vpc).get("overlay:name", vpc["VpcId"])
                detail = f"CIDR {vpc['CidrBlock']}, fleet.toml says {region.vpc_cidr}: {replace}"
                self._change("differs", "vpc", region.name, name, detail)
        subnets = {self._name(az.name): az for az in region.azs}
        for subnet in ec2.describe_subnets(Filters=self._filters())["Subnets"]:
            name = _tag_map(subnet).get("overlay:name", subnet["SubnetId"])
            az = subnets.get(name)
            if az is None:
                self._change(
                    "differs", "subnet", region.name, name, f"not in fleet.toml: {replace}"
                )
            elif (subnet["CidrBlock"], subnet["AvailabilityZone"]) != (az.subnet_cidr, az.name):
                detail = f"{subnet['CidrBlock']} in {subnet['AvailabilityZone']}: {replace}"
                self._change("differs", "subnet", region.name, name, detail)
        members = {self._name(f"{az.name}-{role}") for az in region.azs for role in ROLES}
        for instance in self._instances(region.name):
            name = _tag_map(instance).get("overlay:name", instance["InstanceId"])
            if name not in members:
                self._change(
                    "differs", "instance", region.name, name, f"not in fleet.toml: {replace}"
                )
            elif instance["InstanceType"] != self.fleet.instance_type:
                detail = (
                    f"{instance['InstanceType']}, fleet.toml says {self.fleet.instance_type}: "
                    f"{replace}"
                )
                self._change("differs", "instance", region.name, name, detail)

    def _network(self, region: RegionSpec) -> tuple[dict[str, str], str]:
        """VPC, internet gateway, default route, subnets and the security group of a region."""
        name = self._name(region.name)
        ec2 = self._ec2(region.name)
        vpc = self._find_or_create(
            "vpc",
            region.name,
            name,
            lambda: _first(ec2.describe_vpcs(Filters=self._filters(name))["Vpcs"], "VpcId"),
            lambda: ec2.create_vpc(
                CidrBlock=region.vpc_cidr, TagSpecifications=self._tags("vpc", name)
            )["Vpc"]["VpcId"],
            region.vpc_cidr,
        )
        self._find_or_create(
            "internet-gateway",
            region.name,
            name,
            lambda: _first(
                ec2.describe_internet_gateways(Filters=self._filters(name))["InternetGateways"],
                "InternetGatewayId",
            ),
            lambda: self._create_gateway(ec2, vpc, name),
            "attached, default route",
        )
        subnets = {az.name: self._subnet(region.name, vpc, az) for az in region.azs}
        group = self._find_or_create(
            "security-group",
            region.name,
            name,
            lambda: _first(
                ec2.describe_security_groups(Filters=self._filters(name))["SecurityGroups"],
                "GroupId",
            ),
            lambda: self._create_security_group(ec2, vpc, name),
            "SIP/TLS/RTP from trunks and peers, gRPC from peers and NOC",
        )
        existing = set(self._placement.names(region.name, self.fleet.name))
        for az in region.azs:
            group_name = self._name(az.name)
            if group_name not in existing:
                self._change("create", "placement-group", region.name, group_name, "cluster")
                if self._execute:
                    self._placement.create(region.name, self.fleet.name, group_name)
        return subnets, group

    def _subnet(self, region: str, vpc: str, az: AzSpec) -> str:
        ec2 = self._ec2(region)
        name = self._name(az.name)
        return self._find_or_create(
            "subnet",
            region,
            name,
            lambda: _first(
                ec2.describe_subnets(Filters=self._filters(name))["Subnets"], "SubnetId"
            ),
            lambda: ec2.create_subnet(
                VpcId=vpc,
                CidrBlock=az.subnet_cidr,
                AvailabilityZone=az.name,
                TagSpecifications=self._tags("subnet", name),
            )["Subnet"]["SubnetId"],
            f"{az.subnet_cidr} in {az.name}",
        )

    def _create_gateway(self, ec2: Any, vpc: str, name: str) -> str:  # noqa: ANN401
        gateway = ec2.create_internet_gateway(
            TagSpecifications=self._tags("internet-gateway", name)
        )
        gateway_id: str = gateway["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc)
        table = ec2.describe_route_tables(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "association.main", "Values": ["true"]},
            ]
        )["RouteTables"][0]["RouteTableId"]
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway_id)
        return gateway_id

    def _create_security_group(self, ec2: Any, vpc: str, name: str) -> str:  # noqa: ANN401
        fleet = self.fleet
        group_id: str = ec2.create_security_group(
            GroupName=name,
            Description=f"overlay {fleet.name}: SIP edge and overlay peers",
            VpcId=vpc,
            TagSpecifications=self._tags("security-group", name),
        )["GroupId"]
        media = [*fleet.trunk_cidrs, *fleet.peer_cidrs]
        ports = fleet.ports
        rules = [
            ("udp", ports.sip, ports.sip, media),
            ("tcp", ports.sip, ports.sip, media),
            ("tcp", ports.sip_tls, ports.sip_tls, media),
            ("udp", ports.rtp_first, ports.rtp_last, media),
            ("tcp", ports.grpc, ports.grpc, [*fleet.peer_cidrs, *fleet.noc_cidrs]),
            ("tcp", ports.metrics, ports.metrics, fleet.noc_cidrs),  # Prometheus scrapes
        ]
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {
                    "IpProtocol": protocol,
                    "FromPort": first,
                    "ToPort": last,
                    "IpRanges": [{"CidrIp": cidr} for cidr in sorted(set(cidrs))],
                }
                for protocol, first, last, cidrs in rules
                if cidrs
            ],
        )
        return group_id

    def _images(self, networks: dict[str, tuple[dict[str, str], str]]) -> dict[str, str]:
        """The overlay AMI in every region: baked in the builder region, copied to the rest."""
        fleet = self.fleet
        name = f"{fleet.ami_name}-{self._version}"
        builder = fleet.builder_region
        source = self._find_or_create(
            "image",
            builder,
            name,
            lambda: self._find_image(builder, name),
            lambda: self._bake(name, networks[builder][0]),
            f"baked from {fleet.base_image_id or 'the base image'}",
        )
        images = {builder: source}
        for region in fleet.regions:
            if region.name == builder:
                continue
            images[region.name] = self._find_or_create(
                "image",
                region.name,
                name,
                functools.partial(self._find_image, region.name, name),
                functools.partial(self._copy_image, region.name, name, source),
                f"copy of {builder}",
            )
        return images

    def _find_image(self, region: str, name: str) -> str | None:
        images = self._ec2(region).describe_images(Owners=["self"], Filters=self._filters(name))
        return _first(images["Images"], "ImageId")

    def _bake(self, name: str, subnets: dict[str, str]) -> str:
        fleet = self.fleet
        if fleet.base_image_id is None:
            raise DeployError("fleet.base_image_id is needed to bake the AMI")
        ec2 = self._ec2(fleet.builder_region)
        builder = ec2.run_instances(
            ImageId=fleet.base_image_id,
            InstanceType=fleet.instance_type,
            MinCount=1,
            MaxCount=1,
            SubnetId=next(iter(subnets.values())),
            UserData=BUILDER_USER_DATA.format(version=self._version),
            InstanceInitiatedShutdownBehavior="stop",
            MetadataOptions={"HttpTokens": "required"},
            TagSpecifications=self._tags("instance", f"{name}-builder", role="builder"),
        )["Instances"][0]["InstanceId"]
        try:
            self._wait_for_builder(ec2, builder)
            image: str = ec2.create_image(
                InstanceId=builder,
                Name=name,
                Description=f"overlay {self._version} for fleet {fleet.name}",
                TagSpecifications=self._tags("image", name),
            )["ImageId"]
            ec2.get_waiter("image_available").wait(ImageIds=[image])
        finally:
            ec2.terminate_instances(InstanceIds=[builder])
        return image

    def _copy_image(self, region: str, name: str, source: str) -> str:
        ec2 = self._ec2(region)
        image: str = ec2.copy_image(
            SourceRegion=self.fleet.builder_region, SourceImageId=source, Name=name
        )["ImageId"]
        # Copies do not inherit the source's tags.
        ec2.create_tags(Resources=[image], Tags=self._tags("image", name)[0]["Tags"])
        ec2.get_waiter("image_available").wait(ImageIds=[image])
        return image

    def _pair(self, region: RegionSpec, az: AzSpec, subnet: str, group: str, image: str) -> Pair:
        """The active/standby pair of one AZ, its floating address and its Elastic IP."""
        ec2 = self._ec2(region.name)
        network = ipaddress.ip_network(az.subnet_cidr)
        floating = str(network[FLOATING_HOST])
        interfaces = {}
        for role in ROLES:
            addresses = [str(network[ROLE_HOSTS[role]])]
            if role == "active":
                addresses.append(floating)
            interfaces[role] = self._interface(
                region.name, self._name(f"{az.name}-{role}"), subnet, group, addresses
            )
        name = self._name(az.name)
        allocation = self._find_or_create(
            "elastic-ip",
            region.name,
            name,
            lambda: _first(
                ec2.describe_addresses(Filters=self._filters(name))["Addresses"], "AllocationId"
            ),
            lambda: self._allocate_address(ec2, name, interfaces["active"], floating),
            f"on {floating} of {self._name(az.name + '-active')}",
        )
        public_ip = PENDING
        if allocation != PENDING:
            address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
            public_ip = address["PublicIp"]
            # Associated to either member: the HA agent moves it, the deployer never moves
            # it back. Only an address left without any association is repaired.
            if not address.get("NetworkInterfaceId"):
                self._change("update", "elastic-ip", region.name, name, f"associate to {floating}")
                if self._execute:
                    self._associate(ec2, allocation, interfaces["active"], floating)
        for role in ROLES:
            name = self._name(f"{az.name}-{role}")
            peer = "standby" if role == "active" else "active"
            ha = HaAgentSettings(
                region=region.name,
                own_eni_id=interfaces[role],
                peer_eni_id=interfaces[peer],
                floating_private_ip=floating,
                allocation_id=allocation,
                peer_grpc=f"{network[ROLE_HOSTS[peer]]}:{self.fleet.ports.grpc}",
            )
            self._find_or_create(
                "instance",
                region.name,
                name,
                functools.partial(self._find_instance, region.name, name),
                functools.partial(self._launch, region.name, az.name, name, role, image, ha),
                f"{self.fleet.instance_type} in {az.name}, placement group {self._name(az.name)}",
            )
        return Pair(region.name, az.name, interfaces, floating, allocation, public_ip)

    def _interface(
        self, region: str, name: str, subnet: str, group: str, addresses: list[str]
    ) -> str:
        """A network interface with fixed addresses, the first one primary."""
        ec2 = self._ec2(region)
        return self._find_or_create(
            "network-interface",
            region,
            name,
            lambda: _first(
                ec2.describe_network_interfaces(Filters=self._filters(name))["NetworkInterfaces"],
                "NetworkInterfaceId",
            ),
            lambda: ec2.create_network_interface(
                SubnetId=subnet,
                Groups=[group],
                PrivateIpAddresses=[
                    {"PrivateIpAddress": address, "Primary": index == 0}
                    for index, address in enumerate(addresses)
                ],
                Description=f"overlay {name}",
                TagSpecifications=self._tags("network-interface", name),
            )["NetworkInterface"]["NetworkInterfaceId"],
            ", ".join(addresses),
        )

    def _find_instance(self, region: str, name: str) -> str | None:
        return _first(self._instances(region, name), "InstanceId")

    def _allocate_address(
        self,
        ec2: Any,  # noqa: ANN401
        name: str,
        interface: str,
        floating: str,
    ) -> str:
        allocation: str = ec2.allocate_address(
            Domain="vpc", TagSpecifications=self._tags("elastic-ip", name)
        )["AllocationId"]
        self._associate(ec2, allocation, interface, floating)
        return allocation

    @staticmethod
    def _associate(ec2: Any, allocation: str, interface: str, floating: str) -> None:  # noqa: ANN401
        ec2.associate_address(
            AllocationId=allocation,
            NetworkInterfaceId=interface,
            PrivateIpAddress=floating,
            AllowReassociation=False,
        )

    def _launch(
        self, region: str, az: str, name: str, role: str, image: str, ha: HaAgentSettings
    ) -> str:
        instance: str = self._ec2(region).run_instances(
            ImageId=image,
            InstanceType=self.fleet.instance_type,
            MinCount=1,
            MaxCount=1,
            NetworkInterfaces=[{"DeviceIndex": 0, "NetworkInterfaceId": ha.own_eni_id}],
            UserData=MEMBER_USER_DATA.format(ha_toml=ha.toml(self.fleet.ha)),
            Placement={"AvailabilityZone": az, "GroupName": self._name(az)},
            MetadataOptions={"HttpTokens": "required"},
            TagSpecifications=self._tags("instance", name, role=role),
        )["Instances"][0]["InstanceId"]
        return instance

    def _alarms(self, region: str) -> None:
        """The region's SNS topic and one alarm per link metric."""
        name = self._name(f"{region}-alarms")
        sns = self._aws.client("sns", region)
        topics = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
        topic = next((arn for arn in topics if arn.endswith(f":{name}")), None)
        if topic is None:
            self._change("create", "sns-topic", region, name)
            if self._execute:
                topic = sns.create_topic(
                    Name=name, Tags=[{"Key": "overlay:fleet", "Value": self.fleet.name}]
                )["TopicArn"]
        cloudwatch = self._aws.client("cloudwatch", region)
        prefix = self._name(f"{region}-")
        existing = {
            alarm["AlarmName"]
            for alarm in cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
        }
        for metric, threshold_field in ALARM_METRICS.items():
            alarm = f"{prefix}{metric}"
            if alarm in existing:
                continue
            threshold = float(getattr(self.fleet.alarms, threshold_field))
            self._change("create", "alarm", region, alarm, f"{metric} > {threshold:g}")
            if self._execute:
                cloudwatch.put_metric_alarm(
                    AlarmName=alarm,
                    AlarmDescription=f"overlay {self.fleet.name}: {metric} on a link from {region}",
                    Namespace=ALARM_NAMESPACE,
                    MetricName=metric,
                    Dimensions=[
                        {"Name": "Fleet", "Value": self.fleet.name},
                        {"Name": "Region", "Value": region},
                    ],
                    Statistic="Maximum",
                    Period=60,
                    EvaluationPeriods=3,
                    DatapointsToAlarm=2,
                    Threshold=threshold,
                    ComparisonOperator="GreaterThanThreshold",
                    TreatMissingData="breaching",
                    AlarmActions=[topic],
                    OKActions=[topic],
                    Tags=[{"Key": "overlay:fleet", "Value": self.fleet.name}],
                )

    def _dns(self, endpoints: Sequence[tuple[RegionSpec, list[Pair]]]) -> None:
        """The hosted zone, a health check per floating address, and the SIP record sets."""
        route53 = self._route53()
        zone = self._find_or_create(
            "hosted-zone",
            "global",
            self.fleet.dns_zone,
            self._find_zone,
            lambda: self._create_zone(route53),
        )
        existing_checks = self._fleet_health_checks()  # listed once: one call per page of ids
        regions = []
        for region, pairs in endpoints:
            checks = []
            for pair in pairs:
                name = self._name(pair.az)
                check = self._find_or_create(
                    "health-check",
                    "global",
                    name,
                    functools.partial(existing_checks.get, name),
                    functools.partial(self._create_pair_check, name, pair.public_ip),
                    f"TCP {pair.public_ip}:{self.fleet.ports.sip}",
                )
                checks.append(check)
            region_check = checks[0]
            if len(checks) > 1:
                name = self._name(region.name)
                region_check = self._find_or_create(
                    "health-check",
                    "global",
                    name,
                    functools.partial(existing_checks.get, name),
                    functools.partial(
                        self._create_health_check,
                        name,
                        {"Type": "CALCULATED", "ChildHealthChecks": checks, "HealthThreshold": 1},
                    ),
                    "healthy while one pair of the region is",
                )
            regions.append(
                RegionEndpoint(
                    region=region.name,
                    addresses=tuple(pair.public_ip for pair in pairs),
                    srv_priority=region.srv_priority,
                    srv_weight=region.srv_weight,
                    health_check_id=region_check,
                )
            )
        if zone == PENDING or any(
            PENDING in r.addresses or r.health_check_id == PENDING for r in regions
        ):
            self._change("create", "record-sets", "global", self.fleet.dns_zone, "SIP SRV/NAPTR/A")
            return
        ports = self.fleet.ports
        desired = sip_record_sets(
            self.fleet.dns_zone, regions, sip_port=ports.sip, sip_tls_port=ports.sip_tls
        )
        current = self._record_sets(zone)
        changes = [
            {"Action": "UPSERT", "ResourceRecordSet": rrset}
            for rrset in desired
            if _normal(current.get(_record_key(rrset))) != _normal(rrset)
        ]
        if not changes:
            return
        self._change("update", "record-sets", "global", self.fleet.dns_zone, f"{len(changes)} sets")
        if self._execute:
            batch = {"Comment": f"overlay {self.fleet.name}", "Changes": changes}
            validate_change_batch(batch, list(current.values()), zone=self.fleet.dns_zone)
            route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)

    def _find_zone(self) -> str | None:
        route53 = self._route53()
        wanted = self.fleet.dns_zone.rstrip(".").lower() + "."
        zones = route53.list_hosted_zones_by_name(DNSName=wanted)["HostedZones"]
        for zone in zones:
            if zone["Name"].lower() != wanted:
                continue
            zone_id: str = zone["Id"].split("/")[-1]
            tags = route53.list_tags_for_resource(ResourceType="hostedzone", ResourceId=zone_id)
            if {"Key": "overlay:fleet", "Value": self.fleet.name} in tags["ResourceTagSet"]["Tags"]:
                return zone_id
        return None

    def _create_zone(self, route53: Any) -> str:  # noqa: ANN401
        zone_id: str = route53.create_hosted_zone(
            Name=self.fleet.dns_zone,
            CallerReference=f"overlay-{self.fleet.name}-{self.fleet.dns_zone}",
            HostedZoneConfig={"Comment": f"overlay fleet {self.fleet.name}"},
        )["HostedZone"]["Id"].split("/")[-1]
        route53.change_tags_for_resource(
            ResourceType="hostedzone",
            ResourceId=zone_id,
            AddTags=self._tag_list(self.fleet.dns_zone),
        )
        return zone_id

    def _fleet_health_checks(self) -> dict[str, str]:
        """Our health checks: logical name -> id."""
        route53 = self._route53()
        ids = [check["Id"] for check in route53.list_health_checks()["HealthChecks"]]
        found = {}
        for start in range(0, len(ids), 10):
            tag_sets = route53.list_tags_for_resources(
                ResourceType="healthcheck", ResourceIds=ids[start : start + 10]
            )["ResourceTagSets"]
            for tag_set in tag_sets:
                tags = {tag["Key"]: tag["Value"] for tag in tag_set["Tags"]}
                if tags.get("overlay:fleet") == self.fleet.name:
                    found[tags.get("overlay:name", "")] = tag_set["ResourceId"]
        return found

    def _create_pair_check(self, name: str, address: str) -> str:
        config = health_check_config(
            address, self.fleet.ports.sip, allow_special_use=self._allow_special_use
        )
        return self._create_health_check(name, config)

    def _create_health_check(self, name: str, config: dict[str, Any]) -> str:
        route53 = self._route53()
        check: str = route53.create_health_check(
            CallerReference=f"overlay-{name}", HealthCheckConfig=config
        )["HealthCheck"]["Id"]
        route53.change_tags_for_resource(
            ResourceType="healthcheck", ResourceId=check, AddTags=self._tag_list(name)
        )
        return check

    def _record_sets(self, zone: str) -> dict[tuple[str, str, str], dict[str, Any]]:
        """The zone's record sets by (name, type, set identifier), SOA and NS left out."""
        paginator = self._route53().get_paginator("list_resource_record_sets")
        found = {}
        for page in paginator.paginate(HostedZoneId=zone):
            for rrset in page["ResourceRecordSets"]:
                if rrset["Type"] not in ("SOA", "NS"):
                    found[_record_key(rrset)] = rrset
        return found

    # -- destroy ------------------------------------------------------------------------------

    def _destroy_global(self) -> None:
        route53 = self._route53()
        zone = self._find_zone()
        if zone is not None:
            current = list(self._record_sets(zone).values())
            if current:
                self._change(
                    "delete", "record-sets", "global", self.fleet.dns_zone, f"{len(current)} sets"
                )
                route53.change_resource_record_sets(
                    HostedZoneId=zone,
                    ChangeBatch={
                        "Changes": [{"Action": "DELETE", "ResourceRecordSet": r} for r in current]
                    },
                )
            self._change("delete", "hosted-zone", "global", self.fleet.dns_zone)
            route53.delete_hosted_zone(Id=zone)
        checks = self._fleet_health_checks()
        # A region's calculated check first: its children cannot go while it refers to them.
        regional = {self._name(region.name) for region in self.fleet.regions}
        for name, check in sorted(checks.items(), key=lambda item: item[0] not in regional):
            self._change("delete", "health-check", "global", name)
            route53.delete_health_check(HealthCheckId=check)

    def _destroy_region(self, region: str) -> None:
        ec2 = self._ec2(region)
        filters = self._filters()
        cloudwatch = self._aws.client("cloudwatch", region)
        alarms = [
            a["AlarmName"]
            for a in cloudwatch.describe_alarms(AlarmNamePrefix=self._name(f"{region}-"))[
                "MetricAlarms"
            ]
        ]
        if alarms:
            for alarm in alarms:
                self._change("delete", "alarm", region, alarm)
            cloudwatch.delete_alarms(AlarmNames=alarms)
        sns = self._aws.client("sns", region)
        topic_name = self._name(f"{region}-alarms")
        for topic in sns.list_topics()["Topics"]:
            if topic["TopicArn"].endswith(f":{topic_name}"):
                self._change("delete", "sns-topic", region, topic_name)
                sns.delete_topic(TopicArn=topic["TopicArn"])
        for address in ec2.describe_addresses(Filters=filters)["Addresses"]:
            name = _tag_map(address).get("overlay:name", "")
            if address.get("AssociationId"):
                ec2.disassociate_address(AssociationId=address["AssociationId"])
            self._change("delete", "elastic-ip", region, name, address.get("PublicIp", ""))
            ec2.release_address(AllocationId=address["AllocationId"])
        instances = self._instances(region)
        if instances:
            ids = [instance["InstanceId"] for instance in instances]
            for instance in instances:
                self._change(
                    "delete", "instance", region, _tag_map(instance).get("overlay:name", "")
                )
            ec2.terminate_instances(InstanceIds=ids)
            ec2.get_waiter("instance_terminated").wait(InstanceIds=ids)
        for interface in ec2.describe_network_interfaces(Filters=filters)["NetworkInterfaces"]:
            # The instances were terminated above, which detaches their primary interfaces.
            self._change(
                "delete", "network-interface", region, _tag_map(interface).get("overlay:name", "")
            )
            ec2.delete_network_interface(NetworkInterfaceId=interface["NetworkInterfaceId"])
        for group in self._placement.names(region, self.fleet.name):
            self._change("delete", "placement-group", region, group)
            self._placement.delete(region, group)
        for image in ec2.describe_images(Owners=["self"], Filters=filters)["Images"]:
            self._change("delete", "image", region, image.get("Name", image["ImageId"]))
            ec2.deregister_image(ImageId=image["ImageId"])
            for mapping in image.get("BlockDeviceMappings", []):
                snapshot = mapping.get("Ebs", {}).get("SnapshotId")
                if snapshot:
                    ec2.delete_snapshot(SnapshotId=snapshot)
        for group in ec2.describe_security_groups(Filters=filters)["SecurityGroups"]:
            self._change("delete", "security-group", region, group["GroupName"])
            ec2.delete_security_group(GroupId=group["GroupId"])
        for subnet in ec2.describe_subnets(Filters=filters)["Subnets"]:
            self._change("delete", "subnet", region, _tag_map(subnet).get("overlay:name", ""))
            ec2.delete_subnet(SubnetId=subnet["SubnetId"])
        for gateway in ec2.describe_internet_gateways(Filters=filters)["InternetGateways"]:
            for attachment in gateway.get("Attachments", []):
                ec2.detach_internet_gateway(
                    InternetGatewayId=gateway["InternetGatewayId"], VpcId=attachment["VpcId"]
                )
            self._change(
                "delete", "internet-gateway", region, _tag_map(gateway).get("overlay:name", "")
            )
            ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
        for vpc in ec2.describe_vpcs(Filters=filters)["Vpcs"]:
            self._change("delete", "vpc", region, _tag_map(vpc).get("overlay:name", ""))
            ec2.delete_vpc(VpcId=vpc["VpcId"])

    # -- helpers ------------------------------------------------------------------------------

    def _find_or_create(
        self,
        kind: str,
        region: str,
        name: str,
        find: Callable[[], str | None],
        create: Callable[[], str],
        detail: str = "",
    ) -> str:
        found = find()
        if found is not None:
            return found
        self._change("create", kind, region, name, detail)
        return create() if self._execute else PENDING

    def _change(self, action: str, kind: str, region: str, name: str, detail: str = "") -> None:
        change = Change(action, kind, region, name, detail)
        self._changes.append(change)
        self._report(change)

    def _instances(self, region: str, name: str | None = None) -> list[dict[str, Any]]:
        filters = [
            *self._filters(name),
            {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
        ]
        reservations = self._ec2(region).describe_instances(Filters=filters)["Reservations"]
        return [
            instance
            for reservation in reservations
            for instance in reservation["Instances"]
            if _tag_map(instance).get("overlay:role") in ROLES
        ]

    def _name(self, suffix: str) -> str:
        return f"{self.fleet.name}-{suffix}"

    def _filters(self, name: str | None = None) -> list[dict[str, Any]]:
        filters = [{"Name": "tag:overlay:fleet", "Values": [self.fleet.name]}]
        if name is not None:
            filters.append({"Name": "tag:overlay:name", "Values": [name]})
        return filters

    def _tag_list(self, name: str, **extra: str) -> list[dict[str, str]]:
        tags = {"overlay:fleet": self.fleet.name, "overlay:name": name, "Name": name}
        tags.update({f"overlay:{key}": value for key, value in extra.items()})
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    def _tags(self, resource_type: str, name: str, **extra: str) -> list[dict[str, Any]]:
        return [{"ResourceType": resource_type, "Tags": self._tag_list(name, **extra)}]

    def _ec2(self, region: str) -> Any:  # noqa: ANN401
        return self._aws.client("ec2", region)

    def _route53(self) -> Any:  # noqa: ANN401
        return self._aws.client("route53", "us-east-1")


class DeployError(RuntimeError):
    """The fleet cannot be deployed as described (the message says what to change)."""


def _wait_stopped(ec2: Any, instance: str) -> None:  # noqa: ANN401
    ec2.get_waiter("instance_stopped").wait(
        InstanceIds=[instance], WaiterConfig={"Delay": 15, "MaxAttempts": 120}
    )


def _first(items: Sequence[dict[str, Any]], key: str) -> str | None:
    return str(items[0][key]) if items else None


def _tag_map(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def _record_key(rrset: dict[str, Any]) -> tuple[str, str, str]:
    return (
        rrset["Name"].rstrip(".").lower(),
        rrset["Type"],
        rrset.get("SetIdentifier", ""),
    )


def _normal(rrset: dict[str, Any] | None) -> object:
    """A record set in a form that compares equal to what Route 53 gives back for it."""
    if rrset is None:
        return None
    values = sorted(record["Value"] for record in rrset.get("ResourceRecords", []))
    return (
        _record_key(rrset),
        int(rrset.get("TTL", 0)),
        values,
        rrset.get("Region"),
        rrset.get("HealthCheckId"),
        rrset.get("Weight"),
    )
