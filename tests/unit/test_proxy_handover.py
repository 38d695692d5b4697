"""A pair's standby takes over the INVITEs its active was setting up (``invite_handovers``,
``restore_handovers``, ``promote``): the caller sees one call, answered."""

from __future__ import annotations

from overlay.sip import Peer, Request, Response, Target, serialize
from tests.unit.overlay_fabric import Fabric, FabricRoutes, RecordingMedia, core
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to

CALL = "call-1@127.0.0.2"


def messages(out: dict[Peer, list[bytes]], peer: Peer) -> list[Request | Response]:
    return [parse(data) for data in out.get(peer, [])]


def statuses(out: dict[Peer, list[bytes]], peer: Peer = UAC) -> list[int]:
    return [m.status for m in messages(out, peer) if isinstance(m, Response)]


def take_over(fabric: Fabric, node: str) -> int:
    """``node`` dies; a standby with its node id, given what the active streamed, takes over."""
    active = fabric.cores[node]
    handovers = active.proxy.invite_handovers(CALL, active.now)
    target = Target(UAS.host, UAS.port) if node == "egr" else active.targets[""]
    standby = core(node, target, FabricRoutes(fabric, node), RecordingMedia)
    standby.proxy.restore_handovers(CALL, handovers)
    fabric.cores[node] = standby
    return standby.proxy.promote(standby.now)


def test_a_ringing_call_is_answered_through_the_standby_of_its_egress() -> None:
    fabric = Fabric()
    [invite] = messages(fabric.inject("ing", UAC, request()), UAS)
    assert statuses(fabric.inject("egr", UAS, response_to(serialize(invite), 180))) == [180]
    assert take_over(fabric, "egr") == 1
    assert fabric.settle() == {}  # a ringing branch waits: nothing to resend
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    assert statuses(out) == [200]
    standby = fabric.cores["egr"].proxy.statistics()
    assert (standby.transactions_client, standby.transactions_server) == (1, 1)


def test_an_unanswered_invite_is_sent_again_by_the_standby_at_once() -> None:
    fabric = Fabric()
    [invite] = messages(fabric.inject("ing", UAC, request()), UAS)
    assert take_over(fabric, "egr") == 1
    [again] = messages(fabric.settle(), UAS)
    assert serialize(again) == serialize(invite)  # the same branch: one transaction at the callee
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    assert statuses(out) == [200]


def test_the_standby_of_the_ingress_keeps_the_callers_transaction() -> None:
    fabric = Fabric()
    [invite] = messages(fabric.inject("ing", UAC, request()), UAS)
    fabric.inject("egr", UAS, response_to(serialize(invite), 180))
    assert take_over(fabric, "ing") == 1
    # The caller's retransmission is absorbed: the standby answers it with the last 180.
    assert statuses(fabric.inject("ing", UAC, request())) == [180]
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    assert statuses(out) == [200]


def test_an_answered_call_still_passes_its_2xx_retransmissions() -> None:
    fabric = Fabric()
    [invite] = messages(fabric.inject("ing", UAC, request()), UAS)
    assert statuses(fabric.inject("egr", UAS, response_to(serialize(invite), 200))) == [200]
    assert take_over(fabric, "egr") == 1
    out = fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    assert statuses(out) == [200]  # the callee's retransmission, until the ACK


def test_nothing_kept_is_nothing_taken_over() -> None:
    fabric = Fabric()
    [invite] = messages(fabric.inject("ing", UAC, request()), UAS)
    fabric.inject("egr", UAS, response_to(serialize(invite), 486))
    active = fabric.cores["egr"]
    assert active.proxy.invite_handovers(CALL, active.now) == []  # over: nothing to hand over
    standby = core("egr", Target(UAS.host, UAS.port), FabricRoutes(fabric, "egr"), RecordingMedia)
    standby.proxy.restore_handovers(CALL, [])
    assert standby.proxy.promote(0.0) == 0
