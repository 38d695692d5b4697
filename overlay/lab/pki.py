"""The lab's certificates: a throwaway CA, one certificate per node and NOC clients on demand.

The lab runs with mutual TLS like a fleet does (``overlay certs`` makes the same certificates):
``make_lab_pki`` writes a CA and every node's certificate and key into a directory the lab
owns, ``grpc_lines`` gives each node's ``[grpc]`` TLS keys, and ``client`` issues a NOC client
certificate (the lab's own admin calls are an operator's; tests ask for viewers too).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from overlay.grpc import Role, TlsCredentials, identity_of
from overlay.tls import Issued, create_ca, issue_client, issue_node


@dataclass(frozen=True)
class ClientFiles:
    """A NOC client's PEM files, for ``overlayctl --ca --cert --key``."""

    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> TlsCredentials:
        return TlsCredentials(self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes())


@dataclass(frozen=True)
class LabPki:
    """A lab's CA and certificates in ``directory`` (see ``make_lab_pki``)."""

    directory: Path
    ca: Issued

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def grpc_lines(self, node_id: str) -> tuple[str, ...]:
        """The ``[grpc]`` TLS keys of ``node_id``'s configuration."""
        return (
            f'ca = "{self.ca_file}"',
            f'cert = "{self.directory / node_id}.pem"',
            f'key = "{self.directory / node_id}.key"',
        )

    def client(self, name: str, role: Role) -> ClientFiles:
        """A NOC client certificate for ``name`` with ``role`` (made on first request).

        Raises:
            ValueError: ``name`` already has a certificate with another role.
        """
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        if not cert.exists():
            issue_client(self.ca, name, role, now=_now()).write(cert, key)
        elif role not in identity_of(cert.read_bytes()).roles:
            raise ValueError(f"{name} already has a certificate without the {role.value} role")
        return ClientFiles(self.ca_file, cert, key)


def make_lab_pki(
    directory: Path,
    nodes: Mapping[str, str],
    *,
    also_at: Mapping[str, Sequence[str]] | None = None,
) -> LabPki:
    """Create a CA and a certificate for every node in ``directory`` (which must exist).

    Args:
        directory: where the PEM files go (the lab's own temporary directory).
        nodes: node id -> the address its gRPC server listens on (the certificate's SAN).
        also_at: node id -> more addresses its gRPC is served at, in its SAN too: a lab pair's
            two members share the node's certificate, each serving at its own address.
    """
    now = _now()
    ca = create_ca("overlay lab CA", now=now)
    ca.write(directory / "ca.pem", directory / "ca.key")
    for node_id, host in nodes.items():
        hosts = [host, *(also_at or {}).get(node_id, ())]
        issue_node(ca, node_id, hosts, now=now).write(
            directory / f"{node_id}.pem", directory / f"{node_id}.key"
        )
    return LabPki(directory, ca)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
