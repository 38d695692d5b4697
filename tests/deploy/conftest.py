"""moto's AWS server on a loopback address, one per test session, reset after every test.

The MOTO_* settings are read when moto is imported, so they are set before the import: default
AMIs off (resets take milliseconds instead of a second; tests bake their own AMI) and instance
types validated as AWS does. Credentials are dummies and the shared AWS config files are
ignored, so nothing can reach a real account.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator

import pytest

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-west-2",
    AWS_CONFIG_FILE="/dev/null",
    AWS_SHARED_CREDENTIALS_FILE="/dev/null",
)
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")

from moto.server import ThreadedMotoServer  # imported after the MOTO_* settings

from overlay.aws import ClientFactory

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[ClientFactory]:
    """A client factory pointed at moto, which is reset (every service, every region) after."""
    yield ClientFactory(endpoint_url=moto_endpoint, max_attempts=1)
    reset = urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=10) as response:
        response.read()
