"""overlay.shell.telemetry without I/O: dotted counters to families, CloudWatch data and batches."""

from __future__ import annotations

import re
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import botocore.session
import pytest
from botocore.serialize import create_serializer
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from overlay.config import TrunksSection
from overlay.linkstate import LinkState
from overlay.routing import TrunkHealth
from overlay.shell.stall import StallWatchdog
from overlay.shell.telemetry import (
    COUNTER_FAMILIES,
    NAMESPACE,
    LinkWindow,
    batches,
    counter_families,
    encoded_size,
    link_values,
)
from overlay.shell.telemetry._collector import _trunk_families, stall_histogram
from overlay.sip import Listener, Peer, Request, make_response, parse_message_untrusted, serialize
from tests.mesh_helpers import link_statistics

# -- dotted counters -> families -----------------------------------------------------------------

#: Every kind of dotted name a node has, and the sample it must become.
MAPPED = [
    ("sip.calls.offered", "overlay_calls_offered_total", {}),
    ("sip.calls.in_setup", "overlay_calls_in_setup", {}),
    ("sip.calls.answered", "overlay_calls_answered_total", {}),
    ("sip.calls.failed.486", "overlay_calls_failed_total", {"status": "486"}),
    (
        "sip.transactions_ended.invite_server.no ACK",
        "overlay_sip_transactions_ended_total",
        {"kind": "invite_server", "result": "no ACK"},
    ),
    ("sip.transactions_client", "overlay_sip_transactions", {"role": "client"}),
    ("sip.requests.INVITE", "overlay_sip_requests_total", {"method": "INVITE"}),
    ("sip.responses.4xx", "overlay_sip_responses_total", {"status_class": "4xx"}),
    ("sip.generated.503", "overlay_sip_generated_responses_total", {"status": "503"}),
    ("sip.relayed.requests", "overlay_sip_relayed_total", {"kind": "requests"}),
    ("sip.drops.bad Via: no branch", "overlay_sip_drops_total", {"reason": "bad Via: no branch"}),
    ("sip.retransmissions_sent", "overlay_sip_retransmissions_sent_total", {}),
    ("sip.contexts", "overlay_sip_proxy_contexts", {}),
    ("node.internal_errors", "overlay_internal_errors_total", {}),
    ("transport.tcp_connections", "overlay_transport_tcp_connections", {}),
    ("transport.udp send EAGAIN", "overlay_transport_errors_total", {"reason": "udp send EAGAIN"}),
    ("overlay.unroutable", "overlay_unroutable_total", {}),
    ("overlay.anomalies.duplicate", "overlay_loop_messages_total", {"kind": "duplicate"}),
    ("media.sessions", "overlay_media_sessions", {}),
    ("media.sent_toward.use1.packets", "overlay_media_sent_packets_total", {"destination": "use1"}),
    ("media.drops.no_next_hop", "overlay_media_drops_total", {"reason": "no_next_hop"}),
    ("media.ended.timeout", "overlay_media_sessions_ended_total", {"reason": "timeout"}),
    ("media.failures.add_session", "overlay_media_failures_total", {"reason": "add_session"}),
    (
        "cloudwatch.failures.Throttling",
        "overlay_cloudwatch_failures_total",
        {"error": "Throttling"},
    ),
    ("metrics.scrape_errors", "overlay_metrics_scrape_errors_total", {}),
    ("security.rate_limited", "overlay_security_rate_limited_total", {}),
    ("security.blocked.user_agent", "overlay_security_blocks_total", {"reason": "user_agent"}),
    ("security.blocked_sources", "overlay_security_blocked_sources", {}),
    ("security.lifted", "overlay_security_lifts_total", {}),
    (
        "overload.shed.unknown.OPTIONS",
        "overlay_overload_shed_total",
        {"source": "unknown", "method": "OPTIONS"},
    ),
    ("overload.episodes", "overlay_overload_episodes_total", {}),
    ("loop.stalls", "overlay_loop_stalls_total", {}),
    ("trunks.all_down_tried", "overlay_trunks_all_down_tried_total", {}),
    ("trunks.down", "overlay_trunks_down", {}),
    ("trunks.probes_sent", "overlay_trunks_probes_sent_total", {}),
    ("trunks.answers", "overlay_trunk_answers_total", {"kind": "answers"}),
    ("trunks.stray_answers", "overlay_trunk_answers_total", {"kind": "stray_answers"}),
    ("trunks.lookup_failures", "overlay_trunk_lookups_total", {"result": "lookup_failures"}),
    ("trunks.unprobed", "overlay_trunks_unprobed_total", {}),
    ("something.new", "overlay_counter", {"name": "something.new"}),
]


class Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def exposed(counters: dict[str, int]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples a scrape shows, parsed back from the text format."""
    registry = CollectorRegistry()
    registry.register(Fixed(counter_families(counters)))
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(("dotted", "name", "labels"), MAPPED)
def test_each_dotted_counter_becomes_its_family_sample(
    dotted: str, name: str, labels: dict[str, str]
) -> None:
    assert exposed({dotted: 7}) == {(name, frozenset(labels.items())): 7}


def test_one_scrape_holds_every_counter_once() -> None:
    counters = {dotted: index for index, (dotted, _, _) in enumerate(MAPPED)}
    samples = exposed(counters)
    assert len(samples) == len(MAPPED)
    for index, (_, name, labels) in enumerate(MAPPED):
        assert samples[name, frozenset(labels.items())] == index


def test_microsecond_counters_become_seconds() -> None:
    assert exposed({"loop.longest_stall_us": 120_000, "gc.longest_pass_us.1": 2_500}) == {
        ("overlay_loop_stall_max_seconds", frozenset()): 0.12,
        ("overlay_gc_pass_max_seconds", frozenset({("generation", "1")})): 0.0025,
    }


def test_loop_stall_histogram() -> None:
    watchdog = StallWatchdog()
    for late in (0.0004, 0.002, 0.3):
        watchdog.observe(late)
    registry = CollectorRegistry()
    registry.register(Fixed([stall_histogram(watchdog.statistics())]))
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    assert family.name == "overlay_loop_stall_seconds"
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples["overlay_loop_stall_seconds_bucket", "0.001"] == 1
    assert samples["overlay_loop_stall_seconds_bucket", "0.005"] == 2
    assert samples["overlay_loop_stall_seconds_bucket", "0.25"] == 2
    assert samples["overlay_loop_stall_seconds_bucket", "+Inf"] == 3
    assert samples["overlay_loop_stall_seconds_count", None] == 3
    assert samples["overlay_loop_stall_seconds_sum", None] == pytest.approx(0.3024)


def test_trunk_families() -> None:
    trunks = TrunkHealth(
        "usw2",
        TrunksSection(),
        listeners=[Listener("udp", "127.0.0.1", 5060)],
        user_agent="o",
        now=0.0,
    )
    live, silent = Peer("udp", "127.0.1.1", 5060), Peer("udp", "127.0.1.2", 5060)
    trunks.set_trunks({"sip:carrier.example": [live, silent]}, 0.0)
    for step in range(8):
        now = step * 0.25
        trunks.handle_timer(now)
        for data, peer in trunks.datagrams_to_send(now):
            if peer == live:
                request = parse_message_untrusted(data)
                assert isinstance(request, Request)
                answer = serialize(make_response(request, 200, to_tag="t"))
                assert trunks.receive_answer_untrusted(answer, live, now + 0.012)
    registry = CollectorRegistry()
    registry.register(Fixed(list(_trunk_families(trunks, 2.0))))
    text = generate_latest(registry).decode()
    samples = {
        (sample.name, sample.labels.get("trunk")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["overlay_trunk_up", "udp:127.0.1.1:5060"] == 1.0
    assert samples["overlay_trunk_up", "udp:127.0.1.2:5060"] == 0.0
    assert samples["overlay_trunk_rtt_ms", "udp:127.0.1.1:5060"] == pytest.approx(12.0)
    assert ("overlay_trunk_rtt_ms", "udp:127.0.1.2:5060") not in samples  # never answered
    assert samples["overlay_trunk_probes_sent_total", "udp:127.0.1.2:5060"] == 8
    assert samples["overlay_trunk_probes_answered_total", "udp:127.0.1.1:5060"] == 8


def test_families_without_samples_are_left_out() -> None:
    families = counter_families({"sip.retransmissions_sent": 0})
    assert [family.name for family in families] == ["overlay_sip_retransmissions_sent"]


def test_family_names_follow_prometheus_conventions() -> None:
    names = [family.name for family in COUNTER_FAMILIES]
    assert len(set(names)) == len(names)
    for family in COUNTER_FAMILIES:
        assert re.fullmatch(r"overlay(_[a-z0-9]+)+", family.name), family.name
        # prometheus_client appends _total to counters; gauges never carry it.
        assert not family.name.endswith("_total"), family.name
        assert all(re.fullmatch(r"[a-z_]+", label) for label in family.pattern.groupindex)


def test_every_family_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for family in COUNTER_FAMILIES:
        suffix = "_total" if family.kind == "counter" else ""
        assert f"`{family.name}{suffix}`" in doc, family.name


# -- CloudWatch data -------------------------------------------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_link_values_by_state() -> None:
    up = link_statistics(
        "b", LinkState.UP, rtt_ms=12.5, jitter_ms=1.0, loss_ratio=0.02, retrans_ratio=0.1
    )
    assert link_values(up) == {
        "LinkRttMs": 12.5,
        "LinkJitterMs": 1.0,
        "LinkLossPct": 2.0,
        "LinkRetransPct": 10.0,
    }
    assert link_values(link_statistics("b", LinkState.DOWN, rtt_ms=12.5)) == {"LinkLossPct": 100.0}
    assert link_values(link_statistics("b", LinkState.INIT)) == {}


def test_a_round_carries_per_link_and_per_region_statistic_sets() -> None:
    window = LinkWindow(fleet="voice", region="us-west-2", node_id="usw2-a")
    window.add(
        [
            link_statistics("use1", LinkState.UP, rtt_ms=60.0),
            link_statistics("use2", LinkState.UP, rtt_ms=50.0),
        ]
    )
    window.add(
        [
            link_statistics("use1", LinkState.UP, rtt_ms=80.0),
            link_statistics("use2", LinkState.DOWN),
        ]
    )
    data = window.flush(NOW)
    by_key = {
        (d["MetricName"], tuple(x["Value"] for x in d["Dimensions"])): d  # type: ignore[attr-defined]
        for d in data
    }
    use1 = by_key["LinkRttMs", ("voice", "us-west-2", "usw2-a", "use1")]
    assert use1["StatisticValues"] == {
        "SampleCount": 2.0,
        "Sum": 140.0,
        "Minimum": 60.0,
        "Maximum": 80.0,
    }
    assert use1["Unit"] == "Milliseconds"
    assert use1["Timestamp"] == NOW
    dims = use1["Dimensions"]
    assert [d["Name"] for d in dims] == ["Fleet", "Region", "Node", "Neighbor"]  # type: ignore[attr-defined]
    region_rtt = by_key["LinkRttMs", ("voice", "us-west-2")]
    assert region_rtt["StatisticValues"] == {
        "SampleCount": 3.0,
        "Sum": 190.0,
        "Minimum": 50.0,
        "Maximum": 80.0,
    }
    region_loss = by_key["LinkLossPct", ("voice", "us-west-2")]
    assert region_loss["StatisticValues"]["Maximum"] == 100.0  # type: ignore[index]
    assert region_loss["Unit"] == "Percent"
    # The next round starts empty.
    assert window.flush(NOW) == []


def test_batches_keep_to_the_count_limit() -> None:
    window = LinkWindow(fleet="voice", region="us-west-2", node_id="usw2-a")
    window.add([link_statistics(f"n{i:03}", LinkState.UP, rtt_ms=1.0) for i in range(300)])
    data = window.flush(NOW)
    assert len(data) == 4 * 301
    cut = list(batches(data))
    assert [len(batch) for batch in cut] == [1000, 204]
    assert [datum for batch in cut for datum in batch] == data


def test_batches_keep_to_the_size_limit() -> None:
    dimensions = [{"Name": "Neighbor", "Value": "x" * 250}]
    datum: dict[str, object] = {"MetricName": "LinkRttMs", "Dimensions": dimensions}
    size = encoded_size(datum)
    cut = list(batches([datum] * 10, max_bytes=1024 + 3 * size))
    assert [len(batch) for batch in cut] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="exceeds a request"):
        list(batches([datum], max_bytes=size))


def test_encoded_size_bounds_the_query_protocol_request() -> None:
    """The estimate is never below what botocore's query serializer sends (the most verbose
    protocol), so a batch under 1 MB by the estimate is under 1 MB on the wire."""
    window = LinkWindow(fleet="voice", region="ap-southeast-2", node_id="apse2-az1-active")
    window.add(
        [
            link_statistics(f"peer-{i}", LinkState.UP, rtt_ms=123.456, jitter_ms=0.001)
            for i in range(9)
        ]
    )
    data = window.flush(NOW)
    model = botocore.session.get_session().get_service_model("cloudwatch")
    operation = model.operation_model("PutMetricData")
    body = create_serializer("query").serialize_to_request(
        {"Namespace": NAMESPACE, "MetricData": data}, operation
    )["body"]
    wire = len(urllib.parse.urlencode(body))
    estimate = 1024 + sum(encoded_size(datum) for datum in data)
    assert wire <= estimate < 1.2 * wire
