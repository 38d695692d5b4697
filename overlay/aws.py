"""The one place AWS clients are made.

``ClientFactory`` hands out one boto3 client per (service, region), all with the same retry
policy and, when given, the same endpoint (moto's server in the tests; unset for AWS, where
boto3 finds the regional endpoints and the credentials itself, e.g. from an instance profile).
Failures arrive as ``botocore.exceptions.ClientError`` from AWS, but an endpoint that does not
implement a call (moto) answers an HTML 500 that botocore reports as ``ResponseParserError``:
callers that must tell "not implemented" apart use ``is_not_implemented``.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers

#: Error codes AWS uses for "this resource does not exist", across the services deploy uses.
NOT_FOUND_CODES = frozenset(
    {
        "InvalidVpcID.NotFound",
        "InvalidSubnetID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidInstanceID.NotFound",
        "InvalidAMIID.NotFound",
        "InvalidAllocationID.NotFound",
        "InvalidNetworkInterfaceID.NotFound",
        "InvalidPlacementGroup.Unknown",
        "NoSuchHostedZone",
        "NoSuchHealthCheck",
        "ResourceNotFound",
        "NotFound",
    }
)


class ClientFactory:
    """boto3 clients by (service, region), made once and shared.

    Args:
        endpoint_url: send every call there (moto's server); ``None``: the AWS endpoints.
        max_attempts: botocore's ``total_max_attempts`` (1 = no retry, as the tests want:
            moto's 500 for an unimplemented call is not worth retrying).
        session: the boto3 session to make clients from (credentials, profile).
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 5,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self._session = session or boto3.session.Session()
        self._config = botocore.config.Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            user_agent_extra="overlay-deploy",
        )
        self._clients: dict[tuple[str, str], Any] = {}
        # S3 signs with SigV4 at the bucket's regional name: a presigned URL then works from a
        # VPC whose only way out is the region's S3 gateway endpoint (deploy._image's builder).
        self._s3_config = self._config.merge(
            botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "virtual"})
        )

    def client(self, service: str, region: str) -> Any:  # noqa: ANN401  (boto3 has no types)
        """The client for ``service`` in ``region`` (Route 53 and IAM are global: any region)."""
        key = (service, region)
        client = self._clients.get(key)
        if client is None:
            config = self._s3_config if service == "s3" else self._config
            client = self._session.client(
                service, region_name=region, endpoint_url=self.endpoint_url, config=config
            )
            self._clients[key] = client
        return client


def error_code(error: BaseException) -> str:
    """The AWS error code of a ``ClientError`` ("" for anything else)."""
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(error: BaseException) -> bool:
    return error_code(error) in NOT_FOUND_CODES


def is_not_implemented(error: BaseException) -> bool:
    """An endpoint without this call: moto's HTML 500, seen as a parser error or a 500."""
    if isinstance(error, botocore.parsers.ResponseParserError):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status == 500 and "NotImplemented" in str(error)
    return False
