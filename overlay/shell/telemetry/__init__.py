"""Observability of a node: Prometheus ``/metrics`` and the CloudWatch link-metric exporter.

docs/metrics.md lists every metric family, its labels and meaning.
"""

from ._cloudwatch import NAMESPACE, LinkWindow, StatisticSet, batches, encoded_size, link_values
from ._collector import COUNTER_FAMILIES, CounterFamily, NodeCollector, counter_families
from ._http import MetricsServer
from ._telemetry import Telemetry

__all__ = [
    "COUNTER_FAMILIES",
    "NAMESPACE",
    "CounterFamily",
    "LinkWindow",
    "MetricsServer",
    "NodeCollector",
    "StatisticSet",
    "Telemetry",
    "batches",
    "counter_families",
    "encoded_size",
    "link_values",
]
