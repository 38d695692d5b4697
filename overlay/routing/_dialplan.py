"""The dialplan: which egress target a Request-URI goes to (pure, no I/O).

Precedence, from docs/internal/config.md: the longest matching ``user_prefix`` wins; among equal
prefixes a rule naming the Request-URI's domain beats a rule for any domain; remaining ties go
to the rule written first. The rules are sorted by that key once, so ``match`` is a first-hit
scan.
"""

from __future__ import annotations

from collections.abc import Iterable
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
