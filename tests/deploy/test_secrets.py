"""The members' TLS files: ``overlay deploy certs``, SecureString parameters made by apply and
removed by destroy, ``overlay secrets fetch`` on the instance, ``rotate-certs``, the role's
permissions; against moto's server, on a one-region fleet of two pairs.

moto runs no command: every Run Command invocation it reports is ``Success`` (even ``false``),
and it has no ``ListCommandInvocations`` (a 500). The order of the restarts is what moto can
show; a failed or endless restart is injected at the client's boundary (a ``before-call``
handler answering ``GetCommandInvocation``).
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from structlog.testing import capture_logs
from typer.testing import CliRunner

from deploy import _iam, _secrets
from deploy._walk import Walk
from deploy.deployer import Change, Deployer, DeployError
from deploy.fleet import Fleet, load_fleet
from deploy.placement import MemoryPlacementGroups
from deploy.render import members
from overlay import secrets
from overlay.aws import ClientFactory
from overlay.cli import app
from overlay.grpc import identity_of
from overlay.tls import load_tls
from tests.deploy.bake import answer, any_wheelhouse, debian_image
from tests.deploy.fleet_certs import fleet_certs
from tests.deploy.test_deployer import stop_builder

pytestmark = pytest.mark.deploy

REGION = "us-west-2"
FLEET = """\
[fleet]
name = "voice"
instance_type = "c5n.xlarge"
dns_zone = "voice.example.com"
ami_name = "overlay-router"
builder_region = "us-west-2"
base_image_id = "{base}"
noc_cidrs = ["198.51.100.0/24"]

[[regions]]
name = "us-west-2"
vpc_cidr = "10.20.0.0/16"
srv_priority = 10
srv_weight = 100

[regions.azs]
us-west-2a = "10.20.1.0/24"
us-west-2b = "10.20.2.0/24"
"""
#: The members of FLEET, pair by pair, the active first.
MEMBERS = ["us-west-2a-active", "us-west-2a-standby", "us-west-2b-active", "us-west-2b-standby"]


@pytest.fixture
def fleet_file(aws: ClientFactory, tmp_path: Path) -> Path:
    base = debian_image(aws, REGION)
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.format(base=base))
    return path


@pytest.fixture
def fleet(fleet_file: Path) -> Fleet:
    return load_fleet(fleet_file)


@pytest.fixture
def certs(fleet_file: Path, tmp_path: Path) -> Path:
    return fleet_certs(tmp_path / "tls", fleet_file)


def deployer(fleet: Fleet, aws: ClientFactory, certs: Path | None) -> Deployer:
    return Deployer(
        fleet,
        aws,
        MemoryPlacementGroups(),
        wheelhouse=any_wheelhouse(),
        wait_for_builder=stop_builder,
        allow_special_use_addresses=True,
        certs=certs,
    )


def parameters(aws: ClientFactory, fleet: str = "voice") -> dict[str, dict[str, Any]]:
    """The fleet's parameters, found by its tag, by name."""
    pages = (
        aws.client("ssm", REGION)
        .get_paginator("describe_parameters")
        .paginate(ParameterFilters=[{"Key": "tag:overlay:fleet", "Values": [fleet]}])
    )
    return {parameter["Name"]: parameter for page in pages for parameter in page["Parameters"]}


def held(aws: ClientFactory, name: str) -> tuple[str, int]:
    """A parameter's value, decrypted, and version."""
    found = aws.client("ssm", REGION).get_parameter(Name=name, WithDecryption=True)["Parameter"]
    return found["Value"], found["Version"]


def of_kind(changes: list[Change], kind: str) -> list[Change]:
    return [change for change in changes if change.kind == kind]


def test_deploy_certs_issues_each_pairs_certificate_once(fleet_file: Path, tmp_path: Path) -> None:
    # us-west-2b brings its own public address: the NOC may dial the pair there.
    fleet_file.write_text(
        fleet_file.read_text().replace(
            'us-west-2b = "10.20.2.0/24"',
            'us-west-2b = { subnet = "10.20.2.0/24", public_ip = "100.64.7.20" }',
        )
    )
    directory = fleet_certs(tmp_path / "tls", fleet_file)
    public = {"us-west-2a": set(), "us-west-2b": {"100.64.7.20"}}
    for az, subnet in (("us-west-2a", "10.20.1"), ("us-west-2b", "10.20.2")):
        pem = (directory / f"{az}.pem").read_bytes()
        assert identity_of(pem).node_id == az
        names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        addresses = {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}
        # The floating address (the other nodes), both members' own (the pair's HA agents),
        # its public one when known (the NOC).
        assert addresses == {f"{subnet}.10", f"{subnet}.11", f"{subnet}.12", *public[az]}
        assert stat.S_IMODE((directory / f"{az}.key").stat().st_mode) == 0o600
    again = CliRunner().invoke(app, ["deploy", "certs", str(directory), "-f", str(fleet_file)])
    assert again.exit_code == 0, again.output
    assert again.output.count("kept ") == 2


def test_apply_uploads_each_members_files_once_and_destroy_removes_them(
    aws: ClientFactory, fleet: Fleet, fleet_file: Path, certs: Path
) -> None:
    ssm = aws.client("ssm", REGION)
    ssm.put_parameter(
        Name="/overlay/other/x/key",
        Value="another fleet's",
        Type="SecureString",
        Tags=[{"Key": "overlay:fleet", "Value": "other"}],
    )
    # Without the files, plan names what is missing: the members could not start.
    missing = of_kind(deployer(fleet, aws, None).plan(), "parameter")
    assert len(missing) == 3 * len(MEMBERS)
    assert {change.action for change in missing} == {"differs"}
    assert all("apply --certs DIR" in change.detail for change in missing)

    applying = deployer(fleet, aws, certs)
    planned = of_kind(applying.plan(), "parameter")
    assert [(c.action, c.name) for c in planned] == [
        ("create", f"/overlay/voice/{member}/{leaf}")
        for member in MEMBERS
        for leaf in ("ca", "cert", "key")
    ]
    assert of_kind(applying.apply(), "parameter") == planned
    made = parameters(aws)
    assert len(made) == 3 * len(MEMBERS)
    assert {(p["Type"], p["Tier"]) for p in made.values()} == {("SecureString", "Standard")}
    for member in members(fleet):
        for leaf, source in _secrets.operator_files(certs, member).items():
            name = f"/overlay/voice/{member.id}/{leaf}"
            assert held(aws, name) == (source.read_text(), 1)
            tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)
            assert {tag["Key"]: tag["Value"] for tag in tags["TagList"]} == {
                "overlay:fleet": "voice",
                "overlay:name": name,
                "Name": name,
            }
    assert of_kind(applying.apply(), "parameter") == []

    # Certificates issued again: apply reports them and leaves them (rotate-certs rolls them
    # out); the CA did not change.
    fleet_certs(certs, fleet_file, force=True)
    changed = of_kind(deployer(fleet, aws, certs).apply(), "parameter")
    assert {change.action for change in changed} == {"differs"}
    leaves = sorted(change.name.rsplit("/", 1)[1] for change in changed)
    assert leaves == 4 * ["cert"] + 4 * ["key"]
    assert all("rotate-certs" in change.detail for change in changed)
    assert held(aws, "/overlay/voice/us-west-2a-active/cert")[1] == 1
    # Without the files, parameters that exist are left alone.
    assert of_kind(deployer(fleet, aws, None).plan(), "parameter") == []

    destroyed = of_kind(applying.destroy(), "parameter")
    assert len(destroyed) == 3 * len(MEMBERS)
    assert parameters(aws) == {}
    assert list(parameters(aws, "other")) == ["/overlay/other/x/key"]


class Recording(ClientFactory):
    """A client factory that notes every client asked of it: none asked, no call made."""

    def __init__(self, endpoint_url: str) -> None:
        super().__init__(endpoint_url=endpoint_url, max_attempts=1)
        self.asked: list[str] = []

    def client(self, service: str, region: str) -> Any:  # noqa: ANN401
        self.asked.append(service)
        return super().client(service, region)


def test_a_missing_or_wrong_file_is_refused_before_any_aws_call(
    aws: ClientFactory, moto_endpoint: str, fleet: Fleet, fleet_file: Path, certs: Path
) -> None:
    recording = Recording(moto_endpoint)
    (certs / "us-west-2b.key").unlink()
    with pytest.raises(DeployError, match=r"us-west-2b-active: .*/us-west-2b\.key: cannot read"):
        Deployer(fleet, recording, MemoryPlacementGroups(), certs=certs)
    # Another node's certificate and key in the pair's place.
    for suffix in (".pem", ".key"):
        (certs / f"us-west-2b{suffix}").write_bytes((certs / f"us-west-2a{suffix}").read_bytes())
    with pytest.raises(DeployError, match=r"us-west-2b\.pem: for node us-west-2a, not us-west-2b"):
        Deployer(fleet, recording, MemoryPlacementGroups(), certs=certs)
    assert recording.asked == []
    (certs / "us-west-2b.pem").write_text("not a certificate\n")
    command = ["deploy", "apply", "-f", str(fleet_file), "--certs", str(certs)]
    # A wheelhouse given: none is built (a minute of pip) before the files are read.
    wheels = ["--wheelhouse", str(any_wheelhouse().path)]
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, [*command, *wheels, "--endpoint-url", moto_endpoint]
    )
    assert result.exit_code == 2, result.output
    assert f"{certs / 'us-west-2b.pem'}: not a PEM certificate" in result.output
    # Nothing was made.
    tagged = [{"Name": "tag:overlay:fleet", "Values": ["voice"]}]
    assert aws.client("ec2", REGION).describe_vpcs(Filters=tagged)["Vpcs"] == []
    assert aws.client("iam", "us-east-1").list_roles()["Roles"] == []
    assert parameters(aws) == {}


def walk(fleet: Fleet, aws: ClientFactory, *, execute: bool = True) -> Walk:
    return Walk(fleet, aws, MemoryPlacementGroups(), execute=execute, report=lambda change: None)


def test_fetch_writes_the_members_files_private(
    aws: ClientFactory, moto_endpoint: str, fleet: Fleet, certs: Path, tmp_path: Path
) -> None:
    _secrets.converge(walk(fleet, aws), _secrets.read(fleet, certs))
    directory = tmp_path / "run" / "overlay" / "tls"
    command = [sys.executable, "-m", "overlay", "secrets", "fetch", "--region", REGION]
    # The command as the unit runs it, with AWS's endpoint from the environment (boto3's).
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_endpoint}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args, "--dir", str(directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    fetched = run("--path", "/overlay/voice/us-west-2b-standby")
    assert fetched.returncode == 0, fetched.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    sources = {"ca.pem": "ca.pem", "node.pem": "us-west-2b.pem", "node.key": "us-west-2b.key"}
    assert sorted(path.name for path in directory.iterdir()) == sorted(sources)
    for name, source in sources.items():
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        assert (directory / name).read_text() == (certs / source).read_text()
    # What the node and the HA agent load them with.
    now = datetime.datetime.now(datetime.UTC)
    load_tls(directory / "ca.pem", directory / "node.pem", directory / "node.key", now=now)
    # A member without parameters: those missing are named.
    missing = run("--path", "/overlay/voice/nobody", "--wait", "0")
    assert missing.returncode == 1
    assert "no parameter /overlay/voice/nobody/ca, /overlay/voice/nobody/cert" in missing.stderr


def test_fetch_waits_for_the_parameters_with_a_doubling_pause(aws: ClientFactory) -> None:
    ssm = aws.client("ssm", REGION)
    for leaf in ("ca", "cert"):
        ssm.put_parameter(Name=f"/overlay/voice/m/{leaf}", Value=leaf, Type="SecureString")
    slept: list[float] = []
    with pytest.raises(
        secrets.SecretsError, match=r"no parameter /overlay/voice/m/key \(after 15 s"
    ):
        secrets.fetch(ssm, "/overlay/voice/m", wait_s=10, sleep=slept.append)
    assert slept == [1.0, 2.0, 4.0, 8.0]

    def appear(pause: float) -> None:
        slept.append(pause)
        ssm.put_parameter(Name="/overlay/voice/m/key", Value="key", Type="SecureString")

    slept.clear()
    fetched = secrets.fetch(ssm, "/overlay/voice/m", sleep=appear)
    assert fetched == {"ca.pem": "ca", "node.pem": "cert", "node.key": "key"}
    assert slept == [1.0]


def test_the_files_are_replaced_whole_and_go_to_the_service_user_as_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert secrets.service_owner() is None  # not root: they stay the caller's

    def no_such_user(name: str) -> Any:  # noqa: ANN401
        raise KeyError(name)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(secrets.pwd, "getpwnam", no_such_user)
    with capture_logs() as logs:
        assert secrets.service_owner() is None
    assert [(log["event"], log["user"]) for log in logs] == [
        ("no such user: the TLS files stay root's", "overlay")
    ]
    me = secrets.pwd.getpwuid(os.getuid())
    monkeypatch.setattr(secrets.pwd, "getpwnam", lambda name: me)
    owner = secrets.service_owner()
    assert owner == (me.pw_uid, me.pw_gid)

    directory = tmp_path / "tls"
    directory.mkdir(mode=0o755)
    for text in ("old", "new"):
        secrets.write_private(directory, {"node.key": text}, owner)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [path.name for path in directory.iterdir()] == ["node.key"]  # no temporary left
    assert (directory / "node.key").read_text() == "new"
    assert stat.S_IMODE((directory / "node.key").stat().st_mode) == 0o600


def record_sends(ssm: Any) -> list[dict[str, Any]]:  # noqa: ANN401
    """Every SendCommand's parameters, as they leave the client."""
    sent: list[dict[str, Any]] = []
    ssm.meta.events.register(
        "provide-client-params.ssm.SendCommand",
        lambda params, **_: sent.append(json.loads(json.dumps(params))),
    )
    return sent


def answer_invocations(ssm: Any, respond: Callable[[str], dict[str, Any] | None]) -> None:  # noqa: ANN401
    """GetCommandInvocation answered by ``respond(instance_id)``, or by moto when it gives
    ``None``: the boundary where a failure is injected."""
    answer(
        ssm,
        "GetCommandInvocation",
        lambda request: respond(json.loads(request["body"])["InstanceId"]),
    )


def test_rotation_writes_new_versions_then_restarts_pair_by_pair_the_standby_first(
    aws: ClientFactory, moto_endpoint: str, fleet: Fleet, fleet_file: Path, certs: Path
) -> None:
    deployer(fleet, aws, certs).apply()
    ec2 = aws.client("ec2", REGION)
    rotating = deployer(fleet, aws, certs)
    names = {row["instance"]: row["name"] for row in rotating.status()}
    instances = {name: instance for instance, name in names.items()}
    # Pair b has failed over: its standby holds the pair's address, and so goes last.
    [address] = ec2.describe_addresses(
        Filters=[{"Name": "tag:overlay:name", "Values": ["voice-us-west-2b"]}]
    )["Addresses"]
    [standby] = ec2.describe_network_interfaces(
        Filters=[{"Name": "tag:overlay:name", "Values": ["voice-us-west-2b-standby"]}]
    )["NetworkInterfaces"]
    ec2.associate_address(
        AllocationId=address["AllocationId"],
        NetworkInterfaceId=standby["NetworkInterfaceId"],
        AllowReassociation=True,
    )
    fleet_certs(certs, fleet_file, force=True)
    rotating = deployer(fleet, aws, certs)
    # A member not running: refused before anything changes.
    ec2.stop_instances(InstanceIds=[instances["voice-us-west-2a-standby"]])
    with pytest.raises(DeployError, match=r"us-west-2a-standby: stopp\w+; nothing rotated"):
        rotating.rotate_certs()
    assert held(aws, "/overlay/voice/us-west-2a-active/cert")[1] == 1
    ec2.start_instances(InstanceIds=[instances["voice-us-west-2a-standby"]])

    sent = record_sends(aws.client("ssm", REGION))
    slept: list[float] = []
    changes = rotating.rotate_certs(sleep=slept.append)
    assert [names[params["InstanceIds"][0]] for params in sent] == [
        "voice-us-west-2a-standby",
        "voice-us-west-2a-active",
        "voice-us-west-2b-active",
        "voice-us-west-2b-standby",
    ]
    for params in sent:
        assert len(params["InstanceIds"]) == 1
        assert params["DocumentName"] == "AWS-RunShellScript"
        assert params["Parameters"]["commands"] == [_secrets.RESTART]
    assert slept == []  # moto reports Success at once
    # What changed is written first, as new versions (the CA did not change); then restarts.
    assert [change.kind for change in changes] == 8 * ["parameter"] + 4 * ["instance"]
    for member in members(fleet):
        cert = f"/overlay/voice/{member.id}/cert"
        assert held(aws, cert) == ((certs / f"{member.node_id}.pem").read_text(), 2)
        assert held(aws, f"/overlay/voice/{member.id}/ca")[1] == 1
        # Still found by its tags.
        assert cert in parameters(aws)

    command = ["deploy", "rotate-certs", "-f", str(fleet_file), "--certs", str(certs), "--yes"]
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, [*command, "--endpoint-url", moto_endpoint]
    )
    assert result.exit_code == 0, result.output
    assert "rotated: 4 member(s) restarted" in result.output


def test_rotation_stops_at_the_first_failed_restart_naming_the_member(
    aws: ClientFactory, fleet: Fleet, certs: Path
) -> None:
    rotating = deployer(fleet, aws, certs)
    rotating.apply()
    names = {row["instance"]: row["name"] for row in rotating.status()}
    [failing] = [instance for instance, name in names.items() if name.endswith("2a-active")]
    ssm = aws.client("ssm", REGION)
    sent = record_sends(ssm)
    failed = {"Status": "Failed", "StandardErrorContent": "Job for overlay.service failed.\n"}
    answer_invocations(ssm, lambda instance: failed if instance == failing else None)
    with pytest.raises(DeployError) as caught:
        rotating.rotate_certs(sleep=lambda pause: None)
    assert str(caught.value) == (
        f"voice-us-west-2a-active ({failing}): restart Failed: Job for overlay.service failed.;"
        " rotation stopped, not restarted: voice-us-west-2b-standby, voice-us-west-2b-active"
    )
    assert [names[params["InstanceIds"][0]] for params in sent] == [
        "voice-us-west-2a-standby",
        "voice-us-west-2a-active",
    ]


def test_a_restart_is_awaited_for_a_bounded_time(aws: ClientFactory, fleet: Fleet) -> None:
    """moto accepts commands for any instance: no fleet is needed to wait on one."""
    ssm = aws.client("ssm", REGION)
    rows = [
        {"region": REGION, "name": name, "instance": instance}
        for name, instance in (
            ("voice-x", "i-0123456789abcdef0"),
            ("voice-y", "i-0fedcba987654321"),
        )
    ]
    # Not registered yet right after sending, then running, then done.
    answers: list[dict[str, Any] | None] = [
        {"Error": {"Code": "InvocationDoesNotExist", "Message": ""}},
        {"Status": "InProgress"},
        None,
    ]
    answer_invocations(ssm, lambda instance: answers.pop(0) if answers else {"Status": "Delayed"})
    slept: list[float] = []
    with pytest.raises(DeployError) as caught:
        _secrets.restart(walk(fleet, aws), rows, sleep=slept.append)
    # voice-x: two polls, then Success from moto; voice-y: Delayed until the bound.
    assert slept[:2] == [_secrets.POLL_S, _secrets.POLL_S]
    assert sum(slept[2:]) == _secrets.RESTART_WAIT_S
    assert str(caught.value) == (
        f"voice-y (i-0fedcba987654321): restart still Delayed after"
        f" {_secrets.RESTART_WAIT_S:.0f} s; rotation stopped, not restarted: none"
    )


def test_the_routers_read_only_their_fleets_parameters_and_take_run_commands(
    aws: ClientFactory, fleet: Fleet
) -> None:
    _iam.converge(walk(fleet, aws))
    iam = aws.client("iam", "us-east-1")
    document = iam.get_role_policy(RoleName="voice-router", PolicyName="voice-router")[
        "PolicyDocument"
    ]
    statements = {statement["Sid"]: statement for statement in document["Statement"]}
    fleets = ["arn:aws:ssm:us-west-2:*:parameter/overlay/voice/*"]
    reads = [
        statement
        for statement in document["Statement"]
        if any(action.startswith("ssm:Get") for action in statement["Action"])
    ]
    assert reads == [
        {
            "Sid": "ReadTheFleetsTlsParameters",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParameters"],
            "Resource": fleets,
        }
    ]
    decrypt = statements["DecryptThemThroughSsm"]
    assert (decrypt["Action"], decrypt["Condition"]) == (
        "kms:Decrypt",
        {
            "StringEquals": {"kms:ViaService": ["ssm.us-west-2.amazonaws.com"]},
            "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": fleets},
        },
    )
    agent = statements["TakeRunCommands"]["Action"]
    assert "ssm:UpdateInstanceInformation" in agent
    assert {action.split(":")[0] for action in agent} == {"ssm", "ec2messages", "ssmmessages"}
    # Inline only: AmazonSSMManagedInstanceCore would read every parameter of the account.
    assert iam.list_attached_role_policies(RoleName="voice-router")["AttachedPolicies"] == []

    # A role made by an earlier version is given this policy, once.
    earlier = {**document, "Statement": document["Statement"][:3]}
    iam.put_role_policy(
        RoleName="voice-router", PolicyName="voice-router", PolicyDocument=json.dumps(earlier)
    )
    planned = walk(fleet, aws, execute=False)
    _iam.converge(planned)
    assert [(c.action, c.kind, c.name) for c in planned.changes] == [
        ("update", "iam-role", "voice-router")
    ]
    _iam.converge(walk(fleet, aws))
    assert (
        iam.get_role_policy(RoleName="voice-router", PolicyName="voice-router")["PolicyDocument"]
        == document
    )
    again = walk(fleet, aws)
    _iam.converge(again)
    assert again.changes == []
