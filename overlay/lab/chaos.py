"""Seeded chaos: random topologies and fault sequences under SIPp load with RTP, every failed
call explained.

    python -m overlay.lab.chaos [--seed S] [--seeds N] [--seconds 90] [--rate R]
                                [--regions K] [--scenario random|larger] [--keep DIR]

(``bench/chaos`` is the same command.)

Theory of operation
-------------------
A **scenario** is a topology (``topology.random_topology``: 5 to 8 regions, two or three
ingresses, one egress with the SIPp callee behind it), a load and a **schedule**: fault actions
at seconds into the load. ``random_scenario(seed)`` draws all of it from one
``random.Random(seed)``, so a seed (with the same ``--seconds``, ``--rate`` and ``--regions``)
is a complete, replayable description; the header of every run prints it whole. The schedule
keeps a model of the faults in force and only draws actions that leave every ingress a path to
the egress: degrade a link (delay and loss both ways), partition two nodes (blackhole both
ways), kill -9 a transit (never an edge: the calls anchored there would die with it, by
design), restart a killed node (the lab restarts it with its config, and gives it back its side
of the faults in force), clear every fault. The last action, a quiet period before the end of
the load, restarts what is dead and clears every fault, so everything settles under load.

The **load** runs for the whole schedule: a SIPp ``uac_rr`` caller per ingress (on its own
loopback address, so a Call-ID names its ingress) at a steady rate with calls of ``hold_ms``,
and an RTP lane per ingress: back-to-back calls of a minimal UA (``overlay.lab.rtp``) with a
20 ms stream each way, whose longest audio gap and delivery are measured at the endpoints.

While it runs, every node's Control ``WatchEvents`` is recorded and every node's counters are
read before each action (so a killed node's last counters are known). At the end, each failed
call (SIPp's, and every RTP call that failed, lost its audio for longer than ``gap_limit_s`` or
delivered less than ``MIN_DELIVERY`` of it) is explained by ``overlay.lab.forensics`` from the
two SIPps' traces, the nodes' events, their call books (``ListCalls``) and their logs, and the
verdict line gives the seed, the duration, the calls attempted, succeeded and failed per
ingress, and the failed Call-IDs.
"""

from __future__ import annotations

import argparse
import itertools
import random
import secrets
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import trio

from overlay.grpc import RpcError, StreamBroken
from overlay.lab.forensics import (
    CallExplanation,
    LogLine,
    SippCall,
    clock,
    event_wall,
    explain_call,
    read_node_log,
    read_sipp_dir,
)
from overlay.lab.lab import Lab, open_lab
from overlay.lab.rtp import Callee, Caller, Received, RtpEndpoint, SipSocket
from overlay.lab.sipp import SippResult
from overlay.lab.topology import SIP_PORT, Topology, random_topology
from overlay.v1 import control_pb2

__all__ = [
    "Degrade",
    "Heal",
    "Kill",
    "KillTransit",
    "Partition",
    "Restart",
    "RunResult",
    "Scenario",
    "Step",
    "larger_scenario",
    "main",
    "random_scenario",
    "run_scenario",
]

# The Request-URI user of the RTP calls (``overlay.lab.rtp.Caller``'s): the dialplan sends the
# calls to it to the RTP callee, the rest to SIPp's.
RTP_USER = "callee"
MIN_DELIVERY = 0.8  # an RTP call that delivers less of its packets one way is broken
SETTLE_S = 30.0  # bound on the lab coming up: every link up, every ingress routed
#: Calls/s of all ingresses together in a random scenario. Every region's node shares the lab
#: machine: on two cores, eight nodes (each about a tenth of a core for probing seven peers)
#: with 45 calls/s and their SIPp callers starved the egress node for up to 700 ms (its stall
#: watchdog's count), the machine and not the overlay being the bottleneck.
MAX_TOTAL_RATE = 30.0
COUNTERS = ("sip.generated.", "sip.drops.", "overlay.", "media.drops.")
EXAMPLES = 2  # failed calls of a kind shown with all their evidence
LISTED = 10  # failed Call-IDs named on the verdict line


def wall_now() -> float:
    """Seconds since the epoch: the one clock SIPp, the nodes' logs and events share, which is
    what a failed call's evidence is merged on (trio's clock is this process's own)."""
    return datetime.now().timestamp()


# --- the scenario --------------------------------------------------------------------------


class Action(Protocol):
    def describe(self) -> str: ...

    async def apply(self, lab: Lab) -> str:
        """Do it; returns what was done (a victim resolved at run time is named)."""
        ...


@dataclass(frozen=True)
class Degrade:
    a: str
    b: str
    delay_ms: float
    loss_ratio: float

    def describe(self) -> str:
        return (
            f"degrade {self.a}-{self.b}: +{self.delay_ms:g} ms, {self.loss_ratio:.0%} loss each way"
        )

    async def apply(self, lab: Lab) -> str:
        await lab.degrade(self.a, self.b, delay_ms=self.delay_ms, loss_ratio=self.loss_ratio)
        return self.describe()


@dataclass(frozen=True)
class Partition:
    a: str
    b: str

    def describe(self) -> str:
        return f"partition {self.a}|{self.b} (blackhole both ways)"

    async def apply(self, lab: Lab) -> str:
        await lab.partition(self.a, self.b)
        return self.describe()


@dataclass(frozen=True)
class Kill:
    node: str

    def describe(self) -> str:
        return f"kill -9 {self.node}"

    async def apply(self, lab: Lab) -> str:
        lab.kill(self.node)
        return self.describe()


@dataclass(frozen=True)
class KillTransit:
    """kill -9 the transit ``ingress`` uses toward the egress when it strikes."""

    ingress: str

    def describe(self) -> str:
        return f"kill -9 the transit {self.ingress} uses to reach the egress"

    async def apply(self, lab: Lab) -> str:
        path = await lab.path(self.ingress, lab.topology.egress)
        edges = lab.topology.edges()
        in_use = [n for n in path[1:-1] if n not in edges]
        spare = [n for n in lab.topology.transits() if n in lab.live()]
        victim = in_use[0] if in_use else spare[0]
        lab.kill(victim)
        via = "→".join(path) or "none"
        return f"kill -9 {victim} ({self.ingress}'s path: {via})"


@dataclass(frozen=True)
class Restart:
    """Start a killed node again; ``None``: every killed node."""

    node: str | None = None

    def describe(self) -> str:
        return f"restart {self.node or 'every killed node'}"

    async def apply(self, lab: Lab) -> str:
        victims = [self.node] if self.node else sorted(lab.dead)
        for node in victims:
            await lab.restart(node)
        return f"restart {', '.join(victims) or 'nothing (none dead)'}"


@dataclass(frozen=True)
class Heal:
    def describe(self) -> str:
        return "clear every fault"

    async def apply(self, lab: Lab) -> str:
        await lab.heal()
        return self.describe()


@dataclass(frozen=True)
class Step:
    at_s: float  # into the load
    action: Action


@dataclass(frozen=True)
class Scenario:
    """A topology, a load and a fault schedule; ``replay`` is the command that runs it again."""

    name: str
    topology: Topology
    steps: tuple[Step, ...]
    seconds: float
    rate: float  # SIPp calls/s per ingress
    hold_ms: int = 2000
    rtp_call_s: float = 8.0
    seed: int | None = None
    replay: str = ""

    def describe(self) -> str:
        ingresses = len(self.topology.ingresses)
        lines = [
            f"chaos scenario {self.name}"
            + (f", seed {self.seed}" if self.seed is not None else ""),
            f"replay: {self.replay}" if self.replay else "",
            self.topology.describe(),
            f"load: {ingresses} ingresses x {self.rate:g} calls/s of {self.hold_ms} ms for "
            f"{self.seconds:g} s; one RTP lane per ingress, {self.rtp_call_s:g} s calls",
            "schedule:",
            *(f"  t={step.at_s:6.1f} s  {step.action.describe()}" for step in self.steps),
        ]
        if self.steps:
            lines.append(f"  quiet from t={self.steps[-1].at_s:.1f} s to {self.seconds:g} s")
        return "\n".join(line for line in lines if line)


class _FaultModel:
    """The schedule's view of the faults in force, to draw only actions that keep every
    ingress connected to the egress."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.dead: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.degraded: dict[frozenset[str], float] = {}  # pair -> added one-way delay, ms

    def live(self) -> list[str]:
        return [n for n in self.topology.sites() if n not in self.dead]

    def connected(self, dead: set[str], cut: set[frozenset[str]]) -> bool:
        live = [n for n in self.topology.sites() if n not in dead]
        seen, todo = {self.topology.egress}, [self.topology.egress]
        while todo:
            here = todo.pop()
            for there in live:
                if there not in seen and frozenset({here, there}) not in cut:
                    seen.add(there)
                    todo.append(there)
        return set(self.topology.ingresses) <= seen

    def apply(self, action: Action) -> None:
        if isinstance(action, Kill):
            self.dead.add(action.node)
        elif isinstance(action, Restart):
            self.dead -= {action.node} if action.node else set(self.dead)
        elif isinstance(action, Partition):
            pair = frozenset({action.a, action.b})
            self.cut.add(pair)
            self.degraded.pop(pair, None)
        elif isinstance(action, Degrade):
            pair = frozenset({action.a, action.b})
            self.degraded[pair] = action.delay_ms
            self.cut.discard(pair)
        elif isinstance(action, Heal):
            self.cut.clear()
            self.degraded.clear()

    def cost(self, a: str, b: str) -> float:
        """Roughly what the router's cost function makes of a-b (RTT, delay, a hop)."""
        pair = frozenset({a, b})
        return self.topology.rtt[pair] + 2 * self.degraded.get(pair, 0.0) + 20.0

    def likely_transit(self, rng: random.Random) -> str | None:
        """The transit of the cheapest one-transit detour of a random ingress, if any."""
        ingress, egress = rng.choice(self.topology.ingresses), self.topology.egress
        detours = [
            (self.cost(ingress, t) + self.cost(t, egress), t)
            for t in self.topology.transits()
            if t not in self.dead
            and not {frozenset({ingress, t}), frozenset({t, egress})} & self.cut
        ]
        return min(detours)[1] if detours else None


_WEIGHTS = {"degrade": 3, "partition": 2, "kill": 2, "restart": 2, "heal": 1}


def _draw(rng: random.Random, model: _FaultModel) -> Action | None:
    """One feasible action, or None when the one drawn is not (the slot stays quiet)."""
    live = model.live()
    pairs = [frozenset(p) for p in itertools.combinations(live, 2)]
    kinds = ["degrade", "partition", "kill"]
    if model.dead:
        kinds.append("restart")
    if model.cut or model.degraded:
        kinds.append("heal")
    kind = rng.choices(kinds, weights=[_WEIGHTS[k] for k in kinds])[0]
    action: Action
    if kind == "degrade":
        direct = frozenset({rng.choice(model.topology.ingresses), model.topology.egress})
        pair = direct if rng.random() < 0.5 and direct in pairs else rng.choice(pairs)
        a, b = sorted(pair)
        loss = rng.choice((0.0, 0.0, 0.02, 0.05, 0.1))
        action = Degrade(a, b, float(rng.randrange(20, 121, 5)), loss)
    elif kind == "partition":
        a, b = sorted(rng.choice([p for p in pairs if p not in model.cut] or pairs))
        action = Partition(a, b)
    elif kind == "kill":
        transits = [t for t in model.topology.transits() if t not in model.dead]
        likely = model.likely_transit(rng)
        if not transits:
            return None
        action = Kill(likely if likely is not None and rng.random() < 0.6 else rng.choice(transits))
    elif kind == "restart":
        action = Restart(rng.choice(sorted(model.dead)))
    else:
        action = Heal()
    dead, cut = set(model.dead), set(model.cut)
    if isinstance(action, Kill):
        dead.add(action.node)
    if isinstance(action, Partition):
        cut.add(frozenset({action.a, action.b}))
    return action if model.connected(dead, cut) else None


def random_schedule(
    rng: random.Random,
    topology: Topology,
    seconds: float,
    *,
    warmup_s: float = 4.0,
    quiet_s: float | None = None,
    spacing_s: tuple[float, float] = (2.0, 6.0),
) -> tuple[Step, ...]:
    """Fault actions from ``warmup_s`` on, ``spacing_s`` apart, until the quiet period (by
    default the last 15% of the load, at least 10 s), which starts by restarting every dead
    node and clearing every fault."""
    quiet = quiet_s if quiet_s is not None else max(10.0, 0.15 * seconds)
    end = round(seconds - quiet, 1)
    if end <= warmup_s:
        raise ValueError(f"{seconds:g} s leave no time for faults (warm-up and quiet period)")
    model = _FaultModel(topology)
    steps: list[Step] = []
    at = warmup_s + rng.uniform(0.0, 2.0)
    while at < end:
        action = _draw(rng, model)
        if action is not None:
            model.apply(action)
            steps.append(Step(round(at, 1), action))
        at += rng.uniform(*spacing_s)
    steps += [Step(end, Restart(node)) for node in sorted(model.dead)]
    steps.append(Step(end, Heal()))
    return tuple(steps)


def random_scenario(
    seed: int,
    *,
    seconds: float = 90.0,
    rate: float | None = None,
    regions: int | None = None,
    command: str = "python -m overlay.lab.chaos",
) -> Scenario:
    """Everything a seeded run does, drawn from ``random.Random(seed)``: topology, rate (5 to
    15 calls/s per ingress unless given, at most ``MAX_TOTAL_RATE`` in all) and schedule."""
    rng = random.Random(seed)
    topology = random_topology(rng, regions=regions)
    drawn_rate = min(float(rng.choice((5, 10, 15))), MAX_TOTAL_RATE / len(topology.ingresses))
    steps = random_schedule(rng, topology, seconds)
    options = f"--seed {seed} --seconds {seconds:g}"
    options += f" --rate {rate:g}" if rate is not None else ""
    options += f" --regions {regions}" if regions is not None else ""
    return Scenario(
        "random",
        topology,
        steps,
        seconds,
        rate if rate is not None else drawn_rate,
        seed=seed,
        replay=f"{command} {options}",
    )


#: The hand-written six regions of the larger-topology case: Oregon and Ireland call Virginia.
LARGER = Topology(
    (
        ("usw2", "us-west-2"),
        ("euw1", "eu-west-1"),
        ("use1", "us-east-1"),
        ("usw1", "us-west-1"),
        ("use2", "us-east-2"),
        ("cac1", "ca-central-1"),
    ),
    {
        frozenset(pair.split("-")): ms
        for pair, ms in {
            "usw2-usw1": 22.0,
            "usw2-use2": 50.0,
            "usw2-use1": 68.0,
            "usw2-cac1": 60.0,
            "usw2-euw1": 125.0,
            "usw1-use2": 52.0,
            "usw1-use1": 62.0,
            "usw1-cac1": 75.0,
            "usw1-euw1": 140.0,
            "use2-use1": 12.0,
            "use2-cac1": 25.0,
            "use2-euw1": 85.0,
            "use1-cac1": 16.0,
            "use1-euw1": 68.0,
            "cac1-euw1": 72.0,
        }.items()
    },
    ("usw2", "euw1"),
    "use1",
)


def larger_scenario(*, seconds: float = 90.0, rate: float = 20.0) -> Scenario:
    """The larger-topology case: six regions, two ingresses at ``rate`` calls/s of 2 s with
    RTP, then in sequence a degraded direct path, kill -9 of the transit in use, a partition of
    an ingress from the egress, the killed node restarted, a second kill, every fault cleared
    (at a tenth of the run apart, the rest quiet)."""
    actions: list[Action] = [
        Degrade("usw2", "use1", 60.0, 0.05),
        KillTransit("usw2"),
        Partition("euw1", "use1"),
        Restart(),
        KillTransit("euw1"),
        Heal(),
    ]
    steps = tuple(Step(round(seconds * (i + 1) / 10, 1), a) for i, a in enumerate(actions))
    return Scenario(
        "larger",
        LARGER,
        steps,
        seconds,
        rate,
        replay=f"bench/chaos --scenario larger --seconds {seconds:g} --rate {rate:g}",
    )


# --- running it ----------------------------------------------------------------------------


@dataclass
class RtpCall:
    """One RTP call of a lane: its outcome and its audio each way."""

    call_id: str
    ingress: str
    started: float  # wall clock
    ended: float = 0.0
    failure: str = ""  # setup or teardown that failed
    sent: tuple[int, int] = (0, 0)  # packets: caller → callee, callee → caller
    received: tuple[int, int] = (0, 0)
    gap_s: tuple[float, float] = (0.0, 0.0)  # longest silence, same order

    def broken(self, gap_limit_s: float) -> str:
        """Why the call counts as failed, or ""."""
        if self.failure:
            return self.failure
        for way, sent, got, gap in zip(
            ("to the callee", "to the caller"), self.sent, self.received, self.gap_s, strict=True
        ):
            if gap > gap_limit_s:
                return f"audio {way} stopped for {gap:.2f} s"
            if got < MIN_DELIVERY * sent:
                return f"audio {way}: {got} of {sent} packets"
        return ""

    def describe(self) -> str:
        ways = zip(("→", "←"), self.sent, self.received, self.gap_s, strict=True)
        return "RTP " + ", ".join(
            f"{arrow} {got}/{sent} packets, longest gap {gap * 1000:.0f} ms"
            for arrow, sent, got, gap in ways
        )


def _gap(received: Received, start: float, end: float) -> float:
    """The longest silence of a stream sent over [start, end], its head and tail included."""
    times = [t for _, t in received.arrivals]
    if not times:
        return end - start
    return max(times[0] - start, received.max_gap(), end - times[-1])


@dataclass
class _Counters:
    """Each node's counters, first and last read, per process (a restart starts from zero)."""

    first: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    last: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)

    async def read(self, lab: Lab, *, baseline: bool = False) -> None:
        for node in lab.live():
            key = (node, lab.processes[node].pid)
            try:
                counters = await lab.counters(node)
            except RpcError:
                continue
            if key not in self.first:
                self.first[key] = counters if baseline else {}
            self.last[key] = counters

    def deltas(self) -> dict[str, dict[str, int]]:
        """Per node, the increase of every counter of interest over the run, if any."""
        out: dict[str, dict[str, int]] = {}
        for key, last in self.last.items():
            first = self.first.get(key, {})
            for name, value in last.items():
                grew = value - first.get(name, 0)
                if grew and (name.startswith(COUNTERS) or "loop" in name or "dup" in name):
                    into = out.setdefault(key[0], {})
                    into[name] = into.get(name, 0) + grew
        return out


@dataclass
class RunResult:
    """A scenario's outcome: per-ingress SIPp results, RTP calls, explained failures."""

    scenario: Scenario
    seconds: float
    sipp: dict[str, SippResult]
    rtp: list[RtpCall]
    gap_limit_s: float
    explanations: list[CallExplanation]
    counters: dict[str, dict[str, int]]
    executed: list[tuple[float, str]]
    link_downs: list[tuple[float, str, str]] = field(default_factory=list)  # when, node, peer

    @property
    def calls(self) -> int:
        return sum(r.calls_attempted for r in self.sipp.values()) + len(self.rtp)

    def failed(self) -> int:
        """Calls that did not succeed: SIPp's failed and never-placed calls, broken RTP calls."""
        planned = round(self.scenario.rate * self.scenario.seconds)
        sipp = sum(planned - r.calls_successful for r in self.sipp.values())
        return sipp + sum(1 for call in self.rtp if call.broken(self.gap_limit_s))

    def max_gap_s(self) -> float:
        return max((max(c.gap_s) for c in self.rtp if not c.failure), default=0.0)

    def failed_ids(self, limit: int = LISTED) -> str:
        """The failed Call-IDs, the first ``limit`` of them by name."""
        ids = [e.call_id for e in self.explanations]
        shown = " ".join(ids[:limit]) or "none"
        return shown + (f" … ({len(ids)} in all)" if len(ids) > limit else "")

    def verdict(self) -> str:
        planned = round(self.scenario.rate * self.scenario.seconds)
        per_ingress = "; ".join(
            f"{ingress} {r.calls_attempted}/{r.calls_successful}/{planned - r.calls_successful}"
            for ingress, r in self.sipp.items()
        )
        rtp_failed = sum(1 for call in self.rtp if call.broken(self.gap_limit_s))
        label = self.scenario.name + (
            f" seed {self.scenario.seed}" if self.scenario.seed is not None else ""
        )
        return (
            f"VERDICT {label}: {'PASS' if not self.failed() else 'FAIL'} in {self.seconds:.1f} s; "
            f"calls attempted/succeeded/failed per ingress: {per_ingress}; RTP calls "
            f"{len(self.rtp)} ({rtp_failed} broken, longest gap {self.max_gap_s() * 1000:.0f} ms); "
            f"failed Call-IDs: {self.failed_ids()}"
        )

    def report(self) -> str:
        """Faults and link-downs in time order, counters, every failed call by kind (each
        Call-ID with its cause, the evidence of the first and last of each kind), verdict."""
        lines = ["faults executed and links declared down, in time order:"]
        timeline = [(at, f"FAULT {what}") for at, what in self.executed]
        for second, downs in itertools.groupby(self.link_downs, key=lambda d: int(d[0])):
            pairs = [f"{node}→{peer}" for _, node, peer in downs]
            timeline.append((float(second), f"link down: {' '.join(pairs)}"))
        lines += [f"  {clock(at)} {what}" for at, what in sorted(timeline)]
        lines.append("node counters over the run (errors, drops, overlay):")
        for node, grew in sorted(self.counters.items()):
            shown = ", ".join(f"{k} +{v}" for k, v in sorted(grew.items()))
            lines.append(f"  {node}: {shown}")
        for ingress, result in self.sipp.items():
            failures = {
                k: v for k, v in result.stats.items() if k.startswith("Failed") and v != "0"
            }
            if failures:
                lines.append(f"SIPp caller at {ingress}: {failures}")
        kinds: dict[tuple[str, str], list[CallExplanation]] = {}
        for explanation in self.explanations:
            kinds.setdefault((explanation.ingress, explanation.cause), []).append(explanation)
        if kinds:
            lines.append(f"{len(self.explanations)} failed calls, {len(kinds)} kinds:")
        for (ingress, cause), calls in sorted(kinds.items(), key=lambda kv: kv[1][0].at or 0.0):
            times = [call.at for call in calls if call.at is not None]
            span = f"{clock(min(times))} to {clock(max(times))}" if times else "?"
            lines.append(f"* {len(calls)} calls at {ingress}, {span}: {cause}")
            lines.append("  Call-IDs: " + " ".join(call.call_id for call in calls))
            examples = calls if len(calls) <= EXAMPLES else [calls[0], calls[-1]]
            lines += ["  " + call.render().replace("\n", "\n  ") for call in examples]
        lines.append(self.verdict())
        return "\n".join(lines)


async def run_scenario(
    scenario: Scenario,
    *,
    address: Callable[[], str],
    workdir: Path,
    gap_limit_s: float = 1.0,
    out: Callable[[str], None] = print,
) -> RunResult:
    """Run ``scenario`` on a fresh lab and explain its failed calls.

    Args:
        address: a new loopback address on every call (one per node and SIPp).
        workdir: where the nodes' logs and the SIPps' traces are kept.
        gap_limit_s: an RTP call whose audio stops for longer failed.
        out: where the header and progress lines go, as they happen.

    Resource handling: every process started is stopped by PID before this returns, also on
    error or cancellation.
    """
    out(scenario.describe())
    topology = scenario.topology
    hosts = {site: address() for site in topology.sites()}
    uas_host = address()
    uac_hosts = {ingress: address() for ingress in topology.ingresses}
    began = trio.current_time()
    executed: list[tuple[float, str]] = []
    events: list[control_pb2.Event] = []
    counters = _Counters()
    rtp_calls: list[RtpCall] = []
    sipp: dict[str, SippResult] = {}
    async with AsyncExitStack() as stack:
        callee_sip = await stack.enter_async_context(SipSocket.open(uas_host))
        pool = [
            await stack.enter_async_context(RtpEndpoint.open(uas_host))
            for _ in range(3 * len(topology.ingresses))
        ]
        callee = Callee(callee_sip, [endpoint.address for endpoint in pool], reuse=True)
        lab = await stack.enter_async_context(
            open_lab(
                hosts,
                uas_host=uas_host,
                uac_host=uac_hosts[topology.ingresses[0]],
                topology=topology,
                routes={RTP_USER: (callee_sip.host, callee_sip.port)},
                workdir=workdir,
                inactivity_timeout=10.0,
            )
        )
        await _settle(lab)
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(callee.serve)
        watched: set[tuple[str, int]] = set()
        await _watch_new(lab, nursery, watched, events)
        await counters.read(lab, baseline=True)
        placed = (f"{n} {lab.nodes[n].host} pid {lab.processes[n].pid}" for n in lab.nodes)
        out(f"lab up: {', '.join(placed)}")
        lanes = {
            ingress: (
                await stack.enter_async_context(SipSocket.open(uac_hosts[ingress])),
                await stack.enter_async_context(RtpEndpoint.open(uac_hosts[ingress])),
            )
            for ingress in topology.ingresses
        }
        start = trio.current_time()
        async with trio.open_nursery() as load:
            for ingress in topology.ingresses:
                load.start_soon(
                    _sipp_load, lab, scenario, ingress, uac_hosts[ingress], workdir, sipp
                )
                load.start_soon(
                    _rtp_lane,
                    lab,
                    ingress,
                    lanes[ingress],
                    (callee, {e.address: e for e in pool}),
                    start + scenario.seconds,
                    scenario.rtp_call_s,
                    rtp_calls,
                )
            for step in scenario.steps:
                await trio.sleep_until(start + step.at_s)
                await counters.read(lab)
                done = await step.action.apply(lab)
                executed.append((wall_now(), done))
                out(f"t={trio.current_time() - start:6.1f} s  {done}")
                await _watch_new(lab, nursery, watched, events)
        out(f"load over after {trio.current_time() - start:.1f} s")
        await counters.read(lab)
        result = RunResult(
            scenario,
            trio.current_time() - began,
            sipp,
            sorted(rtp_calls, key=lambda c: c.started),
            gap_limit_s,
            [],
            {},
            executed,
        )
        failed_sipp = {
            ingress: read_sipp_dir(workdir / f"caller-{ingress}") for ingress in topology.ingresses
        }
        broken = [c for c in result.rtp if c.broken(gap_limit_s)]
        wanted = [cid for calls in failed_sipp.values() for cid in calls] + [
            c.call_id for c in broken
        ]
        books = await _call_books(lab)
        records = {
            cid: {n: book[cid] for n, book in books.items() if cid in book} for cid in wanted
        }
        nursery.cancel_scope.cancel()
    # The lab is down: its logs are complete.
    logs = [
        line
        for node in topology.sites()
        for line in read_node_log(node, workdir / node / "node.log")
    ]
    callee_view = read_sipp_dir(workdir / "uas", call_ids=wanted)
    for ingress, calls in failed_sipp.items():
        for call_id, caller in calls.items():
            result.explanations.append(
                _explain(
                    call_id,
                    ingress,
                    caller,
                    callee_view.get(call_id),
                    result,
                    events,
                    records[call_id],
                    logs,
                )
            )
    for call in broken:
        answered = callee.calls.get(call.call_id)
        heard = "the RTP callee never got the INVITE"
        if answered is not None:
            acked, ended = answered.acked.is_set(), answered.ended.is_set()
            heard = f"the RTP callee answered it, got {'an' if acked else 'no'} ACK"
            heard += f" and {'a' if ended else 'no'} BYE"
        own = SippCall(
            call.call_id,
            notes=[(call.started, "RTP call placed"), (call.ended, call.broken(gap_limit_s))],
        )
        result.explanations.append(
            _explain(
                call.call_id,
                call.ingress,
                own,
                SippCall(call.call_id, notes=[(call.started, heard)]),
                result,
                events,
                records[call.call_id],
                logs,
                extra=[call.describe()],
            )
        )
    result.counters = counters.deltas()
    result.link_downs = sorted(
        (event_wall(e), e.node_id, e.link.neighbor)
        for e in events
        if e.type == control_pb2.LINK_DOWN
    )
    return result


def _explain(
    call_id: str,
    ingress: str,
    caller: SippCall,
    callee: SippCall | None,
    result: RunResult,
    events: Sequence[control_pb2.Event],
    records: dict[str, control_pb2.Call],
    logs: Sequence[LogLine],
    extra: Sequence[str] = (),
) -> CallExplanation:
    return explain_call(
        call_id,
        ingress,
        caller=caller,
        callee=callee,
        events=events,
        records=records,
        logs=logs,
        schedule=result.executed,
        egress=result.scenario.topology.egress,
        extra=extra,
    )


async def _settle(lab: Lab) -> None:
    """Until every link is up and every ingress has a route to the egress."""
    await lab.wait_all_links_up(within=SETTLE_S)
    for ingress in lab.topology.ingresses:
        await lab.wait_path(ingress, lab.topology.egress, bool, within=SETTLE_S)


async def _watch_new(
    lab: Lab,
    nursery: trio.Nursery,
    watched: set[tuple[str, int]],
    events: list[control_pb2.Event],
) -> None:
    """Record the events of every live node process not watched yet."""
    for node in lab.live():
        key = (node, lab.processes[node].pid)
        if key not in watched:
            watched.add(key)
            await nursery.start(_watch, lab, node, events)


async def _watch(
    lab: Lab,
    node: str,
    events: list[control_pb2.Event],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with lab.events(node) as stream:
        task_status.started()
        try:
            while True:
                events.append(await stream.receive())
        except (StreamBroken, trio.EndOfChannel):
            return  # the node died: its restart gets a watcher of its own


async def _call_books(lab: Lab) -> dict[str, dict[str, control_pb2.Call]]:
    """Every live node's call book (``ListCalls``, ended calls included, the newest 1000), by
    node and Call-ID: one call per node, however many calls failed."""
    books = {}
    for node in lab.live():
        request = control_pb2.ListCallsRequest(include_ended=True)
        try:
            response = await lab.control(node, "ListCalls", request)
        except RpcError:
            continue
        assert isinstance(response, control_pb2.ListCallsResponse)
        books[node] = {call.call_id: call for call in response.calls}
    return books


async def _sipp_load(
    lab: Lab,
    scenario: Scenario,
    ingress: str,
    uac_host: str,
    workdir: Path,
    results: dict[str, SippResult],
) -> None:
    calls = max(1, round(scenario.rate * scenario.seconds))
    results[ingress] = await lab.place_calls(
        calls=calls,
        rate=scenario.rate,
        duration_ms=scenario.hold_ms,
        ingress=ingress,
        uac_host=uac_host,
        keep_in=workdir / f"caller-{ingress}",
        extra_args=["-trace_err", "-trace_calldebug"],
        max_seconds=scenario.seconds + scenario.hold_ms / 1000 + 40,
    )


async def _rtp_lane(
    lab: Lab,
    ingress: str,
    caller_side: tuple[SipSocket, RtpEndpoint],
    callee_side: tuple[Callee, dict[tuple[str, int], RtpEndpoint]],
    until: float,
    call_s: float,
    calls: list[RtpCall],
) -> None:
    """Back-to-back RTP calls into ``ingress`` until ``until`` (trio clock), one every
    ``call_s`` + 2 s at most, each streaming both ways for ``call_s``."""
    sip, rtp = caller_side
    callee, endpoints = callee_side
    proxy = (lab.nodes[lab.site(ingress)[0]].host, SIP_PORT)
    slot = call_s + 2.0
    for n in itertools.count():
        begin = trio.current_time()
        if begin + slot > until:
            return
        caller = Caller(sip, proxy, rtp.address)
        caller.call_id = f"rtp-{ingress}-{n}-{secrets.token_hex(3)}@{sip.host}"
        call = RtpCall(caller.call_id, ingress, wall_now())
        calls.append(call)
        try:
            await _rtp_call(caller, callee, rtp, endpoints, call, call_s)
        except (RuntimeError, trio.TooSlowError) as error:
            call.failure = f"{type(error).__name__}: {error}"
        call.ended = wall_now()
        await trio.sleep_until(begin + slot)  # pacing: the lane's next slot


async def _rtp_call(
    caller: Caller,
    callee: Callee,
    rtp: RtpEndpoint,
    endpoints: dict[tuple[str, int], RtpEndpoint],
    call: RtpCall,
    call_s: float,
) -> None:
    try:
        await caller.invite(within=10.0)
    except (RuntimeError, trio.TooSlowError) as error:
        raise RuntimeError(f"INVITE: {str(error) or 'no final answer within 10 s'}") from None
    assert caller.answer_media is not None
    try:
        offer = await callee.peer_media(caller.call_id)
    except trio.TooSlowError:
        raise RuntimeError("answered, but the callee got no ACK within 5 s") from None
    far = endpoints[callee.calls[caller.call_id].media]
    rtp.received, far.received = Received(), Received()
    start = trio.current_time()
    async with trio.open_nursery() as streams:
        streams.start_soon(rtp.stream, caller.answer_media, call_s)
        streams.start_soon(far.stream, offer, call_s)
    end = trio.current_time()
    # Let the last packets cross the overlay (150 ms RTT at most, plus faults) before judging.
    await trio.sleep(0.5)
    call.sent = (round(call_s / 0.02), round(call_s / 0.02))
    call.received = (len(far.received.arrivals), len(rtp.received.arrivals))
    call.gap_s = (_gap(far.received, start, end), _gap(rtp.received, start, end))
    try:
        await caller.bye(within=10.0)
    except trio.TooSlowError:
        raise RuntimeError("BYE: no answer within 10 s") from None


# --- the command ---------------------------------------------------------------------------


def _addresses(net: str) -> Callable[[], str]:
    hosts: Iterator[str] = (f"{net}.{i}" for i in range(1, 255))
    return lambda: next(hosts)


@asynccontextmanager
async def _workdir(keep: Path | None, label: str) -> AsyncIterator[Path]:
    if keep is not None:
        directory = keep / label
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix=f"overlay-chaos-{label}-") as tmp:
        yield Path(tmp)


async def _run_many(args: argparse.Namespace) -> int:
    first = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    rows = []
    for index in range(args.seeds):
        seed = first + index
        if args.scenario == "larger":
            scenario = larger_scenario(seconds=args.seconds, rate=args.rate or 20.0)
        else:
            scenario = random_scenario(
                seed,
                seconds=args.seconds,
                rate=args.rate,
                regions=args.regions,
                command="bench/chaos",
            )
        label = f"{args.scenario}-{seed}"
        async with _workdir(args.keep, label) as workdir:
            result = await run_scenario(
                scenario, address=_addresses(args.net), workdir=workdir, gap_limit_s=args.gap_limit
            )
            print(result.report(), flush=True)
        rows.append((seed, result))
    print(
        f"\n{'seed':>8} {'regions':>7} {'calls':>6} {'failed':>6} {'max gap':>8}  failed Call-IDs"
    )
    for seed, result in rows:
        ids = result.failed_ids(limit=5)
        print(
            f"{seed:>8} {len(result.scenario.topology.regions):>7} {result.calls:>6} "
            f"{result.failed():>6} {result.max_gap_s() * 1000:>6.0f} ms  {ids}"
        )
    return 0 if all(not result.failed() for _, result in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/chaos", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    parser.add_argument("--seed", type=int, help="the first seed (default: a random one)")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, one after another")
    parser.add_argument("--seconds", type=float, default=90.0, help="load per run (default 90)")
    parser.add_argument("--rate", type=float, help="calls/s per ingress (default: the seed's)")
    parser.add_argument("--regions", type=int, help="regions (default: the seed's, 5 to 8)")
    parser.add_argument("--scenario", choices=("random", "larger"), default="random")
    parser.add_argument("--gap-limit", type=float, default=1.0, help="RTP gap that fails a call, s")
    parser.add_argument("--net", default="127.0.30", help="loopback /24 to use (three octets)")
    parser.add_argument("--keep", type=Path, help="keep each run's logs and traces under DIR")
    args = parser.parse_args(argv)
    if not args.net.startswith("127.") or args.net.count(".") != 2:
        parser.error("--net must be three octets inside 127.0.0.0/8")
    return trio.run(_run_many, args)


if __name__ == "__main__":
    sys.exit(main())
