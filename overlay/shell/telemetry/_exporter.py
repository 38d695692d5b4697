"""Push the per-link metrics to CloudWatch: sampled on the trio clock, sent from a thread.

boto3 blocks (an HTTPS round trip, and botocore's own retries and backoff), so every
``PutMetricData`` call runs in a worker thread (``trio.to_thread.run_sync``), one call at a
time; the event loop only samples the links and hands finished batches to the sending task
through a memory channel of ``QUEUE_BATCHES``. When the sender falls behind (CloudWatch slow
or unreachable), a new batch that finds the queue full is dropped and counted: fresh data is
worth more than a backlog, and the node's memory stays bounded.

Error handling: no failure reaches the node. botocore retries each call (standard mode:
throttling and transient errors, exponential backoff with jitter, ``MAX_ATTEMPTS`` attempts).
A call that still fails costs its batch, counted by error code (``failures``) and logged; the
sender then pauses before its next call, ``backoff_first`` doubling up to ``backoff_max``
while failures go on, and back to none after a success.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import trio
from botocore.exceptions import BotoCoreError, ClientError

from overlay.aws import ClientFactory, error_code
from overlay.config import CloudwatchSection
from overlay.linkstate import LinkStatistics
from overlay.shell.clock import wall_datetime

from ._cloudwatch import Datum, LinkWindow, batches

log = structlog.get_logger("overlay.telemetry")

QUEUE_BATCHES = 16
MAX_ATTEMPTS = 3  # per call, botocore's retries included
BACKOFF_FIRST = 1.0  # seconds
BACKOFF_MAX = 300.0


class CloudWatchExporter:
    """Samples ``links()`` every ``sample_interval`` and sends a round every ``interval``.

    Args:
        section: the node's ``[cloudwatch]`` configuration.
        node_id: the ``Node`` dimension of the per-link data.
        links: the current statistics of every link (read on the trio thread).
        client: makes the boto3 CloudWatch client (called once, in a worker thread); by
            default one from ``overlay.aws.ClientFactory`` for the section's region and endpoint.
        backoff_first, backoff_max: the pause after a failed call, in seconds.
    """

    def __init__(
        self,
        section: CloudwatchSection,
        node_id: str,
        links: Callable[[], Iterable[LinkStatistics]],
        *,
        client: Callable[[], Any] | None = None,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self._section = section
        self._links = links
        self._make_client = client or functools.partial(_default_client, section)
        self._window = LinkWindow(fleet=section.fleet, region=section.region, node_id=node_id)
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        self.batches_sent = 0
        self.data_sent = 0
        self.batches_dropped = 0  # the queue was full
        self.failures: Counter[str] = Counter()  # failed calls by error code

    def counters(self) -> dict[str, int]:
        """By dotted name, for ``Node.counters()``."""
        counters = {
            "cloudwatch.batches_sent": self.batches_sent,
            "cloudwatch.data_sent": self.data_sent,
            "cloudwatch.batches_dropped": self.batches_dropped,
        }
        counters.update({f"cloudwatch.failures.{code}": n for code, n in self.failures.items()})
        return counters

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample and send until cancelled."""
        send, receive = trio.open_memory_channel[list[Datum]](QUEUE_BATCHES)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_batches, receive)
            task_status.started()
            async with send:
                await self._sample(send)

    async def _sample(self, queue: trio.MemorySendChannel[list[Datum]]) -> None:
        section = self._section
        next_sample = trio.current_time() + section.sample_interval
        next_round = trio.current_time() + section.interval
        while True:
            await trio.sleep_until(next_sample)
            next_sample += section.sample_interval
            self._window.add(self._links())
            if trio.current_time() < next_round:
                continue
            next_round += section.interval
            now = wall_datetime()
            for batch in batches([*self._window.flush(now), self._window.node_up(now)]):
                try:
                    queue.send_nowait(batch)
                except trio.WouldBlock:
                    self.batches_dropped += 1
                    log.warning("cloudwatch sender behind; batch dropped", data=len(batch))

    async def _send_batches(self, queue: trio.MemoryReceiveChannel[list[Datum]]) -> None:
        client: Any = None
        backoff = 0.0
        async with queue:
            async for batch in queue:
                if backoff:
                    await trio.sleep(backoff)
                try:
                    if client is None:
                        client = await trio.to_thread.run_sync(self._make_client)
                    put = functools.partial(
                        client.put_metric_data, Namespace=self._section.namespace, MetricData=batch
                    )
                    await trio.to_thread.run_sync(put, abandon_on_cancel=True)
                except (ClientError, BotoCoreError) as error:
                    code = error_code(error) or type(error).__name__
                    self._failed(code, str(error), batch)
                except Exception:
                    # A bug here must cost this batch, not the node and its calls.
                    log.exception("cloudwatch exporter failed")
                    self._failed("internal error", "see the traceback", batch)
                else:
                    self.batches_sent += 1
                    self.data_sent += len(batch)
                    backoff = 0.0
                    continue
                backoff = min(self._backoff_max, max(self._backoff_first, 2 * backoff))

    def _failed(self, code: str, message: str, batch: list[Datum]) -> None:
        self.failures[code] += 1
        log.warning(
            "cloudwatch put failed; batch dropped", error=code, message=message, data=len(batch)
        )


def _default_client(section: CloudwatchSection) -> Any:  # noqa: ANN401  (boto3 has no types)
    factory = ClientFactory(endpoint_url=section.endpoint_url, max_attempts=MAX_ATTEMPTS)
    return factory.client("cloudwatch", section.region)
