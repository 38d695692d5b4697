"""Stand-ins for what moto cannot do in an AMI bake (notes/moto.md).

moto runs no user data, so the builder never powers itself off: ``powers_off`` does, from the
waiter's first sleep. Its console output is canned (and not even base64): ``console_says``
answers GetConsoleOutput with a given text instead. Its SSM refuses to store a parameter under
``/aws/`` (as AWS does), so Debian's public one is answered by ``debian_parameter``. And its
``register_image`` drops the architecture: ``debian_image`` images an instance instead, which
moto makes x86_64. The answers are given at the client, before the call leaves it (botocore's
``before-call`` event, as its Stubber does), and only for what they name: everything else
reaches moto.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse

from deploy._image import DEBIAN_12, wait_for_bake
from deploy._wheelhouse import Wheelhouse, load_wheelhouse
from overlay.aws import ClientFactory

Respond = Callable[[dict[str, Any]], dict[str, Any] | None]


def answer(client: Any, operation: str, respond: Respond) -> None:  # noqa: ANN401
    """Answer ``operation`` with what ``respond(request)`` returns, where it returns something
    (an error, when that holds an ``Error``)."""
    service = client.meta.service_model.service_id.hyphenize()

    def before_call(
        params: dict[str, Any], **_: object
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        parsed = respond(params)
        if parsed is None:
            return None
        return AWSResponse(params["url"], 400 if "Error" in parsed else 200, {}, None), parsed

    client.meta.events.register(f"before-call.{service}.{operation}", before_call)


def console_says(ec2: Any, text: str) -> None:  # noqa: ANN401
    """Every instance's console output is ``text`` (base64, as EC2 sends it)."""
    output = base64.b64encode(text.encode()).decode()
    answer(ec2, "GetConsoleOutput", lambda _: {"Output": output})


def powers_off(ec2: Any, instance: str) -> None:  # noqa: ANN401
    """The deployer's waiter, with the builder powering off while it first sleeps."""
    wait_for_bake(ec2, instance, sleep=lambda _: ec2.stop_instances(InstanceIds=[instance]))


def debian_parameter(aws: ClientFactory, region: str, image: str) -> None:
    """Debian's public parameter in ``region`` names ``image``."""

    def respond(request: dict[str, Any]) -> dict[str, Any] | None:
        if json.loads(request["body"])["Name"] != DEBIAN_12:
            return None
        return {"Parameter": {"Name": DEBIAN_12, "Type": "String", "Value": image, "Version": 1}}

    answer(aws.client("ssm", region), "GetParameter", respond)


def debian_image(aws: ClientFactory, region: str) -> str:
    """An x86_64 image in ``region``, not the fleet's (no tags)."""
    ec2 = aws.client("ec2", region)
    instance = ec2.run_instances(
        ImageId="ami-0d3b1a2c4e5f60718", InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]
    image = ec2.create_image(InstanceId=instance, Name="debian-12-amd64-20260101-2000")["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    return str(image)


def fake_wheelhouse(directory: Path) -> Wheelhouse:
    """Three wheels by name, with bytes of their own, that never see pip."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (
        "overlay-0.1.0-cp311-cp311-linux_x86_64.whl",
        "pip-26.3-py3-none-any.whl",
        "trio-0.35.0-py3-none-any.whl",
    ):
        (directory / name).write_bytes(f"not really {name}\n".encode())
    return load_wheelhouse(directory)


@functools.cache
def any_wheelhouse() -> Wheelhouse:
    """One fake wheelhouse for the session, for a deployer whose wheels no test looks at."""
    directory = Path(tempfile.mkdtemp(prefix="overlay-fake-wheelhouse-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return fake_wheelhouse(directory)


def make_wheel(directory: Path, name: str, version: str, modules: dict[str, str]) -> Path:
    """A pure-Python wheel pip installs: ``modules`` maps a file name to its source."""
    info = f"{name}-{version}.dist-info"
    files = {
        **modules,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in {**files, f"{info}/RECORD": record}.items():
            wheel.writestr(member, text)
    return path
