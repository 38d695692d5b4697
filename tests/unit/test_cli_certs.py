"""``overlay certs``: a CA, node and client certificates in one directory, usable as they are
by a node and by overlayctl (overlay.cli.certs)."""

from __future__ import annotations

import datetime
from pathlib import Path

from typer.testing import CliRunner

from overlay.cli import app
from overlay.grpc import Role, identity_of
from overlay.tls import load_tls

runner = CliRunner()


def certs(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["certs", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_ca_then_node_and_client_certificates(tmp_path: Path):
    pki = str(tmp_path / "pki")
    assert certs("init", pki)[0] == 0
    assert (
        certs("node", pki, "usw2-a", "--address", "10.20.1.10:7000", "-a", "usw2.example")[0] == 0
    )
    code, out, _ = certs("client", pki, "alice", "--role", "operator")
    assert (code, out) == (0, f"operator certificate written to {pki}/alice.pem and .key\n")

    now = datetime.datetime.now(datetime.UTC)
    directory = tmp_path / "pki"
    node = load_tls(
        directory / "ca.pem", directory / "usw2-a.pem", directory / "usw2-a.key", now=now
    )
    assert identity_of(node.cert).node_id == "usw2-a"
    client = load_tls(
        directory / "ca.pem", directory / "alice.pem", directory / "alice.key", now=now
    )
    assert identity_of(client.cert).roles == {Role.OPERATOR}
    code, out, _ = certs("show", str(directory / "alice.pem"))
    assert (code, out) == (0, "subject: alice\nroles:   operator\nnode:    -\n")


def test_refusals_name_what_is_wrong(tmp_path: Path):
    pki = str(tmp_path)
    code, _, err = certs("node", pki, "usw2", "--address", "10.0.0.1")
    assert code == 1
    assert "ca.pem: cannot read" in err
    assert f"run `overlay certs init {pki}` first" in err
    assert certs("init", pki)[0] == 0
    code, _, err = certs("init", pki)
    assert (code, err) == (1, f"overlay certs: {pki}/ca.pem exists (--force to overwrite)\n")
    assert certs("init", pki, "--force")[0] == 0
    code, _, err = certs("node", pki, "USW2", "--address", "10.0.0.1")
    assert (code, err) == (2, "overlay certs: node id 'USW2' must match [a-z0-9-]{1,63}\n")
    code, _, err = certs("node", pki, "usw2", "--address", "not an address")
    assert code == 2
    assert "neither an IP address nor a DNS name" in err
    code, _, err = certs("client", pki, "../alice", "--role", "viewer")
    assert code == 2
    assert "letters, digits" in err
    assert certs("client", pki, "bob", "--role", "admin")[0] == 2  # not a role
