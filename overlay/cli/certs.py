"""``overlay certs``: a CA and the certificates of a lab or a small fleet's mutual TLS.

Everything goes in one directory: ``ca.pem`` / ``ca.key`` (``init``), then ``<node_id>.pem`` /
``.key`` per node (``node``) and ``<name>.pem`` / ``.key`` per NOC client (``client``). Keys are
written readable by their owner only; nothing is overwritten without ``--force``. Copy to each
node its own certificate and key and ``ca.pem`` (never ``ca.key``), and point ``[grpc]`` ``ca``,
``cert`` and ``key`` at them.
"""

from __future__ import annotations

import datetime
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from overlay.grpc import Role, identity_of
from overlay.tls import Issued, TlsError, create_ca, issue_client, issue_node, load_ca

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Certificates for mutual TLS: a CA, node certificates, NOC client certificates.",
)

_NODE_ID = re.compile(r"[a-z0-9-]{1,63}")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Directory = Annotated[Path, typer.Argument(help="directory of the CA and the certificates")]
Days = Annotated[int, typer.Option(min=1, help="validity in days")]
Force = Annotated[bool, typer.Option("--force", help="overwrite existing files")]


class RoleName(StrEnum):
    viewer = "viewer"
    operator = "operator"


@app.command()
def init(
    directory: Directory,
    name: Annotated[str, typer.Option(help="the CA's common name")] = "overlay CA",
    days: Days = 3650,
    force: Force = False,
) -> None:
    """Create the CA (ca.pem and ca.key) in DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_ca(name, now=_now(), days=days)
    _write(ca, directory, "ca", force)
    typer.echo(f"CA written to {directory / 'ca.pem'} (keep {directory / 'ca.key'} private)")


@app.command()
def node(
    directory: Directory,
    node_id: Annotated[str, typer.Argument(help="the node's node_id")],
    address: Annotated[
        list[str],
        typer.Option(
            "--address",
            "-a",
            help="IP address or DNS name its gRPC server is dialled at ([grpc] listen of the "
            "node, [[peers]] grpc of the others); repeat for several",
        ),
    ],
    days: Days = 397,
    force: Force = False,
) -> None:
    """Issue NODE_ID's certificate: it serves gRPC and floods link state as that node."""
    if not _NODE_ID.fullmatch(node_id):
        _usage(f"node id {node_id!r} must match [a-z0-9-]{{1,63}}")
    write_node(open_ca(directory), directory, node_id, address, days=days, force=force)


def write_node(
    ca: Issued, directory: Path, node_id: str, addresses: list[str], *, days: int, force: bool
) -> None:
    """Issue ``node_id``'s certificate with ``ca`` into ``directory`` (``node``; also
    ``overlay deploy certs``): exits 2 on a bad address, 1 when a file exists or cannot be
    written."""
    try:
        issued = issue_node(ca, node_id, addresses, now=_now(), days=days)
    except ValueError as exc:
        _usage(str(exc))
    _write(issued, directory, node_id, force)
    typer.echo(f"node certificate written to {directory / node_id}.pem and .key")


@app.command()
def client(
    directory: Directory,
    name: Annotated[str, typer.Argument(help="who holds it (the certificate's common name)")],
    role: Annotated[RoleName, typer.Option(help="viewer reads; operator also changes nodes")],
    days: Days = 397,
    force: Force = False,
) -> None:
    """Issue a NOC client certificate for NAME with a role, for overlayctl and other tools."""
    if not _CLIENT_NAME.fullmatch(name):
        _usage(f"name {name!r}: letters, digits, '.', '_' and '-' only, at most 64")
    ca = open_ca(directory)
    issued = issue_client(ca, name, Role(role.value), now=_now(), days=days)
    _write(issued, directory, name, force)
    typer.echo(f"{role.value} certificate written to {directory / name}.pem and .key")


@app.command()
def show(cert: Annotated[Path, typer.Argument(help="a certificate (PEM)")]) -> None:
    """What a certificate says: who, roles or node, validity."""
    try:
        identity = identity_of(cert.read_bytes())
    except (OSError, ValueError) as exc:
        typer.echo(f"overlay certs: {cert}: {exc}", err=True)
        raise typer.Exit(1) from None
    roles = ", ".join(sorted(role.value for role in identity.roles)) or "-"
    typer.echo(f"subject: {identity.subject}\nroles:   {roles}\nnode:    {identity.node_id or '-'}")


def open_ca(directory: Path) -> Issued:
    """The CA in ``directory``; exits 1 when there is none."""
    try:
        return load_ca(directory / "ca.pem", directory / "ca.key")
    except TlsError as exc:
        typer.echo(f"overlay certs: {exc} (run `overlay certs init {directory}` first)", err=True)
        raise typer.Exit(1) from None


def _write(issued: Issued, directory: Path, stem: str, force: bool) -> None:
    try:
        issued.write(directory / f"{stem}.pem", directory / f"{stem}.key", overwrite=force)
    except FileExistsError as exc:
        typer.echo(f"overlay certs: {exc.filename} exists (--force to overwrite)", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"overlay certs: cannot write {exc.filename}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


def _usage(message: str) -> NoReturn:
    typer.echo(f"overlay certs: {message}", err=True)
    raise typer.Exit(2)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
