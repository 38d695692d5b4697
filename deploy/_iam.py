"""The routers' instance role and profile (IAM is global): what a pair member's own code calls.

Least privilege, with the fleet's tag as the fence where EC2 allows one:

* the HA agent finds its pair (``DescribeNetworkInterfaces``, ``DescribeAddresses``: EC2's
  describe calls take no resource condition) and moves the floating address, only between
  interfaces and Elastic IPs tagged with the fleet (``Assign``/``UnassignPrivateIpAddresses``,
  ``AssociateAddress``);
* the node's CloudWatch exporter publishes, only in the overlay's namespace
  (``PutMetricData``, ``cloudwatch:namespace``).

The role and the profile are named ``<fleet>-router`` and found by name; IAM tags them too.
"""

from __future__ import annotations

import json
from typing import Any

from deploy._alarms import ALARM_NAMESPACE
from deploy._walk import Walk

GLOBAL = "global"

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def role_name(walk: Walk) -> str:
    return walk.name("router")


def policy(fleet: str) -> dict[str, Any]:
    """The role's one inline policy (module notes)."""
    tagged = {"StringEquals": {"aws:ResourceTag/overlay:fleet": fleet}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FindThePair",
                "Effect": "Allow",
                "Action": ["ec2:DescribeNetworkInterfaces", "ec2:DescribeAddresses"],
                "Resource": "*",
            },
            {
                "Sid": "MoveTheFloatingAddress",
                "Effect": "Allow",
                "Action": [
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:UnassignPrivateIpAddresses",
                    "ec2:AssociateAddress",
                ],
                "Resource": [
                    "arn:aws:ec2:*:*:network-interface/*",
                    "arn:aws:ec2:*:*:elastic-ip/*",
                ],
                "Condition": tagged,
            },
            {
                "Sid": "PublishLinkMetrics",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": ALARM_NAMESPACE}},
            },
        ],
    }


def converge(walk: Walk) -> str:
    """The instance profile's name, made with its role when missing."""
    iam = walk.client("iam", "us-east-1")
    name = role_name(walk)
    walk.find_or_create(
        "iam-role",
        GLOBAL,
        name,
        lambda: _role(iam, name),
        lambda: _create_role(walk, iam, name),
        "assumed by the routers: find and move their pair's address, publish link metrics",
    )
    walk.find_or_create(
        "instance-profile",
        GLOBAL,
        name,
        lambda: _profile(iam, name),
        lambda: _create_profile(walk, iam, name),
        f"with role {name}",
    )
    return name


def destroy(walk: Walk) -> None:
    iam = walk.client("iam", "us-east-1")
    name = role_name(walk)
    if _profile(iam, name) is not None:
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=name, RoleName=role["RoleName"]
            )
        walk.change("delete", "instance-profile", GLOBAL, name)
        iam.delete_instance_profile(InstanceProfileName=name)
    if _role(iam, name) is not None:
        for inline in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=inline)
        walk.change("delete", "iam-role", GLOBAL, name)
        iam.delete_role(RoleName=name)


def _role(iam: Any, name: str) -> str | None:  # noqa: ANN401
    try:
        return str(iam.get_role(RoleName=name)["Role"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        return None


def _profile(iam: Any, name: str) -> str | None:  # noqa: ANN401
    try:
        return str(iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        return None


def _create_role(walk: Walk, iam: Any, name: str) -> str:  # noqa: ANN401
    arn = str(
        iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST),
            Description=f"overlay {walk.fleet.name}: the routers' own calls",
            Tags=[walk.fleet_tag()],
        )["Role"]["Arn"]
    )
    iam.put_role_policy(
        RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy(walk.fleet.name))
    )
    return arn


def _create_profile(walk: Walk, iam: Any, name: str) -> str:  # noqa: ANN401
    arn = str(
        iam.create_instance_profile(InstanceProfileName=name, Tags=[walk.fleet_tag()])[
            "InstanceProfile"
        ]["Arn"]
    )
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return arn
