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
NOC), a spread placement group per AZ (``deploy._network``), the overlay AMI
(``deploy._image``), and per AZ an active/standby pair: two network interfaces with fixed
addresses (the active's carries the pair's floating secondary address), two instances pinned
to the AZ and its placement group, and an Elastic IP on the floating address
(``deploy._pairs``). Globally: the DNS zone with SIP SRV/NAPTR and latency records
(``deploy.records``) behind Route 53 health checks (``deploy._dns``), and per region an SNS
topic with CloudWatch alarms on the link metrics the nodes publish (``deploy._alarms``). Each
member's TLS files are SecureString parameters in its region, made before the members that fetch
them at boot, and rotated by ``rotate_certs`` (``deploy._secrets``).

The AMI is baked in the builder region from the fleet's wheelhouse (``deploy._wheelhouse``),
uploaded to the fleet's artifacts bucket (``deploy._artifacts``), which the builder, with no
public address, reaches through its VPC's S3 gateway endpoint. The base image is resolved and
checked before anything is made.

Each of those modules creates, compares and deletes its own resources through the one walk of
``deploy._walk``; this module only orders them, so both orders read in one place. Placement
groups go through ``deploy.placement`` (moto has none). Every AWS call goes through
``overlay.aws.ClientFactory``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy import _alarms, _artifacts, _dns, _iam, _image, _network, _pairs, _peering, _secrets
from deploy._alarms import ALARM_METRICS, ALARM_NAMESPACE
from deploy._walk import Change, DeployError, Walk
from deploy._wheelhouse import Wheelhouse
from deploy.fleet import Fleet
from deploy.placement import PlacementGroups
from deploy.render import NODE_TLS_FILES
from overlay.aws import ClientFactory

__all__ = [
    "ALARM_METRICS",
    "ALARM_NAMESPACE",
    "NODE_TLS_FILES",
    "Change",
    "DeployError",
    "Deployer",
]


class Deployer:
    """One fleet in one account; see the module docstring."""

    def __init__(
        self,
        fleet: Fleet,
        aws: ClientFactory,
        placement: PlacementGroups,
        *,
        wheelhouse: Wheelhouse | None = None,
        report: Callable[[Change], None] = lambda change: None,
        wait_for_builder: Callable[[Any, str], None] | None = None,
        allow_special_use_addresses: bool = False,
        certs: Path | None = None,
    ) -> None:
        """``wait_for_builder(ec2, instance_id)`` returns once the AMI builder has installed
        the appliance and stopped itself (its user data ends with a power-off); by default
        ``_image.wait_for_bake``, which reads the builder's verdict from its console.
        ``wheelhouse`` is what the AMI is baked from: plan and apply need it.
        ``allow_special_use_addresses`` lets health checks name Elastic IPs Route 53 would
        refuse: only for an API stand-in (moto hands out EIPs from 127.0.0.0/8). ``certs`` is
        the directory of the members' TLS files (``deploy._secrets``), read and checked here,
        before any AWS call.

        Raises:
            DeployError: a TLS file is missing or wrong; the message names it.
        """
        self._secrets = _secrets.read(fleet, certs)
        self._certs = certs
        self._allow_special_use = allow_special_use_addresses
        self.fleet = fleet
        self._wait_for_builder = wait_for_builder or _image.wait_for_bake
        self._aws = aws
        self._placement = placement
        self._wheelhouse = wheelhouse
        self._report = report

    def plan(self) -> list[Change]:
        """What ``apply`` would do now (nothing is changed)."""
        return self._converge(self._walk(execute=False))

    def apply(self) -> list[Change]:
        """Create what is missing; returns what was done (empty when nothing was missing)."""
        return self._converge(self._walk(execute=True))

    def destroy(self) -> list[Change]:
        """Delete every resource tagged with the fleet, in reverse dependency order."""
        walk = self._walk(execute=True)
        _dns.destroy(walk)
        _peering.destroy(walk)
        for region in self.fleet.regions:
            _alarms.destroy(walk, region.name)
            _pairs.destroy(walk, region.name)
            _secrets.destroy(walk, region.name)
            _network.destroy_placement_groups(walk, region.name)
            _image.destroy(walk, region.name)
            _network.destroy(walk, region.name)
        _artifacts.destroy(walk)
        _iam.destroy(walk)
        return walk.changes

    def status(self) -> list[dict[str, str]]:
        """One row per pair member: where it runs, its state, who holds the floating address."""
        walk = self._walk(execute=False)
        return [row for region in self.fleet.regions for row in _pairs.status(walk, region.name)]

    def rotate_certs(self, *, sleep: Callable[[float], None] = time.sleep) -> list[Change]:
        """Write the TLS files that changed as new parameter versions, then restart every
        member to take them, one at a time, the standby of each pair first
        (``deploy._secrets``); returns what was done.

        Raises:
            DeployError: no directory was given, a member is not running (nothing changed), or
                a restart failed (those after it were not restarted); the message names it.
        """
        if self._certs is None:
            raise DeployError("rotating needs the directory of the TLS files")
        walk = self._walk(execute=True)
        running = [row for region in self.fleet.regions for row in _pairs.status(walk, region.name)]
        order = _secrets.restart_order(walk, running)
        _secrets.converge(walk, self._secrets, overwrite=True)
        _secrets.restart(walk, order, sleep=sleep)
        return walk.changes

    def _converge(self, walk: Walk) -> list[Change]:
        if self._wheelhouse is None:
            raise DeployError("plan and apply bake the AMI from a wheelhouse: none was given")
        # What could stop a bake, first: nothing is made for a fleet that cannot be baked.
        base = _image.base_image(walk)
        regions = self.fleet.regions
        profile = _iam.converge(walk)
        _secrets.converge(walk, self._secrets)
        networks = {region.name: _network.converge(walk, region) for region in regions}
        _peering.converge(walk, networks)
        builder = self.fleet.builder_region
        _network.s3_endpoint(walk, builder, networks[builder].vpc)
        artifacts = _artifacts.converge(walk, self._wheelhouse)
        images = _image.converge(
            walk, networks, base, artifacts, wait_for_builder=self._wait_for_builder
        )
        endpoints = []
        for region in regions:
            network = networks[region.name]
            pairs = [
                _pairs.converge(
                    walk,
                    region,
                    az,
                    network.subnets[az.name],
                    network.security_group,
                    images[region.name],
                    profile,
                )
                for az in region.azs
            ]
            endpoints.append((region, pairs))
            _alarms.converge(walk, region)
        _dns.converge(walk, endpoints, allow_special_use=self._allow_special_use)
        # Last, what exists under the fleet's tag unlike fleet.toml: reported, never touched.
        for region in regions:
            _network.differences(walk, region)
            _pairs.differences(walk, region)
        return walk.changes

    def _walk(self, *, execute: bool) -> Walk:
        return Walk(self.fleet, self._aws, self._placement, execute=execute, report=self._report)
