"""The walk every resource family of the deployer goes through: find by tags, or create.

A resource is found again by its two tags, ``overlay:fleet`` and ``overlay:name``. On a plan
(``execute=False``) a missing resource is only reported and gets the id ``PENDING``; on an
apply it is created. Destroy and status walk the same tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.fleet import Fleet
from deploy.placement import PlacementGroups
from overlay.aws import ClientFactory

PENDING = "(new)"  # the id of a resource a plan would create

#: How EC2 lists each kind that is found by its tags alone: the call, its list, the id field.
EC2_LISTINGS = {
    "vpc": ("describe_vpcs", "Vpcs", "VpcId"),
    "internet-gateway": ("describe_internet_gateways", "InternetGateways", "InternetGatewayId"),
    "subnet": ("describe_subnets", "Subnets", "SubnetId"),
    "security-group": ("describe_security_groups", "SecurityGroups", "GroupId"),
    "network-interface": (
        "describe_network_interfaces",
        "NetworkInterfaces",
        "NetworkInterfaceId",
    ),
    "elastic-ip": ("describe_addresses", "Addresses", "AllocationId"),
}


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


class DeployError(RuntimeError):
    """The fleet cannot be deployed as described (the message says what to change)."""


class Walk:
    """One pass of plan, apply, destroy or status over the account, recording its changes."""

    def __init__(
        self,
        fleet: Fleet,
        aws: ClientFactory,
        placement: PlacementGroups,
        *,
        execute: bool,
        report: Callable[[Change], None],
    ) -> None:
        self.fleet = fleet
        self.placement = placement
        self.execute = execute
        self.changes: list[Change] = []
        self._aws = aws
        self._report = report

    def find_or_create(
        self,
        kind: str,
        region: str,
        name: str,
        find: Callable[[], str | None],
        create: Callable[[], str],
        detail: str = "",
    ) -> str:
        """The id ``find`` returns or, when it finds nothing, the new resource's."""
        found = find()
        if found is not None:
            return found
        self.change("create", kind, region, name, detail)
        return create() if self.execute else PENDING

    def find_or_create_tagged(
        self, kind: str, region: str, name: str, create: Callable[[], str], detail: str = ""
    ) -> str:
        """``find_or_create`` for a kind of ``EC2_LISTINGS``, found by its name tag."""
        id_field = EC2_LISTINGS[kind][2]
        return self.find_or_create(
            kind,
            region,
            name,
            lambda: first_id(self.tagged(region, kind, name), id_field),
            create,
            detail,
        )

    def act(
        self,
        action: str,
        kind: str,
        region: str,
        name: str,
        run: Callable[[], object],
        detail: str = "",
    ) -> None:
        """Report a change; make it only when executing, so that a plan shows it alone."""
        self.change(action, kind, region, name, detail)
        if self.execute:
            run()

    def change(self, action: str, kind: str, region: str, name: str, detail: str = "") -> None:
        change = Change(action, kind, region, name, detail)
        self.changes.append(change)
        self._report(change)

    def differs(self, kind: str, region: str, name: str, detail: str) -> None:
        """Found unlike fleet.toml: apply creates only what is missing, so it stays."""
        self.change(
            "differs",
            kind,
            region,
            name,
            f"{detail}: apply leaves it; destroy and apply to replace",
        )

    def tagged(self, region: str, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        """The fleet's resources of a kind of ``EC2_LISTINGS`` (only ``name`` when given)."""
        call, listing, _ = EC2_LISTINGS[kind]
        answer = getattr(self.ec2(region), call)(Filters=self.filters(name))
        found: list[dict[str, Any]] = answer[listing]
        return found

    def name(self, suffix: str) -> str:
        return f"{self.fleet.name}-{suffix}"

    def filters(self, name: str | None = None) -> list[dict[str, Any]]:
        filters = [{"Name": "tag:overlay:fleet", "Values": [self.fleet.name]}]
        if name is not None:
            filters.append({"Name": "tag:overlay:name", "Values": [name]})
        return filters

    def fleet_tag(self) -> dict[str, str]:
        """The fleet's tag alone, on what is found by its own name (topics, alarms, the zone)."""
        return {"Key": "overlay:fleet", "Value": self.fleet.name}

    def tag_list(self, name: str, **extra: str) -> list[dict[str, str]]:
        tags = {"overlay:fleet": self.fleet.name, "overlay:name": name, "Name": name}
        tags.update({f"overlay:{key}": value for key, value in extra.items()})
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    def tags(self, resource_type: str, name: str, **extra: str) -> list[dict[str, Any]]:
        return [{"ResourceType": resource_type, "Tags": self.tag_list(name, **extra)}]

    def client(self, service: str, region: str) -> Any:  # noqa: ANN401
        return self._aws.client(service, region)

    def ec2(self, region: str) -> Any:  # noqa: ANN401
        return self._aws.client("ec2", region)

    def route53(self) -> Any:  # noqa: ANN401
        return self._aws.client("route53", "us-east-1")


def first_id(items: Sequence[dict[str, Any]], id_field: str) -> str | None:
    return str(items[0][id_field]) if items else None


def tag_map(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def logical_name(resource: dict[str, Any], default: str = "") -> str:
    """The ``overlay:name`` tag the walk finds a resource by."""
    return tag_map(resource).get("overlay:name", default)
