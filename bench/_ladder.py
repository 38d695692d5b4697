"""The rate ladder of the SIP calls-per-second benchmarks: bench/sip_cps and bench/overlay_cps.

Imported as ``_ladder`` with bench/ on sys.path, like ``_kamailio``.

Theory of operation
-------------------
* A **bed** is one side of the comparison: a proxy (or a chain of them) that ``Bed.start``
  runs in front of a SIPp UAS (``uas_no180``, see anchors.md) and stops afterwards; it yields
  the address the SIPp caller sends to. Every run gets a fresh UAS and fresh proxies.
* A **rung** is one offered rate R. A run at R is ``-r R -rp 1000 -m R*seconds -d 0 -l 4R``.
  A run passes when every call attempted succeeded, none failed, retransmissions stayed under
  1% of the calls (anchors.md's rule), and the run kept up with the rate: SIPp was done
  within ``seconds / 0.9 + 1 s`` (>= 90% of R, with a second for the last calls). Past SIPp's
  own limit, or a proxy's that answers slowly but cleanly, a side must not "pass" a rate that
  was never carried. A rung passes when every one of its runs passed.
* The **ladder** climbs the rates in order, alternating between the beds at each rung so both
  see the same machine; a bed stops at its first failing rung. Rungs from ``--top-from`` run
  ``--top-runs`` times instead of ``--runs`` (the top is there to find where each side fails,
  and the hold run, not a second 10-second run, is what confirms a clean rate).
* A bed that passed the **top rung** never failed: its limit is at or above that rate, and it is
  printed as "≥ rate". A ratio with such a side is a bound ("≥ 1.20" when the numerator passed
  the top rung, "≤ 0.80" when the denominator did), never a plain number.
* The **hold run** (``--hold SECONDS``) runs each bed once at its highest clean rate (or at
  ``--hold-rate``) for that long, judged by the same rule, and reads SIPp's per-second
  statistics (``-trace_stat -fd 1``) for the worst second: the most retransmissions (with the
  failed and completed calls in that second), and the fewest calls completed in a second while
  calls were being placed. A stall that comes once a minute does not show in 10-second rungs
  on fresh processes; it shows there.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from _kamailio import ProxyStartError

from overlay.lab.sipp import SippError, SippResult, open_uas, run_uac

__all__ = [
    "DEFAULT_RATES",
    "Bed",
    "Clean",
    "HoldResult",
    "Rung",
    "Second",
    "add_ladder_arguments",
    "format_clean",
    "format_ratio",
    "ladder_main",
    "run_failure",
    "seconds_from_stat_csv",
    "worst_seconds",
]

#: 500..4000 by 500, then a coarser top past both proxies' limits on the 2-core machine
#: (anchors.md: Kamailio children=2 between 2,000 and 4,500 clean depending on the day; SIPp
#: alone >= 5,000).
DEFAULT_RATES = (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 8000)
DEFAULT_TOP_FROM = 5000
#: After the last call is placed, how long SIPp may take to finish the calls in flight.
UAC_TAIL_S = 20.0
RETRANS_LIMIT = 0.01
#: A run keeps up with >= this share of the offered rate: SIPp is done within seconds / 0.9,
#: plus ELAPSED_SLACK_S for the last calls (one slow call must not fail a 2-second run).
ACHIEVED_MIN = 0.9
ELAPSED_SLACK_S = 1.0
#: The callee outlives the caller by this much (SIPp's -timeout).
UAS_MARGIN_S = 120.0

Address = tuple[str, int]


@dataclass(frozen=True)
class Bed:
    """One side of the comparison.

    ``start(uas_address, workdir)`` runs the proxy (or chain) in front of the UAS until its
    block ends and yields the address the caller sends to; it raises ``ProxyStartError`` when
    the proxy cannot start. ``title()`` heads the bed's table (read at print time, so it can say
    what changed during the run, such as a fallback).
    """

    name: str
    uas_host: str
    uac_host: str
    start: Callable[[Address, Path], AbstractAsyncContextManager[Address]]
    title: Callable[[], str]


def run_failure(result: SippResult, rate: int, seconds: float) -> str:
    """Why a run at ``rate`` for ``seconds`` failed the rung rule; "" when it passed."""
    calls = planned_calls(rate, seconds)
    reasons = []
    if result.calls_attempted != calls:
        reasons.append(f"{result.calls_attempted} of {calls} calls attempted")
    if result.calls_failed or result.calls_successful != result.calls_attempted:
        reasons.append(f"{result.calls_attempted - result.calls_successful} failed")
    if result.retransmissions >= RETRANS_LIMIT * calls:
        reasons.append(f"{100 * result.retransmissions / calls:.2f}% retrans")
    if result.elapsed_s > seconds / ACHIEVED_MIN + ELAPSED_SLACK_S:
        reasons.append(f"took {result.elapsed_s:.1f} s ({result.rate:.0f} cps)")
    if result.returncode != 0 and not reasons:
        reasons.append(f"SIPp exit status {result.returncode}")
    return ", ".join(reasons)


def planned_calls(rate: int, seconds: float) -> int:
    return max(1, math.ceil(rate * seconds))


@dataclass
class Rung:
    rate: int
    planned_runs: int
    seconds: float
    results: list[SippResult] = field(default_factory=list)
    callee_failed: int = 0
    error: str = ""  # a run that produced no result (SIPp error)

    @property
    def calls(self) -> int:
        return sum(r.calls_attempted for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.calls_attempted - r.calls_successful for r in self.results)

    @property
    def retrans_pct(self) -> float:
        return 100.0 * max((r.retransmission_ratio for r in self.results), default=0.0)

    @property
    def achieved(self) -> float:
        return min((r.rate for r in self.results), default=0.0)

    @property
    def failure(self) -> str:
        """Why the rung failed (the first failing run's reasons); "" when it passed."""
        if self.error:
            return self.error
        for result in self.results:
            why = run_failure(result, self.rate, self.seconds)
            if why:
                return why
        return "" if len(self.results) == self.planned_runs else "runs missing"


@dataclass(frozen=True)
class Clean:
    """A bed's highest clean rate: ``rate`` None when its lowest rung failed; ``open`` when it
    passed the top rung, so that its limit is at or above ``rate``."""

    rate: int | None
    open: bool = False


def format_clean(clean: Clean) -> str:
    if clean.rate is None:
        return "none (lowest rung failed)"
    return f"{'≥ ' if clean.open else ''}{clean.rate} calls/s"


def format_ratio(numerator: Clean, denominator: Clean) -> str:
    """numerator/denominator of two clean rates; a bound when a side passed the top rung."""
    if numerator.rate is None or denominator.rate is None:
        return "n/a"
    if numerator.open and denominator.open:
        return "n/a (both passed the top rung)"
    value = f"{numerator.rate / denominator.rate:.2f}"
    if numerator.open:
        return f"≥ {value}"
    if denominator.open:
        return f"≤ {value}"
    return value


# --------------------------------------------------------------------------------------------
# SIPp's per-second statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Second:
    """One ``-fd 1`` period of a SIPp caller: its end (seconds since SIPp started) and what
    happened in it."""

    end_s: float
    placed: int  # cumulative calls placed at its end
    completed: int
    failed: int
    retransmissions: int


def seconds_from_stat_csv(text: str) -> list[Second]:
    """The periods of a SIPp ``-trace_stat`` file, from the differences of its cumulative
    columns between consecutive rows (the first row, at start, is the baseline)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return []
    header = lines[0].rstrip(";").split(";")
    rows = [dict(zip(header, line.rstrip(";").split(";"), strict=False)) for line in lines[1:]]

    def epoch(row: Mapping[str, str], column: str) -> float:
        return float(row[column].split("\t")[-1])

    def count(row: Mapping[str, str], column: str) -> int:
        return int(row[column])

    start = epoch(rows[0], "StartTime")
    periods = []
    for before, after in itertools.pairwise(rows):
        periods.append(
            Second(
                end_s=epoch(after, "CurrentTime") - start,
                placed=count(after, "OutgoingCall(C)"),
                completed=count(after, "SuccessfulCall(C)") - count(before, "SuccessfulCall(C)"),
                failed=count(after, "FailedCall(C)") - count(before, "FailedCall(C)"),
                retransmissions=count(after, "Retransmissions(C)")
                - count(before, "Retransmissions(C)"),
            )
        )
    return periods


def worst_seconds(periods: Sequence[Second], calls: int) -> tuple[Second | None, Second | None]:
    """The second with the most retransmissions (then failures), and the one with the fewest
    calls completed while calls were being placed (the first second, a ramp, left out; a
    period shorter than 0.9 s, SIPp's last row at exit, too)."""
    full = [
        p for i, p in enumerate(periods) if p.end_s - (periods[i - 1].end_s if i else 0.0) >= 0.9
    ]
    worst = max(full, key=lambda p: (p.retransmissions, p.failed), default=None)
    placing = [p for p in full[1:] if p.placed < calls]
    slowest = min(placing, key=lambda p: p.completed, default=None)
    return worst, slowest


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


async def one_run(
    bed: Bed, rate: int, seconds: float, uac: str, *, stats_dir: Path | None = None
) -> tuple[SippResult, int]:
    """One fresh UAS, one fresh proxy (or chain), one SIPp caller run; returns the caller's
    result and the number of calls that failed at the callee (informational). With
    ``stats_dir`` the caller's statistics CSV is kept there (``stat.csv``)."""
    calls = planned_calls(rate, seconds)
    with tempfile.TemporaryDirectory(prefix=f"cps-{bed.name}-") as tmp:
        async with (
            open_uas(
                bed.uas_host, scenario="uas_no180", max_seconds=seconds + UAC_TAIL_S + UAS_MARGIN_S
            ) as uas,
            bed.start(uas.address, Path(tmp)) as entry,
        ):
            result = await run_uac(
                entry,
                local_host=bed.uac_host,
                scenario=uac,
                calls=calls,
                rate=rate,
                max_seconds=seconds + UAC_TAIL_S,
                extra_args=["-d", "0"],
                keep_in=stats_dir,
            )
    return result, uas.result().calls_failed


def describe_run(name: str, rate: int, label: str, result: SippResult, why: str) -> str:
    return (
        f"{name:>8} @ {rate:>5}/s {label}: {result.calls_successful}/"
        f"{result.calls_attempted} ok, {result.calls_failed} failed, "
        f"{100 * result.retransmission_ratio:.2f}% retrans, {result.rate:.0f} cps, "
        f"rc={result.returncode} -> {'FAIL: ' + why if why else 'pass'}"
    )


def print_table(bed: Bed, rungs: list[Rung], clean: Clean) -> None:
    print(f"\n{bed.title()}, UAS uas_no180")
    print(
        f"{'rate':>7} {'runs':>5} {'secs':>5} {'calls':>8} {'failed':>7} {'retrans%':>9} "
        f"{'min cps':>8}  result"
    )
    for rung in rungs:
        why = rung.failure
        note = "" if not rung.callee_failed else f"  (callee failed {rung.callee_failed})"
        print(
            f"{rung.rate:>7} {len(rung.results):>5} {rung.seconds:>5g} {rung.calls:>8} "
            f"{rung.failed:>7} {rung.retrans_pct:>9.2f} {rung.achieved:>8.0f}  "
            f"{'FAIL: ' + why if why else 'pass'}{note}"
        )
    top = " (passed the top rung)" if clean.open else ""
    print(f"highest clean rate: {format_clean(clean)}{top}")


@dataclass(frozen=True)
class HoldResult:
    rate: int
    seconds: float
    result: SippResult
    failure: str
    worst: Second | None
    slowest: Second | None

    def describe(self) -> str:
        r = self.result
        text = (
            f"{r.calls_successful}/{r.calls_attempted} ok, {r.calls_failed} failed, "
            f"{100 * r.retransmission_ratio:.2f}% retrans, {r.rate:.0f} cps -> "
            f"{'FAIL: ' + self.failure if self.failure else 'pass'}"
        )
        w = self.worst
        if w is None:
            text += "; no per-second statistics"
        elif not (w.retransmissions or w.failed):
            text += "; no second with a retransmission or a failed call"
        else:
            text += (
                f"; worst second ({w.end_s - 1:.0f}-{w.end_s:.0f} s): {w.retransmissions} retrans, "
                f"{w.failed} failed, {w.completed} completed"
            )
        if self.slowest is not None:
            s = self.slowest
            text += (
                f"; fewest completed in a second: {s.completed} ({s.end_s - 1:.0f}-{s.end_s:.0f} s)"
            )
        return text


async def hold_run(bed: Bed, rate: int, seconds: float, uac: str) -> HoldResult:
    with tempfile.TemporaryDirectory(prefix=f"cps-hold-{bed.name}-") as tmp:
        stats_dir = Path(tmp)
        result, _ = await one_run(bed, rate, seconds, uac, stats_dir=stats_dir)
        try:
            text = (stats_dir / "stat.csv").read_text(errors="replace")
            periods = seconds_from_stat_csv(text)
        except (OSError, KeyError, ValueError):
            periods = []
    worst, slowest = worst_seconds(periods, planned_calls(rate, seconds))
    return HoldResult(rate, seconds, result, run_failure(result, rate, seconds), worst, slowest)


# --------------------------------------------------------------------------------------------
# The ladder and its report
# --------------------------------------------------------------------------------------------


def runs_at(rate: int, args: argparse.Namespace) -> int:
    return int(args.top_runs if rate >= args.top_from else args.runs)


async def climb(
    beds: Sequence[Bed], args: argparse.Namespace, unavailable: dict[str, str]
) -> tuple[dict[str, list[Rung]], dict[str, Clean]]:
    rungs: dict[str, list[Rung]] = {b.name: [] for b in beds}
    best: dict[str, int | None] = {b.name: None for b in beds}
    climbing = [b for b in beds if b.name not in unavailable]
    top = max(args.rates)
    for rate in args.rates:
        for bed in list(climbing):
            rung = Rung(rate, runs_at(rate, args), args.seconds)
            rungs[bed.name].append(rung)
            for run in range(1, rung.planned_runs + 1):
                try:
                    result, callee_failed = await one_run(bed, rate, args.seconds, args.uac)
                except ProxyStartError as exc:
                    print(f"{bed.name}: did not start, dropped from the ladder: {exc}", flush=True)
                    unavailable[bed.name] = str(exc).splitlines()[0]
                    rungs[bed.name].pop()
                    break
                except SippError as exc:
                    print(f"{bed.name} @ {rate}/s run {run}: SIPp error: {exc}", flush=True)
                    rung.error = "SIPp error"
                    break
                rung.results.append(result)
                rung.callee_failed += callee_failed
                why = run_failure(result, rate, args.seconds)
                print(describe_run(bed.name, rate, f"run {run}", result, why), flush=True)
                if why:
                    break  # the rung already failed; spare the remaining runs
            if bed.name in unavailable or rung.failure:
                climbing.remove(bed)
            else:
                best[bed.name] = rate
    clean = {name: Clean(rate, open=rate == top) for name, rate in best.items()}
    return rungs, clean


async def ladder_main(
    beds: Sequence[Bed], args: argparse.Namespace, unavailable: dict[str, str]
) -> tuple[int, dict[str, object]]:
    """Run the ladder (unless ``--hold-rate`` skips it) and the hold runs; print the tables and
    the final lines. Returns the exit status and the report for ``--json``.

    Exit status 0 when every measured bed passed its lowest rung (and its hold run, if any);
    1 when one did not; 2 when none could be measured.
    """
    for name, why in unavailable.items():
        print(f"{name}: {why}; skipping it", flush=True)
    rungs: dict[str, list[Rung]] = {b.name: [] for b in beds}
    clean: dict[str, Clean] = {}
    if args.hold_rate is None:
        rungs, clean = await climb(beds, args, unavailable)
        for bed in beds:
            if bed.name in unavailable and not rungs[bed.name]:
                print(f"\n{bed.name}: not measured ({unavailable[bed.name]})")
            else:
                print_table(bed, rungs[bed.name], clean[bed.name])

    holds: dict[str, HoldResult] = {}
    if args.hold:
        for bed in beds:
            if bed.name in unavailable:
                continue
            rate = args.hold_rate or clean[bed.name].rate
            if rate is None:
                print(f"\nhold: {bed.name} has no clean rate to hold", flush=True)
                continue
            print(f"\nhold: {bed.name} at {rate} calls/s for {args.hold:g} s", flush=True)
            try:
                holds[bed.name] = await hold_run(bed, rate, args.hold, args.uac)
            except ProxyStartError as exc:
                print(f"{bed.name}: did not start: {exc}", flush=True)
                unavailable[bed.name] = str(exc).splitlines()[0]
                continue
            except SippError as exc:
                print(f"{bed.name}: hold run: SIPp error: {exc}", flush=True)
                continue
            print(f"hold: {bed.name} {holds[bed.name].describe()}", flush=True)

    names = [b.name for b in beds]
    if args.hold_rate is None:
        print("\n" + final_line(names, clean, rungs, unavailable), flush=True)
    if args.hold:
        parts = [
            f"{n} {h.rate} calls/s {'FAIL' if h.failure else 'pass'}" for n, h in holds.items()
        ]
        print(f"hold {args.hold:g} s: {', '.join(parts) or 'nothing held'}", flush=True)

    report: dict[str, object] = {
        "runs": args.runs,
        "top_from": args.top_from,
        "top_runs": args.top_runs,
        "seconds": args.seconds,
        "uac": args.uac,
        "best": {n: c.rate for n, c in clean.items()},
        "passed_top_rung": {n: c.open for n, c in clean.items()},
        "unavailable": unavailable,
        "rungs": {
            name: [
                {
                    "rate": r.rate,
                    "results": [result_json(x) for x in r.results],
                    "callee_failed": r.callee_failed,
                    "failure": r.failure,
                }
                for r in rs
            ]
            for name, rs in rungs.items()
        },
        "hold": {
            name: {
                "rate": h.rate,
                "seconds": h.seconds,
                "result": result_json(h.result),
                "failure": h.failure,
                "worst_second": None if h.worst is None else dataclasses.asdict(h.worst),
                "fewest_completed_second": None
                if h.slowest is None
                else dataclasses.asdict(h.slowest),
            }
            for name, h in holds.items()
        },
    }
    measured = [n for n in names if rungs[n] or n in holds]
    if not measured:
        return 2, report
    ladder_ok = args.hold_rate is not None or all(clean[n].rate is not None for n in measured)
    holds_ok = all(not h.failure for h in holds.values()) and (
        not args.hold or all(n in holds for n in measured)
    )
    return (0 if ladder_ok and holds_ok else 1), report


def final_line(
    names: Sequence[str],
    clean: Mapping[str, Clean],
    rungs: Mapping[str, list[Rung]],
    unavailable: Mapping[str, str],
) -> str:
    def shown(name: str) -> str:
        if name in unavailable and not rungs[name]:
            return "not measured"
        return format_clean(clean[name])

    line = "highest clean rate: " + ", ".join(f"{n} {shown(n)}" for n in names)
    if len(names) == 2:
        a, b = names
        ratio = format_ratio(clean[a], clean[b]) if all(rungs[n] for n in names) else "n/a"
        line += f"; ratio {a}/{b} = {ratio}"
    return line


def result_json(result: SippResult) -> dict[str, object]:
    return {k: v for k, v in dataclasses.asdict(result).items() if k != "stats"}


def write_json(path: Path, report: Mapping[str, object]) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _rates(text: str) -> list[int]:
    try:
        rates = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    return sorted(set(rates))


def add_ladder_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both benchmarks share; check them with ``check_ladder_arguments``."""
    default = ",".join(str(r) for r in DEFAULT_RATES)
    parser.add_argument(
        "--rates",
        type=_rates,
        default=list(DEFAULT_RATES),
        help=f"comma-separated calls/s ladder (default {default})",
    )
    parser.add_argument("--runs", type=int, default=2, help="runs per rung (default 2)")
    parser.add_argument(
        "--top-from",
        type=int,
        default=DEFAULT_TOP_FROM,
        help=f"rungs at or above this rate run --top-runs times (default {DEFAULT_TOP_FROM})",
    )
    parser.add_argument(
        "--top-runs", type=int, default=1, help="runs per rung from --top-from (default 1)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--only", choices=["overlay", "kamailio"], help="measure one side")
    parser.add_argument(
        "--uac", choices=["uac_rr", "uac"], default="uac_rr", help="caller scenario"
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then run each side once for SECONDS at its highest clean rate (e.g. 300)",
    )
    parser.add_argument(
        "--hold-rate",
        type=int,
        metavar="R",
        help="hold both sides at R calls/s instead, and skip the ladder (needs --hold)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def check_ladder_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.rates or any(r <= 0 for r in args.rates) or args.seconds <= 0:
        parser.error("rates and seconds must be positive")
    if args.runs < 1 or args.top_runs < 1:
        parser.error("--runs and --top-runs must be at least 1")
    if args.hold < 0 or (args.hold_rate is not None and args.hold_rate <= 0):
        parser.error("--hold and --hold-rate must be positive")
    if args.hold_rate is not None and not args.hold:
        parser.error("--hold-rate needs --hold SECONDS")


def main(
    beds: Sequence[Bed], args: argparse.Namespace, unavailable: dict[str, str] | None = None
) -> int:
    """Run ``ladder_main`` under trio; write ``--json``; return the exit status."""

    async def run() -> int:
        status, report = await ladder_main(beds, args, dict(unavailable or {}))
        if args.json:
            write_json(Path(args.json), report)
        return status

    return trio.run(run)
