"""Loop freedom while the overlay nodes' route tables disagree, and one logical hop byte for byte.

While link state floods after a failure, two nodes may each hold the other as next hop toward
the same node. These tests set such tables in ``overlay_fabric.Fabric`` and check that no
message goes back to a node it crossed, that no request becomes two transactions anywhere, and
that what the egress sends to the callee does not depend on the path inside the overlay.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.sip import Request, serialize
from tests.unit.overlay_fabric import ADDRESSES, Fabric
from tests.unit.sip_helpers import UAC, UAS, parse, request, response_to
from tests.unit.test_proxy_overlay import statuses

NODES = ("ing", "mid", "alt", "egr")
ROUTES = ["<sip:127.0.1.1:5060;lr;ovl=ing>", "<sip:127.0.1.3:5060;lr;ovl=egr>"]


def requests_at(out: dict, peer: object = UAS) -> list[Request]:
    messages = [parse(data) for data in out.get(peer, [])]
    assert all(isinstance(m, Request) for m in messages)
    return [m for m in messages if isinstance(m, Request)]


def server_transactions(fabric: Fabric, node: str) -> int:
    return fabric.cores[node].proxy.statistics().transactions_server


def anomalies(fabric: Fabric) -> dict[str, int]:
    total: dict[str, int] = {}
    for h in fabric.cores.values():
        for kind, n in h.proxy.statistics().anomalies.items():
            total[kind] = total.get(kind, 0) + n
    return total


def test_two_nodes_pointing_at_each_other_do_not_loop_a_request() -> None:
    """ing's table says mid is the way to egr, mid's says ing: mid sends the INVITE around
    ing instead of back, and the callee gets one INVITE, one transaction."""
    fabric = Fabric()
    fabric.next_hop["ing", "egr"] = "mid"
    fabric.next_hop["mid", "egr"] = "ing"
    out = fabric.inject("ing", UAC, request())
    [invite] = requests_at(out)
    assert statuses(out) == [100]
    assert ("mid", "ing", "INVITE") not in fabric.hops
    assert [via.param("ovl") for via in invite.vias] == ["egr", "ing", None]
    assert invite.max_forwards == 68
    assert "Overlay-Path" not in invite.headers
    assert fabric.cores["mid"].proxy.statistics().anomalies == {"avoided": 1}
    assert (server_transactions(fabric, "ing"), server_transactions(fabric, "egr")) == (1, 1)
    for node in NODES:
        assert 482 not in fabric.cores[node].proxy.statistics().generated


def test_request_with_no_way_around_is_dropped_and_retransmitted_once_tables_agree() -> None:
    fabric = Fabric()
    fabric.next_hop["ing", "egr"] = "mid"
    fabric.next_hop["mid", "egr"] = "ing"
    fabric.cut |= {frozenset(("mid", "egr")), frozenset(("mid", "alt"))}
    assert UAS not in fabric.inject("ing", UAC, request())
    assert ("mid", "ing", "INVITE") not in fabric.hops
    assert fabric.cores["mid"].proxy.statistics().anomalies == {"dropped": 1}

    # Link state converged: the ingress's Timer A copy goes through; still one transaction.
    fabric.next_hop["ing", "egr"] = "alt"
    fabric.cut.clear()
    [invite] = requests_at(fabric.advance("ing", 0.5))
    assert invite.max_forwards == 68
    assert (server_transactions(fabric, "ing"), server_transactions(fabric, "egr")) == (1, 1)


def test_own_request_coming_back_is_relayed_not_proxied_again() -> None:
    """A node without the crossed-nodes rule sent the ingress's INVITE back to it: the
    ingress recognises its own Via and relays the copy on, with no second transaction."""
    fabric = Fabric()
    fabric.next_hop["ing", "egr"] = "egr"
    first = fabric.cores["ing"].send(UAC, request())
    [copy] = first[ADDRESSES["egr"]]
    out = fabric.inject("ing", ADDRESSES["mid"], copy)  # as if mid had handed it back
    [invite] = requests_at(out)
    assert [via.param("ovl") for via in invite.vias] == ["egr", "ing", None]
    assert server_transactions(fabric, "ing") == 1
    assert fabric.cores["ing"].proxy.statistics().anomalies == {"loop": 1}
    assert fabric.cores["ing"].proxy.statistics().generated == {}  # no 482, nothing


def test_request_proxied_twice_by_one_node_is_not_a_second_call() -> None:
    """What an ingress without the rule made of its own returning INVITE: a new transaction
    with its Via twice on top. The egress drops it instead of calling the callee again."""
    fabric = Fabric()
    fabric.next_hop["ing", "egr"] = "egr"
    first = fabric.cores["ing"].send(UAC, request())
    [copy] = first[ADDRESSES["egr"]]
    via = parse(copy).headers.get_all("Via")[0]  # type: ignore[union-attr]
    twice = copy.replace(
        b"Via: ", f"Via: {via.replace('branch=z9hG4bK', 'branch=z9hG4bKx')}\r\nVia: ".encode(), 1
    )
    out = fabric.inject("egr", ADDRESSES["ing"], copy)
    assert len(requests_at(out)) == 1
    out = fabric.inject("egr", ADDRESSES["ing"], twice)
    assert UAS not in out
    assert fabric.cores["egr"].proxy.statistics().anomalies == {"duplicate": 1}
    assert server_transactions(fabric, "egr") == 1


def test_retransmitted_ack_over_a_longer_path_leaves_the_egress_byte_identical() -> None:
    fabric = Fabric()
    fabric.via(None)
    [invite] = requests_at(fabric.inject("ing", UAC, request()))
    fabric.inject("egr", UAS, response_to(serialize(invite), 200))
    ack = request(
        "ACK",
        uri="sip:alice@127.0.0.3:5062",
        branch="z9hG4bK-ack",
        to_tag="callee-tag",
        extra=tuple(f"Route: {route}" for route in ROUTES),
    )
    copies = []
    for path in ([], ["mid"], ["mid", "alt"]):  # direct, one transit, two transits
        chain = ["ing", *path, "egr"]
        for a, b in itertools.pairwise(chain):
            fabric.next_hop[a, "egr"] = b
        copies.append(fabric.inject("ing", UAC, ack)[UAS])
    assert copies[0] == copies[1] == copies[2]
    assert parse(copies[0][0]).max_forwards == 68  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(
    hops=st.lists(st.sampled_from(NODES), min_size=24, max_size=24),
    cuts=st.sets(st.sampled_from([frozenset(p) for p in itertools.combinations(NODES, 2)])),
)
def test_no_table_disagreement_makes_a_loop_or_a_second_transaction(
    hops: list[str], cuts: set[frozenset[str]]
) -> None:
    """Any next hops at all, any links down: a message never comes back to a node, nothing
    is proxied twice, and the callee sees at most one INVITE; once the tables agree on a
    working path, the ingress's retransmission completes the call setup."""
    fabric = Fabric()
    pairs = [(n, d) for n in NODES for d in NODES if n != d]
    for (node, destination), hop in zip(pairs, hops, strict=False):
        fabric.next_hop[node, destination] = hop if hop != node else destination
    fabric.cut |= cuts
    first = requests_at(fabric.inject("ing", UAC, request()))
    assert len(first) <= 1
    assert set(anomalies(fabric)) <= {"avoided", "dropped"}  # nothing looped or doubled

    fabric.next_hop.clear()
    fabric.cut.clear()
    later = requests_at(fabric.advance("ing", 0.5))
    assert len(first) + len(later) == 1 or (
        first and later and first[0].top_via == later[0].top_via
    )
    assert server_transactions(fabric, "ing") == 1
    assert server_transactions(fabric, "egr") == 1
    for node in NODES:
        generated = fabric.cores[node].proxy.statistics().generated
        assert not set(generated) & {482, 483}, (node, generated)
