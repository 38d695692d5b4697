"""docs/noc.md covers the whole Control service and overlayctl: every RPC, every event type,
every command, every exit code (the reference must not fall behind the .proto or the CLI)."""

from __future__ import annotations

from pathlib import Path

import typer.main

from overlay.cli import ctl
from overlay.v1 import control_pb2

NOC = (Path(__file__).resolve().parents[2] / "docs" / "noc.md").read_text()


def test_every_rpc_has_a_reference_entry():
    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    missing = [m.name for m in service.methods if f"**{m.name}**" not in NOC]
    assert missing == []


def test_every_event_type_is_described():
    names = [value.name for value in control_pb2.DESCRIPTOR.enum_types_by_name["EventType"].values]
    names = [name for name in names if not name.endswith("UNSPECIFIED")]
    missing = [name for name in names if name not in NOC]
    assert missing == []


def test_every_overlayctl_command_and_exit_code_is_documented():
    commands = typer.main.get_command(ctl.app).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if f"| `{name}" not in NOC]
    assert missing == []
    codes = {getattr(ctl, name) for name in dir(ctl) if name.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 4, 5}
    assert all(f"\n| {code} |" in NOC for code in codes)
