"""``overlay secrets fetch``: a pair member's TLS files from SSM Parameter Store.

``overlay-secrets.service`` runs it at boot, before the node and the HA agent, with the
instance's role (boto3's default credential chain); see ``overlay.secrets``. Exit status: 0
written; 1 the parameters could not be read in time or the files not written (the message
names them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from overlay.secrets import FETCH_WAIT_S, TLS_PARAMETERS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A pair member's TLS files, kept in SSM Parameter Store by `overlay deploy`.",
)


@app.command()
def fetch(
    region: Annotated[str, typer.Option(help="the member's region (its parameters are there)")],
    path: Annotated[str, typer.Option(help="the member's parameters, /overlay/<fleet>/<member>")],
    directory: Annotated[
        Path, typer.Option("--dir", help="where to write them (a tmpfs: keys never on disk)")
    ],
    wait: Annotated[
        float, typer.Option(min=0, help="seconds to keep trying while they cannot be read")
    ] = FETCH_WAIT_S,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="AWS endpoint override"),
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON log lines")] = False,
) -> None:
    """Write PATH's ca, cert and key, decrypted, to DIR as ca.pem, node.pem and node.key.

    The directory is made mode 0700 and each file 0600, replaced whole
    (written beside, then renamed); run as root, both go to the service
    user, overlay (left root's, with a log line, when there is none).
    """
    from overlay.aws import ClientFactory
    from overlay.cli import configure_logging
    from overlay.secrets import SecretsError, log, service_owner, write_private
    from overlay.secrets import fetch as fetch_parameters

    configure_logging(json=log_json, level="INFO")
    ssm = ClientFactory(endpoint_url=endpoint_url).client("ssm", region)
    try:
        files = fetch_parameters(ssm, path.rstrip("/"), wait_s=wait)
    except SecretsError as error:
        typer.echo(f"overlay secrets: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        write_private(directory, files, service_owner())
    except OSError as error:
        typer.echo(f"overlay secrets: cannot write {error.filename}: {error.strerror}", err=True)
        raise typer.Exit(1) from None
    log.info("TLS files written", directory=str(directory), files=list(TLS_PARAMETERS.values()))
