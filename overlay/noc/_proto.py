"""The NOC's records as the Control service's messages (proto/overlay/v1/control.proto), sans-IO.

The node's pieces speak in their own records (``LinkMetrics``, ``Route``, ``CallRecord``,
``Published``, ...); these functions turn them into ``overlay.v1.control_pb2`` messages for the
Control service (``overlay.shell.control``), and back where overlayctl (``overlay.cli.ctl``)
reads one as a record again. The records hold times of the node's trio clock (``now``), the
messages wall-clock Timestamps: ``Clocks`` converts with both clocks' readings, which the caller
takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from overlay.config import DnsTarget, StaticTarget
from overlay.linkstate import LinkMetrics, Lsa
from overlay.media import MediaSession
from overlay.routing import DialplanMatch, Path, Route, TrunkStatistics, trunk_name
from overlay.security import BlockedSource
from overlay.sip import host_reference
from overlay.v1 import control_pb2

from ._calls import CallRecord
from ._events import (
    KINDS,
    CallFailed,
    CallFailedOver,
    DrainChanged,
    FaultInjected,
    FaultsCleared,
    LinkChanged,
    OverrideCleared,
    Published,
    RouteChanged,
    SourcesUnblocked,
    TrunkChanged,
    kind,
    summary,
)
from ._explain import Candidate
from ._overrides import LinkOverride

_EVENT_TYPES = frozenset(control_pb2.EventType.values())


def serialize(message: Message) -> bytes:
    """``message`` as bytes: the serializer the gRPC bridge takes."""
    data: bytes = message.SerializeToString()
    return data


def timestamp(seconds: float) -> Timestamp:
    """A wall-clock time (seconds since the epoch) as a Timestamp."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


@dataclass(frozen=True, slots=True)
class Clocks:
    """What the node's clock (``now``) and the wall clock (seconds since the epoch) read at one
    moment: converts the node's times to Timestamps and back."""

    now: float
    wall: float

    def timestamp(self, at: float) -> Timestamp:
        """The node's time ``at`` as a wall-clock Timestamp."""
        return timestamp(self.wall + (at - self.now))

    def node_time(self, stamp: Timestamp) -> float:
        """A wall-clock Timestamp as a time of the node's clock."""
        nanoseconds: int = stamp.ToNanoseconds()
        return self.now + (nanoseconds / 1e9 - self.wall)


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"{host_reference(host)}:{port}"


def event_kind(event_type: int) -> str | None:
    """The kind (one of ``KINDS``) an ``EventType`` value names, ``None`` when it names none."""
    name = control_pb2.EventType.Name(event_type) if event_type in _EVENT_TYPES else ""
    return name if name in KINDS else None


# --- links and topology ----------------------------------------------------------------------


def metrics_message(metrics: LinkMetrics) -> control_pb2.LinkMetrics:
    values = metrics.measurements()
    # control.proto names the admin cost with its unit; linkstate.proto, as LinkMetrics, without.
    values["admin_cost_ms"] = values.pop("admin_cost")
    return control_pb2.LinkMetrics(**values)


def topology_node_message(lsa: Lsa) -> control_pb2.TopologyNode:
    return control_pb2.TopologyNode(
        node_id=lsa.origin,
        region=lsa.region,
        az=lsa.az,
        draining=lsa.draining,
        lsa_seq=lsa.seq,
        lsa_age_s=lsa.age,
    )


def override_message(
    override: LinkOverride, clocks: Clocks | None = None
) -> control_pb2.LinkOverride:
    """``override``, with its expiry when given the ``clocks`` to convert it (events have
    none)."""
    message = control_pb2.LinkOverride(
        peer=override.peer,
        force_down=override.force_down,
        set_by=override.set_by,
        reason=override.reason,
    )
    if override.admin_cost_ms is not None:
        message.admin_cost_ms = override.admin_cost_ms
    if clocks is not None:
        message.expires_at.CopyFrom(clocks.timestamp(override.expires_at))
    return message


def fault_message(fault: FaultInjected) -> control_pb2.Fault:
    return control_pb2.Fault(
        peer=fault.peer,
        delay_ms=fault.delay_ms,
        jitter_ms=fault.jitter_ms,
        loss_ratio=fault.loss_ratio,
        blackhole=fault.blackhole,
    )


def fault_from_message(message: control_pb2.Fault) -> FaultInjected:
    """The fault a ``Fault`` message describes (unchecked: ``Fault`` in the shell checks)."""
    return FaultInjected(
        message.peer, message.delay_ms, message.jitter_ms, message.loss_ratio, message.blackhole
    )


# --- trunks ----------------------------------------------------------------------------------


def trunk_status_message(stats: TrunkStatistics, now: float) -> control_pb2.TrunkStatus:
    """One trunk address as ListTrunks shows it (``now``: the node's clock, for ages)."""
    message = control_pb2.TrunkStatus(
        trunk=trunk_name(stats.trunk),
        targets=list(stats.targets),
        state=control_pb2.TrunkStatus.State.Value(stats.state.value),
        since_s=now - stats.since,
        rtt_ms=stats.rtt_ms,
        loss_ratio=stats.loss_ratio,
        probes_sent=stats.probes_sent,
        probes_answered=stats.probes_answered,
        probes_lost=stats.probes_lost,
        last_status=stats.last_status,
    )
    if stats.silent_ms is not None:
        message.silent_s = stats.silent_ms / 1000
    return message


# --- routes ----------------------------------------------------------------------------------


def route_message(route: Route) -> control_pb2.Route:
    return control_pb2.Route(
        destination=route.destination,
        path=list(route.path),
        cost_ms=route.cost,
        alternates=[_path_message(path) for path in route.alternates],
    )


def _path_message(path: Path) -> control_pb2.Path:
    return control_pb2.Path(nodes=list(path.nodes), cost_ms=path.cost)


def candidate_message(candidate: Candidate) -> control_pb2.Candidate:
    return control_pb2.Candidate(
        path=list(candidate.path),
        first_hop=candidate.first_hop,
        verdict=control_pb2.Candidate.Verdict.Value(candidate.verdict.value),
        reason=candidate.reason,
        cost_ms=candidate.cost_ms,
        links=[
            control_pb2.LinkCost(
                from_node=link.from_node,
                to_node=link.to_node,
                rtt_ms=link.parts.rtt_ms,
                jitter_ms=link.parts.jitter_ms,
                loss_ms=link.parts.loss_ms,
                retrans_ms=link.parts.retrans_ms,
                admin_ms=link.parts.admin_ms,
                hop_ms=link.parts.hop_ms,
                policy_ms=link.parts.policy_ms,
                total_ms=link.parts.total_ms,
            )
            for link in candidate.links
        ],
    )


def dialplan_match_message(match: DialplanMatch, rule_index: int) -> control_pb2.DialplanMatch:
    """The rule that ``match`` found, the ``rule_index``-th of the dialplan."""
    rule = match.rule
    return control_pb2.DialplanMatch(
        matched=True,
        rule_index=rule_index,
        user_prefix=rule.user_prefix,
        domain=rule.domain or "",
        egress=", ".join(rule.egress),
        target=_target_text(rule.target),
        forwarded_user=match.user or "",
    )


def _target_text(target: StaticTarget | DnsTarget) -> str:
    if isinstance(target, StaticTarget):
        return hostport(target.host, target.port)
    return f"{target.scheme}:{target.domain}"


# --- calls and blocks ------------------------------------------------------------------------


def call_message(
    record: CallRecord,
    clocks: Clocks,
    *,
    path: Sequence[str] = (),
    media: Iterable[control_pb2.MediaRelay] = (),
) -> control_pb2.Call:
    """``record``, with the ``path`` to its far node and its ``media`` relays."""
    call = control_pb2.Call(
        call_id=record.call_id,
        role=control_pb2.Call.Role.Value(record.role.value),
        state=control_pb2.Call.State.Value(record.state.value),
        from_uri=record.from_uri,
        to_uri=record.to_uri,
        request_uri=record.request_uri,
        far_node=record.far_node,
        started_at=clocks.timestamp(record.started),
        age_s=clocks.now - record.started,
        final_status=record.final_status,
        final_reason=record.final_reason,
        sip_requests=record.requests,
        sip_responses=record.responses,
        path=list(path),
        media=list(media),
    )
    if record.answered is not None:
        call.setup_ms = (record.answered - record.started) * 1000.0
    call.egress_tries = record.egress_tries
    call.setup_extra_ms = record.setup_extra * 1000.0
    return call


def relay_message(
    session: MediaSession, counters: Mapping[str, Any] | None
) -> control_pb2.MediaRelay:
    """One media session, with the relay's ``counters`` of it (``None``: the relay has none)."""
    relay = control_pb2.MediaRelay(
        session_id=session.session_id,
        side=session.side.value,
        stream=session.index,
        rtp_port=session.ports.rtp,
        rtcp_port=session.ports.rtcp or 0,
    )
    if session.endpoint is not None:
        relay.endpoint = hostport(*session.endpoint)
    if session.remote is not None:
        relay.remote_node = session.remote.node_id
        relay.remote_session_id = session.remote.session_id
    if counters is not None:
        relay.packets_in = counters["packets_in"]
        relay.packets_out = counters["packets_out"]
        relay.bytes_in = counters["bytes_in"]
        relay.bytes_out = counters["bytes_out"]
        relay.drops = counters["drops"]
        relay.latched = counters["latched"]
        if counters["endpoint"] is not None:
            relay.endpoint = hostport(*counters["endpoint"])
    return relay


def blocked_source_message(block: BlockedSource, clocks: Clocks) -> control_pb2.BlockedSource:
    message = control_pb2.BlockedSource(
        source=block.source,
        reason=control_pb2.BlockedSource.Reason.Value(block.reason.name),
        detail=block.detail,
        since=clocks.timestamp(block.since),
        until=clocks.timestamp(block.until),
        dropped=block.dropped,
    )
    if block.last_dropped is not None:
        message.last_dropped_at.CopyFrom(clocks.timestamp(block.last_dropped))
    return message


# --- events ----------------------------------------------------------------------------------


def event_message(item: Published) -> control_pb2.Event:
    event = item.event
    message = control_pb2.Event(
        seq=item.seq,
        time=timestamp(item.time),
        node_id=item.node_id,
        type=control_pb2.EventType.Value(kind(event)),
        summary=summary(event),
        by=item.by,
    )
    if isinstance(event, LinkChanged):
        message.link.CopyFrom(
            control_pb2.LinkEvent(
                neighbor=event.neighbor,
                metrics=metrics_message(event.metrics),
                cause=event.cause,
            )
        )
    elif isinstance(event, RouteChanged):
        message.route.CopyFrom(
            control_pb2.RouteEvent(
                destination=event.destination,
                old_path=list(event.old_path or ()),
                new_path=list(event.new_path or ()),
                reason=event.reason,
                version=event.version,
            )
        )
    elif isinstance(event, CallFailed):
        message.call.CopyFrom(
            control_pb2.CallEvent(
                call_id=event.call_id,
                far_node=event.far_node,
                status=event.status,
                reason=event.reason,
            )
        )
    elif isinstance(event, CallFailedOver):
        message.failover.CopyFrom(
            control_pb2.FailoverEvent(
                call_id=event.call_id,
                failed=event.failed,
                egress=event.egress,
                cause=event.cause,
                attempt=event.attempt,
            )
        )
    elif isinstance(event, FaultInjected):
        message.fault.CopyFrom(control_pb2.FaultEvent(fault=fault_message(event)))
    elif isinstance(event, FaultsCleared):
        message.fault.CopyFrom(
            control_pb2.FaultEvent(fault=control_pb2.Fault(peer=event.peer), cleared=event.cleared)
        )
    elif isinstance(event, DrainChanged):
        message.drain.CopyFrom(control_pb2.DrainEvent(reason=event.reason))
    elif isinstance(event, SourcesUnblocked):
        message.unblock.CopyFrom(
            control_pb2.UnblockEvent(source=event.source, sources=list(event.sources))
        )
    elif isinstance(event, TrunkChanged):
        message.trunk.CopyFrom(
            control_pb2.TrunkEvent(
                trunk=event.trunk,
                targets=list(event.targets),
                rtt_ms=event.rtt_ms,
                last_status=event.last_status,
            )
        )
    else:
        expired = isinstance(event, OverrideCleared) and event.expired
        message.override.CopyFrom(
            control_pb2.OverrideEvent(override=override_message(event.override), expired=expired)
        )
    return message
