"""The node's event hub: numbers, stamps and hands every event to the NOC's watchers.

The pieces of a node report events to ``EventHub.publish`` synchronously, from the trio thread;
each watcher (a WatchEvents stream) receives them through its own buffer. A watcher that falls
behind is not allowed to hold the node's memory hostage: one whose buffer of ``buffer`` events is
full is dropped (its ``receive`` raises ``WatcherFellBehind``; the Control service ends its stream
with RESOURCE_EXHAUSTED), while the others go on. Events are never delayed waiting for a watcher.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Collection, Iterator

import trio

from overlay.noc import KINDS, Event, Published, kind
from overlay.shell.clock import wall_time

#: Events a watcher may have waiting before it is dropped.
WATCH_BUFFER = 1000


class WatcherFellBehind(Exception):
    """The watcher did not keep up: its buffer of ``buffer`` events overflowed."""

    def __init__(self, buffer: int) -> None:
        super().__init__(f"more than {buffer} events behind")
        self.buffer = buffer


class Watcher:
    """One subscription to the hub (see ``EventHub.watch``)."""

    def __init__(self, kinds: Collection[str], buffer: int) -> None:
        self._kinds = frozenset(kinds)
        self._buffer = buffer
        self._send, self._receive = trio.open_memory_channel[Published](math.inf)
        self._pending = 0
        self.fell_behind = False

    def wants(self, event: Event) -> bool:
        return not self._kinds or kind(event) in self._kinds

    def _offer(self, item: Published) -> bool:
        """Queue ``item``; False when the watcher is full (it is then closed)."""
        if self._pending >= self._buffer:
            self.fell_behind = True
            self._send.close()
            return False
        self._pending += 1
        self._send.send_nowait(item)
        return True

    async def receive(self) -> Published:
        """The next event.

        Raises:
            WatcherFellBehind: the buffer overflowed; the events queued before are delivered
                first.
        """
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise WatcherFellBehind(self._buffer) from None
        self._pending -= 1
        return item


class EventHub:
    """Numbers, stamps and distributes one node's events; see the module docstring.

    Args:
        node_id: the node, put in every event.
        clock: wall-clock seconds since the epoch (tests pass a fake one).
        buffer: events a watcher may have waiting.
    """

    def __init__(
        self,
        node_id: str,
        *,
        clock: Callable[[], float] = wall_time,
        buffer: int = WATCH_BUFFER,
    ) -> None:
        self.node_id = node_id
        self._clock = clock
        self._buffer = buffer
        self._seq = itertools.count(1)
        self._watchers: set[Watcher] = set()
        self.published = 0
        self.dropped_watchers = 0

    def publish(self, event: Event, *, by: str = "") -> Published:
        """Hand ``event`` to every watcher that wants it; never blocks."""
        item = Published(next(self._seq), self._clock(), self.node_id, event, by)
        self.published += 1
        for watcher in list(self._watchers):
            if watcher.wants(event) and not watcher._offer(item):
                self._watchers.discard(watcher)
                self.dropped_watchers += 1
        return item

    @contextlib.contextmanager
    def watch(self, kinds: Collection[str] = ()) -> Iterator[Watcher]:
        """Receive the events published from now on (only those of ``kinds``, if given).

        Raises:
            ValueError: a kind that is not one of ``KINDS``.
        """
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown event kinds: {', '.join(sorted(unknown))}")
        watcher = Watcher(kinds, self._buffer)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        return len(self._watchers)
