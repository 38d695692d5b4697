"""Certificates for the overlay's mutual TLS: a CA, node certificates and NOC client certificates.

A small fleet or a lab needs no PKI of its own: ``create_ca`` makes a self-signed CA, and
``issue_node`` / ``issue_client`` sign the certificates every node and NOC tool presents. Keys are
ECDSA P-256. What a certificate is for is in its subjectAltNames (``overlay.grpc._auth``):

* a node's: ``urn:overlay:node:<node_id>`` plus the IP addresses / DNS names its gRPC server is
  dialled at (clients check the server's certificate against the host they dial), with both
  server and client authentication as extended key usage (a node also dials its peers);
* a NOC client's: ``urn:overlay:role:<role>``, client authentication only.

``load_tls`` reads the three PEM files a side needs and refuses, naming the file, anything that
would only fail later in a TLS handshake: a file that is not PEM, a key that does not belong to
the certificate, a certificate the CA did not sign, one outside its validity period.
``load_key_pair`` and ``load_authorities`` make the same checks on the files of SIP over TLS
(``overlay.tls._sip``), whose certificate usually comes from a public CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overlay.grpc import NODE_URI_PREFIX, ROLE_URI_PREFIX, Role, TlsCredentials

CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers accept for server certificates; renew yearly
#: Certificates start this long before "now", so a peer whose clock is slightly behind accepts
#: a fresh one.
_BACKDATE = datetime.timedelta(minutes=5)


class TlsError(ValueError):
    """TLS material that cannot work; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes

    def write(self, cert_path: Path, key_path: Path, *, overwrite: bool = False) -> None:
        """Write both files; the key readable by its owner only.

        Raises:
            FileExistsError: a file exists and ``overwrite`` is false.
        """
        if overwrite:
            cert_path.write_bytes(self.cert)
            key_path.unlink(missing_ok=True)
        else:
            with cert_path.open("xb") as out:
                out.write(self.cert)
        # Created 0600 from the start: the key is never readable by others, even briefly.
        with open(key_path, "xb", opener=_open_private) as out:
            out.write(self.key)


def _open_private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def create_ca(common_name: str, *, now: datetime.datetime, days: int = CA_DAYS) -> Issued:
    """A self-signed CA certificate that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(_cert_pem(cert), _key_pem(key))


def issue_node(
    ca: Issued,
    node_id: str,
    addresses: list[str],
    *,
    now: datetime.datetime,
    days: int = LEAF_DAYS,
) -> Issued:
    """A node certificate: ``urn:overlay:node:<node_id>``, and ``addresses`` (IP addresses or DNS
    names its gRPC server is dialled at) as subjectAltNames.

    Raises:
        ValueError: no address, or one that is neither an IP address nor a DNS name.
    """
    if not addresses:
        raise ValueError("a node certificate needs the address its gRPC server is dialled at")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_id)]
    for address in addresses:
        names.append(_address_name(address))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, node_id, names, usages, now, days)


def issue_client(
    ca: Issued, name: str, role: Role, *, now: datetime.datetime, days: int = LEAF_DAYS
) -> Issued:
    """A NOC client certificate for ``name`` with ``role``."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role.value)]
    return _issue(ca, name, names, [ExtendedKeyUsageOID.CLIENT_AUTH], now, days)


def load_tls(ca: Path, cert: Path, key: Path, *, now: datetime.datetime) -> TlsCredentials:
    """Read and check one side's TLS material.

    Args:
        ca: PEM file of the CA certificate(s) that sign the other side's certificates.
        cert: PEM file of this side's certificate (chain: the leaf first).
        key: PEM file of its private key (unencrypted).
        now: the current time, for the validity check.

    Returns:
        The three files' bytes, ready for ``open_grpc_bridge(tls=...)``.

    Raises:
        TlsError: a file cannot be read or is not what it should be; the message names it.
    """
    ca_pem = _read(ca)
    authorities = _authorities(ca, ca_pem)
    cert_pem, key_pem = load_key_pair(cert, key, now=now)
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    if not any(_signed_by(leaf, authority) for authority in authorities):
        raise TlsError(f"{cert}: not signed by the CA in {ca}")
    for authority in authorities:
        _check_validity(ca, authority, now)
    return TlsCredentials(ca=ca_pem, cert=cert_pem, key=key_pem)


def load_key_pair(cert: Path, key: Path, *, now: datetime.datetime) -> tuple[bytes, bytes]:
    """Read a certificate chain (PEM, the leaf first) and its private key (unencrypted PEM).

    Returns:
        The two files' bytes.

    Raises:
        TlsError: a file cannot be read, is not PEM, the key is not the leaf's, or the leaf is
            outside its validity period; the message names the file.
    """
    cert_pem, key_pem = _read(cert), _read(key)
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise TlsError(f"{cert}: not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{key}: not an unencrypted PEM private key ({exc})") from None
    if private.public_key() != leaf.public_key():
        raise TlsError(f"{key}: not the private key of {cert}")
    _check_validity(cert, leaf, now)
    return cert_pem, key_pem


def load_authorities(ca: Path, *, now: datetime.datetime) -> bytes:
    """Read a bundle of CA certificates (PEM) and check each is within its validity period.

    Raises:
        TlsError: the file cannot be read, is not PEM, or holds an expired certificate.
    """
    ca_pem = _read(ca)
    for authority in _authorities(ca, ca_pem):
        _check_validity(ca, authority, now)
    return ca_pem


def load_ca(cert: Path, key: Path) -> Issued:
    """The CA made by ``create_ca`` (to issue more certificates).

    Raises:
        TlsError: a file cannot be read, is not PEM, or the two do not belong together.
    """
    cert_pem, key_pem = _read(cert), _read(key)
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{cert} / {key}: not a PEM certificate and key ({exc})") from None
    if private.public_key() != certificate.public_key():
        raise TlsError(f"{key}: not the private key of {cert}")
    return Issued(cert_pem, key_pem)


# --- internals -------------------------------------------------------------------------------


def _issue(
    ca: Issued,
    common_name: str,
    names: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    now: datetime.datetime,
    days: int,
) -> Issued:
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(_cert_pem(cert), _key_pem(key))


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    if days < 1:
        raise ValueError(f"validity must be at least 1 day, not {days}")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _address_name(address: str) -> x509.GeneralName:
    """An IP address or DNS name as a subjectAltName (a ``:port`` suffix is ignored)."""
    host = address
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if host and all(
        label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels
    ):
        return x509.DNSName(host.lower())
    raise ValueError(f"{address!r} is neither an IP address nor a DNS name")


def _authorities(path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsError(f"{path}: not a PEM certificate") from None


def _check_validity(path: Path, certificate: x509.Certificate, now: datetime.datetime) -> None:
    if now < certificate.not_valid_before_utc:
        raise TlsError(f"{path}: not valid before {certificate.not_valid_before_utc:%Y-%m-%d}")
    if now > certificate.not_valid_after_utc:
        raise TlsError(f"{path}: expired on {certificate.not_valid_after_utc:%Y-%m-%d}")


def _signed_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
