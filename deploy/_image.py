"""The overlay AMI: baked once in the builder region, from a builder instance whose user data
installs the appliance, and copied to every other region."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from deploy._network import Network
from deploy._walk import DeployError, Walk, first_id

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

#: ``wait_for_builder(ec2, instance_id)`` returns once the builder has stopped itself.
WaitForBuilder = Callable[[Any, str], None]


def converge(
    walk: Walk,
    networks: Mapping[str, Network],
    *,
    version: str,
    wait_for_builder: WaitForBuilder,
) -> dict[str, str]:
    """The AMI's id in every region (``PENDING`` where a plan would make it)."""
    fleet = walk.fleet
    name = f"{fleet.ami_name}-{version}"
    builder = fleet.builder_region

    def image_in(region: str, make: Callable[[], str], detail: str) -> str:
        find = functools.partial(_find, walk, region, name)
        return walk.find_or_create("image", region, name, find, make, detail)

    source = image_in(
        builder,
        lambda: _bake(walk, name, networks[builder].subnets, version, wait_for_builder),
        f"baked from {fleet.base_image_id or 'the base image'}",
    )
    images = {builder: source}
    for region in fleet.regions:
        if region.name != builder:
            copy = functools.partial(_copy, walk, region.name, name, source)
            images[region.name] = image_in(region.name, copy, f"copy of {builder}")
    return images


def destroy(walk: Walk, region: str) -> None:
    """The region's AMI and the snapshots behind it."""
    ec2 = walk.ec2(region)
    for image in _images(walk, region):
        walk.change("delete", "image", region, image.get("Name", image["ImageId"]))
        ec2.deregister_image(ImageId=image["ImageId"])
        for mapping in image.get("BlockDeviceMappings", []):
            snapshot = mapping.get("Ebs", {}).get("SnapshotId")
            if snapshot:
                ec2.delete_snapshot(SnapshotId=snapshot)


def wait_stopped(ec2: Any, instance: str) -> None:  # noqa: ANN401
    """The default ``wait_for_builder``: EC2's waiter, for as long as an install takes."""
    ec2.get_waiter("instance_stopped").wait(
        InstanceIds=[instance], WaiterConfig={"Delay": 15, "MaxAttempts": 120}
    )


def _images(walk: Walk, region: str, name: str | None = None) -> list[dict[str, Any]]:
    """The fleet's own AMIs: ``Owners=["self"]`` keeps the public catalogue out of the list."""
    images: list[dict[str, Any]] = walk.ec2(region).describe_images(
        Owners=["self"], Filters=walk.filters(name)
    )["Images"]
    return images


def _find(walk: Walk, region: str, name: str) -> str | None:
    return first_id(_images(walk, region, name), "ImageId")


def _bake(
    walk: Walk,
    name: str,
    subnets: dict[str, str],
    version: str,
    wait_for_builder: WaitForBuilder,
) -> str:
    fleet = walk.fleet
    if fleet.base_image_id is None:
        raise DeployError("fleet.base_image_id is needed to bake the AMI")
    ec2 = walk.ec2(fleet.builder_region)
    builder = ec2.run_instances(
        ImageId=fleet.base_image_id,
        InstanceType=fleet.instance_type,
        MinCount=1,
        MaxCount=1,
        SubnetId=next(iter(subnets.values())),
        UserData=BUILDER_USER_DATA.format(version=version),
        InstanceInitiatedShutdownBehavior="stop",
        MetadataOptions={"HttpTokens": "required"},
        TagSpecifications=walk.tags("instance", f"{name}-builder", role="builder"),
    )["Instances"][0]["InstanceId"]
    try:
        wait_for_builder(ec2, builder)
        image: str = ec2.create_image(
            InstanceId=builder,
            Name=name,
            Description=f"overlay {version} for fleet {fleet.name}",
            TagSpecifications=walk.tags("image", name),
        )["ImageId"]
        ec2.get_waiter("image_available").wait(ImageIds=[image])
    finally:
        ec2.terminate_instances(InstanceIds=[builder])
    return image


def _copy(walk: Walk, region: str, name: str, source: str) -> str:
    ec2 = walk.ec2(region)
    image: str = ec2.copy_image(
        SourceRegion=walk.fleet.builder_region, SourceImageId=source, Name=name
    )["ImageId"]
    # Copies do not inherit the source's tags.
    ec2.create_tags(Resources=[image], Tags=walk.tag_list(name))
    ec2.get_waiter("image_available").wait(ImageIds=[image])
    return image
