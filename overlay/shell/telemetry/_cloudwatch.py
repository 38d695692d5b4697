"""CloudWatch link metrics, sans-IO: link samples in, ``PutMetricData`` batches out.

The fleet's alarms (``deploy.deployer``) watch ``LinkLossPct``, ``LinkRttMs`` and
``LinkRetransPct`` in the namespace ``Overlay/Links``, with the dimensions ``Fleet`` and
``Region`` and nothing else, taking the Maximum over 60 s. CloudWatch matches a dimension set
exactly, so every round publishes each metric under two sets:

- ``{Fleet, Region}``: all links of this node merged into one statistic set; every node of the
  region adds its own, so the alarm's Maximum is the worst link leaving the region;
- ``{Fleet, Region, Node, Neighbor}``: one link, for dashboards and for finding the link an
  alarm is about.

Every round also sends ``NodeUp`` (1) under ``{Fleet, Region, Node}``, links or not: the
deployer's node-down alarm of each pair fires when it stops coming.

Each datum is a statistic set (SampleCount, Sum, Minimum, Maximum) of the samples taken since
the previous round, one per ``sample_interval``, so a loss burst between two rounds still
reaches the alarm's Maximum. An UP link is sampled for RTT and jitter (ms), loss and SIP
retransmissions (percent); a DOWN link for a loss of 100 % (nothing else is measured then); a
link still in INIT, not yet.

``batches`` cuts a round into ``PutMetricData`` calls within the API's limits: at most 1,000
data per call and 1 MB per request, sized as the query protocol encodes it (the most verbose of
the protocols botocore may choose).
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from overlay.linkstate import LinkState, LinkStatistics

NAMESPACE = "Overlay/Links"
RTT, JITTER, LOSS, RETRANS = "LinkRttMs", "LinkJitterMs", "LinkLossPct", "LinkRetransPct"
NODE_UP = "NodeUp"
UNITS = {
    RTT: "Milliseconds",
    JITTER: "Milliseconds",
    LOSS: "Percent",
    RETRANS: "Percent",
    NODE_UP: "Count",
}

MAX_DATA_PER_CALL = 1000
MAX_REQUEST_BYTES = 1_000_000
#: What the request carries besides its data (Action, Version, Namespace), generously.
_REQUEST_OVERHEAD = 1024

#: One ``MetricData`` entry of ``PutMetricData``, as boto3 takes it.
Datum = dict[str, object]


def link_values(stats: LinkStatistics) -> dict[str, float]:
    """The values one link contributes to a sample, by metric name."""
    if stats.state is LinkState.UP:
        metrics = stats.metrics
        return {
            RTT: metrics.rtt_ms,
            JITTER: metrics.jitter_ms,
            LOSS: 100.0 * metrics.loss_ratio,
            RETRANS: 100.0 * metrics.retrans_ratio,
        }
    if stats.state is LinkState.DOWN:
        return {LOSS: 100.0}
    return {}


@dataclass(slots=True)
class StatisticSet:
    """Samples of one metric, as CloudWatch's ``StatisticValues`` keeps them."""

    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def merge(self, other: StatisticSet) -> None:
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def as_statistic_values(self) -> dict[str, float]:
        return {
            "SampleCount": float(self.count),
            "Sum": self.total,
            "Minimum": self.minimum,
            "Maximum": self.maximum,
        }


class LinkWindow:
    """The samples of every link since the last ``flush``.

    Args:
        fleet: the ``Fleet`` dimension (the fleet's name in fleet.toml).
        region: the ``Region`` dimension (the AWS region the node runs in).
        node_id: the ``Node`` dimension of the per-link data.
    """

    def __init__(self, *, fleet: str, region: str, node_id: str) -> None:
        self._fleet = fleet
        self._region = region
        self._node_id = node_id
        self._links: dict[str, dict[str, StatisticSet]] = {}

    def add(self, links: Iterable[LinkStatistics]) -> None:
        """Take one sample of every link."""
        for stats in links:
            values = link_values(stats)
            if values:
                sets = self._links.setdefault(stats.neighbor, {})
                for metric, value in values.items():
                    sets.setdefault(metric, StatisticSet()).add(value)

    def flush(self, timestamp: datetime) -> list[Datum]:
        """The data of the round that ends now, stamped ``timestamp``; the window empties."""
        region = [
            {"Name": "Fleet", "Value": self._fleet},
            {"Name": "Region", "Value": self._region},
        ]
        merged: dict[str, StatisticSet] = {}
        data: list[Datum] = []
        for neighbor in sorted(self._links):
            link = [*region, {"Name": "Node", "Value": self._node_id}]
            link.append({"Name": "Neighbor", "Value": neighbor})
            for metric, values in sorted(self._links[neighbor].items()):
                merged.setdefault(metric, StatisticSet()).merge(values)
                data.append(_datum(metric, link, values, timestamp))
        data.extend(_datum(m, region, values, timestamp) for m, values in sorted(merged.items()))
        self._links.clear()
        return data

    def node_up(self, timestamp: datetime) -> Datum:
        """This round's heartbeat of the node (module notes)."""
        node = [
            {"Name": "Fleet", "Value": self._fleet},
            {"Name": "Region", "Value": self._region},
            {"Name": "Node", "Value": self._node_id},
        ]
        up = StatisticSet()
        up.add(1.0)
        return _datum(NODE_UP, node, up, timestamp)


def _datum(
    metric: str, dimensions: list[dict[str, str]], values: StatisticSet, timestamp: datetime
) -> Datum:
    return {
        "MetricName": metric,
        "Dimensions": dimensions,
        "Timestamp": timestamp,
        "StatisticValues": values.as_statistic_values(),
        "Unit": UNITS[metric],
    }


def batches(
    data: Sequence[Datum],
    *,
    max_count: int = MAX_DATA_PER_CALL,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> Iterator[list[Datum]]:
    """``data`` cut into consecutive batches of at most ``max_count`` data and ``max_bytes``
    encoded bytes per request.

    Raises:
        ValueError: one datum alone is larger than a request may be.
    """
    batch: list[Datum] = []
    size = _REQUEST_OVERHEAD
    for datum in data:
        datum_size = encoded_size(datum)
        if _REQUEST_OVERHEAD + datum_size > max_bytes:
            raise ValueError(f"a datum of {datum_size} bytes exceeds a request's {max_bytes}")
        if len(batch) == max_count or size + datum_size > max_bytes:
            yield batch
            batch, size = [], _REQUEST_OVERHEAD
        batch.append(datum)
        size += datum_size
    if batch:
        yield batch


def encoded_size(datum: Mapping[str, object], prefix: str = "MetricData.member.1000.") -> int:
    """Bytes ``datum`` takes in a query-protocol request body (``key=value&`` per field)."""
    size = 0
    for key, value in datum.items():
        if isinstance(value, Mapping):
            size += encoded_size(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            for index, item in enumerate(value, 1):
                size += encoded_size(item, f"{prefix}{key}.member.{index}.")
        else:
            text = value.isoformat() if isinstance(value, datetime) else str(value)
            size += len(prefix) + len(key) + len(urllib.parse.quote(text, safe="")) + 2
    return size
