"""``[metrics]``, ``[log]`` and ``[cloudwatch]``: defaults, and refusals naming line and key."""

from __future__ import annotations

import pytest

from overlay.config import (
    CloudwatchSection,
    ConfigError,
    LogSection,
    MetricsSection,
    parse_config,
)

# A node with one peer; the section under test is appended (its first line is line 15).
BASE = """\
[node]
node_id = "usw2-a"
region = "us-west-2"
[sip]
listen = ["udp:127.0.0.1:5060"]
workers = 1
[grpc]
listen = "127.0.0.1:7000"
insecure = true
[[peers]]
node_id = "use1-a"
region = "us-east-1"
sip = "127.0.0.2:5060"
grpc = "127.0.0.2:7000"
"""


def parse(section: str, base: str = BASE) -> object:
    return parse_config(base + section, source="node.toml")


def error(section: str, base: str = BASE) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(section, base)
    return str(caught.value)


def test_defaults_without_the_sections() -> None:
    config = parse_config(BASE, source="node.toml")
    assert config.metrics is None
    assert config.cloudwatch is None
    assert config.log == LogSection("console", "INFO")


def test_sections_read() -> None:
    config = parse_config(
        BASE
        + '[metrics]\nlisten = "127.0.0.11:9100"\n'
        + '[log]\nformat = "json"\nlevel = "debug"\n'
        + '[cloudwatch]\nfleet = "voice"\nregion = "eu-central-1"\nnamespace = "Voice/Links"\n'
        + 'interval = 30\nsample_interval = 5\nendpoint_url = "https://monitoring.example"\n',
        source="node.toml",
    )
    assert config.metrics == MetricsSection("127.0.0.11", 9100)
    assert config.log == LogSection("json", "DEBUG")
    assert config.cloudwatch == CloudwatchSection(
        fleet="voice",
        region="eu-central-1",
        namespace="Voice/Links",
        interval=30.0,
        sample_interval=5.0,
        endpoint_url="https://monitoring.example",
    )


def test_cloudwatch_defaults_to_the_node_region_and_the_alarms_namespace() -> None:
    config = parse_config(BASE + '[cloudwatch]\nfleet = "voice"\n', source="node.toml")
    assert config.cloudwatch == CloudwatchSection(fleet="voice", region="us-west-2")
    assert config.cloudwatch.namespace == "Overlay/Links"
    assert config.cloudwatch.interval == 60.0


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[metrics]\nlisten = "localhost:9100"\n', "node.toml:16: metrics.listen: bad IPv4"),
        ("[metrics]\n", "node.toml:15: metrics.listen: required"),
        ('[log]\nformat = "xml"\n', 'node.toml:16: log.format: must be "console" or "json"'),
        ('[log]\nlevel = "verbose"\n', 'node.toml:16: log.level: must be "debug", "info"'),
        ("[log]\ncolour = true\n", "node.toml:16: log.colour: unknown key"),
        ("[cloudwatch]\n", "node.toml:15: cloudwatch.fleet: required"),
        ('[cloudwatch]\nfleet = "Voice"\n', "node.toml:16: cloudwatch.fleet: must match"),
        (
            '[cloudwatch]\nfleet = "voice"\nregion = "oregon"\n',
            "node.toml:17: cloudwatch.region: must be an AWS region name",
        ),
        (
            '[cloudwatch]\nfleet = "voice"\ninterval = 300\n',
            "node.toml:17: cloudwatch.interval: must be <= 60 s",
        ),
        (
            '[cloudwatch]\nfleet = "voice"\ninterval = 10\nsample_interval = 20\n',
            "node.toml:18: cloudwatch.sample_interval: must be <= interval",
        ),
        (
            '[cloudwatch]\nfleet = "voice"\nnamespace = "AWS/EC2"\n',
            "node.toml:17: cloudwatch.namespace: must not start with AWS/",
        ),
        (
            '[cloudwatch]\nfleet = "voice"\nendpoint_url = "monitoring.example"\n',
            "node.toml:17: cloudwatch.endpoint_url: must be an http:// or https:// URL",
        ),
    ],
)
def test_bad_values_are_refused_with_line_and_key(section: str, expected: str) -> None:
    assert error(section).startswith(expected)


def test_cloudwatch_needs_peers_and_an_aws_region() -> None:
    standalone = (
        '[node]\nnode_id = "a"\nregion = "us-west-2"\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
    )
    assert "cloudwatch: needs [[peers]]" in error('[cloudwatch]\nfleet = "voice"\n', standalone)
    lab = BASE.replace('region = "us-west-2"', 'region = "lab"', 1)
    message = error('[cloudwatch]\nfleet = "voice"\n', lab)
    assert "cloudwatch: needs region: node.region 'lab' is not an AWS region name" in message
    assert parse('[cloudwatch]\nfleet = "voice"\nregion = "us-east-1"\n', lab)


def test_metrics_port_leaves_room_for_every_worker() -> None:
    workers = '[node]\nnode_id = "a"\nregion = "r"\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
    workers += "workers = 4\n"
    assert parse('[metrics]\nlisten = "127.0.0.1:65532"\n', workers)
    message = error('[metrics]\nlisten = "127.0.0.1:65533"\n', workers)
    assert message.startswith("node.toml:8: metrics.listen: worker i serves on port + i")
