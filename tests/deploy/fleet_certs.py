"""A fleet's TLS files as an operator makes them: ``overlay certs init``, then ``overlay deploy
certs`` for each pair's node."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from overlay.cli import app


def fleet_certs(directory: Path, fleet_file: Path, *, force: bool = False) -> Path:
    """``directory`` with a CA (made once) and every pair's certificate (again with ``force``)."""
    runner = CliRunner()
    if not (directory / "ca.pem").exists():
        made = runner.invoke(app, ["certs", "init", str(directory)])
        assert made.exit_code == 0, made.output
    command = ["deploy", "certs", str(directory), "-f", str(fleet_file)]
    issued = runner.invoke(app, [*command, "--force"] if force else command)
    assert issued.exit_code == 0, issued.output
    return directory
