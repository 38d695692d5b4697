"""Locate a SIP server per RFC 3263: NAPTR -> SRV -> A/AAAA, into an ordered list of targets.

Theory of operation: the procedure is written once, as a generator (``_locate``) that yields
the DNS questions it needs (``_Query``) and is sent the records back. It never does I/O, so it
is driven two ways: ``select_targets`` answers from a ``DnsRecords`` snapshot (pure, for tests
and for reasoning), and ``SipResolver`` answers through dnspython's async resolver under trio,
with a TTL cache. Both therefore apply exactly the same rules:

- §4.1 / §4.2: an IP literal is used as is; an explicit port means A/AAAA only; an explicit
  transport means only that transport's SRV name, then A/AAAA.
- §4.1 otherwise: NAPTR records with flag "s" and a service this node speaks (SIP+D2U,
  SIP+D2T; SIPS+D2T for sips:) in (order, preference) order, each followed through its SRV
  name. If that yields nothing, the SRV names _sip._udp, _sip._tcp (_sips._tcp for sips:) are
  tried, and only when none of them has any SRV record, the domain's own A/AAAA records with
  port 5060 (5061 for sips:). Falling through when NAPTR records lead nowhere is more forgiving
  than §4.1 asks, on purpose: a broken NAPTR should not make a reachable domain unreachable.
- TLS: a sips: target, and any target with transport "tls", resolves to transport "tls"
  (SIPS+D2T, _sips._tcp, port 5061): a sips: target is never reached over anything else
  (RFC 3261 §26.2.2), and its ``;transport=tcp`` means TLS over TCP. A sip: target without a
  transport does not pick SIPS+D2T: the dialplan asks for TLS by saying sips: or "tls".
- RFC 2782: SRV records by ascending priority, weighted random order within a priority, using
  the injected ``random.Random``; a target of "." is not a server.

The certificate of a TLS target is checked against the target's domain, not the SRV target's
name (RFC 5922 §7.2): that is the caller's business, as it knows the domain it asked for.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
import trio
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

from overlay.config import DnsSection, DnsTarget, Scheme, Transport
from overlay.sip import host_reference


@dataclass(frozen=True)
class ResolvedTarget:
    """One address to try, in the order returned; ``host`` is an IP literal (no brackets)."""

    transport: Transport
    host: str
    port: int


@dataclass(frozen=True)
class NaptrRecord:
    """The NAPTR fields RFC 3263 uses (SIP NAPTRs carry a replacement, never a regexp)."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True)
class SrvRecord:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class DnsRecords:
    """A DNS snapshot for ``select_targets``: owner name (lower case, no final dot) -> records.

    ``addresses`` holds the A then AAAA records of a name as IP literals.
    """

    naptr: Mapping[str, Sequence[NaptrRecord]] = field(default_factory=dict)
    srv: Mapping[str, Sequence[SrvRecord]] = field(default_factory=dict)
    addresses: Mapping[str, Sequence[str]] = field(default_factory=dict)


class ResolutionError(Exception):
    """The target cannot be turned into any address (bad target, NXDOMAIN, no records, timeout)."""


SipTarget = tuple[str, str, int | None, str | None]
"""``(scheme, host, port, transport)`` as found in a SIP URI; port and transport optional."""

_DEFAULT_PORTS: dict[Transport, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}
_DEFAULT_TRANSPORTS: dict[Scheme, Transport] = {"sip": "udp", "sips": "tls"}
# §4.1: the transports tried, in this node's preference order, when there are no NAPTRs.
_SRV_FALLBACK: dict[Scheme, tuple[Transport, ...]] = {"sip": ("udp", "tcp"), "sips": ("tls",)}
_NAPTR_SERVICES: dict[Scheme, dict[str, Transport]] = {
    "sip": {"SIP+D2U": "udp", "SIP+D2T": "tcp"},
    "sips": {"SIPS+D2T": "tls"},
}
#: The SRV name of each transport (RFC 3263 §4.2: TLS is _sips._tcp, for sip: URIs too).
_SRV_PREFIX: dict[Transport, str] = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
#: What a URI's transport parameter may say, per scheme (sips: is TLS whatever it says).
_URI_TRANSPORTS: dict[Scheme, dict[str, Transport]] = {
    "sip": {"udp": "udp", "tcp": "tcp", "tls": "tls"},
    "sips": {"tcp": "tls", "tls": "tls"},
}


@dataclass(frozen=True)
class _Query:
    kind: Literal["NAPTR", "SRV", "ADDRESS"]
    name: str


_Answer = Sequence[NaptrRecord] | Sequence[SrvRecord] | Sequence[str]
# (expiry time, records); records None for NXDOMAIN.
_CacheEntry = tuple[float, tuple[dns.rdata.Rdata, ...] | None]
_Steps = Generator[_Query, _Answer, list[ResolvedTarget]]


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """Order SRV records for trying, per RFC 2782.

    Ascending priority; within a priority, repeatedly pick at random with probability
    proportional to weight, weight-0 records placed first so that they are picked only when
    the draw is 0 (RFC 2782, "Usage rules").

    Args:
        records: the SRV records of one name.
        rng: the source of randomness; seed it for reproducible order.

    Returns:
        The records in the order to try them.
    """
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight > 0)
        while group:
            draw = rng.randint(0, sum(record.weight for record in group))
            sums = itertools.accumulate(record.weight for record in group)
            index = next(i for i, running in enumerate(sums) if running >= draw)
            ordered.append(group.pop(index))
    return ordered


def select_targets(
    target: DnsTarget | SipTarget, records: DnsRecords, rng: random.Random
) -> list[ResolvedTarget]:
    """Apply RFC 3263 to a DNS snapshot (no I/O).

    Args:
        target: a dialplan ``DnsTarget`` or ``(scheme, host, port, transport)``.
        records: every record the procedure may ask for; absent names have no records.
        rng: orders SRV records of equal priority.

    Returns:
        The targets to try, best first, without duplicates; empty when nothing resolves.

    Raises:
        ResolutionError: the target itself is unusable (unknown scheme or transport).
    """
    steps = _locate(*_normalize(target), rng)
    try:
        query = next(steps)
        while True:
            query = steps.send(_snapshot_answer(records, query))
    except StopIteration as done:
        return _finished(done)


def _finished(done: StopIteration) -> list[ResolvedTarget]:
    """The return value of ``_locate``, which arrives in ``StopIteration``, typed again."""
    targets: list[ResolvedTarget] = done.value
    return targets


def _snapshot_answer(records: DnsRecords, query: _Query) -> _Answer:
    if query.kind == "NAPTR":
        return records.naptr.get(query.name, ())
    if query.kind == "SRV":
        return records.srv.get(query.name, ())
    return records.addresses.get(query.name, ())


class SipResolver:
    """Resolves SIP targets through DNS, caching answers for their TTL.

    Args:
        config: nameservers (none: the system resolv.conf) and the time one ``resolve`` may
            take.
        rng: orders SRV records of equal priority; a fresh ``random.Random()`` by default.
        clock: returns the current time in seconds; used only to expire cached answers.
        max_cache_entries: bound on cached (name, type) answers. Hosts in Request-URIs and
            Route headers come from peers, so without a bound they could grow it at will.

    Resource handling: holds no sockets between calls. When the cache is full, expired
    answers are dropped, then the oldest quarter.
    """

    def __init__(
        self,
        config: DnsSection,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = trio.current_time,
        max_cache_entries: int = 4096,
    ) -> None:
        if config.nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in config.nameservers
            ]
        else:
            self._resolver = dns.asyncresolver.Resolver()
        # Give every nameserver a try within the overall budget.
        self._resolver.lifetime = config.timeout
        self._resolver.timeout = config.timeout / max(1, len(self._resolver.nameservers))
        self._timeout = config.timeout
        self._rng = random.Random() if rng is None else rng
        self._clock = clock
        self._max_cache_entries = max_cache_entries
        self._cache: dict[tuple[str, str], _CacheEntry] = {}

    async def resolve(
        self, target: DnsTarget | SipTarget, *, expiries: list[float] | None = None
    ) -> list[ResolvedTarget]:
        """Find the addresses to try for ``target``, best first.

        Args:
            target: a dialplan ``DnsTarget`` or ``(scheme, host, port, transport)`` from a URI;
                scheme "sip"/"sips", transport "udp"/"tcp"/"tls" (any case) or ``None``.
            expiries: when given, gets the time (``clock``'s) each DNS answer used leaves the
                cache; the list found holds until the earliest (RFC 3263 §4.3: TTLs apply).
                Nothing is added for an IP literal.

        Returns:
            A non-empty list of targets without duplicates.

        Raises:
            ResolutionError: unusable target, the domain does not exist (NXDOMAIN), no record
                leads to an address, the nameservers fail, or the whole resolution takes longer
                than the configured timeout.
        """
        scheme, host, port, transport = _normalize(target)
        described = _describe(scheme, host, port, transport)
        asked: list[str] = []
        noted = [] if expiries is None else expiries
        # dnspython has its own lifetime; whichever deadline passes first, the outcome is one.
        with trio.move_on_after(self._timeout), contextlib.suppress(dns.exception.Timeout):
            try:
                targets = await self._run(
                    _locate(scheme, host, port, transport, self._rng), host, asked, noted
                )
            except _NoSuchDomain:
                raise ResolutionError(f"{described}: {host} does not exist (NXDOMAIN)") from None
            except dns.exception.Timeout:
                raise
            except dns.exception.DNSException as error:
                raise ResolutionError(f"{described}: DNS failure: {error}") from None
            if not targets:
                tried = ", ".join(asked)
                raise ResolutionError(f"{described}: no records lead to an address ({tried})")
            return targets
        raise ResolutionError(f"{described}: no DNS answer within {self._timeout} s ({asked[-1]})")

    async def _run(
        self, steps: _Steps, host: str, asked: list[str], expiries: list[float]
    ) -> list[ResolvedTarget]:
        """Drive ``_locate`` through DNS, noting each question in ``asked`` and when each
        answer expires in ``expiries``."""
        try:
            query = next(steps)
            while True:
                asked.append(f"{query.kind} {query.name}")
                answer = await self._answer(query, expiries, is_target=query.name == host)
                query = steps.send(answer)
        except StopIteration as done:
            return _finished(done)

    async def _answer(self, query: _Query, expiries: list[float], *, is_target: bool) -> _Answer:
        """Answer one step; NXDOMAIN of the target domain itself ends the resolution."""
        try:
            if query.kind == "NAPTR":
                naptrs = await self._lookup(query.name, "NAPTR", expiries)
                return [_naptr_record(rd) for rd in naptrs if isinstance(rd, NAPTR)]
            if query.kind == "SRV":
                servers = await self._lookup(query.name, "SRV", expiries)
                return [_srv_record(rd) for rd in servers if isinstance(rd, SRV)]
            addresses = await self._lookup(query.name, "A", expiries)
            addresses += await self._lookup(query.name, "AAAA", expiries)
            return [rd.to_text() for rd in addresses]
        except _NoSuchDomain:
            if is_target:
                raise
            return []

    async def _lookup(
        self, name: str, rdtype: str, expiries: list[float]
    ) -> tuple[dns.rdata.Rdata, ...]:
        """Records of one type from the cache or DNS, noting when they expire in ``expiries``;
        raises ``_NoSuchDomain`` on NXDOMAIN."""
        now = self._clock()
        entry = self._cache.get((name, rdtype))
        if entry is None or entry[0] <= now:
            ttl, records = await self._query(name, rdtype)
            entry = (now + ttl, records)
            self._store((name, rdtype), entry, now)
        expiries.append(entry[0])
        if entry[1] is None:
            raise _NoSuchDomain
        return entry[1]

    def _store(self, key: tuple[str, str], entry: _CacheEntry, now: float) -> None:
        self._cache.pop(key, None)  # re-inserted last: the order of the dict is age
        if len(self._cache) >= self._max_cache_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        if len(self._cache) >= self._max_cache_entries:
            oldest = list(self._cache)[: max(1, self._max_cache_entries // 4)]
            for old in oldest:
                del self._cache[old]
        self._cache[key] = entry

    async def _query(
        self, name: str, rdtype: str
    ) -> tuple[int, tuple[dns.rdata.Rdata, ...] | None]:
        """(ttl, records) from DNS, records ``None`` for NXDOMAIN; TTLs per RFC 2308."""
        try:
            answer = await self._resolver.resolve(
                dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as error:
            return _negative_ttl(error), None
        records = () if answer.rrset is None else tuple(answer.rrset)
        return answer.chaining_result.minimum_ttl, records


class _NoSuchDomain(Exception):
    """NXDOMAIN, internally: fatal for the target domain, "no records" for any other name."""


def _negative_ttl(error: dns.resolver.NXDOMAIN) -> int:
    # dnspython leaves responses() unannotated.
    responses: dict[dns.name.Name, dns.message.Message] = error.responses()  # type: ignore[no-untyped-call]
    for response in responses.values():
        if isinstance(response, dns.message.QueryMessage):
            return response.resolve_chaining().minimum_ttl
    return 0


def _naptr_record(rdata: NAPTR) -> NaptrRecord:
    return NaptrRecord(
        order=rdata.order,
        preference=rdata.preference,
        flags=rdata.flags.decode("ascii", "replace"),
        service=rdata.service.decode("ascii", "replace"),
        replacement=rdata.replacement.to_text(),
    )


def _srv_record(rdata: SRV) -> SrvRecord:
    return SrvRecord(
        priority=rdata.priority,
        weight=rdata.weight,
        port=rdata.port,
        target=rdata.target.to_text(),
    )


def _normalize(target: DnsTarget | SipTarget) -> tuple[Scheme, str, int | None, Transport | None]:
    """Check a target and bring it to canonical form (lower case, no brackets, no final dot)."""
    if isinstance(target, DnsTarget):
        target = (target.scheme, target.domain, None, target.transport)
    scheme_text, host, port, transport_text = target
    scheme: Scheme
    if scheme_text.lower() == "sip":
        scheme = "sip"
    elif scheme_text.lower() == "sips":
        scheme = "sips"
    else:
        raise ResolutionError(f"{scheme_text}:{host}: not a SIP URI scheme")
    transport: Transport | None = None
    if transport_text is not None:
        transport = _URI_TRANSPORTS[scheme].get(transport_text.lower())
        if transport is None:
            raise ResolutionError(f"{scheme}:{host}: transport {transport_text!r} not supported")
    if port is not None and not 0 < port < 65536:
        raise ResolutionError(f"{scheme}:{host}: bad port {port}")
    return scheme, _name(host.removeprefix("[").removesuffix("]")), port, transport


def _name(name: str) -> str:
    return name.lower().removesuffix(".")


def _describe(scheme: str, host: str, port: int | None, transport: str | None) -> str:
    text = f"{scheme}:{host_reference(host)}"
    text += "" if port is None else f":{port}"
    return text + ("" if transport is None else f";transport={transport}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _locate(
    scheme: Scheme, host: str, port: int | None, transport: Transport | None, rng: random.Random
) -> _Steps:
    """The RFC 3263 procedure (see the module docstring); returns the targets in order."""
    chosen_transport = transport or _DEFAULT_TRANSPORTS[scheme]
    default_port = _DEFAULT_PORTS[chosen_transport]
    if _is_ip(host):
        return [ResolvedTarget(chosen_transport, host, port or default_port)]
    if port is not None:
        return [ResolvedTarget(chosen_transport, a, port) for a in (yield from _addresses(host))]
    if transport is None:
        naptrs = yield from _naptrs(host)
        usable = _NAPTR_SERVICES[scheme]
        srv_names = [
            (usable[naptr.service.upper()], _name(naptr.replacement))
            for naptr in sorted(naptrs, key=lambda naptr: (naptr.order, naptr.preference))
            if naptr.flags.lower() == "s" and naptr.service.upper() in usable
        ]
        targets, _ = yield from _srv_targets(srv_names, rng)
        if targets:
            return targets
    fallback = _SRV_FALLBACK[scheme] if transport is None else (transport,)
    srv_names = [(each, f"{_SRV_PREFIX[each]}.{host}") for each in fallback]
    targets, found_srv = yield from _srv_targets(srv_names, rng)
    if found_srv:
        return targets
    addresses = yield from _addresses(host)
    return [ResolvedTarget(chosen_transport, a, default_port) for a in addresses]


def _srv_targets(
    srv_names: list[tuple[Transport, str]], rng: random.Random
) -> Generator[_Query, _Answer, tuple[list[ResolvedTarget], bool]]:
    """The targets the SRV names lead to, and whether any SRV record existed at all.

    A domain with SRV records gets no A/AAAA fallback (§4.2), not even when they all say "."
    ("decidedly not available", RFC 2782) or lead to names without addresses.
    """
    targets: list[ResolvedTarget] = []
    found = False
    for transport, srv_name in srv_names:
        answer = yield _Query("SRV", srv_name)
        records = [record for record in answer if isinstance(record, SrvRecord)]
        found = found or bool(records)
        servers = [record for record in records if _name(record.target)]
        for server in order_srv(servers, rng):
            for address in (yield from _addresses(_name(server.target))):
                target = ResolvedTarget(transport, address, server.port)
                if target not in targets:
                    targets.append(target)
    return targets, found


def _naptrs(host: str) -> Generator[_Query, _Answer, list[NaptrRecord]]:
    answer = yield _Query("NAPTR", host)
    return [record for record in answer if isinstance(record, NaptrRecord)]


def _addresses(host: str) -> Generator[_Query, _Answer, list[str]]:
    answer = yield _Query("ADDRESS", host)
    return [address for address in answer if isinstance(address, str)]
