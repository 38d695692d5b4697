"""The CloudWatch exporter against moto's server over HTTP, and against failing clients.

What is read back from moto is what the fleet's alarms (``deploy.deployer``) would evaluate:
the alarm metrics in the alarm namespace, with exactly the alarms' dimensions. Waiting: the
exporter sends on its own clock, so tests poll its counters under ``trio.fail_after``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError, EndpointConnectionError

from deploy.deployer import ALARM_METRICS, ALARM_NAMESPACE
from overlay.aws import ClientFactory
from overlay.config import CloudwatchSection
from overlay.linkstate import LinkState
from overlay.shell.telemetry._exporter import CloudWatchExporter
from tests.mesh_helpers import link_statistics, mesh_config, open_nodes, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.trio]

REGION = "us-west-2"
FLEET = "voice"


LINKS = [
    link_statistics(
        "use1", LinkState.UP, rtt_ms=68.0, jitter_ms=2.5, loss_ratio=0.05, retrans_ratio=0.01
    ),
    link_statistics("usw1", LinkState.DOWN),
    link_statistics("use2", LinkState.INIT),
]


def section(endpoint: str | None, *, interval: float = 0.5) -> CloudwatchSection:
    return CloudwatchSection(
        fleet=FLEET, region=REGION, interval=interval, sample_interval=0.1, endpoint_url=endpoint
    )


def dimensions(**extra: str) -> list[dict[str, str]]:
    pairs = {"Fleet": FLEET, "Region": REGION, **extra}
    return [{"Name": name, "Value": value} for name, value in pairs.items()]


def statistic(cloudwatch: Any, metric: str, dims: list[dict[str, str]], stat: str) -> list[float]:  # noqa: ANN401
    """Every 60 s value of ``stat`` moto holds for the metric with exactly ``dims``."""
    now = datetime.now(UTC)
    result = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "q",
                "MetricStat": {
                    "Metric": {
                        "Namespace": ALARM_NAMESPACE,
                        "MetricName": metric,
                        "Dimensions": dims,
                    },
                    "Period": 60,
                    "Stat": stat,
                },
            }
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
    )
    [query] = result["MetricDataResults"]
    assert query["StatusCode"] == "Complete"
    return list(query["Values"])


async def test_link_metrics_reach_the_alarms_dimensions(aws: ClientFactory) -> None:
    exporter = CloudWatchExporter(section(aws.endpoint_url), "usw2-a", lambda: LINKS)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        await wait_for(lambda: exporter.batches_sent >= 1, within=10)
        nursery.cancel_scope.cancel()
    assert exporter.failures == {}
    cloudwatch = aws.client("cloudwatch", REGION)

    def region_max(metric: str) -> float:
        return max(statistic(cloudwatch, metric, dimensions(), "Maximum"))

    # What the deployer's alarms watch: their namespace, names and Fleet+Region dimensions.
    for metric in ALARM_METRICS:
        assert statistic(cloudwatch, metric, dimensions(), "Maximum"), metric
    assert region_max("LinkRttMs") == 68.0
    assert region_max("LinkLossPct") == 100.0  # the DOWN link is the worst
    assert region_max("LinkRetransPct") == pytest.approx(1.0)
    assert min(statistic(cloudwatch, "LinkLossPct", dimensions(), "Minimum")) == 5.0
    # Per link, for dashboards: the UP link's own values, the DOWN link's loss only.
    use1 = dimensions(Node="usw2-a", Neighbor="use1")
    assert set(statistic(cloudwatch, "LinkRttMs", use1, "Maximum")) == {68.0}
    assert set(statistic(cloudwatch, "LinkJitterMs", use1, "Average")) == {2.5}
    assert max(statistic(cloudwatch, "LinkLossPct", use1, "Maximum")) == pytest.approx(5.0)
    usw1 = dimensions(Node="usw2-a", Neighbor="usw1")
    assert set(statistic(cloudwatch, "LinkLossPct", usw1, "Maximum")) == {100.0}
    assert statistic(cloudwatch, "LinkRttMs", usw1, "Maximum") == []
    # A link still in INIT has measured nothing yet.
    listed = cloudwatch.list_metrics(
        Namespace=ALARM_NAMESPACE, Dimensions=[{"Name": "Neighbor", "Value": "use2"}]
    )
    assert listed["Metrics"] == []
    # One sample per sample_interval (0.1 s) went into each round (0.5 s). A batch in flight
    # when the exporter was cancelled may have reached CloudWatch uncounted (its thread is
    # waited for, the count after it is not made).
    count = sum(statistic(cloudwatch, "LinkRttMs", use1, "SampleCount"))
    assert 4 * exporter.batches_sent <= count <= 6 * (exporter.batches_sent + 1)


async def test_a_node_publishes_its_links(
    aws: ClientFactory, loopback_host: Callable[[], str]
) -> None:
    host_a, host_b = loopback_host(), loopback_host()
    export = (
        f'\n[cloudwatch]\nfleet = "{FLEET}"\ninterval = 1.0\nsample_interval = 0.1\n'
        f'endpoint_url = "{aws.endpoint_url}"\n'
    )
    texts = {
        "a": mesh_config("cw-a", host_a, "cw-b", host_b, region=REGION, extra=export),
        "b": mesh_config("cw-b", host_b, "cw-a", host_a, region=REGION),
    }
    async with open_nodes(texts) as nodes:
        a = nodes["a"]
        exporter = a.telemetry.exporter
        assert exporter is not None
        assert a.mesh is not None
        monitor = a.mesh.monitors["cw-b"]
        await wait_for(lambda: monitor.state is LinkState.UP, within=10)
        sent = exporter.batches_sent
        # A round that sampled the link UP all along: the one after the next.
        await wait_for(lambda: exporter.batches_sent >= sent + 2, within=10)
        counters = a.counters()
    assert counters["cloudwatch.batches_sent"] >= 2
    assert not any(name.startswith("cloudwatch.failures.") for name in counters)
    cloudwatch = aws.client("cloudwatch", REGION)
    link_dims = dimensions(Node="cw-a", Neighbor="cw-b")
    rtts = statistic(cloudwatch, "LinkRttMs", link_dims, "Maximum")
    assert rtts
    assert 0 < max(rtts) < 250  # loopback: under a millisecond unless the machine stalls
    assert set(statistic(cloudwatch, "LinkLossPct", link_dims, "Minimum")) == {0.0}
    assert statistic(cloudwatch, "LinkRttMs", dimensions(), "Maximum") == rtts


class FlakyClient:
    """A CloudWatch client whose first calls fail with ``errors``; records what it was sent."""

    def __init__(self, *errors: Exception) -> None:
        self._errors = list(errors)
        self.calls: list[tuple[float, str, int]] = []  # (monotonic time, namespace, data)
        self.release = threading.Event()
        self.release.set()

    def put_metric_data(self, *, Namespace: str, MetricData: list[dict[str, Any]]) -> None:
        self.release.wait(timeout=30)
        self.calls.append((time.monotonic(), Namespace, len(MetricData)))
        if self._errors:
            raise self._errors.pop(0)


def throttled() -> ClientError:
    error = {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}
    return ClientError(error, "PutMetricData")


async def test_failures_are_counted_and_backed_off_and_sending_resumes() -> None:
    client = FlakyClient(throttled(), EndpointConnectionError(endpoint_url="http://x"))
    exporter = CloudWatchExporter(
        section(None, interval=0.1),
        "usw2-a",
        lambda: LINKS,
        client=lambda: client,
        backoff_first=0.3,
        backoff_max=1.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        await wait_for(lambda: exporter.batches_sent >= 1, within=10)
        nursery.cancel_scope.cancel()
    assert exporter.failures == {"Throttling": 1, "EndpointConnectionError": 1}
    counters = exporter.counters()
    assert counters["cloudwatch.failures.Throttling"] == 1
    (first, _, _), (second, _, _), (third, namespace, data) = client.calls[:3]
    assert second - first >= 0.3  # paused after the throttle
    assert third - second >= 0.6  # and twice as long after the second failure in a row
    assert namespace == ALARM_NAMESPACE
    assert data == 4 + 1 + 4 + 1  # use1's 4, usw1's loss, 4 per region, NodeUp


async def test_a_stuck_sender_drops_batches_instead_of_piling_them_up() -> None:
    client = FlakyClient()
    client.release.clear()  # every call blocks until released
    exporter = CloudWatchExporter(
        section(None, interval=0.1), "usw2-a", lambda: LINKS, client=lambda: client
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(exporter.run)
            await wait_for(lambda: exporter.batches_dropped >= 2, within=10)
            client.release.set()
            await wait_for(lambda: exporter.batches_sent >= 2, within=10)
            nursery.cancel_scope.cancel()
    finally:
        client.release.set()
    assert exporter.failures == {}
