"""The dialplan: which egress target a Request-URI goes to (pure, no I/O).

Precedence, from docs/internal/config.md: the longest matching ``user_prefix`` wins; among equal
prefixes a rule naming the Request-URI's domain beats a rule for any domain; remaining ties go
to the rule written first. The rules are sorted by that key once, so ``match`` is a first-hit
scan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from overlay.config import DialplanRule, DnsTarget, StaticTarget


@dataclass(frozen=True)
class DialplanMatch:
    """The outcome of a dialplan lookup.

    Attributes:
        rule: the rule that matched.
        target: where to send the request (``rule.target``).
        user: the Request-URI user to forward, after ``strip_prefix``; ``None`` when the
            request had no user part or stripping left nothing.
    """

    rule: DialplanRule
    target: StaticTarget | DnsTarget
    user: str | None


class Dialplan:
    """An immutable, ordered set of dialplan rules.

    Args:
        rules: the rules in file order (``NodeConfig.dialplan``).

    Examples:
        >>> from overlay.config import DialplanRule, DnsTarget, StaticTarget
        >>> plan = Dialplan([
        ...     DialplanRule(DnsTarget("sip", "carrier.example"), user_prefix="+1"),
        ...     DialplanRule(StaticTarget("127.0.10.7", 5060), user_prefix="+1",
        ...                  domain="pbx.example"),
        ...     DialplanRule(StaticTarget("127.0.10.8", 5060), user_prefix="+1415",
        ...                  strip_prefix=True),
        ... ])
        >>> plan.match("+12125550100", "pbx.example").target
        StaticTarget(host='127.0.10.7', port=5060, transport=None)
        >>> plan.match("+12125550100", "other.example").target
        DnsTarget(scheme='sip', domain='carrier.example', transport=None)
        >>> plan.match("+14155550100", "pbx.example").user
        '5550100'
        >>> plan.match("alice", "pbx.example") is None
        True
    """

    def __init__(self, rules: Iterable[DialplanRule]) -> None:
        self.rules: tuple[DialplanRule, ...] = tuple(rules)
        # sorted() is stable, so equal keys keep file order.
        self._by_precedence = sorted(
            self.rules, key=lambda rule: (-len(rule.user_prefix), rule.domain is None)
        )

    def match(self, user: str | None, host: str) -> DialplanMatch | None:
        """Find the rule for a Request-URI.

        Args:
            user: the Request-URI user part, ``None`` when there is none; compared
                case-sensitively, as RFC 3261 §19.1.4 compares users.
            host: the Request-URI host; compared case-insensitively.

        Returns:
            The best match, or ``None`` when no rule applies.
        """
        host = host.lower()
        for rule in self._by_precedence:
            if rule.domain is not None and rule.domain != host:
                continue
            if rule.user_prefix and (user is None or not user.startswith(rule.user_prefix)):
                continue
            if rule.strip_prefix and user is not None:
                user = user[len(rule.user_prefix) :] or None
            return DialplanMatch(rule, rule.target, user)
        return None


def choose_egress(
    candidates: tuple[str, ...], call_id: str, node_id: str, reachable: Callable[[str], bool]
) -> str | None:
    """The node a new call is anchored on, among a rule's ``egress`` nodes: the first of
    ``order_egress``, or ``None`` when no candidate is reachable.

    Examples:
        >>> up = {"use1-a", "use1-b"}.__contains__
        >>> choose_egress(("use1-a", "use1-b"), "c1@h", "use1-b", up)
        'use1-b'
        >>> picked = choose_egress(("use1-a", "use1-b"), "c1@h", "usw2-a", up)
        >>> other = ({"use1-a", "use1-b"} - {picked}).pop()
        >>> choose_egress(("use1-a", "use1-b"), "c1@h", "usw2-a", {other}.__contains__) == other
        True
        >>> choose_egress(("use1-a",), "c1@h", "usw2-a", lambda node: False) is None
        True
    """
    order = order_egress(candidates, call_id, node_id, reachable)
    return order[0] if order else None


def order_egress(
    candidates: tuple[str, ...],
    call_id: str,
    node_id: str,
    usable: Callable[[str], bool],
    region_of: Callable[[str], str | None] = lambda _node: None,
) -> list[str]:
    """The usable egress nodes of a new call, in the order it tries them (a fail-over set).

    This node alone when it is one of them: the call then stays in the AZ it entered, and its
    trunks' own RFC 3263 list is the fail-over. Otherwise the candidates are grouped by region
    in the order the rule names them (a region's AZs, then the next region: ``egress`` is an
    ordered list of regions); within a region, by falling rendezvous hash of (candidate,
    Call-ID) (RFC 2991's "highest random weight"), so calls spread evenly over its AZs, a
    retransmitted INVITE lands on the same node, and when one AZ dies only the calls it would
    have taken move elsewhere. Nodes of unknown region (``region_of`` gives ``None``) share
    one group.

    Examples:
        >>> regions = {"use1-a": "us-east-1", "use1-b": "us-east-1", "usw2-a": "us-west-2"}
        >>> order = order_egress(
        ...     ("usw2-a", "use1-a", "use1-b"), "c1@h", "euw1-a", lambda n: True, regions.get
        ... )
        >>> order[0], sorted(order[1:])
        ('usw2-a', ['use1-a', 'use1-b'])
    """
    if node_id in candidates:
        return [node_id]
    groups: dict[str | None, list[tuple[bytes, str]]] = {}
    for candidate in candidates:
        if not usable(candidate):
            continue
        key = f"{candidate}\x00{call_id}".encode()
        weight = hashlib.blake2b(key, digest_size=8).digest()
        groups.setdefault(region_of(candidate), []).append((weight, candidate))
    return [node for group in groups.values() for _, node in sorted(group, reverse=True)]
