"""RFC 3263 resolution through dnspython against a real (tiny) DNS server on loopback."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NoReturn

import dns.resolver
import pytest
import trio

from overlay.config import DnsSection, DnsTarget
from overlay.shell.transport import ResolutionError, ResolvedTarget, SipResolver
from tests.dnsserver import Zone, serve_zone

pytestmark = [pytest.mark.integration, pytest.mark.trio]

Records = Mapping[str, Mapping[str, Sequence[str]]]

CHAIN: Records = {
    "example.com": {
        "NAPTR": [
            '20 10 "s" "SIP+D2T" "" _sip._tcp.example.com.',
            '10 10 "s" "SIP+D2U" "" _sip._udp.example.com.',
            '5 10 "s" "SIPS+D2T" "" _sips._tcp.example.com.',
        ]
    },
    "_sip._udp.example.com": {"SRV": ["0 0 5070 sip1.example.com."]},
    "_sip._tcp.example.com": {"SRV": ["0 0 5071 sip2.example.com."]},
    "_sips._tcp.example.com": {"SRV": ["0 0 5061 sip3.example.com."]},
    "sip1.example.com": {"A": ["127.0.0.11"], "AAAA": ["::1"]},
    "sip2.example.com": {"A": ["127.0.0.12"]},
    "sip3.example.com": {"A": ["127.0.0.13"]},
}


def _resolver(address: tuple[str, int], *, timeout: float = 2.0) -> SipResolver:
    return SipResolver(DnsSection(nameservers=(address,), timeout=timeout), rng=random.Random(0))


async def test_naptr_srv_a_chain() -> None:
    zone = Zone(CHAIN)
    async with serve_zone(zone) as address:
        targets = await _resolver(address).resolve(DnsTarget("sip", "example.com"))
    # SIPS+D2T comes first by order but a sip: URI does not use it (RFC 3263 §4.1).
    assert targets == [
        ResolvedTarget("udp", "127.0.0.11", 5070),
        ResolvedTarget("udp", "::1", 5070),
        ResolvedTarget("tcp", "127.0.0.12", 5071),
    ]
    assert zone.queries[:3] == [
        ("example.com", "NAPTR"),
        ("_sip._udp.example.com", "SRV"),
        ("sip1.example.com", "A"),
    ]


async def test_sips_uses_only_tls_naptr() -> None:
    async with serve_zone(Zone(CHAIN)) as address:
        targets = await _resolver(address).resolve(("sips", "example.com", None, None))
    assert targets == [ResolvedTarget("tls", "127.0.0.13", 5061)]


async def test_srv_priority_then_weight() -> None:
    zone = Zone(
        {
            "example.net": {
                "SRV": [],  # exists, so the NAPTR query gets NODATA rather than NXDOMAIN
            },
            "_sip._udp.example.net": {
                "SRV": [
                    "20 0 5060 backup.example.net.",
                    "10 1 5060 light.example.net.",
                    "10 1000 5060 heavy.example.net.",
                    "10 0 5060 . ",
                ]
            },
            "backup.example.net": {"A": ["127.0.0.30"]},
            "light.example.net": {"A": ["127.0.0.31"]},
            "heavy.example.net": {"A": ["127.0.0.32"]},
        }
    )
    async with serve_zone(zone) as address:
        targets = await _resolver(address).resolve(("sip", "example.net", None, None))
    # "." is not a server; with weights 1000:1 and this seed the heavy one comes first.
    assert targets == [
        ResolvedTarget("udp", "127.0.0.32", 5060),
        ResolvedTarget("udp", "127.0.0.31", 5060),
        ResolvedTarget("udp", "127.0.0.30", 5060),
    ]


async def test_explicit_port_skips_naptr_and_srv() -> None:
    zone = Zone(CHAIN)
    async with serve_zone(zone) as address:
        targets = await _resolver(address).resolve(("sip", "sip2.example.com", 5080, "TCP"))
    assert targets == [ResolvedTarget("tcp", "127.0.0.12", 5080)]
    assert zone.queries == [("sip2.example.com", "A"), ("sip2.example.com", "AAAA")]


async def test_ip_literal_asks_nothing() -> None:
    zone = Zone(CHAIN)
    async with serve_zone(zone) as address:
        resolver = _resolver(address)
        targets = await resolver.resolve(("sip", "127.0.0.9", None, None))
        targets += await resolver.resolve(("sips", "[::1]", 5062, None))
    assert targets == [ResolvedTarget("udp", "127.0.0.9", 5060), ResolvedTarget("tls", "::1", 5062)]
    assert zone.queries == []


async def test_explicit_transport_skips_naptr() -> None:
    zone = Zone(CHAIN)
    async with serve_zone(zone) as address:
        targets = await _resolver(address).resolve(DnsTarget("sip", "example.com", "tcp"))
    assert targets == [ResolvedTarget("tcp", "127.0.0.12", 5071)]
    assert ("example.com", "NAPTR") not in zone.queries


async def test_a_records_when_no_naptr_or_srv() -> None:
    async with serve_zone(Zone({"pbx.example.org": {"A": ["127.0.0.40"]}})) as address:
        targets = await _resolver(address).resolve(DnsTarget("sip", "pbx.example.org"))
    assert targets == [ResolvedTarget("udp", "127.0.0.40", 5060)]


async def test_nxdomain() -> None:
    async with serve_zone(Zone(CHAIN)) as address:
        with pytest.raises(ResolutionError, match=r"nowhere\.example does not exist \(NXDOMAIN\)"):
            await _resolver(address).resolve(DnsTarget("sip", "nowhere.example"))


async def test_nxdomain_found_after_srv() -> None:
    # With a transport the first question is the SRV name; NXDOMAIN there is not yet fatal.
    zone = Zone(CHAIN)
    async with serve_zone(zone) as address:
        with pytest.raises(ResolutionError, match=r"nowhere\.example does not exist"):
            await _resolver(address).resolve(("sip", "nowhere.example", None, "tcp"))
    assert zone.queries == [("_sip._tcp.nowhere.example", "SRV"), ("nowhere.example", "A")]


async def test_servfail() -> None:
    zone = Zone(CHAIN)
    zone.failing.add("example.com")
    async with serve_zone(zone) as address:
        with pytest.raises(ResolutionError, match=r"^sip:example\.com: DNS failure: "):
            await _resolver(address).resolve(DnsTarget("sip", "example.com"))


async def test_dnspython_timeout_is_a_resolution_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # dnspython keeps its own lifetime; when it gives up first the error is the same.
    async def give_up(*args: object, **kwargs: object) -> NoReturn:
        raise dns.resolver.LifetimeTimeout

    resolver = _resolver(("127.0.0.1", 9))
    monkeypatch.setattr(resolver._resolver, "resolve", give_up)
    with pytest.raises(
        ResolutionError, match=r"no DNS answer within 2\.0 s \(NAPTR example\.com\)"
    ):
        await resolver.resolve(DnsTarget("sip", "example.com"))


async def test_no_address_records() -> None:
    zone = Zone({"empty.example": {"SRV": []}})
    async with serve_zone(zone) as address:
        with pytest.raises(ResolutionError, match="no records lead to an address"):
            await _resolver(address).resolve(DnsTarget("sip", "empty.example"))


async def test_timeout_within_configured_timeout() -> None:
    zone = Zone(CHAIN)
    zone.silent.add("example.com")
    async with serve_zone(zone) as address:
        start = trio.current_time()
        with pytest.raises(ResolutionError, match=r"no DNS answer within 0\.3 s"):
            await _resolver(address, timeout=0.3).resolve(DnsTarget("sip", "example.com"))
        elapsed = trio.current_time() - start
    assert 0.25 <= elapsed < 0.6
    assert zone.queries[0] == ("example.com", "NAPTR")


async def test_answers_cached_for_their_ttl() -> None:
    zone = Zone(CHAIN, ttl=60, negative_ttl=60)
    now = 1000.0
    async with serve_zone(zone) as address:
        resolver = SipResolver(
            DnsSection(nameservers=(address,), timeout=2.0),
            rng=random.Random(0),
            clock=lambda: now,
        )
        target = DnsTarget("sip", "example.com")
        first = await resolver.resolve(target)
        asked = len(zone.queries)
        now += 59.0
        assert await resolver.resolve(target) == first
        assert len(zone.queries) == asked
        now += 1.0  # TTL over: everything is asked again
        assert await resolver.resolve(target) == first
        assert zone.queries[asked:] == zone.queries[:asked]


async def test_negative_answers_cached() -> None:
    zone = Zone({"pbx.example.org": {"A": ["127.0.0.40"]}}, negative_ttl=30)
    now = 0.0
    async with serve_zone(zone) as address:
        resolver = SipResolver(DnsSection(nameservers=(address,)), clock=lambda: now)
        await resolver.resolve(DnsTarget("sip", "pbx.example.org"))
        asked = len(zone.queries)
        with pytest.raises(ResolutionError, match="NXDOMAIN"):
            await resolver.resolve(DnsTarget("sip", "gone.example.org"))
        with pytest.raises(ResolutionError, match="NXDOMAIN"):
            await resolver.resolve(DnsTarget("sip", "gone.example.org"))
        await resolver.resolve(DnsTarget("sip", "pbx.example.org"))
    assert zone.queries[asked:] == [("gone.example.org", "NAPTR")]


async def test_cache_is_bounded() -> None:
    zone = Zone({name: {"A": ["127.0.0.50"]} for name in ("a.example", "b.example")})
    async with serve_zone(zone) as address:
        resolver = SipResolver(
            DnsSection(nameservers=(address,)), clock=lambda: 0.0, max_cache_entries=2
        )
        for name in ("a.example", "b.example", "a.example"):
            await resolver.resolve(("sip", name, 5060, None))
    # Each name takes two entries (A, AAAA): b pushed a out, so a was asked for twice.
    assert zone.queries.count(("a.example", "A")) == 2
    assert zone.queries.count(("b.example", "A")) == 1
