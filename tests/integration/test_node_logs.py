"""A node process's log lines as a log pipeline reads them: one JSON object per line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from overlay.lab.node_process import NODE_PORT, node_config, open_node

pytestmark = pytest.mark.integration


@pytest.mark.trio
async def test_json_lines_carry_time_level_event_node_and_fields(
    loopback_host: Callable[[], str],
) -> None:
    host = loopback_host()
    config = node_config(
        host=host, port=NODE_PORT, target="127.0.0.1:9", extra='[log]\nformat = "json"\n'
    )
    async with open_node(config, host=host, port=NODE_PORT) as node:
        text = node.log()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines, text
    node_id = f"lab-{host.replace('.', '-')}"
    for line in lines:
        assert {"timestamp", "level", "event", "node_id"} <= line.keys(), line
        assert line["node_id"] == node_id
        assert line["timestamp"].endswith("Z")
    started = next(line for line in lines if line["event"] == "node started")
    assert started["level"] == "info"
    assert started["listeners"] == 2  # a field the code bound, as a JSON number


@pytest.mark.trio
async def test_level_from_the_config_silences_info(loopback_host: Callable[[], str]) -> None:
    host = loopback_host()
    config = node_config(
        host=host, port=NODE_PORT, target="127.0.0.1:9", extra='[log]\nlevel = "warning"\n'
    )
    async with open_node(config, host=host, port=NODE_PORT) as node:
        text = node.log()
    # The same start-up as above, without its info lines.
    assert "node started" not in text
    assert "listening" not in text


def test_a_bad_log_level_on_the_command_line_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(node_config(host="127.0.0.1", port=0, target="127.0.0.1:9"))
    done = subprocess.run(
        [sys.executable, "-m", "overlay", "node", "-c", str(config), "--log-level", "verbose"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--log-level must be one of DEBUG, INFO, WARNING, ERROR" in done.stderr
