"""``overlayctl``: the NOC's command line for one overlay node's Control service.

One command per RPC of ``overlay.v1.Control`` (docs/noc.md), human tables by default, the
response as JSON with ``--json`` (protobuf's JSON mapping with the .proto's field names), and
``watch`` to follow events live (one JSON object per line with ``--json``).

Exit codes, for scripts (``EXIT_*``):

====  ==========================================================================================
0     success (``health``: the node is SERVING)
1     the node answered with an error status (INVALID_ARGUMENT, NOT_FOUND, ...); the status
      name and message are on stderr
2     usage error: bad options or arguments, unreadable or mismatched certificate files
3     the node could not be reached or did not answer in time (UNAVAILABLE, including a TLS
      handshake the node refused, or DEADLINE_EXCEEDED)
4     the node refused the caller: UNAUTHENTICATED or PERMISSION_DENIED (a viewer asking to
      change something)
5     ``health``: the node is NOT_SERVING (draining)
====  ==========================================================================================
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import trio
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from overlay.grpc import (
    GrpcBridge,
    RpcError,
    StatusCode,
    StreamBroken,
    TlsCredentials,
    open_grpc_bridge,
)
from overlay.noc import KINDS, FaultInjected, fault_from_message, fault_message, serialize
from overlay.tls import TlsError, load_tls
from overlay.v1 import control_pb2

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_NOT_SERVING = 5

SERVICE = "/overlay.v1.Control/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_UNREACHABLE = {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED}
_REFUSED = {StatusCode.UNAUTHENTICATED, StatusCode.PERMISSION_DENIED}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

ResponseT = TypeVar("ResponseT", bound=Message)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="overlayctl: read and operate one overlay node through its Control service "
    "(exit codes: 0 ok, 1 error status, 2 usage, 3 unreachable, 4 refused, 5 not serving).",
)
# Piped into a script or a log, lines are not cut to a terminal's width.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)


@dataclass(frozen=True)
class Target:
    """Where and how to call: the global options."""

    address: str
    tls: TlsCredentials | None
    json: bool
    timeout: float


@app.callback()
def _options(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", envvar="OVERLAYCTL_TARGET", help="the node's gRPC HOST:PORT"
        ),
    ],
    ca: Annotated[
        Path | None, typer.Option(envvar="OVERLAYCTL_CA", help="CA certificate (PEM)")
    ] = None,
    cert: Annotated[
        Path | None, typer.Option(envvar="OVERLAYCTL_CERT", help="client certificate (PEM)")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(envvar="OVERLAYCTL_KEY", help="client private key (PEM)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="no TLS (a node with insecure = true)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for an answer")] = 5.0,
) -> None:
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit():
        _usage(f"--target must be HOST:PORT, got {target!r}")
    files = [f for f in (ca, cert, key) if f is not None]
    tls = None
    if insecure:
        if files:
            _usage("--insecure and --ca/--cert/--key exclude each other")
    elif len(files) != 3:
        _usage("give --ca, --cert and --key (or OVERLAYCTL_CA/_CERT/_KEY), or --insecure")
    else:
        assert ca is not None
        assert cert is not None
        assert key is not None
        try:
            tls = load_tls(ca, cert, key, now=datetime.datetime.now(datetime.UTC))
        except TlsError as exc:
            _usage(str(exc))
    ctx.obj = Target(target, tls, as_json, timeout)


# --- reading ---------------------------------------------------------------------------------


@app.command()
def nodes(ctx: typer.Context) -> None:
    """The nodes the node knows: reachability, draining, flooding, paths (ListNodes)."""
    response = _call(
        ctx, "ListNodes", control_pb2.ListNodesRequest(), control_pb2.ListNodesResponse
    )
    if _printed_json(ctx, response):
        return
    drain = response.drain
    state = "taking calls"
    if drain.draining:
        state = (
            f"DRAINING since {_time(drain.since)} by {drain.by or '?'}"
            f" ({drain.reason or 'no reason given'}; Retry-After {drain.retry_after_s} s)"
        )
    out.print(f"{response.node_id}: {state}; {drain.active_calls} active call(s)")
    table = _table("node", "region", "az", "", "reach", "drain", "flood", "path", "cost ms", "lsa")
    for node in response.nodes:
        kind = "local" if node.local else "peer" if node.configured_peer else "lsdb"
        lsa = f"{node.lsa_age_s:.0f}s old, {node.links_up} up" if node.in_lsdb else "-"
        table.add_row(
            node.node_id,
            node.region,
            node.az,
            kind,
            _yes(node.reachable or node.local),
            "DRAINING" if node.draining else "",
            _yes(node.flooding) if not node.local else "",
            "→".join(node.path),
            _ms(node.cost_ms) if node.path else "",
            lsa,
        )
    out.print(table)


@app.command()
def topology(ctx: typer.Context) -> None:
    """Every LSA's links, usable or not, and their cost here (GetTopology)."""
    response = _call(
        ctx, "GetTopology", control_pb2.GetTopologyRequest(), control_pb2.GetTopologyResponse
    )
    if _printed_json(ctx, response):
        return
    table = _table("link", "up", "usable", "rtt", "jitter", "loss", "retrans", "admin", "cost")
    for link in response.links:
        m = link.metrics
        table.add_row(
            f"{link.origin}→{link.neighbor}",
            _yes(link.up),
            _yes(link.usable),
            _ms(m.rtt_ms),
            _ms(m.jitter_ms),
            _percent(m.loss_ratio),
            _percent(m.retrans_ratio),
            _ms(m.admin_cost_ms),
            _ms(link.cost_ms) if link.usable else "",
        )
    out.print(table)


@app.command()
def links(ctx: typer.Context) -> None:
    """This node's links: probe state, metrics, cost, overrides, faults (ListLinks)."""
    response = _call(
        ctx, "ListLinks", control_pb2.ListLinksRequest(), control_pb2.ListLinksResponse
    )
    if _printed_json(ctx, response):
        return
    table = _table(
        "neighbor",
        "state",
        "for",
        "rtt",
        "jitter",
        "loss",
        "adv",
        "cost",
        "probes",
        "echoes",
        "flood",
        "notes",
    )
    for link in response.links:
        m = link.measured
        notes = []
        if link.HasField("override"):
            notes.append(f"override: {_override_text(link.override)}")
        if link.HasField("fault"):
            notes.append(f"fault: {fault_from_message(link.fault).describe()}")
        echoes = ""
        if link.HasField("liveness"):
            echoes = f"{link.liveness.answered}/{link.liveness.sent}"
            echoes += f" ({link.liveness.detection_ms:.0f} ms)"
            if link.liveness.silent:
                notes.append("liveness echoes silent")
        table.add_row(
            link.neighbor,
            control_pb2.LinkStatus.State.Name(link.state),
            f"{link.since_s:.0f}s",
            _ms(m.rtt_ms),
            _ms(m.jitter_ms),
            _percent(m.loss_ratio),
            "up" if link.advertised_up else "DOWN",
            _ms(link.cost_ms) if link.advertised_up else "",
            f"{link.probes_answered}/{link.probes_sent}",
            echoes,
            _yes(link.flooding),
            "; ".join(notes),
        )
    out.print(f"{response.node_id}'s links")
    out.print(table)


@app.command()
def trunks(ctx: typer.Context) -> None:
    """The trunks this node sends calls to: probe state, RTT, loss, last answer (ListTrunks)."""
    response = _call(
        ctx, "ListTrunks", control_pb2.ListTrunksRequest(), control_pb2.ListTrunksResponse
    )
    if _printed_json(ctx, response):
        return
    if not response.enabled:
        out.print(f"{response.node_id}: trunk probes are off ([trunks] enabled = false)")
        return
    table = _table("trunk", "targets", "state", "for", "rtt", "loss", "last", "silent", "probes")
    for trunk in response.trunks:
        table.add_row(
            trunk.trunk,
            ", ".join(trunk.targets),
            control_pb2.TrunkStatus.State.Name(trunk.state),
            f"{trunk.since_s:.0f}s",
            _ms(trunk.rtt_ms) if trunk.probes_answered else "",
            _percent(trunk.loss_ratio),
            str(trunk.last_status or ""),
            f"{trunk.silent_s:.1f}s" if trunk.HasField("silent_s") else "never heard",
            f"{trunk.probes_answered}/{trunk.probes_sent}",
        )
    out.print(
        f"{response.node_id}'s trunks ({response.all_down_tried} call(s) found every address "
        "down and tried them in order anyway)"
    )
    out.print(table)
    for line in response.unresolved:
        out.print(f"lookup failed: {line}")


@app.command()
def routes(ctx: typer.Context) -> None:
    """The route table: best path and ranked alternates per destination (GetRoutes)."""
    response = _call(
        ctx, "GetRoutes", control_pb2.GetRoutesRequest(), control_pb2.GetRoutesResponse
    )
    if _printed_json(ctx, response):
        return
    out.print(
        f"{response.node_id}: route table version {response.version}, computed "
        f"{response.computed_age_s:.1f} s ago"
    )
    table = _table("destination", "path", "cost ms", "alternates")
    for route in response.routes:
        alternates = ", ".join(f"{'→'.join(p.nodes)} ({_ms(p.cost_ms)})" for p in route.alternates)
        table.add_row(route.destination, "→".join(route.path), _ms(route.cost_ms), alternates)
    out.print(table)


@app.command()
def explain(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="a node id, or a Request-URI / dialled number (sip:..., tel:..., +1415...)"
        ),
    ],
    uri: Annotated[
        bool, typer.Option("--uri", help="read TARGET as a Request-URI or number, not a node")
    ] = False,
) -> None:
    """Why calls to TARGET take the path they take: the dialplan rule, the chosen path's
    cost per link, and every other first hop with the reason it lost (ExplainRoute)."""
    as_uri = uri or ":" in target or target[:1] in "+0123456789"
    request = (
        control_pb2.ExplainRouteRequest(request_uri=target)
        if as_uri
        else control_pb2.ExplainRouteRequest(node_id=target)
    )
    response = _call(ctx, "ExplainRoute", request, control_pb2.ExplainRouteResponse)
    if _printed_json(ctx, response):
        return
    if as_uri:
        plan = response.dialplan
        if plan.matched:
            where = f"egress {plan.egress}" if plan.egress else "egress this node"
            out.print(
                f"dialplan rule #{plan.rule_index} (user_prefix {plan.user_prefix!r}, domain "
                f"{plan.domain or 'any'}): {where}, target {plan.target}"
                + (f", user sent as {plan.forwarded_user!r}" if plan.forwarded_user else "")
            )
        else:
            out.print("dialplan: no rule matches")
    out.print(f"{response.node_id} → {response.destination or '?'}: {response.outcome}")
    if not response.HasField("chosen"):
        return
    chosen = response.chosen
    out.print(f"chosen: {'→'.join(chosen.path)}, {_ms(chosen.cost_ms)} ms: {chosen.reason}")
    table = _table("link", "rtt", "jitter", "loss", "retrans", "admin", "hop", "policy", "total")
    for link in chosen.links:
        table.add_row(
            f"{link.from_node}→{link.to_node}",
            _ms(link.rtt_ms),
            _ms(link.jitter_ms),
            _ms(link.loss_ms),
            _ms(link.retrans_ms),
            _ms(link.admin_ms),
            _ms(link.hop_ms),
            _ms(link.policy_ms),
            _ms(link.total_ms),
        )
    out.print(table)
    out.print(f"hysteresis margin {_ms(response.hysteresis_margin_ms)} ms")
    others = _table("first hop", "verdict", "cost ms", "path", "why")
    for candidate in response.rejected:
        others.add_row(
            candidate.first_hop,
            control_pb2.Candidate.Verdict.Name(candidate.verdict),
            _ms(candidate.cost_ms) if candidate.path else "",
            "→".join(candidate.path),
            candidate.reason,
        )
    out.print(others)


@app.command()
def calls(
    ctx: typer.Context,
    all_calls: Annotated[
        bool, typer.Option("--all", help="also recently ended and failed calls")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 100,
) -> None:
    """The calls anchored at this node (ListCalls)."""
    request = control_pb2.ListCallsRequest(include_ended=all_calls, limit=limit)
    response = _call(ctx, "ListCalls", request, control_pb2.ListCallsResponse)
    if _printed_json(ctx, response):
        return
    out.print(f"{response.node_id}: {response.active} active call(s)")
    table = _table("call id", "role", "state", "far", "path", "age", "setup", "final", "media")
    for call in response.calls:
        table.add_row(
            call.call_id,
            control_pb2.Call.Role.Name(call.role),
            control_pb2.Call.State.Name(call.state),
            call.far_node,
            "→".join(call.path),
            f"{call.age_s:.0f}s",
            f"{call.setup_ms:.0f} ms" if call.setup_ms else "",
            f"{call.final_status} {call.final_reason}" if call.final_status else call.final_reason,
            _media_text(call),
        )
    out.print(table)


@app.command()
def call(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="the Call-ID")]) -> None:
    """One call: path, media relays and their counters (GetCall)."""
    request = control_pb2.GetCallRequest(call_id=call_id)
    response = _call(ctx, "GetCall", request, control_pb2.GetCallResponse)
    if _printed_json(ctx, response):
        return
    c = response.call
    out.print(
        f"call {c.call_id}: {control_pb2.Call.State.Name(c.state)}, "
        f"{control_pb2.Call.Role.Name(c.role)} toward {c.far_node or '?'} "
        f"via {'→'.join(c.path) or 'no path'}\n"
        f"from {c.from_uri} to {c.to_uri} (Request-URI {c.request_uri})\n"
        f"started {_time(c.started_at)} ({c.age_s:.0f} s ago)"
        + (f", answered after {c.setup_ms:.0f} ms" if c.setup_ms else "")
        + (
            f" (egress {c.egress_tries} tried, {c.setup_extra_ms:.0f} ms lost to failed ones)"
            if c.egress_tries > 1
            else ""
        )
        + (f"; final {c.final_status} {c.final_reason}" if c.final_status else "")
        + f"\nSIP messages across the edge: {c.sip_requests} requests, {c.sip_responses} responses"
    )
    if not c.media:
        return
    table = _table(
        "session", "side", "m=", "ports", "endpoint", "far", "pkts in", "pkts out", "drops"
    )
    for relay in c.media:
        ports = f"{relay.rtp_port}/{relay.rtcp_port}" if relay.rtcp_port else str(relay.rtp_port)
        table.add_row(
            f"{relay.session_id:x}",
            relay.side,
            str(relay.stream),
            ports,
            relay.endpoint + (" (latched)" if relay.latched else ""),
            f"{relay.remote_node} {relay.remote_session_id:x}" if relay.remote_node else "",
            str(relay.packets_in),
            str(relay.packets_out),
            str(relay.drops),
        )
    out.print(table)


@app.command()
def counters(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="only counters starting with this")] = "",
) -> None:
    """Every counter of the node, or those starting with PREFIX (GetCounters)."""
    response = _call(
        ctx, "GetCounters", control_pb2.GetCountersRequest(), control_pb2.GetCountersResponse
    )
    selected = {k: v for k, v in response.counters.items() if k.startswith(prefix)}
    if _target(ctx).json:
        out.print_json(
            json.dumps({"node_id": response.node_id, "counters": dict(sorted(selected.items()))})
        )
        return
    table = _table("counter", "value")
    for name in sorted(selected):
        table.add_row(name, str(selected[name]))
    out.print(table)


@app.command()
def blocks(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 100,
) -> None:
    """The sources the node's SIP edge security blocks now (ListBlocks)."""
    request = control_pb2.ListBlocksRequest(limit=limit)
    response = _call(ctx, "ListBlocks", request, control_pb2.ListBlocksResponse)
    if _printed_json(ctx, response):
        return
    if not response.security:
        out.print(f"{response.node_id}: no [security]: it blocks no source")
        return
    out.print(f"{response.node_id}: {response.blocked} source(s) blocked")
    if response.blocks:
        out.print(_blocks_table(response.blocks))


@app.command()
def health(ctx: typer.Context) -> None:
    """The standard gRPC health status of the node's server: SERVING, or NOT_SERVING while it
    drains (exit code 5)."""
    from grpc_health.v1 import health_pb2

    response = _call(
        ctx,
        "Check",
        health_pb2.HealthCheckRequest(service=""),
        health_pb2.HealthCheckResponse,
        path=HEALTH_CHECK,
    )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if not _printed_json(ctx, response):
        out.print(status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(EXIT_NOT_SERVING)


# --- events ----------------------------------------------------------------------------------


@app.command()
def watch(
    ctx: typer.Context,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="only events of this type (LINK_DOWN, ROUTE_CHANGE, CALL_FAILED, ...); repeat",
        ),
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="exit after this many events")] = None,
    duration: Annotated[
        str | None, typer.Option("--for", help="exit after this long (30s, 5m, 1h)")
    ] = None,
) -> None:
    """Print the node's events as they happen, until Ctrl-C, --count or --for (WatchEvents)."""
    wanted = []
    for name in types or []:
        if name.upper() not in KINDS:
            _usage(f"--type {name!r}: one of {', '.join(KINDS)}")
        wanted.append(control_pb2.EventType.Value(name.upper()))
    seconds = None if duration is None else _seconds("--for", duration)
    target = _target(ctx)
    request = control_pb2.WatchEventsRequest(types=wanted)

    async def follow(bridge: GrpcBridge) -> None:
        seen = 0
        with trio.move_on_after(math.inf if seconds is None else seconds):
            async with bridge.open_server_stream(
                target.address,
                SERVICE + "WatchEvents",
                request,
                serialize,
                control_pb2.Event.FromString,
            ) as stream:
                while count is None or seen < count:
                    try:
                        event = await stream.receive()
                    except trio.EndOfChannel:
                        return
                    except StreamBroken as broken:
                        raise RpcError(broken.code, broken.details) from None
                    _print_event(event, target.json)
                    seen += 1

    try:
        _run(target, follow)
    except KeyboardInterrupt:
        return


def _print_event(event: control_pb2.Event, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_dict(event)), flush=True)
        return
    by = f" (by {event.by})" if event.by else ""
    name = control_pb2.EventType.Name(event.type)
    out.print(f"{_time(event.time)}  {event.node_id}  {name:<21} {event.summary}{by}")
    sys.stdout.flush()


# --- changing --------------------------------------------------------------------------------


@app.command()
def drain(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="why (shown to other operators)")] = "",
    retry_after: Annotated[
        int, typer.Option(min=0, max=86_400, help="Retry-After of the 503s, s (0: 300)")
    ] = 0,
) -> None:
    """Stop taking new calls; calls up continue; health NOT_SERVING (Drain, operator)."""
    request = control_pb2.DrainRequest(reason=reason, retry_after_s=retry_after)
    response = _call(ctx, "Drain", request, control_pb2.DrainResponse)
    if _printed_json(ctx, response):
        return
    again = " (it already was)" if response.already_draining else ""
    out.print(
        f"draining{again}: new INVITEs get 503 with Retry-After {response.drain.retry_after_s} s;"
        f" {response.drain.active_calls} call(s) still up"
    )


@app.command()
def undrain(ctx: typer.Context) -> None:
    """Take new calls again (Undrain, operator)."""
    response = _call(ctx, "Undrain", control_pb2.UndrainRequest(), control_pb2.UndrainResponse)
    if _printed_json(ctx, response):
        return
    out.print("taking new calls" + ("" if response.was_draining else " (it was not draining)"))


@app.command()
def override(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="the peer at the other end of the link")],
    cost: Annotated[
        float | None, typer.Option(help="administrative cost, ms (replaces the configured)")
    ] = None,
    down: Annotated[bool, typer.Option("--down", help="advertise the link down")] = False,
    duration: Annotated[
        str | None, typer.Option("--for", help="how long: 90s, 30m, 4h, 2d (at most 7d)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="until this time, ISO 8601 (2030-01-31T18:00:00Z)")
    ] = None,
    reason: Annotated[str, typer.Option(help="why (shown in links and events)")] = "",
) -> None:
    """Override this node's link to PEER until an expiry (SetLinkOverride, operator)."""
    request = control_pb2.SetLinkOverrideRequest(peer=peer, force_down=down, reason=reason)
    if cost is not None:
        request.admin_cost_ms = cost
    if (duration is None) == (until is None):
        _usage("give one of --for and --until")
    if duration is not None:
        request.ttl_s = _seconds("--for", duration)
    else:
        assert until is not None
        try:
            moment = datetime.datetime.fromisoformat(until)
        except ValueError:
            _usage(f"--until {until!r}: not an ISO 8601 time")
        if moment.tzinfo is None:
            _usage(f"--until {until!r}: give a time zone (Z or +hh:mm)")
        request.expires_at.FromDatetime(moment.astimezone(datetime.UTC))
    response = _call(ctx, "SetLinkOverride", request, control_pb2.SetLinkOverrideResponse)
    if _printed_json(ctx, response):
        return
    out.print(f"link to {peer}: {_override_text(response.override)}")


@app.command("clear-override")
def clear_override(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="the peer; leave out to clear every override")] = "",
) -> None:
    """Remove link overrides before they expire (ClearLinkOverride, operator)."""
    request = control_pb2.ClearLinkOverrideRequest(peer=peer)
    response = _call(ctx, "ClearLinkOverride", request, control_pb2.ClearLinkOverrideResponse)
    if not _printed_json(ctx, response):
        out.print(f"{response.cleared} override(s) cleared")


@app.command()
def fault(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="the peer, or '*' for every peer")],
    delay_ms: Annotated[float, typer.Option(min=0, help="added one-way delay, ms")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(min=0, help="random extra delay up to, ms")] = 0.0,
    loss: Annotated[float, typer.Option(min=0, max=1, help="fraction dropped, 0..1")] = 0.0,
    blackhole: Annotated[bool, typer.Option("--blackhole", help="drop everything")] = False,
) -> None:
    """Impair what this node sends to PEER, for game days (InjectFault, operator)."""
    injected = FaultInjected(peer, delay_ms, jitter_ms, loss, blackhole)
    request = control_pb2.InjectFaultRequest(fault=fault_message(injected))
    response = _call(ctx, "InjectFault", request, control_pb2.InjectFaultResponse)
    if not _printed_json(ctx, response):
        out.print(f"fault toward {peer}: {injected.describe()}")


@app.command("clear-faults")
def clear_faults(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="the peer; leave out to clear every fault")] = "",
) -> None:
    """Remove injected faults (ClearFaults, operator)."""
    request = control_pb2.ClearFaultsRequest(peer=peer)
    response = _call(ctx, "ClearFaults", request, control_pb2.ClearFaultsResponse)
    if not _printed_json(ctx, response):
        out.print(f"{response.cleared} fault(s) cleared")


@app.command()
def unblock(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="an IP address, an IPv6 /64 as `blocks` shows it, or '*' for every source"
        ),
    ],
) -> None:
    """Lift SIP edge security blocks before they run out; a source that is not blocked is no
    error (Unblock, operator)."""
    request = control_pb2.UnblockRequest(source=source)
    response = _call(ctx, "Unblock", request, control_pb2.UnblockResponse)
    if _printed_json(ctx, response):
        return
    if not response.unblocked:
        out.print(f"{source}: not blocked; nothing lifted")
        return
    out.print(f"{response.unblocked} block(s) lifted")
    out.print(_blocks_table(response.blocks))


# --- calling ---------------------------------------------------------------------------------


def _call(
    ctx: typer.Context,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    *,
    path: str | None = None,
) -> ResponseT:
    """One unary call of the Control service's ``method`` (or of the method at ``path``)."""
    target = _target(ctx)
    responses: list[ResponseT] = []

    async def call(bridge: GrpcBridge) -> None:
        response = await bridge.unary(
            target.address,
            path or SERVICE + method,
            request,
            serialize,
            response_type.FromString,
            timeout=target.timeout,
        )
        responses.append(response)

    _run(target, call)
    return responses[0]


def _target(ctx: typer.Context) -> Target:
    target = ctx.obj
    assert isinstance(target, Target)
    return target


def _run(target: Target, body: Callable[[GrpcBridge], Awaitable[None]]) -> None:
    """Run ``body`` with a bridge on trio; RPC errors become the documented exit codes."""

    async def main() -> None:
        async with open_grpc_bridge(tls=target.tls) as bridge:
            await body(bridge)

    try:
        trio.run(main)
    except RpcError as error:
        typer.echo(f"overlayctl: {error.code.name}: {error.message}", err=True)
        if error.code in _UNREACHABLE:
            raise typer.Exit(EXIT_UNREACHABLE) from None
        if error.code in _REFUSED:
            raise typer.Exit(EXIT_REFUSED) from None
        raise typer.Exit(EXIT_RPC_ERROR) from None


def _dict(message: Message) -> dict[str, Any]:
    result: dict[str, Any] = MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return result


def _printed_json(ctx: typer.Context, message: Message) -> bool:
    if not _target(ctx).json:
        return False
    print(json.dumps(_dict(message), indent=2))
    return True


# --- formatting ------------------------------------------------------------------------------


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _time(stamp: Any) -> str:  # noqa: ANN401 - a protobuf Timestamp
    moment: datetime.datetime = stamp.ToDatetime(tzinfo=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _override_text(override: control_pb2.LinkOverride) -> str:
    what = "forced down" if override.force_down else f"admin cost {override.admin_cost_ms:g} ms"
    who = f" by {override.set_by}" if override.set_by else ""
    why = f": {override.reason}" if override.reason else ""
    return f"{what} until {_time(override.expires_at)}{who}{why}"


def _blocks_table(blocks: Iterable[control_pb2.BlockedSource]) -> Table:
    table = _table("source", "reason", "since", "until", "dropped", "last dropped", "detail")
    for block in blocks:
        table.add_row(
            block.source,
            control_pb2.BlockedSource.Reason.Name(block.reason).lower(),
            _time(block.since),
            _time(block.until),
            str(block.dropped),
            _time(block.last_dropped_at) if block.HasField("last_dropped_at") else "",
            block.detail,
        )
    return table


def _media_text(call: control_pb2.Call) -> str:
    if not call.media:
        return ""
    packets_in = sum(relay.packets_in for relay in call.media)
    packets_out = sum(relay.packets_out for relay in call.media)
    return f"{len(call.media)} stream(s), {packets_in}/{packets_out} pkts"


def _seconds(option: str, text: str) -> float:
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match[1]) <= 0:
        _usage(f"{option} {text!r}: a duration such as 90s, 30m, 4h or 2d")
    return float(match[1]) * _UNITS[match[2]]


def _usage(message: str) -> NoReturn:
    typer.echo(f"overlayctl: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def main() -> None:
    # grpc's C core logs connection errors of its own to stderr; overlayctl says what failed.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    app()


if __name__ == "__main__":
    main()
