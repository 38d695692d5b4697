"""overlay.routing dialplan: prefix and domain precedence, strip_prefix."""

from __future__ import annotations

import doctest

import overlay.routing._dialplan
from overlay.config import parse_config
from overlay.routing import (
    Dialplan,
    DialplanMatch,
    DialplanRule,
    DnsTarget,
    StaticTarget,
    choose_egress,
)

A = StaticTarget("127.0.10.1", 5060)
B = StaticTarget("127.0.10.2", 5060, "tcp")
C = DnsTarget("sip", "carrier.example")
D = DnsTarget("sips", "secure.example", "tcp")


def _target(plan: Dialplan, user: str | None, host: str = "pbx.example") -> object:
    match = plan.match(user, host)
    return None if match is None else match.target


def test_longest_prefix_wins_whatever_the_order() -> None:
    rules = [
        DialplanRule(A, user_prefix="+1"),
        DialplanRule(B, user_prefix="+1415"),
        DialplanRule(C, user_prefix="+14"),
    ]
    for plan in (Dialplan(rules), Dialplan(reversed(rules))):
        assert _target(plan, "+14155550100") == B
        assert _target(plan, "+14085550100") == C
        assert _target(plan, "+12125550100") == A


def test_domain_beats_any_domain_at_equal_prefix() -> None:
    rules = [
        DialplanRule(A, user_prefix="+1"),
        DialplanRule(B, user_prefix="+1", domain="pbx.example"),
    ]
    for plan in (Dialplan(rules), Dialplan(reversed(rules))):
        assert _target(plan, "+1555", "pbx.example") == B
        assert _target(plan, "+1555", "other.example") == A


def test_longer_prefix_beats_domain() -> None:
    plan = Dialplan(
        [
            DialplanRule(A, user_prefix="+1", domain="pbx.example"),
            DialplanRule(B, user_prefix="+14"),
        ]
    )
    assert _target(plan, "+1415", "pbx.example") == B


def test_ties_go_to_file_order() -> None:
    plan = Dialplan([DialplanRule(A, user_prefix="+1"), DialplanRule(B, user_prefix="+1")])
    assert _target(plan, "+1555") == A
    plan = Dialplan([DialplanRule(C, domain="pbx.example"), DialplanRule(D, domain="pbx.example")])
    assert _target(plan, "bob") == C


def test_domain_is_case_insensitive_and_exact() -> None:
    plan = Dialplan([DialplanRule(A, domain="pbx.example")])
    assert _target(plan, "bob", "PBX.Example") == A
    assert _target(plan, "bob", "sub.pbx.example") is None
    assert _target(plan, "bob", "pbx.example.org") is None


def test_user_prefix_is_case_sensitive() -> None:
    plan = Dialplan([DialplanRule(A, user_prefix="sales")])
    assert _target(plan, "sales-1") == A
    assert _target(plan, "Sales-1") is None


def test_request_without_user() -> None:
    plan = Dialplan([DialplanRule(A, user_prefix="+1"), DialplanRule(B, domain="pbx.example")])
    assert _target(plan, None, "pbx.example") == B
    assert _target(plan, None, "other.example") is None
    assert _target(Dialplan([DialplanRule(C)]), None) == C


def test_no_rules_no_match() -> None:
    assert Dialplan([]).match("bob", "pbx.example") is None


def test_strip_prefix() -> None:
    strip = DialplanRule(A, user_prefix="+1", strip_prefix=True)
    keep = DialplanRule(B, user_prefix="00")
    plan = Dialplan([strip, keep])
    assert plan.match("+14155550100", "h") == DialplanMatch(strip, A, "4155550100")
    assert plan.match("0044207", "h") == DialplanMatch(keep, B, "0044207")
    # Nothing left after stripping: forward without a user part.
    assert plan.match("+1", "h") == DialplanMatch(strip, A, None)


def test_rules_kept_in_file_order() -> None:
    rules = (DialplanRule(A), DialplanRule(B, user_prefix="+1"))
    assert Dialplan(rules).rules == rules


def test_from_config() -> None:
    config = parse_config(
        """
        [node]
        node_id = "a"
        region = "r"
        [sip]
        listen = ["udp:127.0.0.1:0"]
        [[dialplan]]
        target = "sip:carrier.example"
        [[dialplan]]
        user_prefix = "+1"
        domain = "PBX.example"
        target = "127.0.10.2:5060"
        transport = "tcp"
        strip_prefix = true
        """,
        source="node.toml",
    )
    plan = Dialplan(config.dialplan)
    match = plan.match("+1555", "pbx.example")
    assert match is not None
    assert (match.target, match.user) == (B, "555")
    assert _target(plan, "+1555", "elsewhere.example") == C


def test_doctest_examples() -> None:
    result = doctest.testmod(overlay.routing._dialplan)
    assert result.attempted > 0
    assert result.failed == 0


AZS = ("use1-a", "use1-b")
CALL_IDS = [f"{n}-call@127.0.0.1" for n in range(2000)]


def test_egress_is_this_node_when_it_is_listed() -> None:
    assert all(
        choose_egress(AZS, call_id, "use1-b", AZS.__contains__) == "use1-b" for call_id in CALL_IDS
    )


def test_calls_spread_over_the_egress_azs_and_each_call_always_picks_the_same() -> None:
    picks = [choose_egress(AZS, call_id, "usw2-a", AZS.__contains__) for call_id in CALL_IDS]
    share = picks.count("use1-a") / len(picks)
    assert 0.45 < share < 0.55
    again = [choose_egress(AZS, call_id, "usw2-b", AZS.__contains__) for call_id in CALL_IDS]
    assert again == picks  # the ingress AZ does not matter: a retransmission lands alike


def test_a_dead_az_moves_only_the_calls_it_would_have_taken() -> None:
    three = ("use1-a", "use1-b", "use1-c")
    before = {c: choose_egress(three, c, "usw2-a", three.__contains__) for c in CALL_IDS}
    alive = {"use1-a", "use1-c"}
    after = {c: choose_egress(three, c, "usw2-a", alive.__contains__) for c in CALL_IDS}
    moved = {c for c in CALL_IDS if before[c] != after[c]}
    assert moved == {c for c in CALL_IDS if before[c] == "use1-b"}
    assert None not in after.values()
    assert choose_egress(three, CALL_IDS[0], "usw2-a", lambda node: False) is None
