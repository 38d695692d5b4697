"""overlay.security.EdgeGuard on its own, with a hand-set clock."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.config import SecuritySection, TrunkLimit, parse_config
from overlay.security import (
    BlockedSource,
    BlockReason,
    EdgeGuard,
    GuardEvent,
    SourceBlocked,
    SourceUnblocked,
    edge_guard,
)
from overlay.sip import Reject, Request
from tests.unit.sip_helpers import parse, request

CALLER = "192.0.2.10"
OTHER = "192.0.2.11"
TRUNK = "198.51.100.7"
PEER = "203.0.113.1"

RATE_LIMITED = Reject(503, "Rate Limit Exceeded", 5)
DROP = Reject(None)


def guard(**changes: object) -> EdgeGuard:
    section = dataclasses.replace(SecuritySection(), **changes)  # type: ignore[arg-type]
    return EdgeGuard(section, exempt=[PEER])


def req(method: str = "INVITE", *, n: int = 0, **kwargs: object) -> Request:
    message = parse(request(method, branch=f"z9hG4bK-{method}-{n}", call_id=f"c{n}", **kwargs))  # type: ignore[arg-type]
    assert isinstance(message, Request)
    return message


def offer(g: EdgeGuard, message: Request, host: str = CALLER, now: float = 0.0) -> Reject | None:
    """What the proxy core does with a new request: screen, then admit."""
    if not g.screen(host, now):
        return DROP
    return g.admit(message, host, now)


def events(g: EdgeGuard) -> list[GuardEvent]:
    out = []
    while (event := g.next_event()) is not None:
        out.append(event)
    return out


# -- rate limiting ------------------------------------------------------------------------------


def test_burst_then_rate() -> None:
    g = guard(rate=10.0, burst=5)
    verdicts = [offer(g, req(n=i)) for i in range(6)]
    assert verdicts == [None] * 5 + [RATE_LIMITED]
    # One token every 0.1 s.
    assert offer(g, req(n=6), now=0.05) == RATE_LIMITED
    assert offer(g, req(n=7), now=0.1) is None
    assert offer(g, req(n=8), now=0.1) == RATE_LIMITED
    assert g.statistics().rate_limited == 3


def test_drop_instead_of_503() -> None:
    g = guard(rate=1.0, burst=1, limit_action="drop")
    assert offer(g, req(n=1)) is None
    assert offer(g, req(n=2)) == DROP
    assert g.counters()["security.rate_limited"] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(times: list[float]) -> None:
    rate, burst = 3.0, 4
    g = guard(rate=rate, burst=burst, max_limited=0)
    times.sort()
    admitted = [t for i, t in enumerate(times) if offer(g, req(n=i), now=t) is None]
    if admitted:
        assert len(admitted) <= burst + rate * (admitted[-1] - times[0]) + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1 / 3, max_value=10.0), min_size=1, max_size=100))
def test_a_source_within_its_rate_is_never_refused(gaps: list[float]) -> None:
    g = guard(rate=3.0, burst=1)
    now = 0.0
    for i, gap in enumerate(gaps):
        now += gap
        assert offer(g, req(n=i), now=now) is None


@pytest.mark.parametrize(
    "message",
    [
        req("BYE", to_tag="callee"),
        req("INVITE", to_tag="callee"),  # a re-INVITE
        req("UPDATE", to_tag="callee"),
    ],
    ids=["BYE", "re-INVITE", "UPDATE"],
)
def test_what_belongs_to_an_admitted_call_is_neither_charged_nor_refused(message: Request) -> None:
    g = guard(rate=1.0, burst=1)
    assert offer(g, req(n=1)) is None
    assert offer(g, req(n=2)) == RATE_LIMITED  # the bucket is empty
    for _ in range(50):
        assert offer(g, message) is None
    assert g.statistics().rate_limited == 1


def test_sources_have_buckets_of_their_own() -> None:
    g = guard(rate=1.0, burst=1)
    assert offer(g, req(n=1), CALLER) is None
    assert offer(g, req(n=2), CALLER) == RATE_LIMITED
    assert offer(g, req(n=3), OTHER) is None


def test_an_ipv6_source_is_counted_by_its_64() -> None:
    g = guard(rate=1.0, burst=1)
    assert offer(g, req(n=1), "2001:db8:1:2::1") is None
    assert offer(g, req(n=2), "2001:db8:1:2:ffff::9") == RATE_LIMITED  # same /64
    assert offer(g, req(n=3), "2001:db8:1:3::1") is None
    # An IPv4-mapped address (a dual-stack socket) is the IPv4 source.
    assert offer(g, req(n=4), "192.0.2.99") is None
    assert offer(g, req(n=5), "::ffff:192.0.2.99") == RATE_LIMITED


def test_trunk_has_its_own_limits() -> None:
    trunk = TrunkLimit(ipaddress.ip_network("198.51.100.0/24"), rate=100.0, burst=50)
    g = guard(rate=1.0, burst=1, trunks=(trunk,))
    assert [offer(g, req(n=i), TRUNK) for i in range(51)] == [None] * 50 + [RATE_LIMITED]
    assert offer(g, req(n=99), TRUNK, now=0.01) is None  # refilled at 100/s


def test_peers_are_exempt_from_everything() -> None:
    g = guard(rate=1.0, burst=1, allow=(), max_limited=1)
    agent = ("User-Agent: friendly-scanner",)
    for i in range(100):
        assert offer(g, req(n=i, extra=agent), PEER) is None
        g.answered(PEER, 404, 0.0)
    assert g.statistics().blocked == {}
    assert g.statistics().sources == 0


# -- ACL ----------------------------------------------------------------------------------------


def test_source_outside_the_acl_is_dropped_before_parsing() -> None:
    g = guard(allow=(ipaddress.ip_network("192.0.2.0/28"),))
    assert g.screen(CALLER, 0.0)  # 192.0.2.10 is inside /28
    assert not g.screen("192.0.2.16", 0.0)
    assert not g.screen("2001:db8::1", 0.0)
    assert g.statistics().denied == 2


def test_reject_mode_answers_403_and_blocks_a_persistent_source() -> None:
    g = guard(allow=(), deny_action="reject", max_failures=3)
    assert g.screen(CALLER, 0.0)  # parsed, to be answered
    assert [g.admit(req(n=i), CALLER, 0.0) for i in range(3)] == [Reject(403, "Forbidden")] * 3
    [blocked] = events(g)
    assert isinstance(blocked, SourceBlocked)
    assert blocked.reason is BlockReason.FAILURES
    assert not g.screen(CALLER, 1.0)


def test_trunks_and_static_targets_are_let_in_when_allow_is_empty() -> None:
    config = parse_config(
        '[node]\nnode_id = "a"\nregion = "r"\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
        '[security]\nallow = []\n[[security.trunks]]\ncidr = "198.51.100.0/24"\n'
        '[[dialplan]]\ntarget = "192.0.2.50:5060"\n'
        '[[dialplan]]\nuser_prefix = "9"\ntarget = "pbx.example.com:5060"\n',
        source="node.toml",
    )
    g = edge_guard(config)
    assert g is not None
    assert g.screen(TRUNK, 0.0)
    assert g.screen("192.0.2.50", 0.0)  # where the node sends calls: its answers come back
    assert not g.screen("192.0.2.51", 0.0)


def test_no_section_no_guard() -> None:
    config = parse_config(
        '[node]\nnode_id = "a"\nregion = "r"\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n',
        source="node.toml",
    )
    assert edge_guard(config) is None


# -- scanners -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent",
    ["friendly-scanner", "sipvicious 0.3.3", "VaxSIPUserAgent/3.1", "SIPCLI/v1.8", "pplsip"],
)
def test_scanner_user_agent_blocks_at_once(agent: str) -> None:
    g = guard(block_time=600.0)
    assert offer(g, req("OPTIONS", extra=(f"User-Agent: {agent}",)), now=10.0) == DROP
    [blocked] = events(g)
    assert blocked == SourceBlocked(CALLER, BlockReason.USER_AGENT, 610.0, agent)
    # Everything from it is dropped before parsing, even a perfectly good call.
    assert not g.screen(CALLER, 11.0)
    assert g.counters()["security.blocked.user_agent"] == 1
    assert g.counters()["security.blocked_drops"] == 1


def test_block_ends_after_block_time() -> None:
    g = guard(block_time=60.0)
    offer(g, req(extra=("User-Agent: friendly-scanner",)), now=0.0)
    events(g)
    for t in (1.0, 2.0, 3.0):
        assert not g.screen(CALLER, t)
    g.handle_timer(59.9)
    assert events(g) == []
    g.handle_timer(60.5)
    assert events(g) == [SourceUnblocked(CALLER, dropped=3)]
    assert g.screen(CALLER, 61.0)
    assert offer(g, req(n=5), now=61.0) is None
    assert g.counters()["security.blocked_sources"] == 0


def test_block_ends_on_time_even_between_housekeeping_calls() -> None:
    g = guard(block_time=60.0)
    offer(g, req(extra=("User-Agent: sipcli",)), now=0.0)
    events(g)
    assert g.screen(CALLER, 60.0)
    assert events(g) == [SourceUnblocked(CALLER, dropped=0)]


def test_user_agents_can_be_turned_off() -> None:
    g = guard(scanner_user_agents=())
    assert offer(g, req(extra=("User-Agent: friendly-scanner",))) is None


def test_options_sweep_blocks() -> None:
    g = guard(sweep_users=5, window=10.0)
    verdicts = [
        offer(g, req("OPTIONS", n=i, uri=f"sip:{100 + i}@example.com"), now=i * 0.1)
        for i in range(5)
    ]
    assert verdicts == [None] * 4 + [DROP]
    [blocked] = events(g)
    assert isinstance(blocked, SourceBlocked)
    assert (blocked.reason, blocked.detail) == (BlockReason.SWEEP, "5 users in 10 s")


def test_register_sweep_counts_to_users() -> None:
    g = guard(sweep_users=3)
    for i in range(3):
        message = parse(
            request(
                "REGISTER", uri="sip:example.com", branch=f"z9hG4bK-r{i}", call_id=f"r{i}"
            ).replace(b"To: <sip:alice@example.com>", f"To: <sip:{i}@example.com>".encode())
        )
        assert isinstance(message, Request)
        verdict = offer(g, message)
    assert verdict == DROP
    assert g.statistics().blocked == {"sweep": 1}


def test_the_same_user_again_is_no_sweep_and_the_window_forgets() -> None:
    g = guard(sweep_users=3, window=10.0, rate=1000.0, burst=1000)
    for i in range(50):  # a monitoring system's keep-alives
        assert offer(g, req("OPTIONS", n=i, uri="sip:ping@example.com"), now=i * 0.1) is None
    for i, now in enumerate((20.0, 21.0, 40.0, 41.0, 60.0)):  # two per window at most
        assert offer(g, req("OPTIONS", n=100 + i, uri=f"sip:{i}@example.com"), now=now) is None
    assert g.statistics().blocked == {}


def test_invites_to_many_numbers_are_no_sweep() -> None:
    g = guard(sweep_users=3, rate=1000.0, burst=1000)
    for i in range(20):  # a PBX placing calls
        assert offer(g, req("INVITE", n=i, uri=f"sip:+1555000{i:04}@example.com")) is None


def test_failures_block() -> None:
    g = guard(max_failures=4)
    for status in (404, 403, 401, 407, 486, 404):  # 401/407 (challenges) and 486 are normal
        g.answered(CALLER, status, 0.0)
    assert g.statistics().blocked == {}
    g.answered(CALLER, 484, 0.0)
    assert g.statistics().blocked == {"failures": 1}
    assert not g.screen(CALLER, 1.0)


def test_failures_outside_the_window_do_not_add_up() -> None:
    g = guard(max_failures=3, window=10.0)
    for now in (0.0, 5.0, 12.0, 15.0, 24.0, 27.0):
        g.answered(CALLER, 404, now)
    assert g.statistics().blocked == {}


def test_flood_past_the_rate_blocks() -> None:
    g = guard(rate=1.0, burst=2, max_limited=10)
    verdicts = [offer(g, req(n=i), now=i * 0.001) for i in range(20)]
    assert verdicts[:2] == [None, None]
    assert verdicts[2:11] == [RATE_LIMITED] * 9
    assert verdicts[11:] == [DROP] * 9  # the 10th refusal blocked it; the rest never parsed
    assert g.statistics().blocked == {"flood": 1}
    assert g.statistics().blocked_drops == 8


def test_trunks_and_targets_are_never_blocked() -> None:
    trunk = TrunkLimit(ipaddress.ip_network("198.51.100.0/24"), rate=1.0, burst=1)
    g = EdgeGuard(
        dataclasses.replace(SecuritySection(), trunks=(trunk,), max_limited=2, max_failures=2),
        targets=[OTHER],
    )
    for host in (TRUNK, OTHER):
        for i in range(10):
            message = req("OPTIONS", n=i, uri=f"sip:{i}@x", extra=("User-Agent: friendly-scanner",))
            offer(g, message, host)
            g.answered(host, 404, 0.0)
    assert g.statistics().blocked == {}
    assert g.statistics().rate_limited > 0  # but still rate-limited


# -- bounded state ------------------------------------------------------------------------------


def test_quiet_sources_are_forgotten() -> None:
    g = guard(rate=10.0, burst=40, window=60.0)
    for i in range(100):
        g.screen(f"192.0.2.{i}", float(i))
    assert g.statistics().sources == 100
    g.handle_timer(120.0)  # 60 s after the first 61 were last seen
    assert g.statistics().sources == 39


def test_tracked_sources_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import overlay.security._guard as guard_module

    monkeypatch.setattr(guard_module, "MAX_SOURCES", 10)
    g = guard()
    for i in range(50):
        g.screen(f"192.0.2.{i}", 0.0)
    assert g.statistics().sources == 10


def _scan_from(g: EdgeGuard, hosts: Sequence[str]) -> None:
    for host in hosts:
        offer(g, req(extra=("User-Agent: friendly-scanner",)), host)


def test_blocked_sources_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import overlay.security._guard as guard_module

    monkeypatch.setattr(guard_module, "MAX_SOURCES", 5)
    g = guard()
    _scan_from(g, [f"192.0.2.{i}" for i in range(8)])
    assert g.statistics().blocked_sources == 5
    assert not g.screen("192.0.2.7", 1.0)  # the newest blocks are kept
    assert g.screen("192.0.2.0", 1.0)


# -- the NOC's view: blocks and unblock ---------------------------------------------------------


def test_blocks_lists_each_block_with_what_it_dropped() -> None:
    g = guard(block_time=600.0, max_failures=2)
    offer(g, req("OPTIONS", extra=("User-Agent: friendly-scanner",)), now=10.0)
    g.answered("2001:db8:1:2::7", 404, 20.0)
    g.answered("2001:db8:1:2::8", 404, 21.0)  # the same /64
    assert g.blocks(22.0) == [
        BlockedSource(CALLER, BlockReason.USER_AGENT, "friendly-scanner", 10.0, 610.0, 0, None),
        BlockedSource(
            "2001:db8:1:2::/64", BlockReason.FAILURES, "2 failures in 60 s", 21.0, 621.0, 0, None
        ),
    ]
    for t in (30.0, 31.5):
        assert not g.screen(CALLER, t)
    [scanner, _] = g.blocks(32.0)
    assert (scanner.dropped, scanner.last_dropped) == (2, 31.5)
    # A block that has run out is not listed, even before housekeeping ends it.
    assert [b.source for b in g.blocks(615.0)] == ["2001:db8:1:2::/64"]


def test_unblock_lifts_one_source_at_once() -> None:
    g = guard(block_time=600.0)
    _scan_from(g, [CALLER, OTHER])
    events(g)
    assert not g.screen(CALLER, 1.0)
    [lifted] = g.unblock(CALLER, 2.0)
    assert (lifted.source, lifted.reason, lifted.dropped) == (CALLER, BlockReason.USER_AGENT, 1)
    # Its next request is handled; the other source stays blocked.
    assert offer(g, req(n=9), CALLER, now=3.0) is None
    assert not g.screen(OTHER, 3.0)
    assert [b.source for b in g.blocks(3.0)] == [OTHER]
    # Lifting is reported by the caller, not as a guard event, and counted apart.
    assert events(g) == []
    counters = g.counters()
    assert (counters["security.lifted"], counters["security.unblocked"]) == (1, 0)
    assert counters["security.blocked_sources"] == 1


def test_unblock_is_idempotent_and_names_no_block_that_ran_out() -> None:
    g = guard(block_time=60.0)
    _scan_from(g, [CALLER])
    assert g.unblock(OTHER, 1.0) == []  # never blocked
    assert g.unblock(CALLER, 60.0) == []  # its block is over: housekeeping reports the end
    g.handle_timer(60.0)
    assert [type(e) for e in events(g)] == [SourceBlocked, SourceUnblocked]
    assert g.counters()["security.lifted"] == 0


def test_unblock_every_source() -> None:
    g = guard()
    _scan_from(g, [CALLER, OTHER, "2001:db8::1"])
    lifted = g.unblock("*", 1.0)
    assert [b.source for b in lifted] == [CALLER, OTHER, "2001:db8::/64"]
    assert g.blocks(1.0) == []
    assert g.unblock("*", 1.0) == []
    assert g.statistics().lifted == 3


@pytest.mark.parametrize("source", ["2001:db8::99", "2001:db8::/64", "::ffff:192.0.2.10"])
def test_unblock_takes_an_address_or_the_source_as_listed(source: str) -> None:
    g = guard()
    _scan_from(g, ["2001:db8::1", CALLER])
    assert len(g.unblock(source, 1.0)) == 1


@pytest.mark.parametrize(
    "source", ["", "pbx.example", "192.0.2.0/24", "2001:db8::/48", "192.0.2.10:5060", "**"]
)
def test_unblock_refuses_what_is_no_source(source: str) -> None:
    g = guard()
    _scan_from(g, [CALLER])
    with pytest.raises(ValueError, match="is not an IP address or an IPv6 /64"):
        g.unblock(source, 1.0)
    assert len(g.blocks(1.0)) == 1
