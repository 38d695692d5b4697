"""``overlay deploy`` and ``overlay ha`` as an operator runs them: exit codes and messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from overlay.aws import ClientFactory
from overlay.cli import app
from overlay.config import ConfigError
from overlay.ha import parse_ha_config
from tests.deploy.bake import fake_wheelhouse


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """A command that configures structlog to CliRunner's stream must not leave it so."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.toml"

HA_TOML = """[ha]
region = "us-west-2"
fleet = "voice"
pair = "us-west-2a"
role = "active"
floating_private_ip = "10.20.1.10"
peer_grpc = "10.20.1.12:7000"
insecure = true
"""


def test_bad_fleet_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text(EXAMPLE.read_text().replace('instance_type = "', 'instance_typ = "', 1))
    result = CliRunner().invoke(app, ["deploy", "plan", "-f", str(bad)])
    assert result.exit_code == 2
    assert "fleet.instance_typ" in result.output
    assert "unknown key" in result.output


@pytest.mark.deploy
def test_status_of_nothing_deployed(moto_endpoint: str) -> None:
    result = CliRunner().invoke(
        app, ["deploy", "status", "-f", str(EXAMPLE), "--endpoint-url", moto_endpoint]
    )
    assert result.exit_code == 0, result.output
    assert "nothing deployed" in result.output


@pytest.mark.deploy
def test_plan_refuses_a_wheelhouse_or_a_base_image_it_cannot_bake(
    aws: ClientFactory, tmp_path: Path
) -> None:
    command = ["deploy", "plan", "-f", str(EXAMPLE), "--endpoint-url", str(aws.endpoint_url)]
    wrong = tmp_path / "wrong"
    fake_wheelhouse(wrong)
    (wrong / "grpcio-1.85.4-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"")
    result = CliRunner().invoke(app, [*command, "--wheelhouse", str(wrong)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # as the terminal wrapped it
    assert "grpcio-1.85.4-cp312-cp312-manylinux_2_17_x86_64.whl is for cp312" in said
    assert "the image is Debian 12 (CPython 3.11" in said
    # moto has no Debian: the image cannot be baked, and the plan says so before anything.
    right = tmp_path / "right"
    fake_wheelhouse(right)
    result = CliRunner().invoke(app, [*command, "--wheelhouse", str(right)])
    assert result.exit_code == 1, result.output
    assert "/aws/service/debian/release/12/latest/amd64" in " ".join(result.output.split())
    assert "+ " not in result.output
    vpcs = aws.client("ec2", "us-west-2").describe_vpcs()["Vpcs"]
    assert [vpc for vpc in vpcs if not vpc["IsDefault"]] == []


@pytest.mark.deploy
def test_render_reads_the_addresses_only_when_asked(moto_endpoint: str) -> None:
    command = ["deploy", "render", "-f", str(EXAMPLE), "--member", "us-west-2a-active"]
    offline = CliRunner().invoke(app, command)
    online = CliRunner().invoke(app, [*command, "--addresses", "--endpoint-url", moto_endpoint])
    assert (offline.exit_code, online.exit_code) == (0, 0), online.output
    # Nothing deployed: no Elastic IP to advertise yet, and so the same files.
    assert "advertise" not in online.output
    assert online.output == offline.output


def test_ha_config_defaults_and_errors(tmp_path: Path) -> None:
    config = parse_ha_config(HA_TOML)
    assert (config.fleet, config.pair, config.role, config.options) == (
        "voice",
        "us-west-2a",
        "active",
        {},
    )
    with pytest.raises(ConfigError, match=r"ha.toml:1: ha.peer_grpc: required key is missing"):
        parse_ha_config(HA_TOML.replace('peer_grpc = "10.20.1.12:7000"\n', "dead_after = 2\n"))
    with pytest.raises(ConfigError, match=r"ha.toml:5: ha.role: must be one of active, standby"):
        parse_ha_config(HA_TOML.replace('role = "active"', 'role = "primary"'))
    with pytest.raises(ConfigError, match=r"ha.toml:6: ha.floating_private_ip: must be an IP"):
        parse_ha_config(HA_TOML.replace('"10.20.1.10"', '"10.20.1"'))
    assert config.tls_files is None
    # Mutual TLS toward the peer's health service, or plaintext only when asked for.
    with pytest.raises(ConfigError, match=r"ha.toml:1: ha: required: ca, cert, key"):
        parse_ha_config(HA_TOML.replace("insecure = true\n", ""))
    with pytest.raises(ConfigError, match=r"ha.cert: required: cert, key"):
        parse_ha_config(HA_TOML.replace("insecure = true\n", f'ca = "{tmp_path}/none"\n'))
    missing = "".join(f'{key} = "{tmp_path}/none"\n' for key in ("ca", "cert", "key"))
    with pytest.raises(ConfigError, match=r"ha.ca: cannot read"):
        parse_ha_config(HA_TOML.replace("insecure = true\n", missing))
    bad = tmp_path / "ha.toml"
    bad.write_text(HA_TOML + "hold_dwon = 3\n")
    result = CliRunner().invoke(app, ["ha", "--config", str(bad)])
    assert result.exit_code == 2
    assert "ha.hold_dwon: unknown key" in result.output
    # Files that are not PEM are refused before the agent starts, naming the file.
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    tls = f'ca = "{junk}"\ncert = "{junk}"\nkey = "{junk}"\n'
    bad.write_text(HA_TOML.replace("insecure = true\n", tls))
    result = CliRunner().invoke(app, ["ha", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{junk}: not a PEM certificate" in result.output
