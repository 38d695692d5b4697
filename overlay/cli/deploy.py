"""``overlay deploy render | certs | wheelhouse | plan | apply | rotate-certs | status | destroy``:
a fleet on AWS from ``fleet.toml``.

Exit status: 0 done; 1 AWS refused a call or a step failed (the message names it); 2 the fleet
file, a TLS file or the wheelhouse is wrong (nothing was changed).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from deploy._wheelhouse import Wheelhouse
    from deploy.deployer import Change, Deployer

app = typer.Typer(
    no_args_is_help=True, help="Deploy an overlay fleet on AWS, as described in fleet.toml."
)
console = Console()

FleetOption = Annotated[
    Path, typer.Option("--fleet", "-f", help="the fleet description", show_default=True)
]
CertsOption = Annotated[
    Path | None,
    typer.Option(
        "--certs",
        help="the members' TLS files: ca.pem and each pair's <AZ>.pem and .key (`overlay deploy"
        " certs` writes them); uploaded as SecureString parameters where missing",
    ),
]
WheelhouseOption = Annotated[
    Path | None,
    typer.Option(
        "--wheelhouse",
        help="the wheels the AMI is baked from (`overlay deploy wheelhouse` builds them);"
        " default: built now from this checkout",
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        envvar="AWS_ENDPOINT_URL",
        help="send every AWS call there (a test endpoint); default: AWS itself",
    ),
]


@contextmanager
def _aws_errors() -> Iterator[None]:
    """AWS failures as one line and exit status 1, not a traceback."""
    import botocore.exceptions

    from deploy.deployer import DeployError

    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        console.print("[red]aws: no credentials (environment, profile or instance role)[/]")
        raise typer.Exit(1) from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        console.print(f"[red]aws: {error}[/]")
        raise typer.Exit(1) from None
    except DeployError as error:
        console.print(f"[red]overlay deploy: {error}[/]")
        raise typer.Exit(1) from None


def _deployer(
    fleet_path: Path,
    endpoint_url: str | None,
    report: Callable[[Change], None],
    certs: Path | None = None,
    wheelhouse: Callable[[], Wheelhouse] | None = None,
) -> Deployer:
    from deploy.deployer import Deployer, DeployError
    from deploy.fleet import check_instance_type, load_fleet
    from deploy.placement import Ec2PlacementGroups
    from overlay.aws import ClientFactory
    from overlay.config import ConfigError

    aws = ClientFactory(endpoint_url=endpoint_url)
    try:
        fleet = load_fleet(fleet_path)
        # The wheelhouse and the TLS files are checked first: a bad one is refused before any
        # AWS call.
        house = None if wheelhouse is None else wheelhouse()
        deployer = Deployer(
            fleet, aws, Ec2PlacementGroups(aws), wheelhouse=house, report=report, certs=certs
        )
        with _aws_errors():
            check_instance_type(fleet, aws, str(fleet_path))
    except (ConfigError, DeployError) as error:
        console.print(f"[red]overlay deploy: {error}[/]")
        raise typer.Exit(2) from None
    return deployer


def _wheelhouse(given: Path | None, scratch: Path) -> Wheelhouse:
    """``given``, checked, or one built now into ``scratch``; no AWS call either way."""
    from deploy._walk import DeployError
    from deploy._wheelhouse import build_wheelhouse, load_wheelhouse, project_dir

    if given is not None:
        return load_wheelhouse(given)
    project = project_dir()
    if project is None:
        raise DeployError("no checkout here to build the wheelhouse from: pass --wheelhouse")
    with console.status(f"building the wheelhouse (pip wheel {project})…"):
        return build_wheelhouse(project, scratch)


@app.command()
def render(
    fleet: FleetOption = Path("fleet.toml"),
    member: Annotated[
        str | None,
        typer.Option("--member", help='one pair member, "<AZ>-active" or "<AZ>-standby"'),
    ] = None,
    addresses: Annotated[
        bool,
        typer.Option(
            "--addresses",
            help="read the pairs' Elastic IPs from the account (the nodes advertise them);"
            " without it no AWS API is called",
        ),
    ] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Print the files every pair member boots with (node.toml, ha.toml, units)."""
    from deploy._pairs import public_ips
    from deploy.fleet import load_fleet
    from deploy.render import member_files, members
    from overlay.aws import ClientFactory
    from overlay.config import ConfigError

    try:
        loaded = load_fleet(fleet)
        chosen = [m for m in members(loaded) if member is None or m.id == member]
        if not chosen:
            known = ", ".join(m.id for m in members(loaded))
            typer.echo(f"overlay deploy: no member {member!r} (members: {known})", err=True)
            raise typer.Exit(2)
        public: dict[str, str] = {}
        if addresses:
            with _aws_errors():
                public = public_ips(ClientFactory(endpoint_url=endpoint_url), loaded)
        for each in chosen:
            for path, text in member_files(loaded, each, public.get(each.az.name)).items():
                typer.echo(f"# ==> {each.id}: {path} <==")
                typer.echo(text, nl=False)
    except ConfigError as error:
        typer.echo(f"overlay deploy: {error}", err=True)
        raise typer.Exit(2) from None


def _print_change(change: Change) -> None:
    colour = {"create": "green", "update": "yellow", "delete": "red", "differs": "magenta"}[
        change.action
    ]
    console.print(f"[{colour}]{change}[/]", highlight=False)


def _actions(changes: list[Change]) -> list[Change]:
    """What is (to be) done; "differs" lines were printed as they came and change nothing."""
    return [change for change in changes if change.action != "differs"]


@app.command("wheelhouse")
def wheelhouse_command(
    directory: Annotated[Path, typer.Argument(help="where the wheels go (made if missing)")],
) -> None:
    """Build the wheels the AMI is baked from, for plan and apply --wheelhouse: pip wheel of
    this checkout and its dependencies, for Debian 12's Python (3.11, which must run this).
    No AWS call."""
    from deploy._walk import DeployError

    try:
        house = _wheelhouse(None, directory)
    except DeployError as error:
        console.print(f"[red]overlay deploy: {error}[/]")
        raise typer.Exit(2) from None
    console.print(f"overlay {house.version}: {len(house.wheels)} wheels in {directory}")


@app.command()
def plan(
    fleet: FleetOption = Path("fleet.toml"),
    certs: CertsOption = None,
    wheelhouse: WheelhouseOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show what apply would create or change; changes nothing."""
    changes = _converge(
        fleet, certs, wheelhouse, endpoint_url, "reading the account…", lambda d: d.plan()
    )
    console.print(f"{len(changes)} change(s)" if changes else "no changes: the fleet is in place")


@app.command()
def apply(
    fleet: FleetOption = Path("fleet.toml"),
    certs: CertsOption = None,
    wheelhouse: WheelhouseOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Create what is missing (idempotent: a second apply changes nothing).

    With --certs, the members' TLS parameters too; one whose file changed is
    reported and left: rotate-certs writes it and restarts the members.
    """
    changes = _converge(fleet, certs, wheelhouse, endpoint_url, "applying…", lambda d: d.apply())
    console.print(f"{len(changes)} change(s) applied" if changes else "no changes")


def _converge(
    fleet: Path,
    certs: Path | None,
    wheelhouse: Path | None,
    endpoint_url: str | None,
    status: str,
    converge: Callable[[Deployer], list[Change]],
) -> list[Change]:
    """``converge`` (a plan or an apply) with a wheelhouse built in a scratch directory unless
    one is given; the changes planned or made."""
    with tempfile.TemporaryDirectory(prefix="overlay-wheelhouse-") as scratch:
        deployer = _deployer(
            fleet,
            endpoint_url,
            _print_change,
            certs,
            lambda: _wheelhouse(wheelhouse, Path(scratch)),
        )
        with _aws_errors(), console.status(status):
            return _actions(converge(deployer))


@app.command("rotate-certs")
def rotate_certs(
    certs: Annotated[
        Path, typer.Option("--certs", help="the members' TLS files, as for apply --certs")
    ],
    fleet: FleetOption = Path("fleet.toml"),
    endpoint_url: EndpointOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Write the TLS files that changed as new parameter versions, then restart every member to
    take them: one at a time, through SSM Run Command, each once the one before succeeded.

    Until calls are shared within a pair (issue 16), restarting a member's node
    drops the calls anchored on it: so each pair's standby (the member without
    the pair's address) goes first, then its active. The first restart that
    fails stops the rotation, naming the member; run it again once fixed
    (every member is restarted again).
    """
    deployer = _deployer(fleet, endpoint_url, _print_change, certs)
    if not yes:
        typer.confirm(
            f"Restart every member of fleet {deployer.fleet.name!r}, dropping the active"
            " members' calls?",
            abort=True,
        )
    with _aws_errors(), console.status("rotating…"):
        changes = deployer.rotate_certs()
    restarted = sum(1 for change in changes if change.kind == "instance")
    console.print(f"rotated: {restarted} member(s) restarted")


@app.command()
def certs(
    directory: Annotated[
        Path, typer.Argument(help="the CA's directory (`overlay certs init`); written there")
    ],
    fleet: FleetOption = Path("fleet.toml"),
    days: Annotated[int, typer.Option(min=1, help="validity in days")] = 397,
    force: Annotated[bool, typer.Option("--force", help="issue existing ones again")] = False,
) -> None:
    """Issue each pair's node certificate, <AZ>.pem and .key, with the CA in DIRECTORY.

    For the pair's node id and the addresses its gRPC server is dialled at:
    the floating one (by the other nodes), both members' own (by the pair's
    HA agents) and the pair's public_ip when fleet.toml gives one (by the NOC,
    through the Elastic IP). Existing ones are kept without --force. The CA's key is only
    read here: apply and rotate-certs upload ca.pem and the node files, never
    ca.key. No AWS call.
    """
    from deploy.fleet import load_fleet
    from deploy.render import members
    from overlay.cli.certs import open_ca, write_node
    from overlay.config import ConfigError
    from overlay.ha import ROLES

    try:
        loaded = load_fleet(fleet)
    except ConfigError as error:
        typer.echo(f"overlay deploy: {error}", err=True)
        raise typer.Exit(2) from None
    ca = open_ca(directory)
    pairs = {member.node_id: member for member in members(loaded)}
    for node_id, member in pairs.items():
        if (directory / f"{node_id}.pem").exists() and not force:
            typer.echo(f"kept {directory / node_id}.pem")
            continue
        public = [] if member.az.public_ip is None else [member.az.public_ip]
        addresses = [member.floating_ip, *(member.own_ip(role) for role in ROLES), *public]
        write_node(ca, directory, node_id, addresses, days=days, force=force)


@app.command()
def status(fleet: FleetOption = Path("fleet.toml"), endpoint_url: EndpointOption = None) -> None:
    """Every pair member: region, AZ, role, state, and which one holds the floating address."""
    deployer = _deployer(fleet, endpoint_url, _print_change)
    with _aws_errors():
        rows = deployer.status()
    table = Table(title=f"fleet {deployer.fleet.name}")
    for column in ("region", "az", "name", "role", "instance", "state", "private_ip", "floating"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table if rows else "nothing deployed")


@app.command()
def destroy(
    fleet: FleetOption = Path("fleet.toml"),
    endpoint_url: EndpointOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Delete every resource tagged with the fleet (what apply created, nothing else)."""
    deployer = _deployer(fleet, endpoint_url, _print_change)
    if not yes:
        typer.confirm(f"Delete every resource of fleet {deployer.fleet.name!r}?", abort=True)
    with _aws_errors(), console.status("destroying…"):
        changes = deployer.destroy()
    console.print(f"{len(changes)} resource(s) deleted" if changes else "nothing to delete")
