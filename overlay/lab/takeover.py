"""A pair's takeover under calls with RTP both ways, measured per call (the chaos test
``tests/chaos/test_overlay_pairs.py`` and ``bench/takeover``).

``open_takeover_lab`` runs the two-region lab with pairs (``TWO_REGIONS``: calls enter at usw2
and leave at use1), a minimal callee (``overlay.lab.rtp.Callee``) and an RTP endpoint per call on
each side. ``kill_mid_call`` places calls with SIPp (``uac_media_bye``: its offer names the
caller's endpoint, it hangs up after the hold), streams 20 ms packets both ways on every call,
kills the active of one pair (node and HA agent, SIGKILL) once the standby follows every call,
and waits for the takeover and the calls' end. What it returns is measured, not judged: each
call's longest silence in each direction, whether its audio came back after the takeover, the
takeover's times, SIPp's counts and the standby's replication lag sampled while the calls were
placed.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from overlay.lab.lab import Lab, PairTakeover, open_lab
from overlay.lab.rtp import Callee, Received, RtpEndpoint, SipSocket
from overlay.lab.sipp import SippResult, run_uac
from overlay.lab.topology import SIP_PORT, Topology, lab_member_names, lab_node_ids
from overlay.v1 import control_pb2

INGRESS, EGRESS = "usw2", "use1"
TWO_REGIONS = Topology(
    (("usw2", "us-west-2"), ("use1", "us-east-1")),
    {frozenset({"usw2", "use1"}): 68.0},
    (INGRESS,),
    EGRESS,
)
#: Every name the lab needs an address for (nodes and pair members).
NAMES = lab_node_ids(1, TWO_REGIONS) + lab_member_names(1, TWO_REGIONS)
POLL_S = 0.05
#: How long to wait for the takeover: the agent's bound is about 1.6 s.
TAKEOVER_WITHIN_S = 10.0
#: Once audio flows on every call, how long the standby may take to follow them all.
FOLLOW_WITHIN_S = 5.0


@dataclass
class TakeoverLab:
    """A running two-region lab of pairs with the test's own callee and RTP endpoints."""

    lab: Lab
    callee: Callee
    caller_rtp: dict[tuple[str, int], RtpEndpoint]
    callee_rtp: dict[tuple[str, int], RtpEndpoint]
    uac_host: str
    media_file: Path  # SIPp's injection file: one caller endpoint per call
    workdir: Path
    replicate: bool  # whether each standby follows its active's calls


@contextlib.asynccontextmanager
async def open_takeover_lab(
    hosts: Callable[[], str],
    *,
    calls: int,
    workdir: Path,
    replicate: bool = True,
    workers: int = 1,
) -> AsyncIterator[TakeoverLab]:
    """The lab, every name on an address from ``hosts``, with room for ``calls`` calls; logs
    and SIPp's files in ``workdir`` (``lab/<member>/node.log``, ``uac/``). Yields once every
    link is up. ``replicate``: ``open_lab``'s; ``workers``: every node's ``sip.workers``.

    Resource handling: everything is stopped by PID when the block exits."""
    addresses = {name: hosts() for name in NAMES}
    uac_host, callee_host = hosts(), hosts()
    uac_dir = workdir / "uac"
    uac_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        callee_sip = await enter(SipSocket.open(callee_host))
        caller_rtp = {e.address: e for e in await enter(RtpEndpoint.open_many(uac_host, calls))}
        callee_rtp = {e.address: e for e in await enter(RtpEndpoint.open_many(callee_host, calls))}
        callee = Callee(callee_sip, list(callee_rtp))
        media_file = uac_dir / "media.csv"
        media_file.write_text("SEQUENTIAL\n" + "".join(f"{h};{p}\n" for h, p in caller_rtp))
        lab = await enter(
            open_lab(
                addresses,
                uas_host=callee_host,
                uac_host=uac_host,
                callee=(callee_sip.host, callee_sip.port),
                topology=TWO_REGIONS,
                pairs=True,
                replicate=replicate,
                workdir=workdir / "lab",
                workers=dict.fromkeys((*TWO_REGIONS.ingresses, TWO_REGIONS.egress), workers),
            )
        )
        nursery = await enter(trio.open_nursery())
        nursery.start_soon(callee.serve)
        await lab.wait_all_links_up(within=15)
        yield TakeoverLab(
            lab, callee, caller_rtp, callee_rtp, uac_host, media_file, workdir, replicate
        )
        nursery.cancel_scope.cancel()


@dataclass
class CallMedia:
    """One call's audio as its two endpoints received it."""

    to_callee: Received
    to_caller: Received

    def gaps(self) -> tuple[float, float]:
        """The longest silence toward the callee, and toward the caller (seconds)."""
        return self.to_callee.max_gap(), self.to_caller.max_gap()

    def resumed(self, after: float) -> bool:
        """Whether audio came both ways after ``after`` (trio clock)."""
        both = (self.to_callee, self.to_caller)
        return all(r.arrivals and r.arrivals[-1][1] > after for r in both)


@dataclass
class TakeoverRun:
    """What ``kill_mid_call`` measured."""

    victim: str  # the node whose pair's active was killed
    takeover: PairTakeover
    killed_at: float  # trio clock
    sipp: SippResult
    calls: dict[str, CallMedia]  # by Call-ID
    ended_before_takeover: int  # calls the callee saw end before the standby held
    byes_at_callee: int  # calls whose BYE reached the callee
    took_over: dict[str, object] | None  # the standby's log line, None if it took none over
    lag_ms: list[int] = field(default_factory=list)  # the standby's lag, sampled

    def gaps(self) -> list[float]:
        """Every call's longest silence, both directions."""
        return [gap for media in self.calls.values() for gap in media.gaps()]

    def kept(self) -> list[str]:
        """Calls whose audio came back both ways after the takeover and that ended with
        their BYE answered at the callee."""
        resumed = self.killed_at + self.takeover.held_s
        ended = self.byes_at_callee == len(self.calls)
        return [c for c, media in self.calls.items() if media.resumed(resumed) and ended]


async def kill_mid_call(
    run: TakeoverLab,
    victim: str,
    *,
    calls: int,
    rate: float,
    hold_s: float,
    rng: random.Random,
    kill_within_s: float = 0.5,
) -> TakeoverRun:
    """Place ``calls`` calls at ``rate`` calls/s, each held ``hold_s`` after its ACK, stream
    RTP both ways on every call once all are answered; once the standby of ``victim``'s pair
    follows them all (or, with no replication, at once), wait ``rng.uniform(0,
    kill_within_s)``, kill the active and wait for the takeover and for SIPp to end.

    Raises:
        trio.TooSlowError: calls not answered, no audio, no takeover or SIPp not done in time.
    """
    lab, callee = run.lab, run.callee
    pair = lab.pairs[victim]
    active = lab.active_member(victim)
    (standby,) = [m for m in pair.members if m != active]
    results: list[SippResult] = []
    lag_ms: list[int] = []
    uac_done = trio.Event()
    # A call's BYE at the callee ends its streams: the hold from the ACK, plus margin.
    stream_s = hold_s + 1.0

    async def place() -> None:
        results.append(
            await run_uac(
                (lab.nodes[INGRESS].host, SIP_PORT),
                local_host=run.uac_host,
                scenario="uac_media_bye",
                calls=calls,
                rate=rate,
                extra_args=["-inf", str(run.media_file), "-d", str(round(hold_s * 1000))],
                max_seconds=calls / rate + hold_s + TAKEOVER_WITHIN_S + 10,
                keep_in=run.workdir / "uac",
            )
        )
        uac_done.set()

    async def sample_lag() -> None:
        while True:
            counters = await lab.member_counters(victim, standby)
            if counters.get("pair.replication.following"):
                lag_ms.append(counters.get("pair.replication.lag_ms", 0))
            await trio.sleep(POLL_S)

    async with trio.open_nursery() as streams:
        streams.start_soon(place)
        sampling = trio.CancelScope()

        async def sample() -> None:
            with sampling:
                await sample_lag()

        if run.replicate:
            streams.start_soon(sample)
        # Every call answered and ACKed. The callee books a call as its INVITE comes, with no
        # event for it: polled.
        with trio.fail_after(calls / rate + 10):
            while True:
                if len(callee.calls) >= calls:
                    break
                await trio.sleep(POLL_S)
            for call in callee.calls.values():
                await call.acked.wait()
        sampling.cancel()
        book = await _call_book(lab, INGRESS)
        media: dict[str, CallMedia] = {}
        ingress_host = lab.nodes[INGRESS].host
        for call_id, call in callee.calls.items():
            (relay,) = (m for m in book[call_id].media if m.side == "caller")
            host, port = relay.endpoint.rsplit(":", 1)
            caller = run.caller_rtp[host, int(port)]
            streams.start_soon(caller.stream, (ingress_host, relay.rtp_port), stream_s)
            far = await callee.peer_media(call_id)
            streams.start_soon(run.callee_rtp[call.media].stream, far, stream_s)
            media[call_id] = CallMedia(run.callee_rtp[call.media].received, caller.received)
        received = [r for m in media.values() for r in (m.to_callee, m.to_caller)]
        with trio.fail_after(3):  # audio both ways on every call (endpoints: polled)
            while True:
                if all(len(r.arrivals) >= 5 for r in received):
                    break
                await trio.sleep(POLL_S)
        if run.replicate:
            await _wait_following(lab, victim, standby, calls)
        await trio.sleep(rng.uniform(0, kill_within_s))  # the kill's moment, seeded
        lab.kill_active(victim)
        killed_at = trio.current_time()
        takeover = await lab.wait_taken_over(victim, within=TAKEOVER_WITHIN_S)
        ended_early = sum(call.ended.is_set() for call in callee.calls.values())
        with trio.fail_after(hold_s + TAKEOVER_WITHIN_S + 10):
            await uac_done.wait()
        streams.cancel_scope.cancel()
    return TakeoverRun(
        victim,
        takeover,
        killed_at,
        results[0],
        media,
        ended_early,
        sum(call.ended.is_set() for call in callee.calls.values()),
        _took_over(lab, victim, takeover.holder),
        lag_ms,
    )


async def _call_book(lab: Lab, node: str) -> dict[str, control_pb2.Call]:
    response = await lab.control(node, "ListCalls", control_pb2.ListCallsRequest())
    assert isinstance(response, control_pb2.ListCallsResponse)
    return {call.call_id: call for call in response.calls}


async def _wait_following(lab: Lab, node: str, standby: str, calls: int) -> None:
    """Until ``standby`` follows ``calls`` calls of its active (its counters: another
    process, polled)."""
    with trio.fail_after(FOLLOW_WITHIN_S):
        while True:
            counters = await lab.member_counters(node, standby)
            if counters.get("pair.replication.calls", 0) == calls:
                return
            await trio.sleep(POLL_S)


def _took_over(lab: Lab, node: str, member: str) -> dict[str, object] | None:
    """The member's log line of its takeover of the calls (JSON lines), if any; with several
    SIP workers, each logs its own: their figures summed, ``workers`` how many lines."""
    lines = [
        parsed
        for line in lab.pairs[node].nodes[member].log().splitlines()
        if line.startswith("{")
        and (parsed := json.loads(line)).get("event") == "took over the pair's calls"
    ]
    if not lines:
        return None
    took: dict[str, object] = dict(lines[0])
    for name in ("calls", "invites", "media_sessions"):
        took[name] = sum(int(line.get(name, 0)) for line in lines)
    took["workers"] = len(lines)
    return took


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
