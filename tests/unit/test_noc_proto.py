"""The NOC's records as Control messages (overlay.noc._proto): every field carried, the node's
times converted to wall-clock Timestamps, and what overlayctl reads back."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.message import Message

from overlay.config import DialplanRule, DnsTarget, StaticTarget
from overlay.linkstate import METRIC_NAMES, LinkMetrics, LinkState, Lsa
from overlay.media import MediaSession, OverlaySession, PortPair, Side
from overlay.noc import (
    KINDS,
    CallFailed,
    CallRecord,
    CallRole,
    CallState,
    Candidate,
    Clocks,
    DrainChanged,
    Event,
    FaultInjected,
    FaultsCleared,
    LinkChanged,
    LinkCost,
    LinkOverride,
    OverrideCleared,
    OverrideSet,
    Published,
    RouteChanged,
    SourcesUnblocked,
    TrunkChanged,
    Verdict,
    blocked_source_message,
    call_message,
    candidate_message,
    dialplan_match_message,
    event_kind,
    event_message,
    fault_from_message,
    fault_message,
    hostport,
    metrics_message,
    override_message,
    relay_message,
    route_message,
    serialize,
    topology_node_message,
    trunk_status_message,
)
from overlay.routing import CostBreakdown, DialplanMatch, Path, Route, TrunkStatistics
from overlay.security import BlockedSource, BlockReason
from overlay.sip import Peer
from overlay.v1 import control_pb2

# The node's clock read 100 s when the wall clock read 2023-11-14T22:13:20Z.
CLOCKS = Clocks(now=100.0, wall=1_700_000_000.0)
METRICS = LinkMetrics("use1", True, 68.0, 1.5, 0.01, 0.02, 7.0)
OVERRIDE = LinkOverride("use1", 500.0, False, 130.0, "olga", "fibre work")


def test_clocks_turn_node_times_into_wall_clock_timestamps_and_back() -> None:
    stamp = CLOCKS.timestamp(130.5)
    assert stamp.ToNanoseconds() == 1_700_000_030_500_000_000
    assert CLOCKS.node_time(stamp) == 130.5


def test_metrics_carry_every_metric_and_name_the_admin_cost_by_its_unit() -> None:
    message = metrics_message(METRICS)
    assert message == control_pb2.LinkMetrics(
        rtt_ms=68.0, jitter_ms=1.5, loss_ratio=0.01, retrans_ratio=0.02, admin_cost_ms=7.0
    )
    assert len(message.ListFields()) == len(METRIC_NAMES)


def test_override_has_its_expiry_only_given_the_clocks() -> None:
    message = override_message(OVERRIDE, CLOCKS)
    assert (message.peer, message.admin_cost_ms, message.force_down) == ("use1", 500.0, False)
    assert (message.set_by, message.reason) == ("olga", "fibre work")
    assert message.expires_at.ToNanoseconds() == 1_700_000_030_000_000_000
    assert not override_message(OVERRIDE).HasField("expires_at")
    down = LinkOverride("use2", None, True, 130.0)
    assert not override_message(down, CLOCKS).HasField("admin_cost_ms")


def test_fault_reads_back_as_it_was_sent() -> None:
    fault = FaultInjected("use1", delay_ms=30.0, jitter_ms=5.0, loss_ratio=0.01, blackhole=True)
    assert fault_from_message(fault_message(fault)) == fault


def test_topology_node_and_routes() -> None:
    lsa = Lsa("use1", 7, 2.5, "us-east-1", "us-east-1a", (), draining=True)
    assert topology_node_message(lsa) == control_pb2.TopologyNode(
        node_id="use1", region="us-east-1", az="us-east-1a", draining=True, lsa_seq=7, lsa_age_s=2.5
    )
    route = Route("use1", ("usw2", "use1"), 88.0, (Path(("usw2", "use2", "use1"), 130.0),))
    assert route_message(route) == control_pb2.Route(
        destination="use1",
        path=["usw2", "use1"],
        cost_ms=88.0,
        alternates=[control_pb2.Path(nodes=["usw2", "use2", "use1"], cost_ms=130.0)],
    )


def test_candidate_carries_each_link_s_cost_parts() -> None:
    parts = CostBreakdown(50.0, 2.0, 20.0, 10.0, 7.0, 20.0, 1000.0)
    candidate = Candidate(
        "use2",
        Verdict.HIGHER_COST,
        "costs more",
        ("usw2", "use2", "use1"),
        1109.0,
        (LinkCost("usw2", "use2", parts),),
    )
    message = candidate_message(candidate)
    assert message.verdict == control_pb2.Candidate.HIGHER_COST
    assert (message.first_hop, message.reason, message.cost_ms) == ("use2", "costs more", 1109.0)
    assert message.links[0] == control_pb2.LinkCost(
        from_node="usw2",
        to_node="use2",
        rtt_ms=50.0,
        jitter_ms=2.0,
        loss_ms=20.0,
        retrans_ms=10.0,
        admin_ms=7.0,
        hop_ms=20.0,
        policy_ms=1000.0,
        total_ms=1109.0,
    )


@pytest.mark.parametrize(
    ("target", "text"),
    [
        (StaticTarget("2001:db8::7", 5060), "[2001:db8::7]:5060"),
        (DnsTarget("sips", "carrier.example"), "sips:carrier.example"),
    ],
)
def test_dialplan_match(target: StaticTarget | DnsTarget, text: str) -> None:
    rule = DialplanRule(target, user_prefix="+1415", egress=("use1", "use2"))
    message = dialplan_match_message(DialplanMatch(rule, target, "5550100"), 3)
    assert message == control_pb2.DialplanMatch(
        matched=True,
        rule_index=3,
        user_prefix="+1415",
        egress="use1, use2",
        target=text,
        forwarded_user="5550100",
    )


def test_call_has_its_age_setup_time_path_and_media() -> None:
    record = CallRecord(
        "c1@h", CallRole.INGRESS, CallState.ANSWERED, "sip:a@h", "sip:b@h", "sip:b@h", "use1",
        started=90.0, answered=90.25, final_status=200, final_reason="OK", responses=3,
    )  # fmt: skip
    relay = control_pb2.MediaRelay(session_id=1)
    message = call_message(record, CLOCKS, path=("usw2", "use1"), media=[relay])
    assert message.started_at.ToNanoseconds() == 1_699_999_990_000_000_000
    assert (message.age_s, message.setup_ms) == (10.0, 250.0)
    assert (message.role, message.state) == (control_pb2.Call.INGRESS, control_pb2.Call.ANSWERED)
    assert (message.sip_requests, message.sip_responses, message.final_status) == (1, 3, 200)
    assert list(message.path) == ["usw2", "use1"]
    assert list(message.media) == [relay]
    trying = call_message(
        dataclasses.replace(record, state=CallState.TRYING, answered=None), CLOCKS
    )
    assert trying.setup_ms == 0.0
    assert not trying.path


def test_relay_prefers_the_latched_endpoint_of_the_relay_s_counters() -> None:
    session = MediaSession(
        7, "c1@h", Side.CALLER, 0, PortPair(40000, 40001), 90.0,
        endpoint=("192.0.2.1", 4000), remote=OverlaySession("use1", 9),
    )  # fmt: skip
    message = relay_message(session, None)
    assert (message.side, message.rtp_port, message.rtcp_port) == ("caller", 40000, 40001)
    assert (message.endpoint, message.remote_node, message.remote_session_id) == (
        "192.0.2.1:4000",
        "use1",
        9,
    )
    counters = {
        "packets_in": 5,
        "packets_out": 4,
        "bytes_in": 500,
        "bytes_out": 400,
        "drops": 1,
        "latched": True,
        "endpoint": ("2001:db8::1", 4002),
    }
    message = relay_message(session, counters)
    assert (message.packets_in, message.packets_out, message.drops) == (5, 4, 1)
    assert (message.bytes_in, message.bytes_out, message.latched) == (500, 400, True)
    assert message.endpoint == "[2001:db8::1]:4002"


def test_blocked_source_has_its_last_drop_only_once_there_was_one() -> None:
    block = BlockedSource("192.0.2.66", BlockReason.FLOOD, "40 in 1 s", 90.0, 190.0, 0, None)
    message = blocked_source_message(block, CLOCKS)
    assert message.reason == control_pb2.BlockedSource.FLOOD
    assert message.until.ToNanoseconds() == 1_700_000_090_000_000_000
    assert not message.HasField("last_dropped_at")
    dropped = blocked_source_message(
        BlockedSource("192.0.2.66", BlockReason.FLOOD, "", 90.0, 190.0, 3, 99.0), CLOCKS
    )
    assert dropped.last_dropped_at.ToNanoseconds() == 1_699_999_999_000_000_000


@pytest.mark.parametrize(
    ("event", "part", "expected"),
    [
        (
            LinkChanged("use1", True, METRICS),
            "link",
            control_pb2.LinkEvent(neighbor="use1", metrics=metrics_message(METRICS)),
        ),
        (
            RouteChanged("use1", None, ("usw2", "use1"), "link usw2→use1 up", 4),
            "route",
            control_pb2.RouteEvent(
                destination="use1", new_path=["usw2", "use1"], reason="link usw2→use1 up", version=4
            ),
        ),
        (
            CallFailed("c1@h", "use1", 503, "Draining"),
            "call",
            control_pb2.CallEvent(call_id="c1@h", far_node="use1", status=503, reason="Draining"),
        ),
        (
            FaultInjected("*", loss_ratio=0.5),
            "fault",
            control_pb2.FaultEvent(fault=control_pb2.Fault(peer="*", loss_ratio=0.5)),
        ),
        (
            FaultsCleared("use1", 2),
            "fault",
            control_pb2.FaultEvent(fault=control_pb2.Fault(peer="use1"), cleared=2),
        ),
        (DrainChanged(True, "upgrade"), "drain", control_pb2.DrainEvent(reason="upgrade")),
        (
            SourcesUnblocked("*", ("192.0.2.66",)),
            "unblock",
            control_pb2.UnblockEvent(source="*", sources=["192.0.2.66"]),
        ),
        (
            TrunkChanged("udp:192.0.2.7:5060", ("sip:carrier.example",), False, 12.5, 404, 1e3),
            "trunk",
            control_pb2.TrunkEvent(
                trunk="udp:192.0.2.7:5060",
                targets=["sip:carrier.example"],
                rtt_ms=12.5,
                last_status=404,
            ),
        ),
        (
            OverrideSet(OVERRIDE),
            "override",
            control_pb2.OverrideEvent(override=override_message(OVERRIDE)),
        ),
        (
            OverrideCleared(OVERRIDE, expired=True),
            "override",
            control_pb2.OverrideEvent(override=override_message(OVERRIDE), expired=True),
        ),
    ],
)
def test_event_carries_its_kind_summary_and_details(
    event: Event, part: str, expected: Message
) -> None:
    item = Published(12, 1_700_000_001.0, "usw2", event, by="olga")
    message = event_message(item)
    assert (message.seq, message.node_id, message.by) == (12, "usw2", "olga")
    assert message.time.ToNanoseconds() == 1_700_000_001_000_000_000
    assert message.summary
    assert event_kind(message.type) is not None
    assert message.WhichOneof("detail") == part
    assert getattr(message, part) == expected


@pytest.mark.parametrize("silent_ms", [1250.0, None])
def test_trunk_status(silent_ms: float | None) -> None:
    stats = TrunkStatistics(
        trunk=Peer("tls", "2001:db8::7", 5061),
        targets=("sips:carrier.example",),
        state=LinkState.DOWN,
        since=90.0,
        rtt_ms=21.5,
        loss_ratio=0.25,
        probes_sent=40,
        probes_answered=30,
        probes_lost=10,
        last_status=503,
        silent_ms=silent_ms,
    )
    message = trunk_status_message(stats, 100.0)
    assert message.trunk == "tls:[2001:db8::7]:5061"
    assert list(message.targets) == ["sips:carrier.example"]
    assert message.state == control_pb2.TrunkStatus.DOWN
    assert (message.since_s, message.rtt_ms, message.loss_ratio) == (10.0, 21.5, 0.25)
    assert (message.probes_sent, message.probes_answered, message.probes_lost) == (40, 30, 10)
    assert message.last_status == 503
    assert message.HasField("silent_s") is (silent_ms is not None)
    if silent_ms is not None:
        assert message.silent_s == 1.25


def test_event_kinds_are_the_event_types_but_unspecified() -> None:
    assert [event_kind(value) for value in control_pb2.EventType.values()] == [None, *KINDS]
    assert event_kind(999) is None


def test_hostport_and_serialize() -> None:
    assert hostport("127.0.0.1", 5060) == "127.0.0.1:5060"
    assert hostport("::1", 5060) == "[::1]:5060"
    message = control_pb2.Fault(peer="use1")
    assert serialize(message) == message.SerializeToString()
