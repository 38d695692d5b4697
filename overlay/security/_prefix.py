"""Addresses against CIDR tables (longest prefix wins), and the key a source is counted under."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: An IPv6 source is counted by its /64: one subscriber's LAN, the smallest block an ISP hands
#: out (RFC 6177); a scanner gets no fresh bucket per address it picks inside it.
IPV6_SOURCE_PREFIX = 64


class PrefixMap(Generic[T]):
    """A value per network; ``lookup`` finds the most specific network holding an address.

    One hash table per prefix length, searched from the longest: a lookup costs one shift and
    one dict probe per distinct prefix length in the table, whatever its size.

    Args:
        entries: ``(network, value)`` pairs; of two equal networks the later wins.
    """

    def __init__(self, entries: Iterable[tuple[Network, T]]) -> None:
        by_length: dict[tuple[int, int], dict[int, T]] = {}
        for network, value in entries:
            host_bits = network.max_prefixlen - network.prefixlen
            table = by_length.setdefault((network.version, network.prefixlen), {})
            table[int(network.network_address) >> host_bits] = value
        self._tables: dict[int, list[tuple[int, dict[int, T]]]] = {4: [], 6: []}
        for (version, length), table in sorted(by_length.items(), key=lambda item: -item[0][1]):
            bits = 32 if version == 4 else 128
            self._tables[version].append((bits - length, table))

    def lookup(self, address: Address) -> T | None:
        """The value of the longest network holding ``address``, or ``None``."""
        number = int(address)
        for shift, table in self._tables[address.version]:
            value = table.get(number >> shift)
            if value is not None:
                return value
        return None


@functools.lru_cache(maxsize=65536)
def parse_source(host: str) -> tuple[str, Address] | None:
    """The counting key and the address of a source host; ``None`` if it is no IP address.

    The key is the IPv4 address itself (also for an IPv4-mapped IPv6 address, as a dual-stack
    socket reports one) or the IPv6 /64 written ``2001:db8:1:2::/64``.
    """
    try:
        address: Address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            prefix = ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False)
            return str(prefix), address
    return str(address), address
