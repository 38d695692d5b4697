"""The AMI bake against moto: the wheelhouse, the artifacts bucket, the builder's way out (an S3
gateway endpoint, no public address), its base image, its verdict, and its user data run for
real under a scratch directory. What moto cannot do is stood in for by tests/deploy/bake.py."""

from __future__ import annotations

import copy
import dataclasses
import ensurepip
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from deploy import _artifacts, _image, _network
from deploy._image import (
    BAKE_FAILED,
    BAKE_OK,
    BAKE_TIMEOUT_S,
    CONSOLE_WAIT_S,
    DEBIAN_12,
    IMAGE_FILES,
    SSM_AGENT,
    builder_user_data,
    wait_for_bake,
)
from deploy._network import API_SERVICES
from deploy._walk import Change, DeployError, Walk
from deploy._wheelhouse import build_wheelhouse, load_wheelhouse, project_dir
from deploy.deployer import Deployer
from deploy.fleet import Fleet, load_fleet
from deploy.placement import MemoryPlacementGroups
from overlay.aws import ClientFactory
from tests.deploy.bake import (
    console_says,
    debian_image,
    debian_parameter,
    fake_wheelhouse,
    make_wheel,
    powers_off,
)

pytestmark = pytest.mark.deploy

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.toml"


@pytest.fixture
def fleet(aws: ClientFactory) -> Fleet:
    """The example's builder region alone, on an x86_64 base image of its own."""
    example = load_fleet(EXAMPLE)
    [builder] = [r for r in example.regions if r.name == example.builder_region]
    base = debian_image(aws, builder.name)
    return dataclasses.replace(example, regions=(builder,), base_image_id=base)


def walk_of(fleet: Fleet, aws: ClientFactory, *, execute: bool = True) -> Walk:
    return Walk(fleet, aws, MemoryPlacementGroups(), execute=execute, report=lambda _: None)


def launches(aws: ClientFactory, region: str) -> list[dict[str, Any]]:
    """The RunInstances requests of ``region``'s client, as sent (before base64)."""
    launched: list[dict[str, Any]] = []
    aws.client("ec2", region).meta.events.register(
        "provide-client-params.ec2.RunInstances",
        lambda params, **_: launched.append(copy.deepcopy(params)),
    )
    return launched


# --- the wheelhouse ---------------------------------------------------------------------------


def test_a_wheelhouse_for_another_python_is_refused_naming_both(tmp_path: Path) -> None:
    house = fake_wheelhouse(tmp_path / "ok")
    assert (house.version, house.pip_wheel) == ("0.1.0", "pip-26.3-py3-none-any.whl")
    assert len(house.wheels) == 3
    for wheel, tags in [
        ("overlay-0.1.0-cp312-cp312-linux_x86_64.whl", "cp312-cp312-linux_x86_64"),
        ("grpcio-1.85.4-cp311-cp311-macosx_11_0_arm64.whl", "cp311-cp311-macosx_11_0_arm64"),
        ("cryptography-51-cp311-abi3-manylinux_2_39_x86_64.whl", "abi3-manylinux_2_39"),
    ]:
        bad = tmp_path / wheel.split("-")[0]
        fake_wheelhouse(bad)
        (bad / wheel).write_bytes(b"")
        if wheel.startswith("overlay"):
            (bad / "overlay-0.1.0-cp311-cp311-linux_x86_64.whl").unlink()
        with pytest.raises(DeployError) as refused:
            load_wheelhouse(bad)
        assert tags.split("-")[-1] in str(refused.value)
        assert "CPython 3.11, x86_64, glibc 2.36" in str(refused.value)
    # A stable-ABI wheel for an older Python and the legacy manylinux tags fit.
    for wheel in (
        "protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl",
        "grpcio-1.85.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    ):
        (tmp_path / "ok" / wheel).write_bytes(b"")
    assert len(load_wheelhouse(tmp_path / "ok").wheels) == 5
    (tmp_path / "ok" / "pip-25.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(DeployError, match=r"needs one pip wheel, has \['pip-25.0"):
        load_wheelhouse(tmp_path / "ok")


def test_the_wheelhouse_is_built_by_the_image_s_python_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_dir()
    assert project is not None
    monkeypatch.setattr("deploy._wheelhouse.IMAGE_PYTHON", (3, 12))
    with pytest.raises(DeployError) as refused:
        build_wheelhouse(project, tmp_path)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"this Python is {here}" in str(refused.value)
    assert "the image's is 3.12" in str(refused.value)
    assert not any(tmp_path.iterdir())  # refused before pip ran


# --- the artifacts bucket ---------------------------------------------------------------------


def test_the_bucket_is_private_encrypted_tagged_and_the_wheelhouse_uploaded_once(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path
) -> None:
    house = fake_wheelhouse(tmp_path / "wheelhouse")
    region = fleet.builder_region
    bucket = f"123456789012-{fleet.name}-{region}"
    s3 = aws.client("s3", region)

    planned = walk_of(fleet, aws, execute=False)
    _artifacts.converge(planned, house)
    assert [(c.kind, c.name) for c in planned.changes] == [
        ("bucket", bucket),
        ("wheelhouse", f"s3://{bucket}/wheelhouse/0.1.0/"),
    ]
    assert s3.list_buckets()["Buckets"] == []

    applied = walk_of(fleet, aws)
    artifacts = _artifacts.converge(applied, house)
    assert applied.changes == planned.changes
    assert (artifacts.bucket, artifacts.prefix) == (bucket, "wheelhouse/0.1.0/")
    [encryption] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
        "Rules"
    ]
    assert encryption["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    blocked = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert blocked == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["old-wheelhouses"]["Filter"] == {"Prefix": "wheelhouse/"}
    assert rules["old-wheelhouses"]["Expiration"] == {"Days": _artifacts.WHEELHOUSE_DAYS}
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert (tags["overlay:fleet"], tags["overlay:name"]) == (fleet.name, bucket)
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert {o["Key"]: o["Size"] for o in listed} == {
        f"wheelhouse/0.1.0/{wheel.name}": wheel.stat().st_size for wheel in house.wheels
    }

    # Again: nothing to do. One wheel changed: that one goes up again, alone.
    again = walk_of(fleet, aws)
    _artifacts.converge(again, house)
    assert again.changes == []
    (house.path / "trio-0.35.0-py3-none-any.whl").write_bytes(b"rebuilt\n")
    changed = walk_of(fleet, aws)
    _artifacts.converge(changed, house)
    assert [c.detail.split(",")[0] for c in changed.changes] == ["1 of 3 wheels"]
    body = s3.get_object(Bucket=bucket, Key="wheelhouse/0.1.0/trio-0.35.0-py3-none-any.whl")
    assert body["Body"].read() == b"rebuilt\n"

    # Destroy empties it and deletes it.
    gone = walk_of(fleet, aws)
    _artifacts.destroy(gone)
    assert [(c.action, c.kind) for c in gone.changes] == [("delete", "bucket")]
    assert s3.list_buckets()["Buckets"] == []
    _artifacts.destroy(walk_of(fleet, aws))


# --- the builder ------------------------------------------------------------------------------


def test_the_builder_reaches_s3_alone_and_installs_from_presigned_urls(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path
) -> None:
    house = fake_wheelhouse(tmp_path / "wheelhouse")
    region = fleet.builder_region
    ec2 = aws.client("ec2", region)
    launched = launches(aws, region)
    console_says(ec2, f"[  41.2] cloud-init[812]: {BAKE_OK} 0.1.0\n")
    walk = walk_of(fleet, aws)
    network = _network.converge(walk, fleet.regions[0])
    endpoint = _network.s3_endpoint(walk, region, network.vpc)
    assert _network.s3_endpoint(walk, region, network.vpc) == endpoint
    artifacts = _artifacts.converge(walk, house)
    base = _image.base_image(walk)
    images = _image.converge(walk, {region: network}, base, artifacts, wait_for_builder=powers_off)

    # The VPC's way to S3: a gateway endpoint on the main route table, tagged.
    [described] = ec2.describe_vpc_endpoints(VpcEndpointIds=[endpoint])["VpcEndpoints"]
    assert (described["VpcEndpointType"], described["ServiceName"]) == (
        "Gateway",
        f"com.amazonaws.{region}.s3",
    )
    [table] = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [network.vpc]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    assert described["RouteTableIds"] == [table["RouteTableId"]]
    assert [r["GatewayId"] for r in table["Routes"] if r.get("DestinationPrefixListId")] == [
        endpoint
    ]
    assert {t["Key"]: t["Value"] for t in described["Tags"]}["overlay:fleet"] == fleet.name

    # The builder: no public address, and user data that installs from the wheelhouse alone.
    [params] = launched
    assert params["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False
    assert params["ImageId"] == fleet.base_image_id
    script = params["UserData"]
    assert script.startswith("#!/bin/bash\n")
    assert "set -Eeuo pipefail\n" in script
    commands = "\n".join(line for line in script.splitlines() if not line.startswith("#"))
    for internet in ("apt", "pypi", "curl", "wget", "--index-url"):
        assert internet not in commands.lower()
    assert "--no-index" in commands
    # Two URLs, both S3 in the region (the gateway endpoint): the manifest's, presigned, and
    # AWS's own SSM agent package.
    manifest_url, agent_url = (word.strip("'") for word in commands.split() if "://" in word)
    assert agent_url == SSM_AGENT.format(region=region)
    assert agent_url.startswith(f"https://s3.{region}.amazonaws.com/amazon-ssm-{region}/")
    assert "/bakes/" in manifest_url
    assert "X-Amz-Signature=" in manifest_url
    # The manifest's presigned URLs serve the wheelhouse, as the builder checks it.
    with urllib.request.urlopen(manifest_url, timeout=10) as response:
        manifest = json.load(response)
    assert manifest["pip_wheel"] == house.pip_wheel
    for wheel in manifest["files"]:
        assert "X-Amz-Signature" in wheel["url"]
        with urllib.request.urlopen(wheel["url"], timeout=10) as response:
            data = response.read()
        assert data == (house.path / wheel["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == wheel["sha256"]
    # Baked: the image of the stopped builder, which is gone.
    assert images[region].startswith("ami-")
    builders = ec2.describe_instances(
        Filters=[{"Name": "tag:overlay:role", "Values": ["builder"]}]
    )["Reservations"]
    assert [i["State"]["Name"] for r in builders for i in r["Instances"]] == ["terminated"]
    assert [i.get("PublicIpAddress") for r in builders for i in r["Instances"]] == [None]


def test_a_failed_bake_is_reported_with_the_console_and_makes_no_image(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path
) -> None:
    region = fleet.builder_region
    ec2 = aws.client("ec2", region)
    console_says(
        ec2,
        "ERROR: No matching distribution found for overlay==0.1.0\n"
        f'{BAKE_FAILED} (exit 1) at line 42: "$root/opt/overlay/bin/python" ...\n'
        "[  OK  ] Reached target power-off.\n",
    )
    deployer = Deployer(
        fleet,
        aws,
        MemoryPlacementGroups(),
        wheelhouse=fake_wheelhouse(tmp_path / "w"),
        wait_for_builder=powers_off,
    )
    with pytest.raises(DeployError) as failed:
        deployer.apply()
    message = str(failed.value)
    assert "AMI bake failed on i-" in message
    assert "No matching distribution found for overlay==0.1.0" in message
    assert "at line 42" in message
    # The base image alone.
    assert [i["Name"] for i in ec2.describe_images(Owners=["self"])["Images"]] == [
        "debian-12-amd64-20260101-2000"
    ]


class Clock:
    """The waiter's clock and sleep; ``at`` runs once when its time comes (a builder's act)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.at: list[tuple[float, Any]] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for when, act in list(self.at):
            if self.now >= when:
                self.at.remove((when, act))
                act()


def test_the_waiter_reports_a_failure_within_a_minute(aws: ClientFactory) -> None:
    ec2 = aws.client("ec2", "us-west-2")
    [instance] = [
        i["InstanceId"]
        for i in ec2.run_instances(
            ImageId="ami-0d3b1a2c4e5f60718", InstanceType="t3.micro", MinCount=1, MaxCount=1
        )["Instances"]
    ]
    clock = Clock()
    failed_at = 300.0  # five minutes into the bake, pip fails, the builder powers off
    clock.at.append((failed_at, lambda: ec2.stop_instances(InstanceIds=[instance])))
    console_says(ec2, "pip: ERROR\n" + f"{BAKE_FAILED} (exit 1) at line 40: pip install\n")
    with pytest.raises(DeployError, match="at line 40: pip install") as failed:
        wait_for_bake(ec2, instance, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now - failed_at <= 60
    assert "pip: ERROR" in str(failed.value)


@pytest.mark.parametrize(
    ("stops", "console", "reported", "after_s"),
    [
        # Stopped with no verdict on the console: EC2 may post it late, but not that late.
        (True, "Debian GNU/Linux 12 ttyS0\n", "Debian GNU/Linux 12", CONSOLE_WAIT_S),
        # Never done: the overall bound.
        (False, "", "still running after 30 minutes; its console is empty", BAKE_TIMEOUT_S),
    ],
)
def test_the_waiter_gives_up(
    aws: ClientFactory, stops: bool, console: str, reported: str, after_s: float
) -> None:
    ec2 = aws.client("ec2", "us-west-2")
    instance = ec2.run_instances(
        ImageId="ami-0d3b1a2c4e5f60718", InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    clock = Clock()
    if stops:
        clock.at.append((0.0, lambda: ec2.stop_instances(InstanceIds=[instance])))
    console_says(ec2, console)
    with pytest.raises(DeployError, match=reported):
        wait_for_bake(ec2, instance, sleep=clock.sleep, clock=lambda: clock.now)
    assert after_s <= clock.now <= after_s + 2 * _image.POLL_S


# --- the base image ---------------------------------------------------------------------------


def test_the_base_image_defaults_to_debian_12_from_its_ssm_parameter(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path
) -> None:
    assert fleet.base_image_id is not None
    debian_parameter(aws, fleet.builder_region, fleet.base_image_id)
    unpinned = dataclasses.replace(fleet, base_image_id=None)
    assert _image.base_image(walk_of(unpinned, aws, execute=False)) == fleet.base_image_id
    planned = Deployer(
        unpinned, aws, MemoryPlacementGroups(), wheelhouse=fake_wheelhouse(tmp_path)
    ).plan()
    kinds = Counter(c.kind for c in planned)
    # One region: the builder's S3 gateway, and the members' API endpoints.
    assert (kinds["bucket"], kinds["wheelhouse"], kinds["vpc-endpoint"], kinds["image"]) == (
        1,
        1,
        1 + len(API_SERVICES),
        1,
    )
    [image] = [c for c in planned if c.kind == "image"]
    assert image.name == f"{fleet.ami_name}-0.1.0"
    assert fleet.base_image_id in image.detail


@pytest.mark.parametrize(
    ("parameter", "refusal"),
    [
        (None, f"SSM parameter {DEBIAN_12} is not in us-west-2; set fleet.base_image_id"),
        ("ami-0123456789abcdef0", "base image ami-0123456789abcdef0 .*not found in us-west-2"),
        ("registered", "of no stated architecture, the wheelhouse is for x86_64"),
    ],
)
def test_a_missing_or_bad_base_image_is_refused_before_anything_is_made(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path, parameter: str | None, refusal: str
) -> None:
    region = fleet.builder_region
    ec2 = aws.client("ec2", region)
    if parameter == "registered":
        # moto keeps no architecture for a registered image (as if it were not x86_64).
        parameter = ec2.register_image(Name="debian-12-arm64", Architecture="arm64")["ImageId"]
    if parameter is not None:
        debian_parameter(aws, region, parameter)
    unpinned = dataclasses.replace(fleet, base_image_id=None)
    reported: list[Change] = []
    deployer = Deployer(
        unpinned,
        aws,
        MemoryPlacementGroups(),
        wheelhouse=fake_wheelhouse(tmp_path),
        report=reported.append,
    )
    for run in (deployer.plan, deployer.apply):
        with pytest.raises(DeployError, match=refusal):
            run()
        assert reported == []
    filters = [{"Name": "tag:overlay:fleet", "Values": [fleet.name]}]
    assert ec2.describe_vpcs(Filters=filters)["Vpcs"] == []
    assert aws.client("s3", region).list_buckets()["Buckets"] == []
    assert aws.client("iam", region).list_roles()["Roles"] == []


# --- the user data, run ------------------------------------------------------------------------


def bundled_pip() -> Path:
    """The pip wheel this Python's ensurepip carries."""
    [pip] = (Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl")
    return pip


def tiny_wheelhouse(directory: Path) -> Path:
    directory.mkdir()
    make_wheel(directory, "overlay", "0.1.0", {"overlay_baked.py": "BAKED = True\n"})
    (directory / bundled_pip().name).write_bytes(bundled_pip().read_bytes())
    return directory


def run_user_data(script: str, root: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the builder's script under ``root``; useradd and poweroff only say they ran."""
    shims = root.parent / "bin"
    shims.mkdir()
    calls = root.parent / "calls"
    for command in ("useradd", "poweroff"):
        (shims / command).write_text(f'#!/bin/sh\necho "{command} $*" >>"{calls}"\n')
        (shims / command).chmod(0o755)
    (shims / "python3").symlink_to(sys.executable)
    environment = {
        "PATH": f"{shims}:{os.environ['PATH']}",
        "HOME": str(root.parent),
        "OVERLAY_BAKE_ROOT": str(root),
    }
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=environment, timeout=240
    )
    return done, calls.read_text() if calls.exists() else ""


@pytest.mark.parametrize(
    "wheelhouse", ["tiny", pytest.param("real", marks=pytest.mark.slow, id="real-pip-wheel")]
)
def test_the_user_data_installs_for_real_under_a_scratch_root(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path, wheelhouse: str
) -> None:
    """The builder's script, run here: downloads through presigned URLs (from moto), the
    virtualenv, pip from its wheel, the files, the verdict and the power-off. With the real
    wheelhouse (slow: ``pip wheel`` of the project, about 35 s here) the appliance runs."""
    if wheelhouse == "tiny":
        house = load_wheelhouse(tiny_wheelhouse(tmp_path / "wheelhouse"))
    else:
        project = project_dir()
        assert project is not None
        house = build_wheelhouse(project, tmp_path / "wheelhouse")
        pyproject = tomllib.loads((project / "pyproject.toml").read_text())
        assert house.version == pyproject["project"]["version"]
    walk = walk_of(fleet, aws)
    artifacts = _artifacts.converge(walk, house)
    script = builder_user_data(
        _artifacts.presign_manifest(walk, artifacts, "overlay-router-0.1.0"),
        house.version,
        house.pip_wheel,
        fleet.builder_region,
    )
    root = tmp_path / "root"
    done, calls = run_user_data(script, root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"{BAKE_OK} {house.version}"
    assert calls.splitlines() == [
        "useradd --system --user-group --no-create-home --home-dir /nonexistent"
        " --shell /usr/sbin/nologin overlay",
        "poweroff ",
    ]
    for path, text in IMAGE_FILES.items():
        assert (root / path.lstrip("/")).read_text() == text
    assert "net.ipv4.ip_nonlocal_bind = 1" in IMAGE_FILES[_image.SYSCTL_CONF]
    assert (root / "etc/machine-id").read_text() == ""
    python = root / "opt/overlay/bin/python"
    if wheelhouse == "tiny":
        check = [str(python), "-c", "import overlay_baked; print(overlay_baked.BAKED)"]
    else:
        check = [str(root / "opt/overlay/bin/overlay"), "--help"]
    ran = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr


def test_the_user_data_reports_a_failed_step_and_powers_off(
    aws: ClientFactory, fleet: Fleet, tmp_path: Path
) -> None:
    house = load_wheelhouse(tiny_wheelhouse(tmp_path / "wheelhouse"))
    walk = walk_of(fleet, aws)
    artifacts = _artifacts.converge(walk, house)
    manifest = _artifacts.presign_manifest(walk, artifacts, "overlay-router-0.1.0")
    # What S3 serves is not what the deployer uploaded.
    aws.client("s3", fleet.builder_region).put_object(
        Bucket=artifacts.bucket, Key=artifacts.prefix + house.pip_wheel, Body=b"tampered"
    )
    done, calls = run_user_data(
        builder_user_data(manifest, "0.1.0", house.pip_wheel, "us-east-2"), tmp_path / "root"
    )
    assert done.returncode != 0
    assert f"{house.pip_wheel}: SHA-256" in done.stderr
    [verdict] = [line for line in done.stdout.splitlines() if BAKE_FAILED in line]
    assert verdict.startswith(f"{BAKE_FAILED} (exit 1) at line ")
    assert "python3 - " in verdict
    assert calls.splitlines() == ["poweroff "]
