"""A node's telemetry: the ``/metrics`` endpoint and the CloudWatch exporter, as configured.

With several workers (``sip.workers``) every worker is a process with its own counters and
serves them itself, worker ``i`` on ``[metrics]`` port ``+ i``: a scrape never mixes workers,
and Prometheus sums them across targets (``sum without (instance, worker)``). An overlay node's
links and routes are worker 0's (its mesh), so only worker 0 reports them, and only it runs
the CloudWatch exporter (which needs ``[[peers]]``). The Control service's GetCounters, in
worker 0, sums every worker's counters (``overlay.shell.workerlink``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
import trio
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.registry import CollectorRegistry

from overlay.config import READY_PATH, NodeConfig

from ._collector import NodeCollector
from ._http import PATH, MetricsServer

if TYPE_CHECKING:
    from overlay.shell.mesh import Mesh

    from ._exporter import CloudWatchExporter

log = structlog.get_logger("overlay.telemetry")


class Telemetry:
    """What ``[metrics]`` and ``[cloudwatch]`` ask for, for one worker of a node:
    ``/metrics`` serves ``collector``, the exporter sends the links of ``mesh``."""

    def __init__(
        self,
        config: NodeConfig,
        worker: int,
        collector: NodeCollector,
        mesh: Mesh | None,
        ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``ready`` says why the node takes no new calls now, or ``None`` (``[health]``)."""
        self._config = config
        self._ready = ready
        self.health_address: tuple[str, int] | None = None  # once serving
        self._worker = worker
        self._collector = collector
        self._mesh = mesh
        self.metrics_address: tuple[str, int] | None = None  # once serving
        self.server: MetricsServer | None = None
        self.exporter: CloudWatchExporter | None = None

    def counters(self) -> dict[str, int]:
        """By dotted name, for the node's counters."""
        counters: dict[str, int] = {}
        if self.server is not None:
            counters["metrics.connections_refused"] = self.server.refused
            counters["metrics.bad_requests"] = self.server.bad_requests
            counters["metrics.scrape_errors"] = self.server.scrape_errors
        if self.exporter is not None:
            counters.update(self.exporter.counters())
        return counters

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve and export until cancelled; reported started once ``/metrics`` listens.

        Raises:
            OSError: the ``[metrics]`` address cannot be bound.
        """
        config = self._config
        async with trio.open_nursery() as nursery:
            if config.metrics is not None:
                registry = CollectorRegistry()
                registry.register(self._collector)
                for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                    registry.register(standard)
                self.server = MetricsServer(registry)
                port = config.metrics.port + self._worker if config.metrics.port else 0
                host, port = await nursery.start(self.server.serve, config.metrics.host, port)
                self.metrics_address = (host, port)
                log.info("metrics listening", host=host, port=port, path=PATH)
            if config.health is not None and self._worker == 0:
                health = MetricsServer(ready=self._ready)
                listen = config.health
                host, port = await nursery.start(health.serve, listen.host, listen.port)
                self.health_address = (host, port)
                log.info("health listening", host=host, port=port, path=READY_PATH)
            if config.cloudwatch is not None and self._mesh is not None:  # worker 0's
                # Imported here: boto3 is loaded only by the nodes that export.
                from ._exporter import CloudWatchExporter

                mesh = self._mesh
                monitors = mesh.monitors.values()
                self.exporter = CloudWatchExporter(
                    config.cloudwatch,
                    config.node.node_id,
                    # A pair's standby has no links: its node is outside the mesh.
                    lambda: (
                        [monitor.statistics(trio.current_time()) for monitor in monitors]
                        if mesh.joined
                        else []
                    ),
                )
                await nursery.start(self.exporter.run)
                section = config.cloudwatch
                log.info(
                    "cloudwatch exporter started",
                    region=section.region,
                    namespace=section.namespace,
                    interval=section.interval,
                )
            task_status.started()
