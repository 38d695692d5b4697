"""Spread placement groups, behind an interface of their own.

A pair's two instances go into one spread placement group per AZ: EC2 puts them on distinct
racks (own network and power), so the rack that takes the active down cannot take its standby
too. A cluster group would put them close together for latency, which a pair does not need:
its members never carry traffic to each other, only health checks.

``Ec2PlacementGroups`` is the real thing. moto 5.2.5 implements no placement-group call at all
(every one answers HTTP 500), so the tests run the deployer with ``MemoryPlacementGroups`` and
check the EC2 requests of ``Ec2PlacementGroups`` separately, with botocore's Stubber.
"""

from __future__ import annotations

from typing import Protocol

from overlay.aws import ClientFactory

STRATEGY = "spread"


class PlacementGroups(Protocol):
    def names(self, region: str, fleet: str) -> list[str]:
        """The fleet's placement groups in ``region``."""
        ...

    def create(self, region: str, fleet: str, name: str) -> None: ...

    def delete(self, region: str, name: str) -> None: ...


class Ec2PlacementGroups:
    """Placement groups through the EC2 API, tagged with the fleet."""

    def __init__(self, aws: ClientFactory) -> None:
        self._aws = aws

    def names(self, region: str, fleet: str) -> list[str]:
        groups = self._aws.client("ec2", region).describe_placement_groups(
            Filters=[{"Name": "tag:overlay:fleet", "Values": [fleet]}]
        )["PlacementGroups"]
        return sorted(group["GroupName"] for group in groups if group.get("State") != "deleted")

    def create(self, region: str, fleet: str, name: str) -> None:
        self._aws.client("ec2", region).create_placement_group(
            GroupName=name,
            Strategy=STRATEGY,
            TagSpecifications=[
                {
                    "ResourceType": "placement-group",
                    "Tags": [
                        {"Key": "overlay:fleet", "Value": fleet},
                        {"Key": "overlay:name", "Value": name},
                        {"Key": "Name", "Value": name},
                    ],
                }
            ],
        )

    def delete(self, region: str, name: str) -> None:
        self._aws.client("ec2", region).delete_placement_group(GroupName=name)


class MemoryPlacementGroups:
    """The smallest honest stand-in where the EC2 API has no placement groups (moto)."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, str]] = {}  # region -> name -> fleet

    def names(self, region: str, fleet: str) -> list[str]:
        return sorted(n for n, f in self.groups.get(region, {}).items() if f == fleet)

    def create(self, region: str, fleet: str, name: str) -> None:
        self.groups.setdefault(region, {})[name] = fleet

    def delete(self, region: str, name: str) -> None:
        self.groups.get(region, {}).pop(name, None)
