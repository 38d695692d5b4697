"""The ``overlay`` command: run a node, the four-region lab, the demo."""

from __future__ import annotations

import contextlib
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


def configure_logging(*, json: bool, level: str) -> None:
    """structlog to stderr: JSON lines for machines, key=value for people."""
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
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


@app.command()
def node(
    config: Annotated[Path, typer.Option("--config", "-c", help="node.toml to load")],
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON log lines")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Run one node (``sip.workers`` processes) until SIGINT or SIGTERM."""
    from overlay.config import ConfigError, load_config
    from overlay.workers import run_node

    configure_logging(json=log_json, level=log_level.upper())
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        typer.echo(f"overlay: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        code = run_node(loaded)
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
) -> None:
    """Four regions carrying SIPp calls through degradation, kill -9 and healing."""
    from overlay.lab.demo import run_demo

    _check_loopback_net(net)
    configure_logging(json=False, level="WARNING")
    raise typer.Exit(trio.run(run_demo, calls, rate, hold_ms, net))


@app.command()
def lab(
    net: Annotated[str, typer.Option(help="first three octets of the lab's loopback /24")] = (
        "127.0.10"
    ),
) -> None:
    """Start the four-region reference topology (one process per region) until Ctrl-C."""
    from overlay.lab.demo import run_lab

    _check_loopback_net(net)
    configure_logging(json=False, level="WARNING")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run_lab, net)


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
    from deploy.aws import ClientFactory
    from deploy.ha import load_ha_config, run_agent
    from overlay.config import ConfigError

    try:
        loaded = load_ha_config(config)
    except ConfigError as exc:
        typer.echo(f"overlay: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(json=log_json, level=log_level.upper())
    aws = ClientFactory(endpoint_url=endpoint_url)

    async def until_signalled() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_agent, loaded, aws)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(until_signalled)


def _add_subcommands() -> None:
    from overlay.cli.deploy import app as deploy_app

    app.add_typer(deploy_app, name="deploy")


_add_subcommands()


def main() -> None:
    app()
