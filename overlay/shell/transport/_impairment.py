"""Fault injection: per-peer delay, jitter, loss and blackhole, applied by the sender.

There is no netem on the lab machines, so each node impairs what *it sends* to each peer: SIP
(calls and probes) in ``SipTransport.send`` and link-state messages in the flooding sessions. A
link's two directions are impaired by its two ends, which is how the lab emulates the backbone:
each node adds half of the region pair's round-trip time as ``base_delay_ms`` (config), and the
Control service's InjectFault adds degradations on top of that at run time.

Messages are delayed whole, so a delayed or dropped SIP message on a TCP connection never breaks
the stream's framing; delays to one peer are kept in order for TCP (a stream cannot reorder)
while UDP datagrams with jitter may overtake each other, as on a real network.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

ALL_PEERS = "*"


@dataclass(frozen=True, slots=True)
class Fault:
    """An impairment of everything sent to one peer. Zero / False adds nothing."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_ratio: float = 0.0
    blackhole: bool = False

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or value > 60_000:
                raise ValueError(f"{name} must be between 0 and 60000 ms, got {value}")
        if not 0.0 <= self.loss_ratio <= 1.0:
            raise ValueError(f"loss_ratio must be between 0 and 1, got {self.loss_ratio}")


class Impairments:
    """The faults in force on one node, keyed by peer node id (``"*"``: every peer).

    Args:
        rng: the source of loss and jitter decisions (seeded in tests and the lab).
        base_delay_ms: per-peer one-way delay that is always applied (lab latency emulation).
        addresses: peer node id -> the addresses (host, port) it is reached at, so that the SIP
            transport, which only sees addresses, can find the peer.
    """

    def __init__(
        self,
        *,
        rng: random.Random,
        base_delay_ms: Mapping[str, float] | None = None,
        addresses: Mapping[str, list[tuple[str, int]]] | None = None,
    ) -> None:
        self._rng = rng
        self._base = dict(base_delay_ms or {})
        self._faults: dict[str, Fault] = {}
        self._peer_at = {
            address: peer for peer, items in (addresses or {}).items() for address in items
        }
        self.dropped = 0
        self.delayed = 0

    def inject(self, peer: str, fault: Fault) -> None:
        """Put ``fault`` on ``peer`` (replacing the one it had); ``"*"`` means every peer."""
        self._faults[peer] = fault

    def clear(self, peer: str | None = None) -> int:
        """Remove the fault of ``peer``, or every fault; returns how many were removed."""
        if peer is None:
            count = len(self._faults)
            self._faults.clear()
            return count
        return 1 if self._faults.pop(peer, None) is not None else 0

    def faults(self) -> dict[str, Fault]:
        return dict(self._faults)

    def peer_at(self, host: str, port: int) -> str | None:
        return self._peer_at.get((host, port))

    def verdict(self, peer: str) -> float | None:
        """What happens to the next message to ``peer``: ``None`` = dropped, else its delay (s)."""
        fault = self._faults.get(peer) or self._faults.get(ALL_PEERS)
        base = self._base.get(peer, 0.0)
        if fault is None:
            return base / 1000.0
        if fault.blackhole or (fault.loss_ratio and self._rng.random() < fault.loss_ratio):
            self.dropped += 1
            return None
        delay = base + fault.delay_ms
        if fault.jitter_ms:
            delay += self._rng.uniform(0.0, fault.jitter_ms)
        if delay:
            self.delayed += 1
        return delay / 1000.0


class DelayLine:
    """Runs callbacks at given times, in time order, from one trio task (``run``).

    Scheduling never blocks; ``ordered_key`` keeps the callbacks of one key (a TCP peer) in
    the order they were scheduled even when a later one has a shorter delay.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._last: dict[object, float] = {}
        self._wake = trio.Event()

    def schedule(self, delay: float, fn: Callable[[], None], *, ordered_key: object = None) -> None:
        deadline = trio.current_time() + delay
        if ordered_key is not None:
            deadline = max(deadline, self._last.get(ordered_key, deadline))
            self._last[ordered_key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), fn))
        if self._heap[0][0] == deadline:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        heap = self._heap
        while True:
            deadline = heap[0][0] if heap else math.inf
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, fn = heapq.heappop(heap)
                fn()
            if not heap:
                self._last.clear()
