"""Where the fabric routes each private address and Elastic IP, from what moto lists (no root
needed)."""

from __future__ import annotations

from tests.fleet._mirror import INTERNET, Eip, Eni, _routes, choose_holders, nat_map

A = Eni("eni-a", "vpc-1", "10.1.1.11", ("10.1.1.10",))
B = Eni("eni-b", "vpc-1", "10.1.1.12", ())
B_WITH = Eni("eni-b", "vpc-1", "10.1.1.12", ("10.1.1.10",))
A_WITHOUT = Eni("eni-a", "vpc-1", "10.1.1.11", ())
INSTANCES = {"eni-a": "i-a", "eni-b": "i-b"}


def test_a_reassigned_address_goes_to_its_latest_eni():
    seen: dict[tuple[str, str], int] = {}
    assert choose_holders([A, B], INSTANCES, seen, 1)["10.1.1.10"] == "i-a"
    # moto leaves the address on A when it is assigned to B: B's is the latest assignment.
    assert choose_holders([A, B_WITH], INSTANCES, seen, 2)["10.1.1.10"] == "i-b"
    assert choose_holders([A, B_WITH], INSTANCES, seen, 3)["10.1.1.10"] == "i-b"
    # Unassigned from B: back to A, which still lists it.
    assert choose_holders([A, B], INSTANCES, seen, 4)["10.1.1.10"] == "i-a"
    assert ("10.1.1.10", "eni-b") not in seen


def test_addresses_of_enis_without_a_mirrored_instance_are_not_routed():
    holders = choose_holders([A, B], {"eni-b": "i-b"}, {}, 1)
    assert holders == {"10.1.1.12": "i-b"}


def test_both_listed_since_the_same_read_go_to_the_last_eni_id():
    assert choose_holders([A, B_WITH], INSTANCES, {}, 1)["10.1.1.10"] == "i-b"


def test_an_elastic_ip_goes_to_its_enis_secondary_address_else_its_primary():
    eips = [Eip("100.100.0.1", "eni-a"), Eip("100.100.0.2", "eni-b"), Eip("100.100.0.3", None)]
    assert nat_map([A, B], eips) == {
        "vpc-1": {"100.100.0.1": "10.1.1.10", "100.100.0.2": "10.1.1.12"}
    }
    assert nat_map([A_WITHOUT, B_WITH], [Eip("100.100.0.1", "eni-b")]) == {
        "vpc-1": {"100.100.0.1": "10.1.1.10"}
    }


def test_routes_through_the_internet_gateway_and_active_peerings_only():
    tables = [
        {
            "RouteTableId": "rtb-1",
            "VpcId": "vpc-1",
            "Routes": [
                {"DestinationCidrBlock": "10.1.0.0/16", "GatewayId": "local", "State": "active"},
                {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"},
                {
                    "DestinationCidrBlock": "10.2.0.0/16",
                    "VpcPeeringConnectionId": "pcx-1",
                    "State": "active",
                },
                {
                    "DestinationCidrBlock": "10.3.0.0/16",
                    "VpcPeeringConnectionId": "pcx-gone",
                    "State": "active",
                },
                {"DestinationCidrBlock": "10.4.0.0/16", "GatewayId": "igw-1", "State": "blackhole"},
            ],
        }
    ]
    assert _routes(tables, {"pcx-1": ("vpc-2", "vpc-1")}) == {
        "vpc-1": {"0.0.0.0/0": INTERNET, "10.2.0.0/16": "vpc-2"}
    }
