"""overlay.security.PrefixMap and parse_source: longest-prefix match, counting keys."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.security import PrefixMap, parse_source

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _brute_force(entries: list[tuple[Network, int]], address: ipaddress._BaseAddress) -> int | None:
    """The most specific network holding the address; of equal ones the later entry."""
    matches = [
        (network.prefixlen, index, value)
        for index, (network, value) in enumerate(entries)
        if network.version == address.version and address in network
    ]
    return max(matches)[2] if matches else None


def _v4_networks() -> st.SearchStrategy[Network]:
    return st.builds(
        lambda n, length: ipaddress.ip_network((n, length), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def _v6_networks() -> st.SearchStrategy[Network]:
    # Few distinct high bits, so that networks overlap often enough to matter.
    return st.builds(
        lambda n, length: ipaddress.ip_network((n << 112, length), strict=False),
        st.integers(0, 15),
        st.integers(0, 128),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_v4_networks() | _v6_networks(), st.integers(0, 1000)), max_size=20),
    st.lists(
        st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
        | st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n & ~((1 << 108) - 1))),
        min_size=1,
        max_size=20,
    ),
)
def test_longest_prefix_wins_like_a_linear_search(
    entries: list[tuple[Network, int]], addresses: list[ipaddress._BaseAddress]
) -> None:
    table = PrefixMap(entries)
    for network, _ in entries:  # an address inside every network, too
        addresses.append(network.network_address)
    for address in addresses:
        assert table.lookup(address) == _brute_force(entries, address)  # type: ignore[arg-type]


def test_lookup_examples() -> None:
    table = PrefixMap(
        [
            (ipaddress.ip_network("0.0.0.0/0"), "any"),
            (ipaddress.ip_network("10.0.0.0/8"), "ten"),
            (ipaddress.ip_network("10.1.0.0/16"), "ten-one"),
            (ipaddress.ip_network("10.1.2.3/32"), "host"),
            (ipaddress.ip_network("2001:db8::/32"), "doc"),
        ]
    )
    assert table.lookup(ipaddress.ip_address("192.0.2.1")) == "any"
    assert table.lookup(ipaddress.ip_address("10.200.0.1")) == "ten"
    assert table.lookup(ipaddress.ip_address("10.1.0.1")) == "ten-one"
    assert table.lookup(ipaddress.ip_address("10.1.2.3")) == "host"
    assert table.lookup(ipaddress.ip_address("2001:db8:ffff::1")) == "doc"
    assert table.lookup(ipaddress.ip_address("2001:db9::1")) is None  # no ::/0 here
    assert PrefixMap([]).lookup(ipaddress.ip_address("10.0.0.1")) is None


def test_source_keys() -> None:
    assert parse_source("192.0.2.1") == ("192.0.2.1", ipaddress.ip_address("192.0.2.1"))
    key, address = parse_source("2001:db8:1:2:3:4:5:6") or ("", None)
    assert key == "2001:db8:1:2::/64"
    assert address == ipaddress.ip_address("2001:db8:1:2:3:4:5:6")
    assert parse_source("::ffff:192.0.2.1") == ("192.0.2.1", ipaddress.ip_address("192.0.2.1"))
    assert parse_source("not-an-address") is None
