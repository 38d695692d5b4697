"""The trio shell of edge security: the guard's clock and its log lines (docs/security.md).

The guard itself (``overlay.security.EdgeGuard``) runs inside the proxy core, on the receive
task, for every message. This task wakes once a second to end the blocks and overload episodes
that are over, and writes one log line per event: a block, its end, an overload episode's start
and end, never one per message.
"""

from __future__ import annotations

import structlog
import trio

from overlay.config import NodeConfig
from overlay.security import (
    EdgeGuard,
    GuardEvent,
    OverloadEnded,
    OverloadStarted,
    SourceBlocked,
    SourceUnblocked,
    edge_guard,
)

log = structlog.get_logger("overlay.security")

#: How often blocks and episodes are ended; the guard judges a returning source on time anyway.
HOUSEKEEPING_INTERVAL = 1.0


class EdgeSecurity:
    """A node's edge security: ``guard`` for the proxy core and the transport, ``run`` for the
    node's nursery."""

    def __init__(self, guard: EdgeGuard) -> None:
        self.guard = guard

    @classmethod
    def for_config(cls, config: NodeConfig) -> EdgeSecurity | None:
        """The node's edge security, or ``None`` when its configuration has no ``[security]``."""
        guard = edge_guard(config)
        return None if guard is None else cls(guard)

    def admit_connection(self, host: str) -> bool:
        """A blocked or denied source gets its TCP/TLS connection closed at accept."""
        return self.guard.screen(host, trio.current_time())

    async def run(self) -> None:
        """Housekeeping and logging, until cancelled."""
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            now = trio.current_time()
            self.guard.handle_timer(now)
            while (event := self.guard.next_event()) is not None:
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
