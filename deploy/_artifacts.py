"""The fleet's artifacts bucket, in the builder region: the wheelhouse the AMI builder installs.

The bucket is named ``<account>-<fleet>-<region>`` (bucket names are global: the account id
makes it ours; it starts and ends with a digit whatever the fleet's name) and found by that
name. It is private (public access blocked), encrypted with S3's own keys (SSE-S3: an object's
ETag stays the MD5 of its bytes, which is how an upload is skipped), tagged with the fleet, and
its lifecycle expires old wheelhouses and bake manifests, which apply uploads again when needed.

Each wheelhouse goes under ``wheelhouse/<version>/``; a file already there with the same size
and ETag is not uploaded again, so a second apply changes nothing. A bake presigns a manifest
(``bakes/<image>.json``) listing a presigned URL and the SHA-256 of every wheel: the builder's
user data carries only the manifest's URL (user data is limited to 16 KB, a presigned URL with
a session token is over 1 KB, and the wheelhouse has some 40 wheels).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from deploy._walk import PENDING, DeployError, Walk
from deploy._wheelhouse import Wheelhouse
from overlay.aws import error_code

WHEELHOUSES, BAKES = "wheelhouse/", "bakes/"
#: A wheelhouse not uploaded again for this long goes (apply uploads it again if needed).
WHEELHOUSE_DAYS = 30
#: How long the builder's URLs work: a bake's download is over in minutes. Presigned with
#: temporary credentials, a URL ends with the session that signed it, whichever comes first.
PRESIGNED_S = 2 * 3600

LIFECYCLE: dict[str, Any] = {
    "Rules": [
        {
            "ID": "old-wheelhouses",
            "Status": "Enabled",
            "Filter": {"Prefix": WHEELHOUSES},
            "Expiration": {"Days": WHEELHOUSE_DAYS},
        },
        {
            # Their URLs expired long before.
            "ID": "old-bake-manifests",
            "Status": "Enabled",
            "Filter": {"Prefix": BAKES},
            "Expiration": {"Days": 1},
        },
        {
            "ID": "unfinished-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
    ]
}


@dataclass(frozen=True)
class Artifacts:
    """Where a wheelhouse is: ``bucket`` is ``PENDING`` where a plan would make it."""

    bucket: str
    prefix: str
    wheelhouse: Wheelhouse


def bucket_name(walk: Walk) -> str:
    account = walk.client("sts", walk.fleet.builder_region).get_caller_identity()["Account"]
    return f"{account}-{walk.fleet.name}-{walk.fleet.builder_region}"


def converge(walk: Walk, wheelhouse: Wheelhouse) -> Artifacts:
    """The bucket, and the wheelhouse in it."""
    region = walk.fleet.builder_region
    name = bucket_name(walk)
    bucket = walk.find_or_create(
        "bucket",
        region,
        name,
        lambda: _find(walk, name),
        lambda: _create(walk, name),
        f"SSE-S3, no public access, wheelhouses expire after {WHEELHOUSE_DAYS} days",
    )
    artifacts = Artifacts(bucket, f"{WHEELHOUSES}{wheelhouse.version}/", wheelhouse)
    there = {} if bucket == PENDING else _objects(walk, name, artifacts.prefix)
    missing = [
        wheel
        for wheel in wheelhouse.wheels
        if there.get(artifacts.prefix + wheel.name) != (wheel.stat().st_size, _md5(wheel))
    ]
    if missing:
        size = sum(wheel.stat().st_size for wheel in missing)
        walk.act(
            "create",
            "wheelhouse",
            region,
            f"s3://{name}/{artifacts.prefix}",
            lambda: _upload(walk, name, artifacts.prefix, missing),
            f"{len(missing)} of {len(wheelhouse.wheels)} wheels, {size / 1e6:.1f} MB",
        )
    return artifacts


def presign_manifest(walk: Walk, artifacts: Artifacts, image: str) -> str:
    """The presigned URL of a new manifest of the wheelhouse for ``image``'s builder."""
    s3 = walk.client("s3", walk.fleet.builder_region)
    wheelhouse = artifacts.wheelhouse

    def url(key: str) -> str:
        params = {"Bucket": artifacts.bucket, "Key": key}
        signed: str = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGNED_S)
        return signed

    files = [
        {"name": name, "url": url(artifacts.prefix + name), "sha256": digest}
        for name, digest in wheelhouse.sha256().items()
    ]
    key = f"{BAKES}{image}.json"
    manifest = {"version": wheelhouse.version, "pip_wheel": wheelhouse.pip_wheel, "files": files}
    s3.put_object(Bucket=artifacts.bucket, Key=key, Body=json.dumps(manifest).encode())
    return url(key)


def destroy(walk: Walk) -> None:
    """Empty the bucket (every version of every object), then delete it."""
    name = bucket_name(walk)
    if _find(walk, name) is None:
        return
    s3 = walk.client("s3", walk.fleet.builder_region)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        listed = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        if listed:
            objects = [{"Key": item["Key"], "VersionId": item["VersionId"]} for item in listed]
            s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
    walk.change("delete", "bucket", walk.fleet.builder_region, name)
    s3.delete_bucket(Bucket=name)


def _find(walk: Walk, name: str) -> str | None:
    try:
        walk.client("s3", walk.fleet.builder_region).head_bucket(Bucket=name)
    except botocore.exceptions.ClientError as error:
        code = error_code(error)
        if code in {"404", "NoSuchBucket"}:
            return None
        if code == "403":
            raise DeployError(
                f"S3 bucket {name}: access denied (another account owns it, or these"
                " credentials may not read it)"
            ) from None
        raise
    return name


def _create(walk: Walk, name: str) -> str:
    region = walk.fleet.builder_region
    s3 = walk.client("s3", region)
    # us-east-1 is S3's default location and is refused as a LocationConstraint.
    where = {} if region == "us-east-1" else {"LocationConstraint": region}
    s3.create_bucket(Bucket=name, CreateBucketConfiguration=where)
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=LIFECYCLE)
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": walk.tag_list(name)})
    return name


def _objects(walk: Walk, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Key -> (size, ETag without its quotes) of what is under ``prefix``."""
    s3 = walk.client("s3", walk.fleet.builder_region)
    return {
        item["Key"]: (item["Size"], item["ETag"].strip('"'))
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    }


def _upload(walk: Walk, bucket: str, prefix: str, wheels: list[Path]) -> None:
    s3 = walk.client("s3", walk.fleet.builder_region)
    for wheel in wheels:
        # One PUT per wheel (never multipart), so that the ETag is the MD5 compared above.
        s3.put_object(Bucket=bucket, Key=prefix + wheel.name, Body=wheel.read_bytes())


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
