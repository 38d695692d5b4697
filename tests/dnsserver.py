"""A tiny authoritative DNS server for tests: NAPTR, SRV, A and AAAA from a dict.

Usage, in a trio test::

    zone = Zone({"example.com": {"NAPTR": ['10 0 "s" "SIP+D2U" "" _sip._udp.example.com.']},
                 "_sip._udp.example.com": {"SRV": ["0 0 5060 sip1.example.com."]},
                 "sip1.example.com": {"A": ["127.0.0.2"]}})
    async with serve_zone(zone) as (host, port):
        ...  # point the resolver at host:port
    assert ("example.com", "NAPTR") in zone.queries

Records are written in zone-file text (dnspython's ``rdata.from_text``). A name that exists
without records of the asked type gets NODATA, any other name NXDOMAIN; both carry an SOA in the
authority section, as a real authoritative server's do, so resolvers can cache them (RFC 2308).
A name in ``zone.silent`` gets no answer at all, which the resolver sees as a timeout; a name in
``zone.failing`` gets SERVFAIL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio


class Zone:
    """Records served by ``serve_zone``, and what was asked of them.

    Args:
        records: owner name (no final dot) -> record type ("NAPTR", "SRV", "A", "AAAA") -> the
            records in zone-file text.
        ttl: TTL of every positive answer.
        negative_ttl: the SOA TTL and minimum, i.e. how long NXDOMAIN/NODATA may be cached.

    Attributes:
        queries: ``(name, type)`` of every query received, in order, silent ones included.
        silent: names whose queries are dropped unanswered; change it at any time.
        failing: names answered with SERVFAIL; change it at any time.
    """

    def __init__(
        self,
        records: Mapping[str, Mapping[str, Sequence[str]]],
        *,
        ttl: int = 300,
        negative_ttl: int = 60,
    ) -> None:
        self.records = {_key(name): dict(types) for name, types in records.items()}
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.queries: list[tuple[str, str]] = []
        self.silent: set[str] = set()
        self.failing: set[str] = set()

    def respond(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to ``query``, or ``None`` to stay silent."""
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        if name in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        response.flags |= dns.flags.AA
        texts = self.records.get(name, {}).get(rdtype)
        if texts:
            response.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, "IN", rdtype, list(texts))
            )
            return response
        if not any(owner == name or owner.endswith(f".{name}") for owner in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = f". hostmaster. 1 3600 600 86400 {self.negative_ttl}"
        response.authority.append(dns.rrset.from_text(".", self.negative_ttl, "IN", "SOA", soa))
        return response


def _key(name: str) -> str:
    return name.lower().removesuffix(".")


@asynccontextmanager
async def serve_zone(zone: Zone, host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    """Serve ``zone`` over UDP on ``host``, a free port, until the block exits.

    Yields:
        ``(host, port)`` of the server.
    """
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind((host, 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, sock, zone)
            try:
                yield host, sock.getsockname()[1]
            finally:
                nursery.cancel_scope.cancel()


async def _serve(sock: trio.socket.SocketType, zone: Zone) -> None:
    while True:
        data, address = await sock.recvfrom(65535)
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            continue  # not a DNS message: a real server would drop it too
        response = zone.respond(query)
        if response is not None:
            await sock.sendto(response.to_wire(), address)
