"""Serve a Route 53 hosted zone, as stored in moto, over DNS on a loopback address.

moto is HTTP only: it stores record sets but answers no DNS query. ``serve_hosted_zone`` reads
the zone back with ``list_resource_record_sets`` and serves it with ``tests.dnsserver``, so a
test can resolve what deploy wrote with a real resolver.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from overlay.aws import ClientFactory
from tests.dnsserver import Zone, serve_zone

#: Types not served: the Zone makes its own SOA for negative answers, NS would only delegate to
#: moto's made-up awsdns servers, and moto returns the SOA value as a stringified dict anyway.
SKIPPED_TYPES = frozenset({"SOA", "NS"})


@asynccontextmanager
async def serve_hosted_zone(
    aws: ClientFactory,
    zone_id: str,
    *,
    client_region: str,
    host: str = "127.0.0.1",
    page_size: int | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Serve hosted zone ``zone_id`` over UDP on ``host``, a free port, until the block exits.

    The zone is read once, on entry: later changes in moto are not seen. Every record set but
    SOA and NS is served, with the zone's smallest TTL (``tests.dnsserver.Zone`` has one TTL).

    Routing policies are **this fake's rule, not Route 53's**. moto never evaluates latency or
    health, so for a name and type with several record sets (SetIdentifier) the fake answers
    with one of them: for latency sets, the one whose Region is ``client_region``, else the
    first listed; for failover sets, PRIMARY (moto reports every health check healthy); for any
    other policy, the first listed. Route 53 would pick by measured latency and health.

    Args:
        aws: the client factory pointed at moto.
        zone_id: the hosted zone's Id (with or without the ``/hostedzone/`` prefix).
        client_region: the region the resolving client is taken to be nearest to.
        host: the loopback address to serve on.
        page_size: record sets per ``list_resource_record_sets`` page (``None``: the server's
            default, 300 for moto). moto ignores ``StartRecordIdentifier`` and returns no
            ``NextRecordIdentifier``: a page that ends inside a group of record sets sharing a
            name and type (latency sets) makes the next page restart that group, and botocore's
            paginator stops with "The same next token was received twice". Keep pages larger
            than such groups, or use them only on zones of simple record sets.

    Yields:
        ``(host, port)`` of the DNS server.

    Raises:
        ValueError: the zone has an alias record set, which this fake cannot answer.
    """
    zone = await trio.to_thread.run_sync(
        functools.partial(
            hosted_zone, aws, zone_id, client_region=client_region, page_size=page_size
        )
    )
    async with serve_zone(zone, host) as address:
        yield address


def hosted_zone(
    aws: ClientFactory, zone_id: str, *, client_region: str, page_size: int | None = None
) -> Zone:
    """The hosted zone as ``serve_hosted_zone`` serves it (read now, routing policies its way).

    Raises:
        ValueError: the zone has an alias record set, which this fake cannot answer.
    """
    rrsets = _list_record_sets(aws, zone_id, page_size)
    records: dict[str, dict[str, list[str]]] = {}
    for name, rdtype, chosen in _choose(rrsets, client_region):
        if "AliasTarget" in chosen:
            raise ValueError(f"{name} {rdtype}: alias record sets are not served by this fake")
        values = [record["Value"] for record in chosen["ResourceRecords"]]
        records.setdefault(name, {})[rdtype] = values
    ttls = [int(rrset["TTL"]) for rrset in rrsets if rrset["Type"] not in SKIPPED_TYPES]
    return Zone(records, ttl=min(ttls, default=300))


def _list_record_sets(
    aws: ClientFactory, zone_id: str, page_size: int | None
) -> list[dict[str, Any]]:
    paginator = aws.client("route53", "us-east-1").get_paginator("list_resource_record_sets")
    config = {} if page_size is None else {"PageSize": page_size}
    return [
        rrset
        for page in paginator.paginate(HostedZoneId=zone_id, PaginationConfig=config)
        for rrset in page["ResourceRecordSets"]
    ]


def _choose(
    rrsets: Sequence[dict[str, Any]], client_region: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, type, record set)`` for each name and type, one record set each (see above)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rrset in rrsets:
        if rrset["Type"] not in SKIPPED_TYPES:
            name = rrset["Name"].lower().removesuffix(".")
            groups.setdefault((name, rrset["Type"]), []).append(rrset)
    chosen = []
    for (name, rdtype), group in groups.items():
        preferred = [
            rrset
            for rrset in group
            if rrset.get("Region") == client_region or rrset.get("Failover") == "PRIMARY"
        ]
        chosen.append((name, rdtype, (preferred or group)[0]))
    return chosen
