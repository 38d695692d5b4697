"""A pair member's TLS files: from SSM Parameter Store to a directory only the node can read.

The deployer (``deploy._secrets``) keeps each member's CA certificate, node certificate and key as
SecureString parameters under ``/overlay/<fleet>/<member>``: ``ca``, ``cert`` and ``key``.
``overlay secrets fetch``, run by the oneshot ``overlay-secrets.service`` before the node and
the HA agent, reads them back with the instance's role and writes them into systemd's
RuntimeDirectory (a tmpfs): the key is never on the instance's disk, nor in its user data.
"""

from __future__ import annotations

import os
import pwd
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions
import structlog

log = structlog.get_logger("overlay.secrets")

#: Each parameter under a member's path, and the file it is written to.
TLS_PARAMETERS = {"ca": "ca.pem", "cert": "node.pem", "key": "node.key"}
#: Who reads the files: the user the node and the HA agent run as.
SERVICE_USER = "overlay"
#: How long, in total, a fetch sleeps between tries before it gives up: a new instance's role
#: takes a while to reach it (IAM is eventually consistent, the instance profile's credentials
#: appear some seconds after boot).
FETCH_WAIT_S = 120.0
FIRST_RETRY_S, LAST_RETRY_S = 1.0, 16.0

#: Failures another try may cure: access not granted yet (IAM), no credentials yet (the
#: instance profile), no answer yet (the network). Anything else propagates at once.
_TRANSIENT = (
    botocore.exceptions.ClientError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.HTTPClientError,
)


class SecretsError(RuntimeError):
    """The parameters could not be read in time; the message names them or the last error."""


def fleet_path(fleet: str) -> str:
    """Where every parameter of ``fleet`` lives (what its role may read)."""
    return f"/overlay/{fleet}"


def member_path(fleet: str, member_id: str) -> str:
    return f"{fleet_path(fleet)}/{member_id}"


def fetch(
    ssm: Any,  # noqa: ANN401  (boto3 has no types)
    path: str,
    *,
    wait_s: float = FETCH_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """The file name -> contents of the TLS parameters under ``path``, decrypted.

    Tried again, with a doubling pause, while a parameter is missing or AWS refuses, until the
    pauses add up to ``wait_s``.

    Raises:
        SecretsError: still missing or refused then, naming the parameters or the last error.
    """
    names = {f"{path}/{leaf}": file for leaf, file in TLS_PARAMETERS.items()}
    pause, waited = FIRST_RETRY_S, 0.0
    while True:
        try:
            answer = ssm.get_parameters(Names=list(names), WithDecryption=True)
        except _TRANSIENT as error:
            problem = str(error)
        else:
            if not answer["InvalidParameters"]:
                return {names[found["Name"]]: found["Value"] for found in answer["Parameters"]}
            problem = "no parameter " + ", ".join(sorted(answer["InvalidParameters"]))
        if waited >= wait_s:
            raise SecretsError(f"{problem} (after {waited:.0f} s)")
        log.warning("TLS parameters not readable yet", problem=problem, retry_in=pause)
        sleep(pause)
        waited += pause
        pause = min(2 * pause, LAST_RETRY_S)


def service_owner(user: str = SERVICE_USER) -> tuple[int, int] | None:
    """The uid and gid the files go to: ``user``'s when run as root; ``None`` (the caller
    keeps them) otherwise, or when there is no such user, which is logged."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.warning("no such user: the TLS files stay root's", user=user)
        return None
    return entry.pw_uid, entry.pw_gid


def write_private(
    directory: Path, files: Mapping[str, str], owner: tuple[int, int] | None = None
) -> None:
    """Write ``files`` (name -> contents) into ``directory`` (made mode 0700), each mode 0600
    and owned by ``owner`` when given. Each file is written beside its final name and renamed
    over it, so a reader sees the old file or the new one, never half of one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # an existing directory keeps its mode otherwise
    if owner is not None:
        os.chown(directory, *owner)
    for name, text in files.items():
        # mkstemp creates the file 0600, so the key is never readable by others.
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                if owner is not None:
                    os.fchown(out.fileno(), *owner)
            os.replace(temporary, directory / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
