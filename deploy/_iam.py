"""The routers' instance role and profile (IAM is global): what a pair member's own code calls.

Least privilege, with the fleet's tag as the fence where EC2 allows one:

* the HA agent finds its pair (``DescribeNetworkInterfaces``, ``DescribeAddresses``: EC2's
  describe calls take no resource condition) and moves the floating address, only between
  interfaces and Elastic IPs tagged with the fleet (``Assign``/``UnassignPrivateIpAddresses``,
  ``AssociateAddress``);
* the node's CloudWatch exporter publishes, only in the overlay's namespace
  (``PutMetricData``, ``cloudwatch:namespace``);
* ``overlay-secrets.service`` reads the TLS parameters (``GetParameter(s)``), only under the
  fleet's path in the fleet's regions, and decrypts them (``kms:Decrypt``), only through SSM
  (``kms:ViaService``) and only for those parameters (the encryption context SSM gives KMS:
  needed with a customer managed key, redundant with ``aws/ssm``, whose key policy lets SSM
  decrypt for anyone in the account allowed the parameter). One role serves the whole fleet, so
  every member can read every member's parameters, not only its own;
* the SSM agent takes Run Command's commands (``rotate-certs`` restarts members with them):
  its own channel calls, which name no resource. Not the managed policy
  AmazonSSMManagedInstanceCore, which also grants ``GetParameter(s)`` on every parameter of the
  account.

The role and the profile are named ``<fleet>-router`` and found by name; IAM tags them too. A
role found with another policy (made by an earlier version) is given this one.
"""

from __future__ import annotations

import json
from typing import Any

from deploy._alarms import ALARM_NAMESPACE
from deploy._walk import Walk
from deploy.fleet import Fleet
from overlay.secrets import fleet_path

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


def policy(fleet: Fleet) -> dict[str, Any]:
    """The role's one inline policy (module notes)."""
    tagged = {"StringEquals": {"aws:ResourceTag/overlay:fleet": fleet.name}}
    regions = [region.name for region in fleet.regions]
    parameters = [
        f"arn:aws:ssm:{region}:*:parameter{fleet_path(fleet.name)}/*" for region in regions
    ]
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
            {
                "Sid": "ReadTheFleetsTlsParameters",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                "Resource": parameters,
            },
            {
                "Sid": "DecryptThemThroughSsm",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        "kms:ViaService": [f"ssm.{region}.amazonaws.com" for region in regions]
                    },
                    "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": parameters},
                },
            },
            {
                "Sid": "TakeRunCommands",
                "Effect": "Allow",
                "Action": [
                    "ssm:UpdateInstanceInformation",
                    "ec2messages:AcknowledgeMessage",
                    "ec2messages:DeleteMessage",
                    "ec2messages:FailMessage",
                    "ec2messages:GetEndpoint",
                    "ec2messages:GetMessages",
                    "ec2messages:SendReply",
                    "ssmmessages:CreateControlChannel",
                    "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel",
                    "ssmmessages:OpenDataChannel",
                ],
                "Resource": "*",
            },
        ],
    }


def converge(walk: Walk) -> str:
    """The instance profile's name, made with its role when missing."""
    iam = walk.client("iam", "us-east-1")
    name = role_name(walk)
    found = _role(iam, name)
    walk.find_or_create(
        "iam-role",
        GLOBAL,
        name,
        lambda: found,
        lambda: _create_role(walk, iam, name),
        "assumed by the routers: find and move their pair's address, publish link metrics,"
        " read their TLS parameters, take Run Command's restarts",
    )
    if found is not None and _policy(iam, name) != policy(walk.fleet):
        walk.act("update", "iam-role", GLOBAL, name, lambda: _put_policy(walk, iam, name), "policy")
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
    _put_policy(walk, iam, name)
    return arn


def _policy(iam: Any, name: str) -> dict[str, Any] | None:  # noqa: ANN401
    try:
        document: dict[str, Any] = iam.get_role_policy(RoleName=name, PolicyName=name)[
            "PolicyDocument"
        ]
    except iam.exceptions.NoSuchEntityException:
        return None
    return document


def _put_policy(walk: Walk, iam: Any, name: str) -> None:  # noqa: ANN401
    iam.put_role_policy(
        RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy(walk.fleet))
    )


def _create_profile(walk: Walk, iam: Any, name: str) -> str:  # noqa: ANN401
    arn = str(
        iam.create_instance_profile(InstanceProfileName=name, Tags=[walk.fleet_tag()])[
            "InstanceProfile"
        ]["Arn"]
    )
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return arn
