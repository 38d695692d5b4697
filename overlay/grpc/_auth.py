"""Who may call what: identities from client certificates, and the roles of the gRPC methods.

Every gRPC client of a node presents a certificate signed by the overlay's CA (mutual TLS, see
``_certs``); the handshake has verified it before any of this runs. What the certificate says:

* ``urn:overlay:role:viewer`` / ``urn:overlay:role:operator`` (URI subjectAltNames): a NOC
  client's roles. A viewer may call the Control RPCs that read; an operator may also call those
  that change the node (``OPERATOR_METHODS``).
* ``urn:overlay:node:<node_id>``: an overlay node. A node may open a link-state flooding stream
  to a peer that lists it in ``[[peers]]``, as itself (the stream's Hello must name the node
  of the certificate, which ``overlay.shell.mesh`` checks), and call nothing else; except that
  the two members of a pair, which share one node id and so one certificate's identity, may
  follow each other's call state (``PairState``, ``overlay.shell.replication``).
* The common name: who it is, for logs and for the ``by`` of events (``"alice"``).

A node run with ``insecure = true`` has no TLS: nobody is authenticated and every caller may do
everything (its peer address stands for its name).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Collection
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from ._identities import Caller
from ._status import RpcError, StatusCode

ROLE_URI_PREFIX = "urn:overlay:role:"
NODE_URI_PREFIX = "urn:overlay:node:"

#: Control RPCs that change the node: they need the operator role.
OPERATOR_METHODS = frozenset(
    {
        "Drain",
        "Undrain",
        "SetLinkOverride",
        "ClearLinkOverride",
        "InjectFault",
        "ClearFaults",
        "Unblock",
    }
)


class Role(enum.Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified client certificate says about its holder.

    Attributes:
        subject: the certificate's common name ("" when it has none).
        roles: NOC roles from ``urn:overlay:role:<role>`` SANs (unknown role names ignored).
        node_id: the node of a ``urn:overlay:node:<node_id>`` SAN, or ``None``.
    """

    subject: str
    roles: frozenset[Role]
    node_id: str | None

    def describe(self) -> str:
        """For error messages: ``"alice (viewer)"``, ``"node usw2"``."""
        parts = [role.value for role in sorted(self.roles, key=lambda role: role.value)]
        if self.node_id is not None:
            parts.append(f"node {self.node_id}")
        name = self.subject or "certificate without a common name"
        return f"{name} ({', '.join(parts) or 'no role'})"


@functools.lru_cache(maxsize=256)
def identity_of(certificate: bytes) -> Identity:
    """The identity in a PEM certificate (one the TLS handshake has already verified).

    Raises:
        ValueError: the bytes are not a PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(certificate)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else ""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    roles = set()
    node_id = None
    for uri in uris:
        if uri.startswith(ROLE_URI_PREFIX):
            try:
                roles.add(Role(uri.removeprefix(ROLE_URI_PREFIX)))
            except ValueError:
                continue  # a role this version does not know grants nothing
        elif uri.startswith(NODE_URI_PREFIX) and node_id is None:
            node_id = uri.removeprefix(NODE_URI_PREFIX)
    return Identity(subject, frozenset(roles), node_id)


class AccessPolicy:
    """The ``authorize`` checks of a node's gRPC services.

    Args:
        node_id: this node (for messages).
        peers: the node ids of its ``[[peers]]``: the nodes that may flood link state to it.
        secure: whether the server runs mutual TLS; without it every caller is allowed.
    """

    def __init__(self, node_id: str, peers: Collection[str], *, secure: bool) -> None:
        self._node_id = node_id
        self._peers = frozenset(peers)
        self.secure = secure

    def who(self, caller: Caller | None) -> str:
        """A caller's name for logs and events: its certificate's subject, else its address."""
        if caller is None:
            return ""
        if caller.certificate is None:
            return caller.peer
        return identity_of(caller.certificate).subject or caller.peer

    def authorize_control(self, method: str, caller: Caller) -> None:
        """The ``authorize`` of overlay.v1.Control: viewer to read, operator to change.

        Raises:
            RpcError: UNAUTHENTICATED without a certificate, PERMISSION_DENIED without the role.
        """
        identity = self._identity(caller)
        if identity is None:
            return
        needed = Role.OPERATOR if method in OPERATOR_METHODS else Role.VIEWER
        held = identity.roles
        if Role.OPERATOR in held or needed in held:
            return
        if identity.node_id is not None and not held:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"{identity.describe()} is a node certificate: nodes may only flood link state",
            )
        raise RpcError(
            StatusCode.PERMISSION_DENIED,
            f"{method} needs the {needed.value} role; {identity.describe()} does not have it",
        )

    def authorize_flood(self, method: str, caller: Caller) -> None:
        """The ``authorize`` of overlay.v1.LinkState: only the certificates of our peers.

        Raises:
            RpcError: UNAUTHENTICATED without a certificate, PERMISSION_DENIED for any other.
        """
        identity = self._identity(caller)
        if identity is None:
            return
        if identity.node_id is None:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"only overlay nodes may flood link state; {identity.describe()} names no node",
            )
        if identity.node_id not in self._peers:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"node {identity.node_id} is not a peer of {self._node_id}",
            )

    def authorize_pair(self, method: str, caller: Caller) -> None:
        """The ``authorize`` of overlay.v1.PairState: only a certificate naming this very node,
        which the other member of its pair holds too (a peer's would read the pair's calls).

        Raises:
            RpcError: UNAUTHENTICATED without a certificate, PERMISSION_DENIED for any other.
        """
        identity = self._identity(caller)
        if identity is None or identity.node_id == self._node_id:
            return
        raise RpcError(
            StatusCode.PERMISSION_DENIED,
            f"only the other member of {self._node_id}'s pair may follow its state; "
            f"{identity.describe()} is not",
        )

    def _identity(self, caller: Caller) -> Identity | None:
        """The caller's identity, or ``None`` when the server does not authenticate."""
        if not self.secure:
            return None
        if caller.certificate is None:
            raise RpcError(StatusCode.UNAUTHENTICATED, "a client certificate is required")
        return identity_of(caller.certificate)


def node_of(caller: Caller | None) -> str | None:
    """The node a caller's certificate names (``None``: no TLS, or not a node certificate)."""
    if caller is None or caller.certificate is None:
        return None
    return identity_of(caller.certificate).node_id
