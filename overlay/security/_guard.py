"""SIP edge security, sans-IO: who may send, how fast, and who gets blocked (docs/security.md).

Theory of operation
-------------------
``EdgeGuard`` is the proxy core's ``Admission``. Everything it knows is per *source*: an IPv4
address, or an IPv6 /64. Overlay peers are exempt from all of it, by address.

1. ``screen(host, now)`` runs for every message before the core parses it, on the source address
   alone, so that what a flood costs once its source is known is a few dict probes: a blocked
   source is dropped; a source outside the ACL (``allow``, the trunks, the static dialplan
   targets) is dropped, or let through to be answered 403 when ``deny_action`` is "reject".
2. ``admit(request, host, now)`` runs for every new request from outside the overlay: not for a
   retransmission the transaction layer absorbs, an ACK, or the CANCEL of a known INVITE, so
   nothing a call already admitted sends can be refused. In order:
   - a known scanner's User-Agent blocks the source at once (and this request gets nothing);
   - requests inside a dialog (To tag) pass: they belong to calls already admitted;
   - OPTIONS and REGISTER to too many distinct users within ``window`` is a sweep: blocked;
   - every other out-of-dialog request takes a token from the source's bucket (``rate`` per
     second, up to ``burst``). Without one it is refused (503 + Retry-After, or dropped), and a
     source refused ``max_limited`` times within ``window`` is blocked: from then on its flood
     costs only the screen.
3. ``answered(host, status, now)`` hears of each 4xx the core sends; ``max_failures`` of them
   (400, 403, 404, 405, 416, 484: what probing for users and numbers draws) within ``window``
   block the source.

Trunks (``[[security.trunks]]``) and static dialplan targets are known parties: rate-limited with
their own limits, but never blocked by detection. A block lasts ``block_time``, unless the NOC
lifts it first (``unblock``; ``blocks`` lists them); the block and its end are one event each.
``handle_timer`` is called about once a second to end blocks and forget sources that went
quiet; per-source state is capped.

Overload control is not the guard's: every node has it (``Overload``, ``[overload]``), and a
node with ``[security]`` puts it in front of the guard, so what it sheds never reaches here.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.config import NodeConfig, SecuritySection, StaticTarget
from overlay.sip import (
    NameAddr,
    Reject,
    RemoteProtocolError,
    Request,
    SipUri,
    TelUri,
    parse_uri_untrusted,
)

from ._events import (
    BlockReason,
    GuardEvent,
    SourceBlocked,
    SourceUnblocked,
)
from ._prefix import IPV6_SOURCE_PREFIX, Address, PrefixMap, parse_source

#: Sources tracked (and, separately, blocked) at most; past it the least recently seen source is
#: forgotten, so a flood from spoofed addresses costs bounded memory (about 200 bytes each).
MAX_SOURCES = 100_000
#: What probing for users, numbers and weaknesses draws; 401/407 are left out, being part of
#: every authenticated call.
FAILURE_STATUSES = frozenset({400, 403, 404, 405, 416, 484})
#: What ``EdgeGuard.unblock`` takes for every source.
ALL_SOURCES = "*"
#: Methods whose Request-URI or To users, all different, make a sweep.
SWEEP_METHODS = frozenset({"OPTIONS", "REGISTER"})
#: Requests spaced exactly 1/rate apart must all pass, whatever the float sums round to.
_ROUNDING = 1e-9
_DROP = Reject(None)
_FORBIDDEN = Reject(403, "Forbidden")


@dataclass(frozen=True, slots=True)
class _Policy:
    allowed: bool
    trusted: bool  # a trunk or a static dialplan target: never blocked by detection
    rate: float
    burst: float


class _Source:
    """One source's bucket and detection counters (the current ``window``)."""

    __slots__ = ("failures", "limited", "policy", "seen", "stamp", "tokens", "users", "window")

    def __init__(self, policy: _Policy, now: float) -> None:
        self.policy = policy
        self.tokens = policy.burst
        self.stamp = now  # when tokens was last brought up to date
        self.seen = now
        self.window = now
        self.limited = 0
        self.failures = 0
        self.users: set[str] | None = None


class _Block:
    __slots__ = ("detail", "dropped", "last_dropped", "reason", "since", "until")

    def __init__(self, reason: BlockReason, detail: str, since: float, until: float) -> None:
        self.reason = reason
        self.detail = detail
        self.since = since
        self.until = until
        self.dropped = 0
        self.last_dropped: float | None = None


@dataclass(frozen=True, slots=True)
class BlockedSource:
    """One block, as the NOC reads it (``EdgeGuard.blocks``); times are ``now``'s clock."""

    source: str  # an IPv4 address, or an IPv6 /64 written "2001:db8:1:2::/64"
    reason: BlockReason
    detail: str  # what tripped it: the User-Agent, or the count and window
    since: float
    until: float
    dropped: int  # messages (and TCP/TLS connections) from it dropped while blocked
    last_dropped: float | None  # when the latest of them came, ``None`` before the first


@dataclass(frozen=True, slots=True)
class GuardStatistics:
    sources: int  # sources tracked now
    blocked_sources: int  # sources blocked now
    denied: int  # messages from outside the ACL (dropped, or requests answered 403)
    rate_limited: int  # out-of-dialog requests over their source's rate
    blocked: dict[str, int]  # blocks, by reason
    blocked_drops: int  # messages dropped because their source was blocked
    unblocked: int  # blocks that ran out
    lifted: int  # blocks lifted before their end by ``unblock`` (an operator)


class EdgeGuard:
    """Per-source ACL, rate limiting and scanner detection.

    Args:
        section: the ``[security]`` configuration.
        exempt: source hosts never screened (the overlay peers' SIP addresses).
        targets: hosts the node sends calls to (static dialplan targets): let in, never blocked.
    """

    def __init__(
        self,
        section: SecuritySection,
        *,
        exempt: Iterable[str] = (),
        targets: Iterable[str] = (),
    ) -> None:
        self._section = section
        # In the canonical text the transports report source addresses in.
        self._exempt = frozenset(str(ipaddress.ip_address(host)) for host in exempt)
        self._targets = frozenset(ipaddress.ip_address(host) for host in targets)
        self._allow = PrefixMap((network, True) for network in section.allow)
        self._trunks = PrefixMap(
            (trunk.cidr, _Policy(True, True, trunk.rate, trunk.burst)) for trunk in section.trunks
        )
        self._allowed = _Policy(True, False, section.rate, section.burst)
        self._target = _Policy(True, True, section.rate, section.burst)
        self._denied_policy = _Policy(False, False, section.rate, section.burst)
        self._reject_denied = section.deny_action == "reject"
        agents = section.scanner_user_agents
        self._scanner = re.compile("|".join(map(re.escape, agents)), re.I) if agents else None
        self._limit_verdict = (
            Reject(503, "Rate Limit Exceeded", section.retry_after)
            if section.limit_action == "reject"
            else _DROP
        )
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._blocked: dict[str, _Block] = {}  # in blocking order, so in expiry order
        self._events: deque[GuardEvent] = deque()
        self._denied = 0
        self._rate_limited = 0
        self._blocks: Counter[str] = Counter()
        self._blocked_drops = 0
        self._unblocked = 0
        self._lifted = 0

    # -- the proxy core's Admission ----------------------------------------------------------

    def screen(self, host: str, now: float) -> bool:
        """Whether to parse a message from ``host`` at all; see the module docstring."""
        if host in self._exempt:
            return True
        parsed = parse_source(host)
        if parsed is None:
            return True  # the transports only report IP addresses
        key, address = parsed
        block = self._blocked.get(key)
        if block is not None:
            if now < block.until:
                block.dropped += 1
                block.last_dropped = now
                self._blocked_drops += 1
                return False
            self._unblock(key, block)
        source = self._source(key, address, now)
        if source.policy.allowed or self._reject_denied:
            return True
        self._denied += 1
        return False

    def admit(self, request: Request, host: str, now: float) -> Reject | None:
        """``None`` to let a new request in, or how to refuse it; see the module docstring.

        Raises:
            RemoteProtocolError: the request's To header is malformed.
        """
        if host in self._exempt:
            return None
        parsed = parse_source(host)
        if parsed is None:
            return None
        key, address = parsed
        source = self._source(key, address, now)
        policy = source.policy
        if not policy.allowed:
            self._denied += 1
            self._failure(key, source, now)
            return _FORBIDDEN
        if not policy.trusted and self._scanner is not None:
            agent = request.headers.get("User-Agent")
            if agent is not None and self._scanner.search(agent):
                self._block(key, BlockReason.USER_AGENT, now, agent[:80])
                return _DROP
        if request.to_tag is not None:
            return None
        section = self._section
        if not policy.trusted and section.sweep_users and request.method in SWEEP_METHODS:
            user = _callee(request)
            if user is not None:
                self._roll_window(source, now)
                users = source.users = source.users or set()
                users.add(user)
                if len(users) >= section.sweep_users:
                    detail = f"{len(users)} users in {section.window:g} s"
                    self._block(key, BlockReason.SWEEP, now, detail)
                    return _DROP
        if _take_token(source, now):
            return None
        self._rate_limited += 1
        if not policy.trusted and section.max_limited:
            self._roll_window(source, now)
            source.limited += 1
            if source.limited >= section.max_limited:
                detail = f"{source.limited} over its rate in {section.window:g} s"
                self._block(key, BlockReason.FLOOD, now, detail)
                return _DROP
        return self._limit_verdict

    def answered(self, host: str, status: int, now: float) -> None:
        """Count a 4xx answered to ``host`` toward ``max_failures``."""
        if status not in FAILURE_STATUSES or host in self._exempt:
            return
        parsed = parse_source(host)
        if parsed is not None:
            key, address = parsed
            self._failure(key, self._source(key, address, now), now)

    # -- the shell ---------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """End the blocks that are over, forget quiet sources.

        Call it about once a second: ends are reported that late at most, and a source that
        comes back is judged on time whatever this lags.
        """
        while self._blocked:
            key, block = next(iter(self._blocked.items()))
            if now < block.until:
                break
            self._unblock(key, block)
        sources = self._sources
        while sources:
            key, source = next(iter(sources.items()))
            policy = source.policy
            if now - source.seen < max(self._section.window, policy.burst / policy.rate):
                break  # the bucket may not be full yet, or a window is still counting
            del sources[key]

    # -- the NOC -----------------------------------------------------------------------------

    def blocks(self, now: float) -> list[BlockedSource]:
        """The sources blocked at ``now``, oldest block first, for the NOC (a block past its
        end that ``handle_timer`` has yet to end is over, and left out)."""
        return [_snapshot(key, block) for key, block in self._blocked.items() if now < block.until]

    def unblock(self, source: str, now: float) -> list[BlockedSource]:
        """Lift the block of ``source`` (``"*"``: of every source) before it runs out.

        A lift is counted (``security.lifted``) but is no ``GuardEvent``: whoever calls this
        knows who asked for it, and reports it.

        Args:
            source: an IP address (an IPv6 one stands for its /64), a source as ``blocks``
                names it (``"2001:db8:1:2::/64"``), or ``"*"``.

        Returns:
            The blocks lifted, as they were: none when ``source`` was not blocked at ``now``.

        Raises:
            ValueError: ``source`` is none of those.
        """
        keys = list(self._blocked) if source == ALL_SOURCES else [source_key(source)]
        lifted = []
        for key in keys:
            block = self._blocked.get(key)
            if block is None or now >= block.until:
                continue  # not blocked; an ended block is left to end with its event
            del self._blocked[key]
            lifted.append(_snapshot(key, block))
        self._lifted += len(lifted)
        return lifted

    def next_event(self) -> GuardEvent | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> GuardStatistics:
        return GuardStatistics(
            sources=len(self._sources),
            blocked_sources=len(self._blocked),
            denied=self._denied,
            rate_limited=self._rate_limited,
            blocked=dict(self._blocks),
            blocked_drops=self._blocked_drops,
            unblocked=self._unblocked,
            lifted=self._lifted,
        )

    def counters(self) -> dict[str, int]:
        """``statistics()`` by dotted name, as ``Node.counters()`` reports them."""
        stats = self.statistics()
        counters = {
            "security.sources": stats.sources,
            "security.blocked_sources": stats.blocked_sources,
            "security.denied": stats.denied,
            "security.rate_limited": stats.rate_limited,
            "security.blocked_drops": stats.blocked_drops,
            "security.unblocked": stats.unblocked,
            "security.lifted": stats.lifted,
        }
        for reason in BlockReason:
            counters[f"security.blocked.{reason}"] = stats.blocked.get(reason, 0)
        return counters

    # -- inside ------------------------------------------------------------------------------

    def _source(self, key: str, address: Address, now: float) -> _Source:
        sources = self._sources
        source = sources.get(key)
        if source is None:
            if len(sources) >= MAX_SOURCES:
                sources.popitem(last=False)
            source = sources[key] = _Source(self._policy(address), now)
        else:
            sources.move_to_end(key)
            source.seen = now
        return source

    def _policy(self, address: Address) -> _Policy:
        trunk = self._trunks.lookup(address)
        if trunk is not None:
            return trunk
        if address in self._targets:
            return self._target
        return self._allowed if self._allow.lookup(address) else self._denied_policy

    def _roll_window(self, source: _Source, now: float) -> None:
        if now - source.window >= self._section.window:
            source.window = now
            source.limited = source.failures = 0
            source.users = None

    def _failure(self, key: str, source: _Source, now: float) -> None:
        limit = self._section.max_failures
        if source.policy.trusted or not limit:
            return
        self._roll_window(source, now)
        source.failures += 1
        if source.failures >= limit:
            detail = f"{source.failures} failures in {self._section.window:g} s"
            self._block(key, BlockReason.FAILURES, now, detail)

    def _block(self, key: str, reason: BlockReason, now: float, detail: str) -> None:
        until = now + self._section.block_time
        if len(self._blocked) >= MAX_SOURCES:
            oldest = next(iter(self._blocked))
            self._unblock(oldest, self._blocked[oldest])
        self._blocked[key] = _Block(reason, _printable(detail), now, until)
        self._sources.pop(key, None)  # counted afresh once the block is over
        self._blocks[reason] += 1
        self._events.append(SourceBlocked(key, reason, until, self._blocked[key].detail))

    def _unblock(self, key: str, block: _Block) -> None:
        del self._blocked[key]
        self._unblocked += 1
        self._events.append(SourceUnblocked(key, block.dropped))


def edge_guard(config: NodeConfig) -> EdgeGuard | None:
    """The guard for a node's ``[security]`` section, or ``None`` when it has none."""
    if config.security is None:
        return None
    targets = [
        rule.target.host
        for rule in config.dialplan
        if isinstance(rule.target, StaticTarget) and parse_source(rule.target.host) is not None
    ]
    return EdgeGuard(
        config.security, exempt=[peer.sip[0] for peer in config.peers], targets=targets
    )


def source_key(text: str) -> str:
    """The source ``text`` names: an address's (``parse_source``), or an IPv6 /64 as written.

    Raises:
        ValueError: neither an IP address nor an IPv6 /64.
    """
    parsed = parse_source(text)
    if parsed is not None:
        return parsed[0]
    try:
        network = ipaddress.IPv6Network(text)
    except ValueError:
        network = None
    if network is None or network.prefixlen != IPV6_SOURCE_PREFIX:
        raise ValueError(
            f"{text!r} is not an IP address or an IPv6 /{IPV6_SOURCE_PREFIX} (or '*' for every"
            " source)"
        )
    return str(network)


def _snapshot(key: str, block: _Block) -> BlockedSource:
    return BlockedSource(
        key, block.reason, block.detail, block.since, block.until, block.dropped, block.last_dropped
    )


def _take_token(source: _Source, now: float) -> bool:
    policy = source.policy
    tokens = source.tokens
    if now > source.stamp:
        tokens = min(policy.burst, tokens + (now - source.stamp) * policy.rate)
        source.stamp = now
    if tokens < 1.0 - _ROUNDING:
        source.tokens = tokens
        return False
    source.tokens = max(0.0, tokens - 1.0)
    return True


def _callee(request: Request) -> str | None:
    """Who a request is for: its Request-URI's user and its To URI's, together, since a sweep
    may vary either (svwar puts the extension it guesses in both, or, for REGISTER, in To)."""
    users = []
    try:
        for text in (request.uri, NameAddr.parse_untrusted(request.headers.get("To") or "").uri):
            uri = parse_uri_untrusted(text)
            if isinstance(uri, SipUri):
                users.append(uri.user or "")
            elif isinstance(uri, TelUri):
                users.append(uri.number)
    except RemoteProtocolError:
        return None
    return "\0".join(users) if any(users) else None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
