"""The trio shell of edge security and overload control: their clock and their log lines
(docs/security.md, docs/overload.md).

The guard (``overlay.security.EdgeGuard``, with ``[security]``) and overload control
(``overlay.security.Overload``, every node unless ``[overload] enabled = false``, in front of
the guard) run inside the proxy core, on the receive task, for every message. This task wakes
once a second to end the blocks and overload episodes that are over, and writes one log line
per event: a block, its end, an overload episode's start and end, never one per message.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from overlay.config import NodeConfig
from overlay.security import (
    EdgeGuard,
    GuardEvent,
    Overload,
    OverloadEnded,
    OverloadStarted,
    SourceBlocked,
    SourceUnblocked,
    edge_guard,
    overload_control,
)
from overlay.sip import Admission

log = structlog.get_logger("overlay.security")

#: How often blocks and episodes are ended; the guard judges a returning source on time anyway.
HOUSEKEEPING_INTERVAL = 1.0


class EdgeSecurity:
    """A node's edge security and overload control: ``admission`` for the proxy core,
    ``backlog`` and ``admit_connection`` for the transport, ``run`` for the node's nursery.

    Args:
        guard: ``[security]``'s guard, or ``None`` without it.
        overload: the node's overload control (in front of ``guard``), ``None`` when off.
    """

    def __init__(self, guard: EdgeGuard | None, overload: Overload | None = None) -> None:
        self.guard = guard
        self.overload = overload
        self.admission: Admission | None = overload if overload is not None else guard
        #: What the transport tells when its receive loops fall behind or catch up.
        self.backlog: Callable[[float, float], None] | None = (
            None if overload is None else overload.backlog
        )

    @classmethod
    def for_config(cls, config: NodeConfig) -> EdgeSecurity | None:
        """The node's edge security and overload control, or ``None`` when it has neither
        (no ``[security]`` and ``[overload] enabled = false``)."""
        guard = edge_guard(config)
        overload = overload_control(config, guard)
        if guard is None and overload is None:
            return None
        return cls(guard, overload)

    def admit_connection(self, host: str) -> bool:
        """A blocked or denied source gets its TCP/TLS connection closed at accept."""
        return self.guard is None or self.guard.screen(host, trio.current_time())

    def counters(self) -> dict[str, int]:
        """The guard's ``security.*`` and overload control's ``overload.*`` counters."""
        counters = {} if self.guard is None else self.guard.counters()
        if self.overload is not None:
            counters.update(self.overload.counters())
        return counters

    async def run(self) -> None:
        """Housekeeping and logging, until cancelled."""
        parts = [part for part in (self.guard, self.overload) if part is not None]
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            now = trio.current_time()
            for part in parts:
                part.handle_timer(now)
                while (event := part.next_event()) is not None:
                    _log(event, now)


def _log(event: GuardEvent, now: float) -> None:
    if isinstance(event, SourceBlocked):
        log.warning(
            "source blocked",
            source=event.source,
            reason=str(event.reason),
            detail=event.detail,
            seconds=round(event.until - now),
        )
    elif isinstance(event, SourceUnblocked):
        log.info("source unblocked", source=event.source, dropped=event.dropped)
    elif isinstance(event, OverloadStarted):
        log.warning("overload: refusing new calls", backlog_ms=round(event.backlog * 1000))
    elif isinstance(event, OverloadEnded):
        log.info("overload over", refused=event.shed)
