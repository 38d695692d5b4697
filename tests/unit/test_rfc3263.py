"""RFC 3263 target selection and RFC 2782 SRV ordering, on DNS snapshots (no I/O)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.config import DnsTarget
from overlay.shell.transport import ResolutionError, ResolvedTarget
from overlay.shell.transport._resolver import (
    DnsRecords,
    NaptrRecord,
    SrvRecord,
    order_srv,
    select_targets,
)

ADDRESSES = {
    "a.example.com": ["192.0.2.1"],
    "b.example.com": ["192.0.2.2", "2001:db8::2"],
    "c.example.com": ["192.0.2.3"],
    "example.com": ["192.0.2.100"],
}


def _records(
    naptr: list[NaptrRecord] | None = None, srv: dict[str, list[SrvRecord]] | None = None
) -> DnsRecords:
    return DnsRecords(naptr={"example.com": naptr or []}, srv=srv or {}, addresses=ADDRESSES)


def _naptr(order: int, preference: int, service: str, replacement: str) -> NaptrRecord:
    return NaptrRecord(order, preference, "s", service, replacement)


def _select(
    target: DnsTarget | tuple[str, str, int | None, str | None], records: DnsRecords
) -> list[ResolvedTarget]:
    return select_targets(target, records, random.Random(0))


UDP = SrvRecord(0, 0, 5070, "a.example.com.")
TCP = SrvRecord(0, 0, 5071, "b.example.com.")
TLS = SrvRecord(0, 0, 5061, "c.example.com.")
SRV = {
    "_sip._udp.example.com": [UDP],
    "_sip._tcp.example.com": [TCP],
    "_sips._tcp.example.com": [TLS],
}


class TestTransportSelection:
    """RFC 3263 §4.1 and §4.2."""

    def test_naptr_order_then_preference(self) -> None:
        naptr = [
            _naptr(20, 0, "SIP+D2U", "_sip._udp.example.com."),
            _naptr(10, 20, "SIP+D2U", "_sip._udp.example.com."),
            _naptr(10, 10, "SIP+D2T", "_sip._tcp.example.com."),
        ]
        assert _select(DnsTarget("sip", "example.com"), _records(naptr, SRV)) == [
            ResolvedTarget("tcp", "192.0.2.2", 5071),
            ResolvedTarget("tcp", "2001:db8::2", 5071),
            ResolvedTarget("udp", "192.0.2.1", 5070),
        ]

    @pytest.mark.parametrize(
        ("flags", "service"),
        [("s", "SIP+D2S"), ("s", "SIPS+D2T"), ("u", "SIP+D2U"), ("", "SIP+D2U"), ("a", "SIP+D2U")],
    )
    def test_naptr_unusable_for_sip_is_ignored(self, flags: str, service: str) -> None:
        naptr = [
            NaptrRecord(1, 1, flags, service, "_sip._udp.example.com."),
            _naptr(5, 5, "SIP+D2T", "_sip._tcp.example.com."),
        ]
        targets = _select(DnsTarget("sip", "example.com"), _records(naptr, SRV))
        assert {target.transport for target in targets} == {"tcp"}

    def test_naptr_fields_case_insensitive(self) -> None:
        naptr = [NaptrRecord(1, 1, "S", "sip+d2u", "_SIP._UDP.Example.COM.")]
        assert _select(DnsTarget("sip", "example.com"), _records(naptr, SRV)) == [
            ResolvedTarget("udp", "192.0.2.1", 5070)
        ]

    def test_sips_uses_only_sips_naptr(self) -> None:
        naptr = [
            _naptr(1, 1, "SIP+D2U", "_sip._udp.example.com."),
            _naptr(2, 1, "SIPS+D2T", "_sips._tcp.example.com."),
        ]
        assert _select(DnsTarget("sips", "example.com"), _records(naptr, SRV)) == [
            ResolvedTarget("tls", "192.0.2.3", 5061)
        ]

    def test_sip_without_transport_does_not_pick_tls(self) -> None:
        # TLS is asked for by sips: or transport "tls"; a sip: target keeps to UDP and TCP.
        naptr = [_naptr(1, 1, "SIPS+D2T", "_sips._tcp.example.com.")]
        targets = _select(DnsTarget("sip", "example.com"), _records(naptr, SRV))
        assert {target.transport for target in targets} == {"udp", "tcp"}

    @pytest.mark.parametrize(
        "target",
        [
            DnsTarget("sip", "example.com", "tls"),
            ("sip", "example.com", None, "TLS"),
            ("sips", "example.com", None, None),
            # RFC 3261 §26.2.2: sips: over TCP is TLS over TCP.
            ("sips", "example.com", None, "tcp"),
        ],
    )
    def test_tls_asks_sips_tcp_srv(self, target: DnsTarget | tuple[str, str, None, str]) -> None:
        naptr = [_naptr(1, 1, "SIP+D2U", "_sip._udp.example.com.")]
        assert _select(target, _records(naptr, SRV)) == [ResolvedTarget("tls", "192.0.2.3", 5061)]

    def test_srv_fallback_without_naptr(self) -> None:
        assert _select(DnsTarget("sip", "example.com"), _records(srv=SRV)) == [
            ResolvedTarget("udp", "192.0.2.1", 5070),
            ResolvedTarget("tcp", "192.0.2.2", 5071),
            ResolvedTarget("tcp", "2001:db8::2", 5071),
        ]

    def test_srv_fallback_when_naptr_leads_nowhere(self) -> None:
        naptr = [_naptr(1, 1, "SIP+D2T", "_sip._tcp.broken.example.com.")]
        targets = _select(DnsTarget("sip", "example.com"), _records(naptr, SRV))
        assert targets[0] == ResolvedTarget("udp", "192.0.2.1", 5070)

    @pytest.mark.parametrize(
        ("scheme", "expected"),
        [
            ("sip", ResolvedTarget("udp", "192.0.2.100", 5060)),
            ("sips", ResolvedTarget("tls", "192.0.2.100", 5061)),
        ],
    )
    def test_address_fallback_default_port(self, scheme: str, expected: ResolvedTarget) -> None:
        assert _select((scheme, "example.com", None, None), _records()) == [expected]

    def test_explicit_transport_asks_only_its_srv(self) -> None:
        naptr = [_naptr(1, 1, "SIP+D2U", "_sip._udp.example.com.")]
        assert _select(DnsTarget("sip", "example.com", "tcp"), _records(naptr, SRV)) == [
            ResolvedTarget("tcp", "192.0.2.2", 5071),
            ResolvedTarget("tcp", "2001:db8::2", 5071),
        ]

    def test_explicit_transport_without_srv_uses_address(self) -> None:
        assert _select(("sip", "example.com", None, "TCP"), _records()) == [
            ResolvedTarget("tcp", "192.0.2.100", 5060)
        ]
        assert _select(("sip", "example.com", None, "tls"), _records()) == [
            ResolvedTarget("tls", "192.0.2.100", 5061)
        ]

    def test_explicit_port_skips_naptr_and_srv(self) -> None:
        naptr = [_naptr(1, 1, "SIP+D2T", "_sip._tcp.example.com.")]
        assert _select(("sip", "example.com", 5080, None), _records(naptr, SRV)) == [
            ResolvedTarget("udp", "192.0.2.100", 5080)
        ]

    @pytest.mark.parametrize(
        ("target", "expected"),
        [
            (("sip", "192.0.2.9", None, None), ResolvedTarget("udp", "192.0.2.9", 5060)),
            (("sip", "192.0.2.9", 5099, "tcp"), ResolvedTarget("tcp", "192.0.2.9", 5099)),
            (("sips", "[2001:db8::9]", None, None), ResolvedTarget("tls", "2001:db8::9", 5061)),
            (("sip", "192.0.2.9", None, "tls"), ResolvedTarget("tls", "192.0.2.9", 5061)),
        ],
    )
    def test_ip_literal_needs_no_dns(
        self, target: tuple[str, str, int | None, str | None], expected: ResolvedTarget
    ) -> None:
        assert _select(target, DnsRecords()) == [expected]

    def test_nothing_resolves(self) -> None:
        assert _select(DnsTarget("sip", "nowhere.example"), DnsRecords()) == []

    def test_duplicates_removed(self) -> None:
        srv = {"_sip._udp.example.com": [UDP, SrvRecord(5, 0, 5070, "a.example.com")]}
        assert _select(DnsTarget("sip", "example.com"), _records(srv=srv)) == [
            ResolvedTarget("udp", "192.0.2.1", 5070)
        ]

    @pytest.mark.parametrize(
        "target",
        [
            ("tel", "example.com", None, None),
            ("sip", "example.com", None, "sctp"),
            ("sips", "example.com", None, "udp"),
            ("sip", "example.com", 0, None),
        ],
    )
    def test_unusable_target(self, target: tuple[str, str, int | None, str | None]) -> None:
        with pytest.raises(ResolutionError):
            _select(target, DnsRecords())


class TestSrvOrder:
    """RFC 2782 "Usage rules"."""

    def test_priority_ascending(self) -> None:
        records = [SrvRecord(p, 10, 5060, f"h{p}") for p in (30, 10, 20)]
        assert [r.priority for r in order_srv(records, random.Random(1))] == [10, 20, 30]

    def test_dot_target_means_no_service(self) -> None:
        srv = {"_sip._udp.example.com": [SrvRecord(0, 0, 0, ".")], "_sip._tcp.example.com": [TCP]}
        assert _select(DnsTarget("sip", "example.com"), _records(srv=srv)) == [
            ResolvedTarget("tcp", "192.0.2.2", 5071),
            ResolvedTarget("tcp", "2001:db8::2", 5071),
        ]

    def test_no_address_fallback_when_srv_exists(self) -> None:
        # RFC 3263 §4.2: A/AAAA of the domain only "if no SRV records were found".
        srv = {"_sip._udp.example.com": [SrvRecord(0, 0, 0, "."), SrvRecord(0, 0, 5, "gone")]}
        assert _select(DnsTarget("sip", "example.com"), _records(srv=srv)) == []

    def test_weights_are_proportions(self) -> None:
        heavy, light = SrvRecord(0, 90, 5060, "heavy"), SrvRecord(0, 10, 5060, "light")
        rng = random.Random(42)
        firsts = Counter(order_srv([light, heavy], rng)[0].target for _ in range(10_000))
        assert 0.88 < firsts["heavy"] / 10_000 < 0.92

    def test_zero_weight_rarely_first(self) -> None:
        zero, some = SrvRecord(0, 0, 5060, "zero"), SrvRecord(0, 99, 5060, "some")
        rng = random.Random(7)
        firsts = Counter(order_srv([some, zero], rng)[0].target for _ in range(10_000))
        # Chosen first only on a draw of 0 out of 0..99.
        assert 50 < firsts["zero"] < 150

    def test_all_zero_weights_keep_every_record(self) -> None:
        records = [SrvRecord(0, 0, 5060, name) for name in "abc"]
        assert sorted(r.target for r in order_srv(records, random.Random(3))) == ["a", "b", "c"]

    def test_seeded_order_reproducible(self) -> None:
        records = [SrvRecord(0, w, 5060, f"h{w}") for w in (5, 10, 20, 40)]
        runs = {tuple(r.target for r in order_srv(records, random.Random(11))) for _ in range(5)}
        assert len(runs) == 1

    def test_every_order_reachable(self) -> None:
        a, b = SrvRecord(0, 50, 5060, "a"), SrvRecord(0, 50, 5060, "b")
        rng = random.Random(0)
        orders = {tuple(r.target for r in order_srv([a, b], rng)) for _ in range(100)}
        assert orders == {("a", "b"), ("b", "a")}

    @given(
        records=st.lists(
            st.builds(
                SrvRecord,
                priority=st.integers(0, 3),
                weight=st.integers(0, 65535),
                port=st.integers(1, 65535),
                target=st.sampled_from(["a", "b", "c"]),
            ),
            max_size=8,
        ),
        seed=st.integers(0, 2**32),
    )
    def test_order_is_a_permutation_by_priority(self, records: list[SrvRecord], seed: int) -> None:
        ordered = order_srv(records, random.Random(seed))
        assert sorted(ordered, key=repr) == sorted(records, key=repr)
        assert [r.priority for r in ordered] == sorted(r.priority for r in records)
