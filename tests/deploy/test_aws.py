"""The client factory against moto's server: one client per service and region, and the two
ways an endpoint says no."""

from __future__ import annotations

import botocore.exceptions
import botocore.parsers
import pytest

from overlay.aws import ClientFactory, is_not_found, is_not_implemented

pytestmark = pytest.mark.deploy


def test_clients_are_per_region_and_reach_moto(aws: ClientFactory) -> None:
    west = aws.client("ec2", "us-west-2")
    assert aws.client("ec2", "us-west-2") is west
    east = aws.client("ec2", "us-east-1")
    vpc = west.create_vpc(CidrBlock="10.10.0.0/16")["Vpc"]["VpcId"]
    assert [v["VpcId"] for v in west.describe_vpcs(VpcIds=[vpc])["Vpcs"]] == [vpc]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        east.describe_vpcs(VpcIds=[vpc])
    assert is_not_found(caught.value)


def test_an_unimplemented_call_is_recognised(aws: ClientFactory) -> None:
    """moto has no placement groups: its HTML 500 must not pass for any other failure."""
    unimplemented = (botocore.parsers.ResponseParserError, botocore.exceptions.ClientError)
    with pytest.raises(unimplemented) as caught:
        aws.client("ec2", "us-west-2").create_placement_group(
            GroupName="overlay-usw2a", Strategy="cluster"
        )
    assert is_not_implemented(caught.value)
    assert not is_not_found(caught.value)
