"""Each pair member's TLS files as SecureString parameters, and their rotation.

The operator's CA never leaves the operator's machine: what goes up is read from the directory
``overlay certs`` and ``overlay deploy certs`` write, ``ca.pem`` and each pair's
``<node id>.pem`` and ``.key`` (both members of a pair run the same node, so they share its
certificate; ``ca.key`` is never read). Every member gets its own three parameters in its region,
``/overlay/<fleet>/<member>/ca``, ``cert`` and ``key`` (``overlay.secrets``), tagged like every
resource of the fleet; its ``overlay-secrets.service`` fetches them at boot with the routers'
role. The files are checked as the node would check them (``overlay.tls.load_tls``: PEM, the
key the certificate's, signed by the CA, within validity) and for the pair's node id before any
AWS call, and a bad one is refused naming it.

Apply creates missing parameters and never overwrites one: a running node keeps the files it
fetched, so a parameter whose file changed is only reported, and ``rotate-certs`` writes the new
version and restarts the members to take it, so that what runs is what the parameters hold.
Without the directory, apply and plan report the parameters that are missing (their member
cannot start) and leave the others alone.

Rotation restarts one member at a time through SSM Run Command, pair by pair, the member not
holding the pair's address (the standby) first: until calls are shared within a pair (issue
16) a node's restart drops the calls anchored on it, and the standby anchors none. It waits for
each restart to succeed, and stops at the first that does not, naming the member.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy._walk import DeployError, Walk
from deploy.fleet import Fleet
from deploy.render import Member, members
from overlay.grpc import identity_of
from overlay.ha import ROLES
from overlay.secrets import TLS_PARAMETERS, member_path
from overlay.tls import TlsError, load_tls

#: What SSM's standard tier holds in one parameter (the advanced tier costs money).
STANDARD_TIER_BYTES = 4096
#: Names per GetParameters / DeleteParameters call.
BATCH = 10
#: What a member runs to take new files: the fetch, then the node and the agent, which need it.
RESTART = "systemctl restart overlay-secrets.service overlay.service overlay-ha.service"
#: How long SSM may take to deliver the command, and the command to run: the fetch (up to
#: overlay-secrets.service's start timeout) and the node's start.
DELIVERY_TIMEOUT_S, EXECUTION_TIMEOUT_S = 60, 300
#: How often and how long to wait for one member's restart (delivery and execution, and then
#: some: SSM reports its own timeouts first).
POLL_S = 5.0
RESTART_WAIT_S = float(DELIVERY_TIMEOUT_S + EXECUTION_TIMEOUT_S + 60)
#: Run Command's answers that end an invocation without success.
FAILED = frozenset({"Failed", "Cancelled", "TimedOut"})


@dataclass(frozen=True)
class Secret:
    """One parameter: its region and name, and the file and value it should hold (``None``
    when no directory was given: it is then only looked for)."""

    region: str
    name: str
    source: Path | None = None
    value: str | None = None


def operator_files(directory: Path, member: Member) -> dict[str, Path]:
    """The operator's file each of ``member``'s parameters is read from."""
    stem = directory / member.node_id
    return {
        "ca": directory / "ca.pem",
        "cert": stem.with_suffix(".pem"),
        "key": stem.with_suffix(".key"),
    }


def read(fleet: Fleet, directory: Path | None) -> list[Secret]:
    """Every member's parameters, with their values from ``directory`` when given.

    Raises:
        DeployError: a file is missing, unreadable, not what the node would accept, for
            another node, or too large for a parameter; the message names it.
    """
    now = datetime.datetime.now(datetime.UTC)
    secrets: list[Secret] = []
    for member in members(fleet):
        path = member_path(fleet.name, member.id)
        if directory is None:
            secrets.extend(Secret(member.region.name, f"{path}/{leaf}") for leaf in TLS_PARAMETERS)
            continue
        files = operator_files(directory, member)
        try:
            tls = load_tls(files["ca"], files["cert"], files["key"], now=now)
        except TlsError as error:
            raise DeployError(f"{member.id}: {error}") from None
        node = identity_of(tls.cert).node_id
        if node != member.node_id:
            raise DeployError(f"{files['cert']}: for node {node}, not {member.node_id}")
        for leaf, pem in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
            if len(pem) > STANDARD_TIER_BYTES:
                raise DeployError(
                    f"{files[leaf]}: {len(pem)} bytes, a parameter holds {STANDARD_TIER_BYTES}"
                )
            secrets.append(Secret(member.region.name, f"{path}/{leaf}", files[leaf], pem.decode()))
    return secrets


def converge(walk: Walk, secrets: Sequence[Secret], *, overwrite: bool = False) -> None:
    """Create the missing parameters; one whose file changed is overwritten (a new version)
    with ``overwrite`` (rotation), else reported (module notes)."""
    for region in walk.fleet.regions:
        ssm = walk.client("ssm", region.name)
        wanted = [secret for secret in secrets if secret.region == region.name]
        held = _held(ssm, [secret.name for secret in wanted])
        for secret in wanted:
            value = held.get(secret.name)
            if secret.value is None:
                if value is None:
                    detail = "missing: its member cannot start; apply --certs DIR"
                    walk.change("differs", "parameter", region.name, secret.name, detail)
            elif value is None:
                walk.act(
                    "create",
                    "parameter",
                    region.name,
                    secret.name,
                    functools.partial(_create, walk, ssm, secret),
                    f"SecureString from {secret.source}",
                )
            elif value != secret.value and overwrite:
                walk.act(
                    "update",
                    "parameter",
                    region.name,
                    secret.name,
                    functools.partial(_overwrite, ssm, secret),
                    f"new version from {secret.source}",
                )
            elif value != secret.value:
                detail = f"{secret.source} changed: `overlay deploy rotate-certs` rolls it out"
                walk.change("differs", "parameter", region.name, secret.name, detail)


def destroy(walk: Walk, region: str) -> None:
    ssm = walk.client("ssm", region)
    pages = ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "tag:overlay:fleet", "Values": [walk.fleet.name]}]
    )
    names = [parameter["Name"] for page in pages for parameter in page["Parameters"]]
    for name in names:
        walk.change("delete", "parameter", region, name)
    for batch in _batches(names):
        ssm.delete_parameters(Names=batch)


def restart_order(walk: Walk, rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The ``_pairs.status`` rows of every member in the order rotation restarts them: pair by
    pair, the member not holding the pair's address first (the standby, unless the pair has
    failed over).

    Raises:
        DeployError: a member is not running (nothing has been changed).
    """
    by_name = {row["name"]: row for row in rows}
    order = []
    for region in walk.fleet.regions:
        for az in region.azs:
            pair = []
            for role in ROLES:
                member = Member(region, az, role)
                row = by_name.get(walk.name(member.id))
                if row is None or row["state"] != "running":
                    state = "no instance" if row is None else row["state"]
                    raise DeployError(f"{member.id}: {state}; nothing rotated (each must run)")
                pair.append(row)
            order += sorted(pair, key=lambda row: (bool(row["floating"]), row["role"] == "active"))
    return order


def restart(
    walk: Walk,
    order: Sequence[dict[str, str]],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Restart each member of ``order`` in turn, each once the one before has succeeded.

    Raises:
        DeployError: a restart failed or took too long, naming the member and those left.
    """
    for index, row in enumerate(order):
        try:
            walk.act(
                "update",
                "instance",
                row["region"],
                row["name"],
                functools.partial(_restart, walk, row, sleep),
                "restart: overlay-secrets, overlay, overlay-ha",
            )
        except DeployError as error:
            left = ", ".join(later["name"] for later in order[index + 1 :]) or "none"
            raise DeployError(f"{error}; rotation stopped, not restarted: {left}") from None


def _restart(walk: Walk, row: dict[str, str], sleep: Callable[[float], None]) -> None:
    ssm = walk.client("ssm", row["region"])
    instance = row["instance"]
    command = ssm.send_command(
        InstanceIds=[instance],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": [RESTART], "executionTimeout": [str(EXECUTION_TIMEOUT_S)]},
        TimeoutSeconds=DELIVERY_TIMEOUT_S,
        Comment=f"overlay rotate-certs: {row['name']}",
    )["Command"]["CommandId"]
    waited = 0.0
    while True:
        try:
            invocation = ssm.get_command_invocation(CommandId=command, InstanceId=instance)
        except ssm.exceptions.InvocationDoesNotExist:
            invocation = {"Status": "Pending"}  # not registered yet, right after sending
        status = invocation["Status"]
        if status == "Success":
            return
        if status in FAILED:
            output = invocation.get("StandardErrorContent", "").strip()[-500:]
            raise DeployError(f"{row['name']} ({instance}): restart {status}: {output}")
        if waited >= RESTART_WAIT_S:
            raise DeployError(
                f"{row['name']} ({instance}): restart still {status} after {waited:.0f} s"
            )
        sleep(POLL_S)
        waited += POLL_S


def _held(ssm: Any, names: Sequence[str]) -> dict[str, str]:  # noqa: ANN401
    """The values of those of ``names`` that exist, decrypted."""
    held = {}
    for batch in _batches(names):
        answer = ssm.get_parameters(Names=batch, WithDecryption=True)
        held.update({found["Name"]: found["Value"] for found in answer["Parameters"]})
    return held


def _create(walk: Walk, ssm: Any, secret: Secret) -> None:  # noqa: ANN401
    ssm.put_parameter(
        Name=secret.name,
        Value=secret.value,
        Type="SecureString",
        Tier="Standard",
        Description=f"overlay {walk.fleet.name}: fetched by overlay-secrets.service",
        Tags=walk.tag_list(secret.name),
    )


def _overwrite(ssm: Any, secret: Secret) -> None:  # noqa: ANN401
    # AWS takes no tags with Overwrite: the parameter keeps those it was created with.
    ssm.put_parameter(
        Name=secret.name, Value=secret.value, Type="SecureString", Tier="Standard", Overwrite=True
    )


def _batches(names: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(names), BATCH):
        yield list(names[start : start + BATCH])
