"""Certificates of the overlay's mutual TLS: what they say, and TLS material that cannot work is
refused at start with the file named (overlay.tls._certs, _auth)."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from overlay.grpc import Role, identity_of
from overlay.tls import Issued, TlsError, create_ca, issue_client, issue_node, load_ca, load_tls

NOW = datetime.datetime(2030, 1, 15, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("test CA", now=NOW)


def write(tmp_path: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    issued.write(cert, key)
    return cert, key


def sans(issued: Issued) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(issued.cert)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_node_certificate_names_the_node_and_its_grpc_addresses(ca: Issued):
    node = issue_node(ca, "usw2", ["10.1.2.3:7000", "[2001:db8::7]:7000", "usw2.example"], now=NOW)
    names = sans(node)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:overlay:node:usw2"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("2001:db8::7"),
    ]
    assert names.get_values_for_type(x509.DNSName) == ["usw2.example"]
    identity = identity_of(node.cert)
    assert (identity.subject, identity.node_id, identity.roles) == ("usw2", "usw2", frozenset())


def test_client_certificate_carries_its_role(ca: Issued):
    identity = identity_of(issue_client(ca, "alice", Role.OPERATOR, now=NOW).cert)
    assert (identity.subject, identity.roles, identity.node_id) == (
        "alice",
        frozenset({Role.OPERATOR}),
        None,
    )
    assert identity.describe() == "alice (operator)"


def test_node_certificate_needs_an_address(ca: Issued):
    with pytest.raises(ValueError, match="address"):
        issue_node(ca, "usw2", [], now=NOW)
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        issue_node(ca, "usw2", ["not a name!"], now=NOW)


def test_load_tls_accepts_a_matching_set(tmp_path: Path, ca: Issued):
    ca_file, _ = write(tmp_path, "ca", ca)
    cert, key = write(tmp_path, "alice", issue_client(ca, "alice", Role.VIEWER, now=NOW))
    tls = load_tls(ca_file, cert, key, now=NOW)
    assert (tls.ca, tls.cert) == (ca.cert, cert.read_bytes())
    assert "key" not in repr(tls).replace("key=", "")  # the key is never shown


def test_keys_are_private_and_never_overwritten(tmp_path: Path, ca: Issued):
    cert, key = write(tmp_path, "alice", issue_client(ca, "alice", Role.VIEWER, now=NOW))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        issue_client(ca, "alice", Role.VIEWER, now=NOW).write(cert, key)
    again = issue_client(ca, "alice", Role.OPERATOR, now=NOW)
    again.write(cert, key, overwrite=True)
    assert identity_of(cert.read_bytes()).roles == {Role.OPERATOR}
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing cert", "alice.pem: cannot read"),
        ("cert not PEM", "alice.pem: not a PEM certificate"),
        ("ca not PEM", "ca.pem: not a PEM certificate"),
        ("key not PEM", "alice.key: not an unencrypted PEM private key"),
        ("another key", "alice.key: not the private key of"),
        ("another CA", "alice.pem: not signed by the CA in"),
        ("expired", "alice.pem: expired on 2030-01-"),
        ("not yet valid", "alice.pem: not valid before 2030-"),
    ],
)
def test_load_tls_refuses_material_that_cannot_work(
    tmp_path: Path, ca: Issued, breakage: str, message: str
):
    ca_file, _ = write(tmp_path, "ca", ca)
    now = NOW
    if breakage == "another CA":
        client = issue_client(create_ca("other", now=NOW), "alice", Role.VIEWER, now=NOW)
    elif breakage in ("expired", "not yet valid"):
        client = issue_client(ca, "alice", Role.VIEWER, now=NOW, days=1)
        now = NOW + datetime.timedelta(days=2 if breakage == "expired" else -1)
    else:
        client = issue_client(ca, "alice", Role.VIEWER, now=NOW)
    cert, key = write(tmp_path, "alice", client)
    if breakage == "missing cert":
        cert.unlink()
    elif breakage == "cert not PEM":
        cert.write_text("hello")
    elif breakage == "ca not PEM":
        ca_file.write_text("hello")
    elif breakage == "key not PEM":
        key.write_text("hello")
    elif breakage == "another key":
        key.unlink()
        key.write_bytes(issue_client(ca, "bob", Role.VIEWER, now=NOW).key)
    with pytest.raises(TlsError, match=message):
        load_tls(ca_file, cert, key, now=now)


def test_load_ca_round_trips(tmp_path: Path, ca: Issued):
    cert, key = write(tmp_path, "ca", ca)
    assert load_ca(cert, key) == ca
    other = create_ca("other", now=NOW)
    key.unlink()
    key.write_bytes(other.key)
    with pytest.raises(TlsError, match="not the private key"):
        load_ca(cert, key)
