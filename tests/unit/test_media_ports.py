"""Relay port allocation: even/odd pairs, rtcp-mux, exhaustion, delayed (LRU) reuse, and
taking a given pair (a standby restoring its active's ports)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.media import (
    PortAllocator,
    PortPair,
    PortsExhausted,
    PortStatistics,
    PortTaken,
    port_slice,
)


def test_pairs_are_even_and_odd():
    ports = PortAllocator(20000, 20009)
    pairs = [ports.allocate(f"call-{index}") for index in range(5)]
    assert pairs == [PortPair(port, port + 1) for port in range(20000, 20010, 2)]
    assert ports.in_use == 5
    assert ports.free_count == 0


def test_rtcp_mux_gets_one_port_and_reserves_the_next():
    ports = PortAllocator(20000, 20003)
    assert ports.allocate("a", rtcp_mux=True) == PortPair(20000, None)
    assert ports.allocate("b") == PortPair(20002, 20003)
    assert ports.free_count == 0


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (20001, 20006, [20002, 20004]),  # odd first and even last are not used
        (20000, 20001, [20000]),
        (1, 65535, list(range(2, 65535, 2))),
    ],
)
def test_range_edges(first: int, last: int, expected: list[int]):
    ports = PortAllocator(first, last)
    assert ports.capacity == len(expected)
    assert [ports.allocate(index).rtp for index in range(len(expected))] == expected


@pytest.mark.parametrize(
    ("first", "last"), [(0, 100), (100, 65536), (200, 100), (20001, 20002), (20000, 20000)]
)
def test_bad_ranges_refused(first: int, last: int):
    with pytest.raises(ValueError, match="port range"):
        PortAllocator(first, last)


@pytest.mark.parametrize(
    ("first", "last", "workers", "slices"),
    [
        (20000, 20999, 1, [(20000, 20999)]),
        (20000, 20999, 2, [(20000, 20499), (20500, 20999)]),
        # 6 pairs for 4 workers: one each, the two left over used by no one.
        (20000, 20011, 4, [(20000, 20001), (20002, 20003), (20004, 20005), (20006, 20007)]),
        # An odd first port is not used, as by the allocator.
        (20001, 20012, 2, [(20002, 20005), (20006, 20009)]),
    ],
)
def test_each_worker_has_its_own_slice_of_whole_pairs(
    first: int, last: int, workers: int, slices: list[tuple[int, int]]
) -> None:
    got = [port_slice(first, last, workers, index) for index in range(workers)]
    assert got == slices
    assert all(low % 2 == 0 and high % 2 == 1 for low, high in got)
    held: set[int] = set()
    for low, high in got:
        ports = PortAllocator(low, high)
        pairs = [ports.allocate(owner) for owner in range(ports.capacity)]
        numbers = {pair.rtp for pair in pairs} | {pair.rtp + 1 for pair in pairs}
        assert numbers <= set(range(first, last + 1))
        assert not numbers & held
        held |= numbers


def test_a_range_too_small_for_the_workers_is_refused() -> None:
    assert port_slice(20000, 20003, 2, 1) == (20002, 20003)
    with pytest.raises(ValueError, match="holds 2 RTP/RTCP pairs: fewer than the 3 workers"):
        port_slice(20000, 20003, 3, 0)
    with pytest.raises(ValueError, match="worker 2 is not one of 2"):
        port_slice(20000, 20999, 2, 2)


def test_exhaustion_is_clear_and_changes_nothing():
    ports = PortAllocator(20000, 20003)
    ports.allocate("a")
    ports.allocate("b")
    with pytest.raises(PortsExhausted, match=r"all 2 RTP/RTCP port pairs of 20000\.\.20003"):
        ports.allocate("c")
    assert ports.held_by("c") == []
    assert ports.statistics() == PortStatistics(capacity=2, in_use=2, free=0, exhausted=1)
    ports.release("a")
    assert ports.allocate("c") == PortPair(20000, 20001)


def test_release_frees_everything_the_owner_holds():
    ports = PortAllocator(20000, 20099)
    audio = ports.allocate("call")
    video = ports.allocate("call", rtcp_mux=True)
    other = ports.allocate("other")
    assert ports.held_by("call") == [audio, video]
    assert ports.release("call") == 2
    assert ports.held_by("call") == []
    assert ports.release("call") == 0  # twice is harmless
    assert ports.release("never-seen") == 0
    assert ports.held_by("other") == [other]
    assert ports.in_use == 1


def test_freed_ports_are_reused_last():
    ports = PortAllocator(20000, 20007)  # four pairs
    first = ports.allocate("a")
    ports.release("a")
    # The freed pair went to the back: the three never used come first.
    taken = [ports.allocate(index).rtp for index in range(3)]
    assert taken == [20002, 20004, 20006]
    assert ports.allocate("b") == first


def test_reuse_follows_release_order():
    ports = PortAllocator(20000, 20007)
    for owner in "abcd":
        ports.allocate(owner)
    for owner in "cadb":
        ports.release(owner)
    assert [ports.allocate(index).rtp for index in range(4)] == [20004, 20000, 20006, 20002]


def test_large_range_is_fast():
    # O(1) per operation: a full range of 32767 pairs allocated and freed twice.
    ports = PortAllocator(1, 65535)
    for _ in range(2):
        for index in range(ports.capacity):
            ports.allocate(index)
        with pytest.raises(PortsExhausted):
            ports.allocate("one too many")
        for index in range(ports.capacity):
            ports.release(index)
    assert ports.in_use == 0


def test_take_claims_the_given_pair_wherever_it_waits():
    ports = PortAllocator(20000, 20009)  # five pairs
    assert ports.take("restored", 20004) == PortPair(20004, 20005)
    assert ports.take("muxed", 20008, rtcp_mux=True) == PortPair(20008, None)
    assert ports.held_by("restored") == [PortPair(20004, 20005)]
    assert (ports.in_use, ports.free_count) == (2, 3)
    # allocate skips what was taken, in queue order.
    assert [ports.allocate(index).rtp for index in range(3)] == [20000, 20002, 20006]
    with pytest.raises(PortsExhausted):
        ports.allocate("none left")
    # A taken pair released goes to the back of the queue like any other.
    assert ports.release("restored") == 1
    assert ports.allocate("again") == PortPair(20004, 20005)


def test_take_fails_clearly_and_changes_nothing():
    ports = PortAllocator(20001, 20010)  # pairs 20002..20008
    ports.allocate("a")
    ports.take("b", 20006)
    before = ports.statistics()
    for rtp in (20002, 20006):  # allocated, taken: by another owner or the same one
        for owner in ("c", "b"):
            with pytest.raises(PortTaken, match=f"port pair {rtp}/{rtp + 1} is in use"):
                ports.take(owner, rtp)
    for rtp in (20000, 20003, 20010, 30000, 0):  # outside the range, odd, no RTCP port
        with pytest.raises(ValueError, match=f"port {rtp} is not the RTP port of a pair"):
            ports.take("c", rtp)
    assert ports.statistics() == before
    assert ports.held_by("c") == []
    assert [ports.allocate(index).rtp for index in range(2)] == [20004, 20008]


def test_taking_a_whole_large_range_in_any_order_is_fast():
    # O(1) per take: a standby restoring 32767 sessions of its active.
    ports = PortAllocator(1, 65535)
    slots = list(range(2, 65535, 2))
    for rtp in reversed(slots):
        ports.take(rtp, rtp)
    assert ports.free_count == 0
    for rtp in slots:
        ports.release(rtp)
    assert ports.allocate("first freed") == PortPair(2, 3)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["allocate", "release", "take"]),
            st.integers(0, 12),
            st.booleans(),
            st.integers(0, 10),  # the slot to take; 10 is outside the range
        ),
        max_size=200,
    )
)
def test_against_a_model(operations: list[tuple[str, int, bool, int]]):
    """A plain FIFO model: no port is ever held twice, freed slots are reused in release order,
    a taken slot leaves the queue wherever it waits, and releasing everything gives every port
    back."""
    ports = PortAllocator(30000, 30019)  # ten pairs
    free = deque(range(30000, 30020, 2))
    held: dict[int, list[int]] = {}
    for operation, owner, mux, slot in operations:
        if operation == "take":
            rtp = 30000 + 2 * slot
            if slot == 10:
                with pytest.raises(ValueError, match="not the RTP port"):
                    ports.take(owner, rtp)
            elif rtp not in free:
                with pytest.raises(PortTaken):
                    ports.take(owner, rtp, rtcp_mux=mux)
            else:
                assert ports.take(owner, rtp, rtcp_mux=mux) == PortPair(
                    rtp, None if mux else rtp + 1
                )
                free.remove(rtp)
                held.setdefault(owner, []).append(rtp)
        elif operation == "allocate":
            if not free:
                with pytest.raises(PortsExhausted):
                    ports.allocate(owner)
                continue
            pair = ports.allocate(owner, rtcp_mux=mux)
            assert pair == PortPair(free.popleft(), None if mux else pair.rtp + 1)
            held.setdefault(owner, []).append(pair.rtp)
        else:
            freed = held.pop(owner, [])
            assert ports.release(owner) == len(freed)
            free.extend(freed)
        in_use = [port for rtps in held.values() for port in rtps]
        assert len(in_use) == len(set(in_use)) == ports.in_use
        assert ports.free_count == len(free)
    for owner in list(held):
        ports.release(owner)
    assert ports.in_use == 0
    assert ports.free_count == ports.capacity == 10
