"""The ``overlay`` command: run a node, the four-region lab, the demo."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import structlog
import trio
import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="overlay: a multi-region SIP overlay router.",
)


def configure_logging(*, json: bool, level: str, node_id: str | None = None) -> None:
    """structlog to stderr: JSON lines for machines, key=value for people.

    Every line carries ``timestamp`` (ISO 8601, UTC), ``level`` and ``event``, then the fields
    bound by the caller; with ``node_id`` also that, so that the lines of many nodes can be
    merged by a log pipeline and still be told apart.
    """
    # Plain tracebacks: rendering one with rich (the default) takes a node's CPU for long
    # enough to miss probes and be declared down by its peers.
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *([] if node_id is None else [_add_node_id(node_id)]),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _add_node_id(node_id: str) -> structlog.types.Processor:
    def add(
        _logger: object, _method: str, event_dict: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        event_dict.setdefault("node_id", node_id)
        return event_dict

    return add


@app.command()
def node(
    config: Annotated[Path, typer.Option("--config", "-c", help="node.toml to load")],
    log_json: Annotated[
        bool, typer.Option("--log-json", help="JSON log lines (default: [log] format)")
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: [log] level, INFO)"),
    ] = None,
) -> None:
    """Run one node (``sip.workers`` processes) until SIGINT or SIGTERM."""
    from overlay.config import LOG_LEVELS, ConfigError, load_config
    from overlay.shell.workers import run_node
    from overlay.tls import TlsError

    try:
        loaded = load_config(config)
    except ConfigError as exc:
        typer.echo(f"overlay: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from None
    level = (log_level or loaded.log.level).upper()
    if level not in LOG_LEVELS:
        typer.echo(f"overlay: --log-level must be one of {', '.join(LOG_LEVELS)}", err=True)
        raise typer.Exit(2)
    json = log_json or loaded.log.format == "json"
    configure_logging(json=json, level=level, node_id=loaded.node.node_id)
    try:
        code = run_node(loaded)
    except TlsError as exc:
        typer.echo(f"overlay: refusing to start: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"overlay: cannot start: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def demo(
    calls: Annotated[int, typer.Option(help="calls to place in each phase")] = 60,
    rate: Annotated[float, typer.Option(help="calls per second")] = 15.0,
    hold_ms: Annotated[int, typer.Option(help="how long each call stays up, ms")] = 1000,
    net: Annotated[str, typer.Option(help="first three octets of the lab's loopback /24")] = (
        "127.0.10"
    ),
    pair: Annotated[
        bool,
        typer.Option(
            help="end with the egress pair's active killed mid-call (needs moto, a test "
            "dependency: skipped without it; about 20 s more)"
        ),
    ] = True,
) -> None:
    """Four regions carrying SIPp calls through degradation, kill -9 and healing, then a
    pair's takeover mid-call."""
    from overlay.lab.demo import run_demo

    _check_loopback_net(net)
    configure_logging(json=False, level="WARNING")
    raise typer.Exit(trio.run(functools.partial(run_demo, calls, rate, hold_ms, net, pair=pair)))


@app.command()
def lab(
    net: Annotated[str, typer.Option(help="first three octets of the lab's loopback /24")] = (
        "127.0.10"
    ),
    pairs: Annotated[
        bool,
        typer.Option(
            "--pairs",
            help="every node an active/standby pair: two members, each with its HA agent, "
            "arbitrated by moto's EC2 server (needs moto, a test dependency)",
        ),
    ] = False,
) -> None:
    """Start the four-region reference topology (one process per region) until Ctrl-C."""
    from overlay.lab.demo import run_lab

    _check_loopback_net(net)
    configure_logging(json=False, level="WARNING")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(functools.partial(run_lab, net, pairs=pairs))


def _check_loopback_net(net: str) -> None:
    """The lab only ever uses loopback addresses."""
    octets = net.split(".")
    valid = len(octets) == 3 and all(o.isdigit() and int(o) < 256 for o in octets)
    if not valid or octets[0] != "127":
        typer.echo(f"overlay: --net must be three octets inside 127.0.0.0/8, got {net!r}", err=True)
        raise typer.Exit(2)


@app.command()
def ha(
    config: Annotated[Path, typer.Option("--config", "-c", help="ha.toml to load")],
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="AWS endpoint override"),
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON log lines")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Run the HA agent of one pair member (moves the floating address) until SIGINT/SIGTERM."""
    from overlay.aws import ClientFactory
    from overlay.config import ConfigError
    from overlay.ha import API_ERRORS, find_pair, load_agent_tls, load_ha_config, run_agent
    from overlay.tls import TlsError

    try:
        member = load_ha_config(config)
        tls = load_agent_tls(member)
    except (ConfigError, TlsError) as exc:
        typer.echo(f"overlay: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(json=log_json, level=log_level.upper())
    aws = ClientFactory(endpoint_url=endpoint_url)
    not_found: tuple[type[Exception], ...] = (LookupError, *API_ERRORS)
    try:
        ec2 = aws.client("ec2", member.region)
        found = find_pair(ec2, fleet=member.fleet, pair=member.pair, role=member.role)
    except not_found as exc:
        # Exit 1: the service manager starts the agent again (the pair may be half made).
        typer.echo(f"overlay: cannot find pair {member.pair}: {exc}", err=True)
        raise typer.Exit(1) from None
    loaded = member.config(found)

    async def until_signalled() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(run_agent, loaded, aws, tls=tls))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(until_signalled)


def _add_subcommands() -> None:
    from overlay.cli.certs import app as certs_app
    from overlay.cli.deploy import app as deploy_app
    from overlay.cli.secrets import app as secrets_app

    app.add_typer(deploy_app, name="deploy")
    app.add_typer(certs_app, name="certs")
    app.add_typer(secrets_app, name="secrets")


_add_subcommands()


def main() -> None:
    app()
