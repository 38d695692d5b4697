"""The ``overlay`` command: run a node, run the demo."""

from __future__ import annotations

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
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
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
    calls: Annotated[int, typer.Option(help="calls to place")] = 2000,
    rate: Annotated[float, typer.Option(help="calls per second")] = 200.0,
) -> None:
    """Start a node with SIPp as caller and callee through it and print a summary."""
    from overlay.lab.demo import run_demo

    raise typer.Exit(trio.run(run_demo, calls, rate))


def main() -> None:
    app()
