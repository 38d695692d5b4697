"""Calls leave nothing behind: no reference cycle, no object kept once their timers ran out.

The node makes full garbage-collector passes practically never (overlay.shell.workers): a cycle made
per call would be freed by nobody and grow the node's memory with every call, and walking the
call state that piles up makes every young pass longer. These tests drive calls through an
ingress and an egress proxy core, each with the real call book and media edge as its hook,
with the collector saving what it finds (``gc.DEBUG_SAVEALL``), and compare what is alive
afterwards with before.
"""

from __future__ import annotations

import gc
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from overlay.media import MediaEdge, MediaSessions, PortAllocator
from overlay.noc import CallTracker
from tests.unit.overlay_fabric import Fabric
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to
from tests.unit.test_media_edge import ANSWER, MEDIA_ADDRESS, OFFER, SDP_TYPE

#: Kept by the parsers' bounded caches (overlay.sip._headers, _uri), so not owned by a call.
CACHED = frozenset({"Via", "NameAddr", "CSeq", "SipUri", "TelUri", "AbsoluteUri"})
CALLS = 60


class Edges:
    """An ingress and an egress wired directly, each hook a call book around a media edge."""

    def __init__(self) -> None:
        ids = itertools.count(0x1000)
        self.edges: list[MediaEdge] = []

        def hook(node: str) -> CallTracker:
            sessions = MediaSessions(PortAllocator(20000, 29999), session_ids=lambda: next(ids))
            edge = MediaEdge(node, MEDIA_ADDRESS[node], sessions)
            self.edges.append(edge)
            return CallTracker(edge, on_failed=lambda _: None, history=0)

        self.fabric = Fabric(media=hook)
        self.fabric.via(None)

    def invite(self, n: int) -> bytes:
        out = self.fabric.inject(
            "ing", UAC, request(extra=SDP_TYPE, body=OFFER, call_id=f"c{n}", branch=f"z9hG4bK-{n}")
        )
        [at_callee] = out[UAS]
        return at_callee

    def answered(self, n: int) -> None:
        invite = self.invite(n)
        self.fabric.inject("egr", UAS, response_to(invite, 180))
        ok = response_to(invite, 200, extra=SDP_TYPE).replace(b"Content-Length: 0\r\n\r\n", b"")
        ok += f"Content-Length: {len(ANSWER)}\r\n\r\n".encode() + ANSWER
        [ok_at_caller] = self.fabric.inject("egr", UAS, ok)[UAC]
        routes = tuple(
            f"Route: {route}" for route in parse(ok_at_caller).headers.values("Record-Route")[::-1]
        )
        for method, cseq in (("ACK", 1), ("BYE", 2)):
            out = self.fabric.inject(
                "ing",
                UAC,
                request(
                    method,
                    uri="sip:alice@127.0.0.3:5062",
                    call_id=f"c{n}",
                    branch=f"z9hG4bK-{method}-{n}",
                    cseq=cseq,
                    to_tag="callee-tag",
                    extra=routes,
                ),
            )
        [bye] = out[UAS]
        self.fabric.inject("egr", UAS, response_to(bye, 200))

    def busy(self, n: int) -> None:
        self.fabric.inject("egr", UAS, response_to(self.invite(n), 486))

    def unanswered(self, n: int) -> None:
        self.invite(n)  # the callee never answers: Timer C / B end it

    def settle(self) -> None:
        """Run every timer out, and apply the media commands as the node's media plane would.

        One node's timers run at a time, and what they send may start the others'.
        """
        cores = self.fabric.cores
        while any(h.proxy.get_timer() is not None for h in cores.values()):
            for node in cores:
                self.fabric.advance(node, 3600.0)
        for edge in self.edges:
            edge.commands.clear()


def overlay_objects() -> Counter[str]:
    """Objects of this project's own types alive now, by type name (bounded caches aside)."""
    gc.collect()
    return Counter(
        name
        for o in gc.get_objects()
        if str(type(o).__module__).startswith("overlay.")
        and (name := type(o).__qualname__) not in CACHED
    )


@contextmanager
def saving_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable meanwhile, kept instead of freed."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("flow", [Edges.answered, Edges.busy, Edges.unanswered])
def test_calls_make_no_cycles_and_keep_nothing(flow: Callable[[Edges, int], None]) -> None:
    edges = Edges()
    flow(edges, 0)  # the first call fills what lives as long as the cores
    edges.settle()
    before = overlay_objects()
    with saving_garbage() as garbage:
        for n in range(1, CALLS + 1):
            flow(edges, n)
        during = overlay_objects()
        edges.settle()
        gc.collect()
        assert Counter(type(o).__qualname__ for o in garbage) == Counter()
    assert during - before, "the calls were not alive midway: the test measures nothing"
    assert overlay_objects() - before == Counter()
    for h in edges.fabric.cores.values():
        stats = h.proxy.statistics()
        assert (stats.transactions_client, stats.transactions_server, stats.contexts) == (0, 0, 0)
