"""The hosted zone, a Route 53 health check per floating address (and one per region that
has several), and the SIP SRV/NAPTR/latency record sets of ``deploy.records`` behind them."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from deploy._pairs import Pair
from deploy._walk import PENDING, Walk
from deploy.fleet import RegionSpec
from deploy.records import (
    RegionEndpoint,
    health_check_config,
    sip_record_sets,
    validate_change_batch,
)
from overlay.config import READY_PATH


def converge(
    walk: Walk,
    endpoints: Sequence[tuple[RegionSpec, list[Pair]]],
    *,
    allow_special_use: bool,
) -> None:
    """``allow_special_use``: see ``health_check_config``."""
    fleet = walk.fleet
    route53 = walk.route53()
    zone = walk.find_or_create(
        "hosted-zone",
        "global",
        fleet.dns_zone,
        functools.partial(_find_zone, walk),
        lambda: _create_zone(walk),
    )
    existing_checks = _fleet_health_checks(walk)  # listed once: one call per page of ids

    def health_check(name: str, config: Callable[[], dict[str, Any]], detail: str) -> str:
        return walk.find_or_create(
            "health-check",
            "global",
            name,
            functools.partial(existing_checks.get, name),
            lambda: _create_health_check(walk, name, config()),
            detail,
        )

    regions = []
    for region, pairs in endpoints:
        checks = [
            health_check(
                walk.name(pair.az),
                functools.partial(
                    health_check_config,
                    pair.public_ip,
                    fleet.ports.health,
                    allow_special_use=allow_special_use,
                ),
                f"HTTP {pair.public_ip}:{fleet.ports.health}{READY_PATH}",
            )
            for pair in pairs
        ]
        region_check = checks[0]
        if len(checks) > 1:
            region_check = health_check(
                walk.name(region.name),
                functools.partial(_any_healthy, checks),
                "healthy while one pair of the region is",
            )
        regions.append(
            RegionEndpoint(
                region=region.name,
                addresses=tuple(pair.public_ip for pair in pairs),
                srv_priority=region.srv_priority,
                srv_weight=region.srv_weight,
                health_check_id=region_check,
            )
        )
    if zone == PENDING or any(
        PENDING in r.addresses or r.health_check_id == PENDING for r in regions
    ):
        walk.change("create", "record-sets", "global", fleet.dns_zone, "SIP SRV/NAPTR/A")
        return
    desired = sip_record_sets(
        fleet.dns_zone,
        regions,
        sip_port=fleet.ports.sip,
        # The members serve no SIP over TLS (fleet.toml gives no trunk-facing certificate):
        # published, a TLS client would try it first and wait.
        sip_tls_port=None,
    )
    current = _record_sets(walk, zone)
    changes = [
        {"Action": "UPSERT", "ResourceRecordSet": rrset}
        for rrset in desired
        if _normal(current.get(_record_key(rrset))) != _normal(rrset)
    ]
    if changes:
        batch = {"Comment": f"overlay {fleet.name}", "Changes": changes}

        def upsert() -> None:
            validate_change_batch(batch, list(current.values()), zone=fleet.dns_zone)
            route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)

        walk.act("update", "record-sets", "global", fleet.dns_zone, upsert, f"{len(changes)} sets")


def destroy(walk: Walk) -> None:
    """The zone's records and the zone, then the health checks they referred to."""
    route53 = walk.route53()
    zone = _find_zone(walk)
    if zone is not None:
        current = list(_record_sets(walk, zone).values())
        if current:
            walk.change(
                "delete", "record-sets", "global", walk.fleet.dns_zone, f"{len(current)} sets"
            )
            route53.change_resource_record_sets(
                HostedZoneId=zone,
                ChangeBatch={
                    "Changes": [{"Action": "DELETE", "ResourceRecordSet": r} for r in current]
                },
            )
        walk.change("delete", "hosted-zone", "global", walk.fleet.dns_zone)
        route53.delete_hosted_zone(Id=zone)
    checks = _fleet_health_checks(walk)
    # A region's calculated check first: its children cannot go while it refers to them.
    regional = {walk.name(region.name) for region in walk.fleet.regions}
    for name, check in sorted(checks.items(), key=lambda item: item[0] not in regional):
        walk.change("delete", "health-check", "global", name)
        route53.delete_health_check(HealthCheckId=check)


def _find_zone(walk: Walk) -> str | None:
    """The zone of the fleet's name that carries the fleet's tag (a name alone may be
    another's)."""
    route53 = walk.route53()
    wanted = walk.fleet.dns_zone.rstrip(".").lower() + "."
    zones = route53.list_hosted_zones_by_name(DNSName=wanted)["HostedZones"]
    for zone in zones:
        if zone["Name"].lower() != wanted:
            continue
        zone_id: str = zone["Id"].split("/")[-1]
        tags = route53.list_tags_for_resource(ResourceType="hostedzone", ResourceId=zone_id)
        if walk.fleet_tag() in tags["ResourceTagSet"]["Tags"]:
            return zone_id
    return None


def _create_zone(walk: Walk) -> str:
    fleet = walk.fleet
    zone_id: str = (
        walk.route53()
        .create_hosted_zone(
            Name=fleet.dns_zone,
            CallerReference=_caller_reference(f"overlay-{fleet.name}-{fleet.dns_zone}"),
            HostedZoneConfig={"Comment": f"overlay fleet {fleet.name}"},
        )["HostedZone"]["Id"]
        .split("/")[-1]
    )
    _tag(walk, "hostedzone", zone_id, fleet.dns_zone)
    return zone_id


def _any_healthy(children: list[str]) -> dict[str, Any]:
    """A ``HealthCheckConfig`` that is healthy while one of ``children`` is."""
    return {"Type": "CALCULATED", "ChildHealthChecks": children, "HealthThreshold": 1}


def _create_health_check(walk: Walk, name: str, config: dict[str, Any]) -> str:
    check: str = walk.route53().create_health_check(
        CallerReference=_caller_reference(f"overlay-{name}"), HealthCheckConfig=config
    )["HealthCheck"]["Id"]
    _tag(walk, "healthcheck", check, name)
    return check


def _caller_reference(name: str) -> str:
    """Unique per creation: Route 53 refuses, for days, a reference of a deleted resource, and
    the fleet's resources are found by their tags anyway (a fleet destroyed and applied again
    would otherwise fail)."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def _tag(walk: Walk, resource_type: str, resource_id: str, name: str) -> None:
    """Route 53 takes no tags on create: they follow in a call of their own."""
    walk.route53().change_tags_for_resource(
        ResourceType=resource_type, ResourceId=resource_id, AddTags=walk.tag_list(name)
    )


def _fleet_health_checks(walk: Walk) -> dict[str, str]:
    """Our health checks: logical name -> id."""
    route53 = walk.route53()
    ids = [check["Id"] for check in route53.list_health_checks()["HealthChecks"]]
    found = {}
    for start in range(0, len(ids), 10):
        tag_sets = route53.list_tags_for_resources(
            ResourceType="healthcheck", ResourceIds=ids[start : start + 10]
        )["ResourceTagSets"]
        for tag_set in tag_sets:
            tags = {tag["Key"]: tag["Value"] for tag in tag_set["Tags"]}
            if tags.get("overlay:fleet") == walk.fleet.name:
                found[tags.get("overlay:name", "")] = tag_set["ResourceId"]
    return found


def _record_sets(walk: Walk, zone: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The zone's record sets by (name, type, set identifier), SOA and NS left out."""
    paginator = walk.route53().get_paginator("list_resource_record_sets")
    found = {}
    for page in paginator.paginate(HostedZoneId=zone):
        for rrset in page["ResourceRecordSets"]:
            if rrset["Type"] not in ("SOA", "NS"):
                found[_record_key(rrset)] = rrset
    return found


def _record_key(rrset: dict[str, Any]) -> tuple[str, str, str]:
    return (
        rrset["Name"].rstrip(".").lower(),
        rrset["Type"],
        rrset.get("SetIdentifier", ""),
    )


def _normal(rrset: dict[str, Any] | None) -> object:
    """A record set in a form that compares equal to what Route 53 gives back for it."""
    if rrset is None:
        return None
    values = sorted(record["Value"] for record in rrset.get("ResourceRecords", []))
    return (
        _record_key(rrset),
        int(rrset.get("TTL", 0)),
        values,
        rrset.get("Region"),
        rrset.get("HealthCheckId"),
        rrset.get("Weight"),
    )
