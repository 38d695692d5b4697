"""What happened to one call, from everything that saw it: for the chaos runs' verdicts.

A chaos run ends with the Call-IDs that failed. Each is explained from four independent
witnesses, merged on the wall clock (every process on the machine shares it):

* **SIPp** on both ends. The callers run with ``-trace_err`` and ``-trace_calldebug``: every
  aborted call's messages, retransmissions and the reason SIPp gave up. The callee runs with
  ``-trace_msg`` as well, so the messages the callee got for any call can be read back, Via
  stack (``ovl=`` names the overlay nodes a request crossed as an edge) and Max-Forwards
  included: a request that reached the callee twice, or with another Max-Forwards, shows here.
* **The nodes' events** (Control ``WatchEvents``, recorded during the run): ``CALL_FAILED`` names
  the node that failed a call and the status; link and route changes give the context.
* **The nodes' call books** (Control ``ListCalls``) at the end: each edge's view of the call.
* **The nodes' logs** (JSON lines): every line naming the Call-ID, and the warnings of the
  call's lifetime.

Everything here reads files and messages already collected; nothing talks to a node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from overlay.v1 import control_pb2

__all__ = [
    "CallExplanation",
    "LogLine",
    "SipMessage",
    "SippCall",
    "clock",
    "event_wall",
    "explain_call",
    "read_node_log",
    "read_sipp_dir",
    "wall_of",
]

# "2026-12-07<TAB>03:06:49.317275<TAB>1796612809.317275" (calldebug, errors).
_STAMP = re.compile(r"(?m)^\d{4}-\d\d-\d\d\t[\d:.]+\t(\d+\.\d+):? ")
_ERROR_CALL_ID = re.compile(r"Call-I[dD]:? '?([^',\s]+)")
_DEBUG_BLOCK = re.compile(r"Call debugging information for call (\S+?):\n")
# "----------------------------------------------- 2026-12-07 03:09:49.630181" (-trace_msg).
_MSG_SEPARATOR = re.compile(r"(?m)^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n")
_HEADER_CALL_ID = re.compile(r"(?mi)^(?:Call-ID|i)\s*:\s*(\S+)")
_OVL = re.compile(r";ovl=([\w.-]+)")
# Noise of SIPp's call debugging: its scenario steps.
_DEBUG_NOISE = ("Processing message ", "Starting call ", "Set Last Recv Hash")
CONTEXT_BEFORE = 8  # link and route events shown from before a call's first message
WINDOW_S = 1.0  # context before a call's first message and after its last


def wall_of(timestamp: str) -> float:
    """Seconds since the epoch of a SIPp ``-trace_msg`` stamp (local time) or an ISO 8601
    node log stamp (UTC, ``Z``)."""
    return datetime.fromisoformat(timestamp).timestamp()


def clock(wall: float) -> str:
    """HH:MM:SS.mmm of a wall-clock time, as every evidence line shows it."""
    return datetime.fromtimestamp(wall).strftime("%H:%M:%S.%f")[:-3]


@dataclass(frozen=True)
class SipMessage:
    """One SIP message a SIPp sent or received: when, which way, and its head."""

    at: float
    sent: bool
    head: str  # the start line and headers, no body

    @property
    def first_line(self) -> str:
        return self.head.split("\n", 1)[0].strip()

    def header(self, name: str) -> list[str]:
        prefix = name.lower() + ":"
        return [
            line.split(":", 1)[1].strip()
            for line in self.head.splitlines()
            if line.lower().startswith(prefix)
        ]

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if not self.first_line.startswith("SIP/2.0"):
            return self.first_line.split(" ", 1)[0]
        cseq = self.header("CSeq")
        return cseq[0].split()[-1] if cseq else "?"

    def describe(self) -> str:
        """The start line, plus what tells overlay paths apart: Max-Forwards and the overlay
        nodes in the Via stack (requests), Warning and Reason (responses)."""
        parts = [self.first_line]
        if self.first_line.startswith("SIP/2.0"):
            if not self.first_line.startswith(("SIP/2.0 1", "SIP/2.0 2")):
                parts += self.header("Warning") + self.header("Reason")
            parts.append(f"({self.method})")
        else:
            parts += [f"Max-Forwards {mf}" for mf in self.header("Max-Forwards")]
            nodes = [n for via in self.header("Via") for n in _OVL.findall(via)]
            if nodes:
                parts.append("Via ovl=" + ",".join(nodes))
        return " ".join(parts)


@dataclass
class SippCall:
    """What one SIPp saw of one call: its messages and its notes (retransmissions, errors)."""

    call_id: str
    messages: list[SipMessage] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)

    def span(self) -> tuple[float, float] | None:
        times = [m.at for m in self.messages] + [at for at, _ in self.notes]
        return (min(times), max(times)) if times else None


def read_sipp_dir(directory: Path, call_ids: Iterable[str] | None = None) -> dict[str, SippCall]:
    """The calls of the SIPp that ran in ``directory``: aborted ones from its ``*_errors.log``
    and ``*_calldebug.log``, and, when ``call_ids`` are given, those calls' messages from its
    ``*_messages.log`` (``-trace_msg``)."""
    calls: dict[str, SippCall] = {}

    def call(call_id: str) -> SippCall:
        return calls.setdefault(call_id, SippCall(call_id))

    for path in sorted(directory.glob("*_errors.log")):
        for at, text in _stamped(path.read_text(errors="replace")):
            found = _ERROR_CALL_ID.search(text)
            if found:
                call(found.group(1)).notes.append((at, "SIPp: " + _one_line(text)))
    for path in sorted(directory.glob("*_calldebug.log")):
        blocks = _DEBUG_BLOCK.split(path.read_text(errors="replace"))
        for call_id, block in zip(blocks[1::2], blocks[2::2], strict=True):
            record = call(call_id)
            for at, text in _stamped(block):
                line, _, rest = text.partition("\n")
                if line.startswith(_DEBUG_NOISE):
                    continue
                if line.startswith("Sending "):
                    record.messages.append(SipMessage(at, True, _head(rest)))
                elif line.startswith("Processing ") and "incoming message" in line:
                    record.messages.append(SipMessage(at, False, _head(rest)))
                elif line.startswith("Unexpected "):
                    first = _head(rest).split("\n", 1)[0]
                    record.notes.append((at, f"SIPp: unexpected message: {first}"))
                else:
                    record.notes.append((at, "SIPp: " + line.strip().rstrip(":")))
    wanted = set(call_ids or ())
    if wanted:
        for path in sorted(directory.glob("*_messages.log")):
            for message in _traced_messages(path.read_text(errors="replace")):
                found = _HEADER_CALL_ID.search(message.head)
                if found and found.group(1) in wanted:
                    known = call(found.group(1)).messages
                    if message not in known:
                        known.append(message)
    for record in calls.values():
        record.messages.sort(key=lambda m: m.at)
        record.notes.sort()
    return calls


def _stamped(text: str) -> list[tuple[float, str]]:
    """The entries of a SIPp log whose entries start with a stamp (possibly mid-line)."""
    starts = [(m.start(), m.end(), float(m.group(1))) for m in _STAMP.finditer(text)]
    if not starts:
        # The errors log runs entries together on one line: split on the stamp anywhere.
        starts = [
            (m.start(), m.end(), float(m.group(1)))
            for m in re.finditer(r"\d{4}-\d\d-\d\d\t[\d:.]+\t(\d+\.\d+):? ", text)
        ]
    entries = []
    for index, (_, end, at) in enumerate(starts):
        stop = starts[index + 1][0] if index + 1 < len(starts) else len(text)
        entries.append((at, text[end:stop]))
    return entries


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _head(text: str) -> str:
    """A traced message's start line and headers (up to the blank line)."""
    lines = []
    for line in text.lstrip("\n").splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return "\n".join(lines)


def _traced_messages(text: str) -> list[SipMessage]:
    """The messages of a ``-trace_msg`` log."""
    parts = _MSG_SEPARATOR.split(text)
    messages = []
    for stamp, body in zip(parts[1::2], parts[2::2], strict=True):
        kind, _, rest = body.partition("\n")
        messages.append(SipMessage(wall_of(stamp), " sent " in kind, _head(rest)))
    return messages


@dataclass(frozen=True)
class LogLine:
    """One line of a node's log."""

    node: str
    at: float | None  # None: not a JSON line with a timestamp
    level: str
    text: str


def read_node_log(node: str, path: Path) -> list[LogLine]:
    """Every line of a node's log (JSON lines; anything else is kept as text)."""
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(raw)
            at = wall_of(record.pop("timestamp"))
            level = str(record.pop("level", ""))
            event = record.pop("event", "")
            record.pop("node_id", None)
            fields = " ".join(f"{k}={v}" for k, v in record.items())
            lines.append(LogLine(node, at, level, f"{event} {fields}".strip()))
        except (ValueError, KeyError, TypeError, AttributeError):
            lines.append(LogLine(node, None, "", raw))
    return lines


def event_wall(event: control_pb2.Event) -> float:
    return float(event.time.seconds) + float(event.time.nanos) / 1e9


@dataclass
class CallExplanation:
    """A failed call: its Call-ID, where it entered, a one-line cause and the evidence."""

    call_id: str
    ingress: str
    cause: str
    evidence: list[str]
    at: float | None = None  # the call's first message

    def render(self) -> str:
        return "\n".join(
            [f"{self.call_id} (ingress {self.ingress}): {self.cause}"]
            + [f"    {line}" for line in self.evidence]
        )


def explain_call(
    call_id: str,
    ingress: str,
    *,
    caller: SippCall | None,
    callee: SippCall | None,
    events: Sequence[control_pb2.Event],
    records: Mapping[str, control_pb2.Call],
    logs: Sequence[LogLine],
    schedule: Sequence[tuple[float, str]],
    egress: str,
    extra: Sequence[str] = (),
) -> CallExplanation:
    """Explain one failed call from its witnesses (see the module docstring).

    Args:
        caller, callee: the two SIPps' views (None: that SIPp has nothing on it).
        events: every node's events of the run.
        records: each node's call-book record of it (Control ``ListCalls``), by node.
        logs: every node's log lines.
        schedule: (wall time, description) of each fault action executed.
        egress: the egress node, whose route changes are context for every call.
        extra: lines of the caller's own, first (an RTP call's audio figures).
    """
    spans = [s for s in (caller and caller.span(), callee and callee.span()) if s]
    start = min((s[0] for s in spans), default=None)
    end = max((s[1] for s in spans), default=None)
    timeline: list[tuple[float, str]] = []
    for who, view in (("caller", caller), ("callee", callee)):
        if view is None:
            continue
        for message in view.messages:
            arrow = "→" if message.sent else "←"
            timeline.append((message.at, f"{who} {arrow} {message.describe()}"))
        timeline += [(at, f"{who}: {note}") for at, note in view.notes]
    names = re.compile(rf"(?<![\w.@-]){re.escape(call_id)}(?![\w.@-])")
    failed_by = [
        e for e in events if e.type == control_pb2.CALL_FAILED and e.call.call_id == call_id
    ]
    timeline += [
        (event_wall(e), f"{e.node_id}: CALL_FAILED {e.call.status} {e.call.reason}")
        for e in failed_by
    ]
    own_lines = [line for line in logs if names.search(line.text)]
    timeline += [(line.at or 0.0, f"{line.node} log: {line.text}") for line in own_lines]
    if start is not None and end is not None:
        lo, hi = start - WINDOW_S, end + WINDOW_S / 4
        timeline += [(at, f"fault: {what}") for at, what in schedule if lo <= at <= hi]
        context = [
            (event_wall(e), f"{e.node_id}: {e.summary}")
            for e in events
            if lo <= event_wall(e) <= hi and _context(e, egress)
        ]
        context += _warnings(
            [
                line
                for line in logs
                if line.at is not None
                and lo <= line.at <= hi
                and line.level in ("warning", "error")
                and not names.search(line.text)
            ]
        )
        context.sort()
        timeline += [item for item in context if item[0] < start][-CONTEXT_BEFORE:]
        timeline += [item for item in context if item[0] >= start]
    timeline.sort(key=lambda item: item[0])
    evidence = list(extra)
    if start is not None:
        in_force = [what for at, what in schedule if at <= start]
        evidence.append(f"fault in force at its start: {in_force[-1] if in_force else 'none'}")
    evidence += [f"{clock(at)} {what}" for at, what in timeline]
    for node, record in sorted(records.items()):
        evidence.append(f"call book of {node}: {_record(record)}")
    if not records:
        evidence.append("call books: no node knows the call (any more)")
    if not own_lines:
        evidence.append("node logs: no line names this Call-ID")
    cause = _cause(caller, callee, failed_by)
    return CallExplanation(call_id, ingress, cause, evidence, start)


def _warnings(lines: Sequence[LogLine]) -> list[tuple[float, str]]:
    """Each node's warnings of one kind (the event phrase) as one line: the first, with how
    many more followed (a stalled node warns every few hundred milliseconds)."""
    kinds: dict[tuple[str, str], list[LogLine]] = {}
    for line in lines:
        kinds.setdefault((line.node, line.text.split("=", 1)[0].rsplit(" ", 1)[0]), []).append(line)
    out = []
    for (node, _), same in kinds.items():
        first, last = same[0], same[-1]
        more = f" (and {len(same) - 1} more until {clock(last.at or 0.0)})" if len(same) > 1 else ""
        out.append((first.at or 0.0, f"{node} log {first.level}: {first.text}{more}"))
    return out


def _context(event: control_pb2.Event, egress: str) -> bool:
    """Link changes anywhere, and route changes toward the egress, explain a call's path."""
    if event.type in (control_pb2.LINK_UP, control_pb2.LINK_DOWN):
        return True
    return event.type == control_pb2.ROUTE_CHANGE and event.route.destination == egress


def _record(call: control_pb2.Call) -> str:
    role = control_pb2.Call.Role.Name(call.role)
    state = control_pb2.Call.State.Name(call.state)
    final = f" {call.final_status} {call.final_reason}" if call.final_status else ""
    path = "→".join(call.path) or "none"
    return (
        f"{role} {state}{final}, far node {call.far_node or '?'}, path now {path}, "
        f"{call.sip_requests} requests / {call.sip_responses} responses"
    )


def _cause(
    caller: SippCall | None, callee: SippCall | None, failed_by: Sequence[control_pb2.Event]
) -> str:
    """One line: what the caller saw, who failed it, and what the callee saw."""
    parts = []
    if caller is None or not (caller.messages or caller.notes):
        parts.append("the caller's SIPp logged nothing on it")
    else:
        errors = [
            m
            for m in caller.messages
            if not m.sent and m.first_line.startswith("SIP/2.0") and m.first_line[8:9] in "3456"
        ]
        if errors:
            parts.append(f"caller got {errors[0].describe()}")
        elif abort := next((n for _, n in reversed(caller.notes) if "timeout" in n.lower()), None):
            sent = [m for m in caller.messages if m.sent]
            last = sent[-1].method if sent else "?"
            resent = sum(1 for m in sent if m.method == last)
            parts.append(f"caller timed out waiting after its {last} (sent {resent}x): {abort[6:]}")
        else:
            parts.append(caller.notes[-1][1] if caller.notes else "caller: no error noted")
    if failed_by:
        parts.append(
            "failed by "
            + ", ".join(f"{e.node_id} ({e.call.status} {e.call.reason})" for e in failed_by)
        )
    parts.append(_callee_view(callee))
    return "; ".join(parts)


def _callee_view(callee: SippCall | None) -> str:
    """What the callee got: nothing, or each request with what differed between copies."""
    received = [] if callee is None else [m for m in callee.messages if not m.sent]
    if not received:
        said = [note for _, note in callee.notes] if callee else []
        return "; ".join(said) or "the callee never got it"
    by_method: dict[str, list[SipMessage]] = {}
    for message in received:
        if not message.first_line.startswith("SIP/2.0"):
            by_method.setdefault(message.method, []).append(message)
    said = []
    for method, copies in by_method.items():
        shapes = sorted({" ".join(m.describe().split()[2:]) for m in copies})
        text = f"{method}x{len(copies)}"
        if len(shapes) > 1:
            text += " differing: " + " | ".join(shapes)
        said.append(text)
    aborted = [note for _, note in (callee.notes if callee else []) if "bort" in note]
    return "callee got " + ", ".join(said) + (f"; callee {aborted[0]}" if aborted else "")
