"""Overlay nodes with two SIP workers each: worker 0 owns the mesh, worker 1 follows it.

Three lab nodes, every one its own process tree: the ingress A and the egress B with
``sip.workers = 2``, a transit C with one. SIPp calls enter at A and leave at B; with
``[media]``, calls of ``overlay.lab.rtp``'s UAs whose SDP names RTP endpoints, each edge's one
relay (its worker 0's) forwarding the media of both workers' calls.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from overlay.grpc import open_grpc_bridge
from overlay.lab.lab import LabControl
from overlay.lab.node_process import open_node
from overlay.lab.rtp import Callee, Caller, RtpEndpoint, SipSocket
from overlay.lab.sipp import open_uas, run_uac
from overlay.lab.topology import MEDIA_PORTS, SIP_PORT, LabNode, Topology, node_config
from overlay.v1 import control_pb2

pytestmark = [pytest.mark.integration, pytest.mark.sipp]

TOPOLOGY = Topology(
    regions=(("a", "lab-a"), ("b", "lab-b"), ("c", "lab-c")),
    rtt={frozenset("ab"): 0.0, frozenset("ac"): 0.0, frozenset("bc"): 0.0},
    ingresses=("a",),
    egress="b",
)
WORKERS = {"a": 2, "b": 2, "c": 1}
PATH_WITHIN_S = 30.0


def configs(nodes: list[LabNode], target: str, *, media: bool) -> dict[str, str]:
    """The lab's configs with WORKERS; without ``media``, signalling only (no [media])."""
    texts = {}
    for node in nodes:
        text = node_config(node, nodes, egress=["b"], target=target, topology=TOPOLOGY)
        listen = f'listen = ["udp:{node.host}:{SIP_PORT}"]\n'
        text = text.replace(listen, f"{listen}workers = {WORKERS[node.node_id]}\n", 1)
        if not media:
            text, removed = re.subn(r"(?ms)^\[media\]\n.*?\n\n", "", text, count=1)
            assert removed == 1
        texts[node.node_id] = text
    return texts


async def wait_path(noc: LabControl, node_id: str, destination: str, path: list[str]) -> None:
    await noc.wait_path(node_id, destination, lambda now: now == path, within=PATH_WITHIN_S)


@contextlib.asynccontextmanager
async def overlay(
    loopback_host: Callable[[], str], workdir: Path, *, callee: str = ""
) -> AsyncIterator[LabControl]:
    """The three nodes, calls to SIPp's UAS (signalling only), or with ``callee``
    (``host:port``) to it, with ``[media]``."""
    nodes = [LabNode(site, region, loopback_host(), site) for site, region in TOPOLOGY.regions]
    by_id = {node.node_id: node for node in nodes}
    async with contextlib.AsyncExitStack() as stack:
        if callee:
            texts = configs(nodes, callee, media=True)
        else:
            uas = await stack.enter_async_context(open_uas(loopback_host(), scenario="uas_no180"))
            texts = configs(nodes, f"{uas.host}:{uas.port}", media=False)
        for node in nodes:
            (workdir / node.node_id).mkdir()
            await stack.enter_async_context(
                open_node(
                    texts[node.node_id],
                    host=node.host,
                    port=SIP_PORT,
                    workdir=workdir / node.node_id,
                )
            )
        noc = LabControl(by_id, await stack.enter_async_context(open_grpc_bridge()))
        for node_id in by_id:
            await noc.wait_serving(node_id)
        await wait_path(noc, "a", "b", ["a", "b"])
        yield noc


@pytest.mark.trio
async def test_calls_through_overlay_nodes_with_two_workers(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    async with overlay(loopback_host, tmp_path) as noc:
        a = noc.nodes["a"]
        caller = loopback_host()
        result = await run_uac(
            (a.host, SIP_PORT),
            local_host=caller,
            scenario="uac_rr",
            calls=200,
            rate=50,
            max_seconds=60,
        )
        assert (result.calls_successful, result.calls_failed) == (200, 0), result

        # Both workers of each edge carried calls; the owner's counters sum them.
        for node_id in ("a", "b"):
            counters = await noc.counters(node_id)
            per_worker = [counters[f"workers.{n}.sip.calls.offered"] for n in (0, 1)]
            assert all(n >= 20 for n in per_worker), (node_id, per_worker)
            assert counters["sip.calls.offered"] == sum(per_worker) == 200
            assert counters["sip.calls.answered"] == 200
        # The owner's call book holds every worker's calls.
        calls = await noc.call(
            "a",
            "ListCalls",
            control_pb2.ListCallsRequest(include_ended=True),
            control_pb2.ListCallsResponse,
        )
        ended = {c.call_id for c in calls.calls if c.state == control_pb2.Call.ENDED}
        assert len(ended) == 200
        assert all(c.far_node == "b" and c.path == ["a", "b"] for c in calls.calls)
        for call_id in sorted(ended)[:10]:
            one = await noc.call(
                "a",
                "GetCall",
                control_pb2.GetCallRequest(call_id=call_id),
                control_pb2.GetCallResponse,
            )
            assert one.call.call_id == call_id

        # A route change on the owner reaches worker 1: with A-B forced down, every call of
        # both workers goes through C.
        await noc.call(
            "a",
            "SetLinkOverride",
            control_pb2.SetLinkOverrideRequest(peer="b", force_down=True, ttl_s=600),
            control_pb2.SetLinkOverrideResponse,
        )
        await wait_path(noc, "a", "b", ["a", "c", "b"])
        before = (await noc.counters("c")).get("sip.requests.INVITE", 0)
        result = await run_uac(
            (a.host, SIP_PORT),
            local_host=caller,
            scenario="uac_rr",
            calls=40,
            rate=20,
            max_seconds=30,
        )
        assert (result.calls_successful, result.calls_failed) == (40, 0), result
        assert (await noc.counters("c")).get("sip.requests.INVITE", 0) - before == 40

        # Probes were answered all along, whichever worker read them: no link went down.
        for node_id in ("a", "b", "c"):
            links = await noc.call(
                node_id, "ListLinks", control_pb2.ListLinksRequest(), control_pb2.ListLinksResponse
            )
            assert len(links.links) == 2
            assert all(link.state == control_pb2.LinkStatus.UP for link in links.links), links
            counters = await noc.counters(node_id)
            assert counters["overlay.bad_messages"] == 0
        for node_id in ("a", "b"):
            log = (tmp_path / node_id / "node.log").read_text()
            assert "link down" not in log
            assert "worker failed" not in log


MEDIA_CALLS = 8
STREAM_S = 4.0


def call_id_of_worker(worker: int, host: str) -> str:
    """A Call-ID that a node with two workers steers to ``worker`` (``steering_owner``)."""
    while True:
        call_id = f"{secrets.token_hex(8)}@{host}"
        if zlib.crc32(call_id.encode()) % 2 == worker:
            return call_id


async def wait_counters(
    noc: LabControl, node_id: str, wanted: dict[str, int], *, within: float
) -> dict[str, int]:
    """Polls another process: there is no event to wait on."""
    counters: dict[str, int] = {}
    with trio.move_on_after(within):
        while {name: counters.get(name) for name in wanted} != wanted:
            counters = await noc.counters(node_id)
            await trio.sleep(0.1)
    return counters


@pytest.mark.trio
async def test_media_through_overlay_nodes_with_two_workers(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    caller_host, callee_host = loopback_host(), loopback_host()
    async with (
        RtpEndpoint.open_many(caller_host, MEDIA_CALLS) as caller_rtp,
        RtpEndpoint.open_many(callee_host, MEDIA_CALLS) as callee_rtp,
        SipSocket.open(callee_host) as callee_sip,
        contextlib.AsyncExitStack() as stack,
    ):
        callee = Callee(callee_sip, [endpoint.address for endpoint in callee_rtp])
        noc = await stack.enter_async_context(
            overlay(loopback_host, tmp_path, callee=f"{callee_sip.host}:{callee_sip.port}")
        )
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(callee.serve)
        a, b = noc.nodes["a"], noc.nodes["b"]
        callers = []
        for index, rtp in enumerate(caller_rtp):
            sip = await stack.enter_async_context(SipSocket.open(caller_host))
            caller = Caller(sip, (a.host, SIP_PORT), rtp.address)
            # Half the calls to each worker: the Call-ID steers a call alike at both edges.
            caller.call_id = call_id_of_worker(index % 2, caller_host)
            callers.append(caller)
        async with trio.open_nursery() as calls:
            for caller in callers:
                calls.start_soon(caller.invite)
        offers = [await callee.peer_media(caller.call_id) for caller in callers]
        # Each endpoint was told to send to its own edge's relay.
        assert all(c.answer_media is not None and c.answer_media[0] == a.host for c in callers)
        assert all(offer[0] == b.host for offer in offers)

        async with trio.open_nursery() as streams:
            for caller, offer, ours, theirs in zip(
                callers, offers, caller_rtp, callee_rtp, strict=True
            ):
                assert caller.answer_media is not None
                streams.start_soon(ours.stream, caller.answer_media, STREAM_S)
                streams.start_soon(theirs.stream, offer, STREAM_S)
            await trio.sleep(STREAM_S / 2)
            # Every call's stream is anchored at both edges, in the one relay of each: the
            # owner's, whichever worker's edge anchored it, from that worker's slice of ports.
            slices = {0: (MEDIA_PORTS[0], 20499), 1: (20500, MEDIA_PORTS[1])}
            for node_id in ("a", "b"):
                counters = await noc.counters(node_id)
                assert counters["media.relay_sessions"] == MEDIA_CALLS, node_id
                assert counters["media.sessions"] == MEDIA_CALLS, node_id
                for index, caller in enumerate(callers):
                    reply = await noc.call(
                        node_id,
                        "GetCall",
                        control_pb2.GetCallRequest(call_id=caller.call_id),
                        control_pb2.GetCallResponse,
                    )
                    (relay,) = reply.call.media
                    low, high = slices[index % 2]
                    assert low <= relay.rtp_port <= high, (node_id, index, relay)
                    assert relay.remote_node == ("b" if node_id == "a" else "a")
                    figures = (relay.packets_in, relay.packets_out, relay.latched)
                    assert all(figures), (node_id, index, relay)

        async with trio.open_nursery() as byes:
            for caller in callers:
                byes.start_soon(caller.bye)
        # Every worker's sessions leave the relay and free their ports.
        ended = {"media.relay_sessions": 0, "media.sessions": 0, "media.ports_in_use": 0}
        for node_id in ("a", "b"):
            counters = await wait_counters(noc, node_id, ended, within=10)
            assert {name: counters.get(name) for name in ended} == ended, (node_id, counters)
            per_worker = [counters[f"workers.{n}.sip.calls.answered"] for n in (0, 1)]
            assert per_worker == [MEDIA_CALLS // 2] * 2, (node_id, per_worker)
            assert counters.get("media.failures.add_session", 0) == 0

        # RTP flowed end to end both ways for every call.
        for index, (ours, theirs) in enumerate(zip(caller_rtp, callee_rtp, strict=True)):
            for name, endpoint, sent in (
                ("callee", theirs, ours.sent),
                ("caller", ours, theirs.sent),
            ):
                got = len(endpoint.received.arrivals)
                assert got > 0.8 * sent, f"call {index}: the {name} got {got} of {sent} packets"
        for node_id in ("a", "b"):
            log = (tmp_path / node_id / "node.log").read_text()
            assert "worker failed" not in log
            assert "relay refused" not in log
        nursery.cancel_scope.cancel()
