"""Relay port allocation: RTP/RTCP pairs from a configured range (sans-IO).

Theory of operation
-------------------
The range is cut into *slots*: an even port ``p`` and ``p + 1`` (RFC 3550 §11: RTP on an even
port, RTCP on the next odd one). Every allocation takes one whole slot, also for a stream that
offers rtcp-mux (RFC 5761): it is handed ``PortPair(p, None)`` and ``p + 1`` stays reserved, so
that when the answer declines rtcp-mux the node can still open RTCP on ``p + 1`` without asking
for new ports and rewriting the SDP again.

Free slots wait in one FIFO queue. ``allocate`` takes the slot at the front and ``release`` puts
freed slots at the back, so a port is reused as late as possible: a late RTP packet of an ended
call then reaches a closed socket (or, at worst, a call set up long after), not the call set up
right after it. ``take`` claims one given slot wherever it waits (a standby restoring the ports
its active used, pair replication): the queue is an insertion-ordered dict, not a deque, so that
taking from the middle is O(1) too, as ``allocate`` and ``release`` are per slot.

Ports are held by *owners*, any hashable key (the media sessions use session ids); an owner may
hold several slots and ``release(owner)`` frees them all. Nothing here opens a socket: the shell
binds the ports it is given and closes them before releasing.

A node with several SIP workers (``sip.workers``) gives each worker's edge its own allocator over
its own slice of the range (``port_slice``), so the workers hand out ports without asking each
other: the node's one relay, in worker 0, binds them all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = [
    "PortAllocator",
    "PortPair",
    "PortStatistics",
    "PortTaken",
    "PortsExhausted",
    "port_slice",
]


@dataclass(frozen=True, slots=True)
class PortPair:
    """The relay ports of one stream: RTP, and RTCP or ``None`` when RTCP is multiplexed on the
    RTP port (rtcp-mux, RFC 5761)."""

    rtp: int
    rtcp: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.rtp <= 65535 or (self.rtcp is not None and not 1 <= self.rtcp <= 65535):
            raise ValueError(f"port out of range in {self!r}")


@dataclass(frozen=True, slots=True)
class PortStatistics:
    """Counts are in slots (pairs); every slot reserves two port numbers."""

    capacity: int
    in_use: int
    free: int
    exhausted: int  # allocations refused because every slot was held


class PortsExhausted(Exception):
    """Every slot of the range is held; nothing was allocated."""


class PortTaken(Exception):
    """``take`` asked for a slot that is held already; nothing was taken."""


class PortAllocator:
    """Hands out RTP/RTCP port pairs from ``first``..``last`` (both included).

    Args:
        first: lowest port of the range; an odd ``first`` is not used (RTP ports are even).
        last: highest port of the range; an even ``last`` is not used (it would have no RTCP
            port).

    Raises:
        ValueError: the range is outside 1..65535 or holds no whole pair.
    """

    __slots__ = ("_capacity", "_exhausted", "_first", "_free", "_held", "_last", "_start")

    def __init__(self, first: int, last: int) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port range {first}..{last}")
        start = first + first % 2
        if start + 1 > last:
            raise ValueError(f"port range {first}..{last} holds no even/odd pair")
        self._first = first
        self._last = last
        self._start = start
        # The FIFO queue of free slots (by RTP port): popitem(last=False) takes the front.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(start, last, 2))
        self._capacity = len(self._free)
        self._held: dict[Hashable, list[PortPair]] = {}
        self._exhausted = 0

    def __repr__(self) -> str:
        return f"PortAllocator({self._first}, {self._last})"

    @property
    def in_use(self) -> int:
        """Slots (pairs) currently held."""
        return self._capacity - len(self._free)

    @property
    def free_count(self) -> int:
        """Slots (pairs) that can still be allocated."""
        return len(self._free)

    @property
    def capacity(self) -> int:
        return self._capacity

    def allocate(self, owner: Hashable, *, rtcp_mux: bool = False) -> PortPair:
        """Take the least recently used free slot for ``owner``.

        Args:
            owner: who holds the slot until ``release(owner)``.
            rtcp_mux: return ``PortPair(p, None)`` instead of ``PortPair(p, p + 1)``; ``p + 1``
                is reserved all the same.

        Raises:
            PortsExhausted: every slot is held.
        """
        if not self._free:
            self._exhausted += 1
            raise PortsExhausted(
                f"all {self._capacity} RTP/RTCP port pairs of {self._first}..{self._last}"
                " are in use"
            )
        rtp, _ = self._free.popitem(last=False)
        pair = PortPair(rtp, None if rtcp_mux else rtp + 1)
        self._held.setdefault(owner, []).append(pair)
        return pair

    def take(self, owner: Hashable, rtp: int, *, rtcp_mux: bool = False) -> PortPair:
        """Take the slot of RTP port ``rtp`` for ``owner``, wherever it waits in the queue.

        Pair replication (issue 16) calls it, through ``MediaSessions.restore``, when a standby
        restores a session of its active: the endpoint and the far edge already send to the
        ports the active gave the session, so the standby must hold the very same ones.

        Args:
            owner: who holds the slot until ``release(owner)``.
            rtp: the slot's RTP port: even, in this allocator's range.
            rtcp_mux: return ``PortPair(rtp, None)``; ``rtp + 1`` is reserved all the same.

        Raises:
            ValueError: ``rtp`` is not the RTP port of a slot of this range (odd, or outside).
            PortTaken: the slot is held (by ``owner`` too); nothing was taken.
        """
        if rtp % 2 or not self._start <= rtp < self._last:
            raise ValueError(
                f"port {rtp} is not the RTP port of a pair of {self._first}..{self._last}"
            )
        if rtp not in self._free:
            raise PortTaken(f"RTP/RTCP port pair {rtp}/{rtp + 1} is in use")
        del self._free[rtp]
        pair = PortPair(rtp, None if rtcp_mux else rtp + 1)
        self._held.setdefault(owner, []).append(pair)
        return pair

    def release(self, owner: Hashable) -> int:
        """Free every slot ``owner`` holds (none is fine: releasing twice is harmless).

        Returns:
            how many slots were freed.
        """
        pairs = self._held.pop(owner, None)
        if pairs is None:
            return 0
        for pair in pairs:
            self._free[pair.rtp] = None  # to the back of the queue
        return len(pairs)

    def held_by(self, owner: Hashable) -> list[PortPair]:
        """The pairs ``owner`` holds, in allocation order."""
        return list(self._held.get(owner, ()))

    def statistics(self) -> PortStatistics:
        return PortStatistics(
            capacity=self._capacity,
            in_use=self.in_use,
            free=len(self._free),
            exhausted=self._exhausted,
        )


def port_slice(first: int, last: int, workers: int, index: int) -> tuple[int, int]:
    """Worker ``index``'s share of the relay ports ``first``..``last``, of ``workers`` in all.

    The range's RTP/RTCP pairs (from the first even port; see ``PortAllocator``) are cut into
    ``workers`` runs of equal length, in worker order: worker 0 has the lowest ports. Every
    boundary is even, so each slice is whole pairs. The pairs left over when the count does
    not divide (fewer than ``workers``) are used by no one.

    Returns:
        ``(first, last)`` of the slice, both included: an even and an odd port.

    Raises:
        ValueError: ``index`` is not one of the workers, or the range holds fewer pairs than
            there are workers.

    Examples:
        >>> port_slice(20000, 20999, 2, 1)
        (20500, 20999)
        >>> port_slice(20000, 20010, 4, 3)
        (20006, 20007)
    """
    if not 0 <= index < workers:
        raise ValueError(f"worker {index} is not one of {workers}")
    start = first + first % 2
    pairs = max(0, (last + 1 - start) // 2)
    share = pairs // workers
    if share == 0:
        raise ValueError(
            f"port range {first}..{last} holds {pairs} RTP/RTCP pairs: fewer than the {workers}"
            " workers, which need one each at least"
        )
    low = start + 2 * share * index
    return low, low + 2 * share - 1
