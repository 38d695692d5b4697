"""The overlay AMI: baked once in the builder region, from a builder instance whose user data
installs the appliance from the fleet's wheelhouse, and copied to every other region.

Theory of operation
-------------------
The base image is resolved and checked before the deployer makes anything (``base_image``):
``fleet.base_image_id``, or the Debian 12 image Debian publishes under a public SSM parameter;
it must exist in the builder region and be x86_64, as the wheelhouse is.

The builder runs in the builder region's VPC with no public address: its VPC has no NAT, and
its one way out is the S3 gateway endpoint (``deploy._network.s3_endpoint``). Its user data
downloads the wheelhouse with presigned URLs (a manifest of them, ``deploy._artifacts``) using
what Debian's cloud image has, python3's urllib; makes the appliance's virtualenv with pip run
from its own wheel (Debian's python3 has no ensurepip, and apt has no way out); installs the
units ``deploy.render`` writes, a sysctl file and the ``overlay`` system user; then prints a
verdict and powers off. ``wait_for_bake`` polls the instance and, once it has stopped, reads
its console for the verdict: a failed bake is reported within about a minute, with the end of
the console, instead of by a waiter that runs out half an hour later.
"""

from __future__ import annotations

import functools
import shlex
import string
import time
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

import botocore.exceptions

from deploy import _artifacts
from deploy._artifacts import Artifacts
from deploy._network import Network
from deploy._walk import DeployError, Walk, first_id
from deploy.render import CONFIG_DIR, HA_SERVICE, HA_UNIT, NODE_SERVICE, NODE_UNIT, OVERLAY_BIN
from overlay.aws import error_code

#: The public SSM parameter naming Debian's latest Debian 12 (bookworm) image for x86_64.
DEBIAN_12 = "/aws/service/debian/release/12/latest/amd64"
ARCHITECTURE = "x86_64"  # the wheelhouse's (deploy._wheelhouse)

#: The builder's verdict, the last thing it prints before powering off.
BAKE_OK, BAKE_FAILED = "overlay-bake: ok", "overlay-bake: FAILED"

SYSCTL_CONF = "/etc/sysctl.d/60-overlay.conf"
#: Run Command's agent for Debian, as AWS publishes it in each region's bucket.
SSM_AGENT = (
    "https://s3.{region}.amazonaws.com/amazon-ssm-{region}/latest/debian_amd64/amazon-ssm-agent.deb"
)
SYSCTL = """\
# overlay (the AMI bake). A standby's node binds its pair's floating address before it
# holds it: a non-local bind.
net.ipv4.ip_nonlocal_bind = 1
# The node's SIP and relay sockets ask for 4 MiB buffers, which the kernel caps at *_max;
# each call's RTP sockets get the defaults, room for bursts of a few hundred packets.
net.core.rmem_max = 8388608
net.core.wmem_max = 8388608
net.core.rmem_default = 1048576
net.core.wmem_default = 1048576
"""


class _Script(string.Template):
    """Bash with ``@name`` placeholders: ``$`` stays the shell's."""

    delimiter = "@"


BUILDER_USER_DATA = _Script("""#!/bin/bash
# The overlay AMI's builder: install overlay @version from the fleet's wheelhouse, then power
# off; the deployer images the stopped disk. It has no public address and its VPC no NAT: S3,
# through the VPC's gateway endpoint, is all it reaches, so nothing comes from apt or PyPI.
# The verdict it prints last is what the deployer reads from its console (deploy._image).
set -Eeuo pipefail
# "" on the builder; the tests run this script under a scratch directory.
root=${OVERLAY_BAKE_ROOT:-}
failed_at=""
trap ': "${failed_at:=line $LINENO: $BASH_COMMAND}"' ERR
finish() {
    if [ "$1" -eq 0 ]; then
        echo "@ok @version"
    else
        echo "@failed (exit $1) at ${failed_at:-an unknown line}"
    fi
    poweroff
}
trap 'finish $?' EXIT

wheelhouse=$(mktemp -d)
# Debian's python3 and its urllib: the URLs are presigned, the digests are the deployer's.
python3 - @manifest "$wheelhouse" <<'PY'
import hashlib
import json
import pathlib
import shutil
import sys
import urllib.request

manifest_url, target = sys.argv[1], pathlib.Path(sys.argv[2])
with urllib.request.urlopen(manifest_url, timeout=60) as answer:
    manifest = json.load(answer)
for wheel in manifest["files"]:
    path = target / wheel["name"]
    with urllib.request.urlopen(wheel["url"], timeout=300) as answer, path.open("wb") as out:
        shutil.copyfileobj(answer, out)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel["sha256"]:
        sys.exit("%s: SHA-256 %s, the manifest says %s" % (wheel["name"], digest, wheel["sha256"]))
print("overlay-bake: %d wheels downloaded" % len(manifest["files"]))
PY

# Debian's python3 has no ensurepip (python3-venv, from apt): pip runs from its own wheel.
python3 -m venv --without-pip "$root@venv"
"$root@venv/bin/python" "$wheelhouse/@pip_wheel/pip" install \\
    --isolated --no-index --no-cache-dir --find-links "$wheelhouse" "overlay==@version"
rm -rf "$wheelhouse"

# Run Command's agent (overlay deploy rotate-certs restarts members through it), from AWS's
# own bucket in the region, through the same gateway endpoint. Not under a scratch root.
if [ -z "$root" ]; then
    agent=$(mktemp --suffix=.deb)
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        @ssm_agent "$agent"
    dpkg -i "$agent"
    rm -f "$agent"
    systemctl enable amazon-ssm-agent
fi

# The units run as overlay: a system user with no shell and no home; useradd leaves its
# password locked.
useradd --system --user-group --no-create-home --home-dir /nonexistent \\
    --shell /usr/sbin/nologin overlay
install -d "$root@config_dir" "$root@unit_dir" "$root@sysctl_dir"
@files
# Each instance of the image makes its own (journald, DHCP client ids).
truncate -s 0 "$root/etc/machine-id"
""")

#: The files every instance of the image has (a member's user data adds its own).
IMAGE_FILES = {NODE_UNIT: NODE_SERVICE, HA_UNIT: HA_SERVICE, SYSCTL_CONF: SYSCTL}

#: ``wait_for_builder(ec2, instance_id)`` returns once the builder baked and stopped itself.
WaitForBuilder = Callable[[Any, str], None]


def write_file(path: str, content: str) -> str:
    """Bash that writes ``content`` to ``path`` as it is: a quoted here-document expands
    nothing."""
    return f"cat >{path} <<'FILE'\n{content}FILE\n"


def builder_user_data(manifest_url: str, version: str, pip_wheel: str, region: str) -> str:
    """The builder's script (module notes); ``manifest_url`` is the wheelhouse's manifest,
    ``region`` the builder's (where the SSM agent comes from)."""
    venv = PurePosixPath(OVERLAY_BIN).parents[1]
    return BUILDER_USER_DATA.substitute(
        version=version,
        ssm_agent=shlex.quote(SSM_AGENT.format(region=region)),
        manifest=shlex.quote(manifest_url),
        pip_wheel=pip_wheel,
        venv=venv,
        config_dir=CONFIG_DIR,
        unit_dir=PurePosixPath(NODE_UNIT).parent,
        sysctl_dir=PurePosixPath(SYSCTL_CONF).parent,
        files="".join(write_file(f'"$root"{path}', text) for path, text in IMAGE_FILES.items()),
        ok=BAKE_OK,
        failed=BAKE_FAILED,
    )


def base_image(walk: Walk) -> str:
    """The image the builder boots: checked first, so that a fleet that cannot be baked makes
    nothing.

    Raises:
        DeployError: the SSM parameter is missing, or the image is not found, not available,
            or not x86_64 in the builder region; the message names it.
    """
    fleet = walk.fleet
    region = fleet.builder_region
    if fleet.base_image_id is not None:
        image, source = fleet.base_image_id, "fleet.base_image_id"
    else:
        source = f"SSM parameter {DEBIAN_12}"
        try:
            parameter = walk.client("ssm", region).get_parameter(Name=DEBIAN_12)["Parameter"]
        except botocore.exceptions.ClientError as error:
            if error_code(error) != "ParameterNotFound":
                raise
            raise DeployError(
                f"no base image: {source} is not in {region}; set fleet.base_image_id"
            ) from None
        image = parameter["Value"]
    try:
        found = walk.ec2(region).describe_images(ImageIds=[image])["Images"]
    except botocore.exceptions.ClientError as error:
        if not error_code(error).startswith("InvalidAMIID"):
            raise
        found = []
    if not found:
        raise DeployError(f"base image {image} ({source}): not found in {region}")
    architecture, state = found[0].get("Architecture"), found[0].get("State")
    if architecture != ARCHITECTURE:
        raise DeployError(
            f"base image {image} ({source}) is {architecture or 'of no stated architecture'},"
            f" the wheelhouse is for {ARCHITECTURE}"
        )
    if state != "available":
        raise DeployError(f"base image {image} ({source}) is {state}, not available")
    return image


def converge(
    walk: Walk,
    networks: Mapping[str, Network],
    base: str,
    artifacts: Artifacts,
    *,
    wait_for_builder: WaitForBuilder,
) -> dict[str, str]:
    """The AMI's id in every region (``PENDING`` where a plan would make it)."""
    fleet = walk.fleet
    name = f"{fleet.ami_name}-{artifacts.wheelhouse.version}"
    builder = fleet.builder_region

    def image_in(region: str, make: Callable[[], str], detail: str) -> str:
        find = functools.partial(_find, walk, region, name)
        return walk.find_or_create("image", region, name, find, make, detail)

    bake = functools.partial(
        _bake, walk, name, base, networks[builder].subnets, artifacts, wait_for_builder
    )
    source = image_in(builder, bake, f"baked from {base}, no public address")
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


#: How often the builder is looked at, how long a bake may take, and how long EC2 may take to
#: post a stopped instance's console.
POLL_S, BAKE_TIMEOUT_S, CONSOLE_WAIT_S = 10.0, 1800.0, 120.0
#: How much of the console a failure shows.
CONSOLE_TAIL_LINES = 40


def wait_for_bake(
    ec2: Any,  # noqa: ANN401
    instance: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """The default ``wait_for_builder``: returns once the builder has stopped itself after
    printing ``BAKE_OK``.

    Raises:
        DeployError: the builder printed ``BAKE_FAILED``, stopped without a verdict, ended
            otherwise (terminated), or still runs after ``BAKE_TIMEOUT_S``; the message ends
            with the last lines of its console.
    """
    deadline = clock() + BAKE_TIMEOUT_S
    while (state := _state(ec2, instance)) != "stopped":
        if state in {"shutting-down", "terminated"}:
            raise DeployError(
                f"AMI builder {instance} is {state}; {_ending(_console(ec2, instance))}"
            )
        if clock() >= deadline:
            raise DeployError(
                f"AMI builder {instance} is still {state} after {BAKE_TIMEOUT_S / 60:.0f}"
                f" minutes; {_ending(_console(ec2, instance))}"
            )
        sleep(POLL_S)
    # EC2 posts a stopped instance's console output shortly after the stop.
    deadline = clock() + CONSOLE_WAIT_S
    while True:
        console = _console(ec2, instance)
        if BAKE_OK in console:
            return
        if BAKE_FAILED in console or clock() >= deadline:
            raise DeployError(f"AMI bake failed on {instance}; {_ending(console)}")
        sleep(POLL_S)


def _state(ec2: Any, instance: str) -> str:  # noqa: ANN401
    reservations = ec2.describe_instances(InstanceIds=[instance])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _console(ec2: Any, instance: str) -> str:  # noqa: ANN401
    """The console's text: botocore decodes EC2's base64; there is none before EC2 posts it."""
    return str(ec2.get_console_output(InstanceId=instance).get("Output", ""))


def _ending(console: str) -> str:
    """The end of the builder's console, for a DeployError."""
    tail = "\n".join(console.splitlines()[-CONSOLE_TAIL_LINES:])
    return f"its console ends:\n{tail}" if tail else "its console is empty"


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
    base: str,
    subnets: dict[str, str],
    artifacts: Artifacts,
    wait_for_builder: WaitForBuilder,
) -> str:
    fleet = walk.fleet
    wheelhouse = artifacts.wheelhouse
    manifest = _artifacts.presign_manifest(walk, artifacts, name)
    ec2 = walk.ec2(fleet.builder_region)
    builder = ec2.run_instances(
        ImageId=base,
        InstanceType=fleet.instance_type,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[
            {
                "DeviceIndex": 0,
                "SubnetId": next(iter(subnets.values())),
                "AssociatePublicIpAddress": False,
            }
        ],
        UserData=builder_user_data(
            manifest, wheelhouse.version, wheelhouse.pip_wheel, fleet.builder_region
        ),
        InstanceInitiatedShutdownBehavior="stop",
        MetadataOptions={"HttpTokens": "required"},
        TagSpecifications=walk.tags("instance", f"{name}-builder", role="builder"),
    )["Instances"][0]["InstanceId"]
    try:
        wait_for_builder(ec2, builder)
        image: str = ec2.create_image(
            InstanceId=builder,
            Name=name,
            Description=f"overlay {wheelhouse.version} for fleet {fleet.name}",
            TagSpecifications=walk.tags("image", name),
        )["ImageId"]
        ec2.get_waiter("image_available").wait(ImageIds=[image])
        _tag_snapshots(walk, ec2, image, name)
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
    _tag_snapshots(walk, ec2, image, name)
    return image


def _tag_snapshots(walk: Walk, ec2: Any, image: str, name: str) -> None:  # noqa: ANN401
    """The image's snapshots carry the fleet's tag too: the operator's policy fences
    DeleteSnapshot by it. (After the fact: moto refuses snapshot tags in CreateImage.)"""
    [described] = ec2.describe_images(ImageIds=[image])["Images"]
    snapshots = [
        mapping["Ebs"]["SnapshotId"]
        for mapping in described.get("BlockDeviceMappings", [])
        if mapping.get("Ebs", {}).get("SnapshotId")
    ]
    if snapshots:
        ec2.create_tags(Resources=snapshots, Tags=walk.tag_list(name))
