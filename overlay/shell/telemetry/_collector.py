"""What a Prometheus scrape of a node returns: its counters, links, routes and flooding.

``NodeCollector.collect`` runs at scrape time, on the node's trio thread (``_http`` says why),
and reads everything at one instant: the dotted counters of ``Node.counters()``, turned into
metric families by the ``COUNTER_FAMILIES`` table, the call book of an overlay edge, and the
link monitors, route table and flooder of the mesh. Nothing is mirrored between scrapes, so
nothing can drift from the node.

Names follow Prometheus' conventions: an ``overlay_`` prefix, base units in the name (seconds,
ratios), ``_total`` on counters, and what varies (method, status, reason, neighbour) in labels.
A dotted counter that no family claims is still exported, as ``overlay_counter{name=...}``, so
a counter added to the node shows up at once; give it a family here and in docs/metrics.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from overlay.config import NodeSection
from overlay.linkstate import LinkState
from overlay.noc import CallTracker
from overlay.routing import TrunkHealth, trunk_name
from overlay.shell.stall import StallStatistics, StallWatchdog

if TYPE_CHECKING:
    from overlay.shell.mesh import Mesh


@dataclass(frozen=True, slots=True)
class CounterFamily:
    """The metric family of the dotted counters whose names fully match ``pattern``; the
    pattern's named groups become the labels."""

    name: str  # without the _total a counter gets
    kind: Literal["counter", "gauge"]
    help: str
    pattern: re.Pattern[str]
    scale: float = 1.0  # from the counter's unit to the family's base unit (1e-6: us to s)

    def empty(self) -> CounterMetricFamily | GaugeMetricFamily:
        labels = list(self.pattern.groupindex)
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=labels)
        return GaugeMetricFamily(self.name, self.help, labels=labels)


def _counter(name: str, pattern: str, help_text: str) -> CounterFamily:
    return CounterFamily(name, "counter", help_text, re.compile(pattern))


def _gauge(name: str, pattern: str, help_text: str, *, scale: float = 1.0) -> CounterFamily:
    return CounterFamily(name, "gauge", help_text, re.compile(pattern), scale)


#: Dotted counter name -> family, first match wins (docs/metrics.md lists the same).
COUNTER_FAMILIES: tuple[CounterFamily, ...] = (
    _counter(
        "overlay_calls_offered",
        r"sip\.calls\.offered",
        "INVITEs outside a dialog taken by this node (new server transactions)",
    ),
    _gauge(
        "overlay_calls_in_setup",
        r"sip\.calls\.in_setup",
        "Offered calls not answered with a final response yet",
    ),
    _counter(
        "overlay_calls_answered",
        r"sip\.calls\.answered",
        "Offered calls answered with a 2xx",
    ),
    _counter(
        "overlay_calls_failed",
        r"sip\.calls\.failed\.(?P<status>\d+)",
        "Offered calls answered with a final status >= 300, by status (487: cancelled)",
    ),
    _counter(
        "overlay_sip_transactions_ended",
        r"sip\.transactions_ended\.(?P<kind>[^.]+)\.(?P<result>.+)",
        "SIP transactions ended, by kind and result (final status class, timeout, ...)",
    ),
    _gauge(
        "overlay_sip_transactions",
        r"sip\.transactions_(?P<role>client|server)",
        "SIP transactions alive now, by role",
    ),
    _counter(
        "overlay_sip_requests",
        r"sip\.requests\.(?P<method>.+)",
        "SIP requests received, by method (retransmissions and transit relays included)",
    ),
    _counter(
        "overlay_sip_responses",
        r"sip\.responses\.(?P<status_class>.+)",
        "SIP responses received, by status class",
    ),
    _counter(
        "overlay_sip_generated_responses",
        r"sip\.generated\.(?P<status>\d+)",
        "SIP responses this node generated itself, by status",
    ),
    _counter(
        "overlay_sip_sips_refused",
        r"sip\.sips_refused",
        "sips: requests answered 480 because no TLS leads to their next hop (RFC 5630)",
    ),
    _counter(
        "overlay_calls_failed_over",
        r"sip\.egress_failovers\.(?P<cause>.+)",
        "New calls handed to the next egress of their rule before any final answer, by cause "
        "(no_answer, 408, 503, timeout, egress_lost)",
    ),
    _counter(
        "overlay_calls_late_answers",
        r"sip\.late_answers",
        "2xx answers of branches a call had moved on from, forwarded to the caller",
    ),
    _counter(
        "overlay_calls_ended_far_edge",
        r"sip\.calls_ended_far_edge",
        "Answered calls this edge ended itself with a BYE: their far edge node was lost",
    ),
    _gauge(
        "overlay_sip_dialogs",
        r"sip\.dialogs",
        "Answered calls in this edge's dialog book (what it needs to end one itself)",
    ),
    _counter(
        "overlay_sip_relayed",
        r"sip\.relayed\.(?P<kind>.+)",
        "Overlay SIP messages this node only relayed as a transit node, by kind",
    ),
    _counter(
        "overlay_sip_drops",
        r"sip\.drops\.(?P<reason>.+)",
        "SIP messages dropped without an answer, by reason",
    ),
    _counter(
        "overlay_sip_retransmissions_sent",
        r"sip\.retransmissions_sent",
        "SIP requests and responses this node retransmitted (Timers A, E, G)",
    ),
    _counter(
        "overlay_sip_retransmissions_absorbed",
        r"sip\.retransmissions_absorbed",
        "Retransmissions received and absorbed by an existing transaction",
    ),
    _counter(
        "overlay_sip_detoured_retransmissions",
        r"sip\.detoured_retransmissions",
        "Request retransmissions sent over an alternate overlay path",
    ),
    _gauge(
        "overlay_sip_proxy_contexts",
        r"sip\.contexts",
        "Forwarded requests waiting for their final response",
    ),
    _counter(
        "overlay_internal_errors",
        r"node\.internal_errors",
        "Messages that hit a bug (logged with a traceback); each cost one message",
    ),
    _gauge(
        "overlay_transport_tcp_connections",
        r"transport\.tcp_connections",
        "SIP TCP connections open now",
    ),
    _gauge(
        "overlay_transport_tls_connections",
        r"transport\.tls_connections",
        "SIP TLS connections open now",
    ),
    _counter(
        "overlay_transport_tls_handshakes",
        r"transport\.tls\.handshakes\.(?P<direction>in|out)",
        "SIP TLS handshakes completed, by direction (in: a trunk connected, out: this node did)",
    ),
    _counter(
        "overlay_transport_tls_handshake_failures",
        r"transport\.tls\.handshake_failures\.(?P<direction>in|out)\.(?P<reason>.+)",
        "SIP TLS handshakes that failed or timed out, by direction and OpenSSL's reason",
    ),
    _counter(
        "overlay_transport_errors",
        r"transport\.(?P<reason>.+)",
        "SIP messages the transport could not send or receive, by reason",
    ),
    _counter(
        "overlay_unroutable",
        r"overlay\.unroutable",
        "SIP messages for a node with no route, dropped (the retransmission timer retries)",
    ),
    _counter(
        "overlay_loop_messages",
        r"overlay\.anomalies\.(?P<kind>.+)",
        "Overlay SIP messages a routing loop caught or would have, by kind: loop (came back to "
        "a node it had crossed, relayed on), avoided (sent around a node it had crossed), "
        "dropped (no path around them), duplicate (proxied twice by one node, dropped), "
        "relay limit (dropped)",
    ),
    _counter(
        "overlay_stalls_excused",
        r"overlay\.stalls_excused",
        "Stalls of this node's event loop long enough to delay link detection; the silence of "
        "the neighbours meanwhile was not held against them",
    ),
    _counter(
        "overlay_loop_stalls",
        r"loop\.stalls",
        "Times this node's event loop ran 50 ms or more late (each logged with the collector "
        "pass that ran meanwhile, if any)",
    ),
    _gauge(
        "overlay_loop_stall_max_seconds",
        r"loop\.longest_stall_us",
        "The longest time this node's event loop ran late since the node started",
        scale=1e-6,
    ),
    _gauge(
        "overlay_gc_pass_max_seconds",
        r"gc\.longest_pass_us\.(?P<generation>\d)",
        "The longest garbage-collector pass since the node started, by generation",
        scale=1e-6,
    ),
    _counter(
        "overlay_bad_messages",
        r"overlay\.bad_messages",
        "Probe answers and LSAs refused as malformed or from an unknown node",
    ),
    _counter(
        "overlay_flood_send_drops",
        r"overlay\.flood_send_drops",
        "Flooding messages lost to a broken or full stream (recovered by retransmission)",
    ),
    _gauge("overlay_media_sessions", r"media\.sessions", "Media streams anchored at this node"),
    _gauge(
        "overlay_media_ports_in_use",
        r"media\.ports_in_use",
        "Relay ports taken from the [media] port range",
    ),
    _gauge(
        "overlay_media_relay_sessions",
        r"media\.relay_sessions",
        "Sessions in the fastpath relay's table",
    ),
    _counter(
        "overlay_media_overlay_received_packets",
        r"media\.overlay_in\.packets",
        "Overlay datagrams the relay received from other relays",
    ),
    _counter(
        "overlay_media_liveness_stalls",
        r"media\.liveness_stalls",
        "Liveness ticks the relay thread ran late (could not run): their delay was excused",
    ),
    _counter(
        "overlay_liveness_echoes_sent",
        r"media\.liveness\.(?P<neighbor>[^.]+)\.sent",
        "Liveness echoes the relay sent to a neighbour's relay",
    ),
    _counter(
        "overlay_liveness_echoes_answered",
        r"media\.liveness\.(?P<neighbor>[^.]+)\.answered",
        "Liveness echoes a neighbour's relay answered",
    ),
    _counter(
        "overlay_media_sent_packets",
        r"media\.sent_toward\.(?P<destination>[^.]+)\.packets",
        "Overlay datagrams the relay sent toward a destination node (via its next hop)",
    ),
    _counter(
        "overlay_media_drops",
        r"media\.drops\.(?P<reason>.+)",
        "Datagrams the fastpath relay dropped, by reason",
    ),
    _counter(
        "overlay_media_failures",
        r"media\.failures\.(?P<reason>.+)",
        "Media plane operations that failed, by reason (add_session: a port taken)",
    ),
    _counter(
        "overlay_media_sessions_ended",
        r"media\.ended\.(?P<reason>.+)",
        "Media sessions ended, by reason",
    ),
    _counter(
        "overlay_media_edge_errors",
        r"media\.edge\.(?P<reason>.+)",
        "SDP the media edge could not anchor, by reason",
    ),
    _gauge(
        "overlay_security_sources",
        r"security\.sources",
        "Source addresses (IPv4, IPv6 /64) the edge guard tracks now",
    ),
    _gauge(
        "overlay_security_blocked_sources",
        r"security\.blocked_sources",
        "Sources blocked now",
    ),
    _counter(
        "overlay_security_denied",
        r"security\.denied",
        "Messages from outside the ACL (dropped, or requests answered 403)",
    ),
    _counter(
        "overlay_security_rate_limited",
        r"security\.rate_limited",
        "Out-of-dialog requests over their source's rate (503 + Retry-After, or dropped)",
    ),
    _counter(
        "overlay_security_blocks",
        r"security\.blocked\.(?P<reason>.+)",
        "Sources blocked, by reason (user_agent, sweep, failures, flood)",
    ),
    _counter(
        "overlay_security_blocked_drops",
        r"security\.blocked_drops",
        "Messages dropped because their source was blocked",
    ),
    _counter(
        "overlay_security_unblocks",
        r"security\.unblocked",
        "Blocks that ran out",
    ),
    _counter(
        "overlay_security_lifts",
        r"security\.lifted",
        "Blocks an operator lifted before they ran out (Unblock)",
    ),
    _counter(
        "overlay_overload_shed",
        r"overload\.shed\.(?P<source>[a-z]+)\.(?P<method>.+)",
        "New requests answered 503 because the node was past its capacity, by source (known:"
        " a trunk or dialplan target; unknown) and method",
    ),
    _counter(
        "overlay_overload_episodes",
        r"overload\.episodes",
        "Times the node began shedding new requests",
    ),
    _counter(
        "overlay_trunks_all_down_tried",
        r"trunks\.all_down_tried",
        "Calls whose every trunk address was DOWN, tried in RFC 3263 order anyway",
    ),
    _gauge("overlay_trunks_down", r"trunks\.down", "Trunk addresses DOWN now"),
    _counter(
        "overlay_trunks_probes_sent",
        r"trunks\.probes_sent",
        "OPTIONS probes sent to trunk addresses (every trunk)",
    ),
    _counter(
        "overlay_trunk_answers",
        r"trunks\.(?P<kind>answers|answers_not_alive|stray_answers)",
        "Answers to trunk probes, by kind: answers (all), answers_not_alive (a final status "
        "that proves nothing: 408, or not in reply_codes), stray_answers (from another host, "
        "for no probe of ours, or too late)",
    ),
    _counter(
        "overlay_trunk_lookups",
        r"trunks\.(?P<result>lookups|lookup_failures)",
        "RFC 3263 lookups of DNS trunk targets (lookups), and those that failed",
    ),
    _counter(
        "overlay_trunks_unprobed",
        r"trunks\.unprobed",
        "Trunk probes not made: no listener of the trunk's transport",
    ),
    _counter(
        "overlay_metrics_connections_refused",
        r"metrics\.connections_refused",
        "Connections to /metrics closed at once: too many open",
    ),
    _counter(
        "overlay_metrics_bad_requests",
        r"metrics\.bad_requests",
        "Requests to /metrics that were not valid HTTP/1.1 (answered 400)",
    ),
    _counter(
        "overlay_metrics_scrape_errors",
        r"metrics\.scrape_errors",
        "Scrapes that failed on a bug (answered 500, logged with a traceback)",
    ),
    _counter(
        "overlay_cloudwatch_batches_sent",
        r"cloudwatch\.batches_sent",
        "PutMetricData calls that succeeded",
    ),
    _counter(
        "overlay_cloudwatch_data_sent",
        r"cloudwatch\.data_sent",
        "Metric data (statistic sets) CloudWatch accepted",
    ),
    _counter(
        "overlay_cloudwatch_batches_dropped",
        r"cloudwatch\.batches_dropped",
        "Batches dropped unsent: the sender was behind and its queue full",
    ),
    _counter(
        "overlay_cloudwatch_failures",
        r"cloudwatch\.failures\.(?P<error>.+)",
        "PutMetricData calls that failed after botocore's retries, by error code",
    ),
    _gauge(
        "overlay_draining",
        r"control\.draining",
        "1 while the node is drained (new calls refused with 503), else 0",
    ),
    _gauge(
        "overlay_link_overrides",
        r"control\.link_overrides",
        "Operator link overrides in force (admin cost or forced down)",
    ),
    _counter(
        "overlay_control_rpcs",
        r"control\.rpc\.(?P<method>[A-Za-z]+)\.(?P<status>[A-Z_]+)",
        "Control service calls answered, by method and gRPC status",
    ),
    _counter(
        "overlay_control_events_published",
        r"control\.events\.published",
        "Events published to WatchEvents",
    ),
    _gauge(
        "overlay_control_watchers",
        r"control\.events\.watchers",
        "WatchEvents streams open",
    ),
    _counter(
        "overlay_control_dropped_watchers",
        r"control\.events\.dropped_watchers",
        "WatchEvents streams ended because the client fell too far behind",
    ),
    _counter(
        "overlay_control_calls_failed",
        r"control\.calls\.failed",
        "Calls the call book saw fail (a final response >= 300 to the INVITE)",
    ),
    _counter(
        "overlay_control_calls_evicted",
        r"control\.calls\.evicted",
        "Ended calls dropped from the call book to bound its size",
    ),
    _gauge(
        "overlay_pair_replication_following",
        r"pair\.replication\.following",
        "1 while the pair's replication stream is up (the active serving its follower, or the "
        "standby following), else 0",
    ),
    _gauge(
        "overlay_pair_replication_lag_seconds",
        r"pair\.replication\.lag_ms",
        "The standby's wall clock minus the sending time of the last batch it applied",
        scale=1e-3,
    ),
    _gauge(
        "overlay_pair_replication_lag_records",
        r"pair\.replication\.lag_records",
        "Records the active made that the standby had not applied at its last report",
    ),
    _gauge(
        "overlay_pair_replication_calls",
        r"pair\.replication\.calls",
        "Calls the standby holds the active's state of",
    ),
    _counter(
        "overlay_pair_replication_resyncs",
        r"pair\.replication\.resyncs",
        "Snapshots the active sent, or the standby applied, the first one included",
    ),
    _counter(
        "overlay_pair_replication_overruns",
        r"pair\.replication\.overruns",
        "Replication streams the active dropped because the standby fell behind",
    ),
    _counter(
        "overlay_pair_replication_split_brains",
        r"pair\.replication\.split_brains",
        "Follow streams refused because the other member held the pair's address too",
    ),
)

OTHER_COUNTERS = "overlay_counter"


def counter_families(counters: Mapping[str, int]) -> list[Metric]:
    """The families of ``COUNTER_FAMILIES`` filled from ``counters``, then ``overlay_counter``
    with the names no family claims; families without a sample are left out (a node without
    media has no media families)."""
    families = {family.name: family.empty() for family in COUNTER_FAMILIES}
    other = UnknownMetricFamily(
        OTHER_COUNTERS,
        "Node counters without a family of their own, by dotted name",
        labels=["name"],
    )
    for name in sorted(counters):
        value = counters[name]
        for family in COUNTER_FAMILIES:
            match = family.pattern.fullmatch(name)
            if match is not None:
                families[family.name].add_metric(list(match.groups()), value * family.scale)
                break
        else:
            other.add_metric([name], value)
    return [family for family in (*families.values(), other) if family.samples]


class NodeCollector(Collector):
    """Every metric of one node (one worker of it), read when Prometheus scrapes.

    Runs on the node's trio thread only: it reads the node's state without locks.
    """

    def __init__(
        self,
        node: NodeSection,
        worker: int,
        *,
        counters: Callable[[], Mapping[str, int]],
        stalls: StallWatchdog,
        calls: CallTracker | None,
        mesh: Mesh | None,
        trunks: TrunkHealth | None = None,
    ) -> None:
        self._node = node
        self._worker = worker
        self._counters = counters
        self._stalls = stalls
        self._calls = calls
        self._mesh = mesh
        self._trunks = trunks

    def collect(self) -> Iterator[Metric]:
        node = self._node
        info = InfoMetricFamily("overlay_node", "The node this worker belongs to")
        labels = {"node_id": node.node_id, "region": node.region, "az": node.az}
        info.add_metric([], {**labels, "worker": str(self._worker)})
        yield info
        yield from counter_families(self._counters())
        yield stall_histogram(self._stalls.statistics())
        now = trio.current_time()
        calls = self._calls
        if calls is not None:
            yield GaugeMetricFamily(
                "overlay_calls_active",
                "Calls anchored at this overlay edge and not over (in setup, or answered and "
                "not yet ended by a BYE)",
                value=calls.active(now),
            )
        mesh = self._mesh
        if mesh is not None:
            yield from _link_families(mesh, now)
            yield from _route_families(mesh)
            yield from _flood_families(mesh)
        if self._trunks is not None:
            yield from _trunk_families(self._trunks, now)


def stall_histogram(stats: StallStatistics) -> HistogramMetricFamily:
    """How late the event loop woke a task sleeping 10 ms, each tick (overlay.shell.stall)."""
    return HistogramMetricFamily(
        "overlay_loop_stall_seconds",
        "How late this node's event loop ran a task sleeping 10 ms, measured every time",
        buckets=[(_bound(bound), count) for bound, count in stats.buckets],
        sum_value=stats.late_sum,
    )


def _bound(seconds: float) -> str:
    return "+Inf" if seconds == math.inf else repr(seconds)


def _link_families(mesh: Mesh, now: float) -> Iterator[Metric]:
    label = ["neighbor"]
    up = GaugeMetricFamily("overlay_link_up", "1 while the link is UP, else 0", labels=label)
    state = GaugeMetricFamily(
        "overlay_link_state",
        "The link's state (INIT, UP, DOWN): 1 for the current one",
        labels=[*label, "state"],
    )
    age = GaugeMetricFamily(
        "overlay_link_state_seconds", "Time since the link entered its state", labels=label
    )
    rtt = GaugeMetricFamily(
        "overlay_link_rtt_seconds", "Smoothed probe round-trip time (UP links)", labels=label
    )
    jitter = GaugeMetricFamily(
        "overlay_link_jitter_seconds",
        "Round-trip time variation, the worse of SIP and media probes (UP links)",
        labels=label,
    )
    loss = GaugeMetricFamily(
        "overlay_link_loss_ratio",
        "Share of recent probes lost, the worse of SIP and media probes (UP links)",
        labels=label,
    )
    retrans = GaugeMetricFamily(
        "overlay_link_retransmission_ratio",
        "SIP retransmissions per request sent over the link (UP links)",
        labels=label,
    )
    probe_labels = [*label, "probe"]
    sent = CounterMetricFamily(
        "overlay_link_probes_sent", "Probes sent, by kind (sip, media)", labels=probe_labels
    )
    answered = CounterMetricFamily(
        "overlay_link_probes_answered", "Probes answered, by kind", labels=probe_labels
    )
    lost = CounterMetricFamily(
        "overlay_link_probes_lost", "Probes counted lost, by kind", labels=probe_labels
    )
    for monitor in mesh.monitors.values():
        stats = monitor.statistics(now)
        neighbor = stats.neighbor
        up.add_metric([neighbor], 1.0 if stats.state is LinkState.UP else 0.0)
        for each in LinkState:
            state.add_metric([neighbor, each.value], 1.0 if stats.state is each else 0.0)
        age.add_metric([neighbor], now - stats.since)
        if stats.state is LinkState.UP:
            metrics = stats.metrics
            rtt.add_metric([neighbor], metrics.rtt_ms / 1000)
            jitter.add_metric([neighbor], metrics.jitter_ms / 1000)
            loss.add_metric([neighbor], metrics.loss_ratio)
            retrans.add_metric([neighbor], metrics.retrans_ratio)
        sent.add_metric([neighbor, "sip"], stats.probes_sent)
        answered.add_metric([neighbor, "sip"], stats.probes_answered)
        lost.add_metric([neighbor, "sip"], stats.probes_lost)
        if stats.media is not None:
            sent.add_metric([neighbor, "media"], stats.media.sent)
            answered.add_metric([neighbor, "media"], stats.media.answered)
            lost.add_metric([neighbor, "media"], stats.media.lost)
    yield from (up, state, age, rtt, jitter, loss, retrans, sent, answered, lost)


def _trunk_families(trunks: TrunkHealth, now: float) -> Iterator[Metric]:
    """One series per trunk address probed, ``trunk`` = ``udp:198.51.100.7:5060``. The RTT is
    in milliseconds, as ListTrunks and the events give it (docs/metrics.md)."""
    label = ["trunk"]
    up = GaugeMetricFamily(
        "overlay_trunk_up",
        "1 unless the trunk address is DOWN (no probe answered for the detection time)",
        labels=label,
    )
    rtt = GaugeMetricFamily(
        "overlay_trunk_rtt_ms",
        "Smoothed round-trip time of the trunk's answers to probes, milliseconds (answered)",
        labels=label,
    )
    sent = CounterMetricFamily("overlay_trunk_probes_sent", "Probes sent", labels=label)
    answered = CounterMetricFamily(
        "overlay_trunk_probes_answered",
        "Probes answered with a response that proves the trunk alive",
        labels=label,
    )
    lost = CounterMetricFamily(
        "overlay_trunk_probes_lost", "Probes without such an answer in time", labels=label
    )
    for stats in trunks.statistics(now):
        name = [trunk_name(stats.trunk)]
        up.add_metric(name, 0.0 if stats.state is LinkState.DOWN else 1.0)
        if stats.probes_answered:
            rtt.add_metric(name, stats.rtt_ms)
        sent.add_metric(name, stats.probes_sent)
        answered.add_metric(name, stats.probes_answered)
        lost.add_metric(name, stats.probes_lost)
    yield from (up, rtt, sent, answered, lost)


def _route_families(mesh: Mesh) -> Iterator[Metric]:
    table = mesh.routes
    label = ["destination"]
    reachable = GaugeMetricFamily(
        "overlay_route_reachable", "1 while the route table has a path to the node", labels=label
    )
    cost = GaugeMetricFamily(
        "overlay_route_cost",
        "Cost of the chosen path, in milliseconds of latency-equivalent cost",
        labels=label,
    )
    hops = GaugeMetricFamily("overlay_route_hops", "Links on the chosen path", labels=label)
    next_hop = GaugeMetricFamily(
        "overlay_route_next_hop",
        "1 for the node a destination's traffic goes to next",
        labels=[*label, "next_hop"],
    )
    destinations = sorted(set(mesh.monitors) | set(table.paths))
    for destination in destinations:
        path = table.paths.get(destination)
        reachable.add_metric([destination], 0.0 if path is None else 1.0)
        if path is not None:
            cost.add_metric([destination], path.cost)
            hops.add_metric([destination], len(path.nodes) - 1)
            next_hop.add_metric([destination, path.nodes[1]], 1.0)
    updates = CounterMetricFamily(
        "overlay_route_table_updates",
        "Route tables computed since start that changed the path to some destination",
        value=table.version - 1,
    )
    yield from (reachable, cost, hops, next_hop, updates)


def _flood_families(mesh: Mesh) -> Iterator[Metric]:
    stats = mesh.flooder.statistics()
    messages = CounterMetricFamily(
        "overlay_flood_messages",
        "Link-state flooding messages, by direction and type",
        labels=["direction", "type"],
    )
    messages.add_metric(["sent", "lsa"], stats.lsas_sent)
    messages.add_metric(["received", "lsa"], stats.lsas_received)
    messages.add_metric(["sent", "ack"], stats.acks_sent)
    messages.add_metric(["received", "ack"], stats.acks_received)
    yield messages
    scalars = (
        (
            CounterMetricFamily,
            "overlay_flood_retransmissions",
            "LSAs resent to a neighbour that had not acknowledged them",
            stats.retransmissions,
        ),
        (
            CounterMetricFamily,
            "overlay_flood_lsas_originated",
            "LSAs this node originated",
            stats.originated,
        ),
        (
            CounterMetricFamily,
            "overlay_flood_lsas_installed",
            "LSAs installed in the link-state database (newer than the copy held)",
            stats.installed,
        ),
        (
            GaugeMetricFamily,
            "overlay_flood_sessions",
            "Flooding sessions up with neighbours",
            stats.sessions,
        ),
        (
            GaugeMetricFamily,
            "overlay_lsdb_lsas",
            "LSAs in the link-state database",
            stats.lsdb_size,
        ),
    )
    for family, name, help_text, value in scalars:
        yield family(name, help_text, value=value)
