"""Lab pairs: every node of the lab as an active/standby pair (``open_lab(pairs=True)``,
``overlay lab --pairs``).

A pair is what a fleet runs in one AZ, here on one machine: two member processes with the
node's id, address and certificate (``topology.PairMember``), each with its own HA agent
(``overlay ha``, a process of its own). The agents arbitrate through the EC2 API as they do on
AWS, against moto's server (``open_ec2``): per pair a VPC and a subnet, an ENI per member, the
pair's floating secondary private IP on the first member's ENI and an Elastic IP associated
with it, all tagged as the deployer tags them, so that each agent finds its pair by tags
(``overlay.ha.find_pair``) and moves the address with the very calls it makes on AWS.

On loopback every 127/8 address is local to both members, so the kernel cannot say which one
holds the node's address, and two processes cannot both bind it. The agents therefore keep a
hold file in place of the interface (``[ha] hold_file``), and the nodes read it (``[pair] hold =
"file"``): whoever the file names holds the address, binds it in one sweep and serves it. The
EC2 private IP is the pair's address in moto's VPC; the loopback address stands for it.

moto is a test dependency: it is looked for, and its server started, only when pairs are asked
for. Everything is stopped by PID when the lab exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import trio

from overlay.aws import ClientFactory
from overlay.ha import ROLES, read_holder
from overlay.lab._process import stop_process
from overlay.lab.node_process import (
    READY_TIMEOUT_S,
    NodeProcess,
    open_node,
    wait_answers_options,
)
from overlay.lab.sipp import free_port
from overlay.lab.topology import SIP_PORT, LabNode, PairMember

#: The fleet the lab's pairs are tagged with (``overlay:fleet``), as fleet.toml names one.
FLEET = "lab"
MOTO_START_TIMEOUT_S = 30.0
POLL_S = 0.02
#: moto takes any credentials; these keep boto3 from looking for real ones.
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
_NO_AWS_FILES = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class LabEc2:
    """moto's server: its endpoint, and clients on it for the lab's own calls."""

    endpoint_url: str
    aws: ClientFactory


@contextlib.asynccontextmanager
async def open_ec2(host: str, *, directory: Path) -> AsyncIterator[LabEc2]:
    """moto's server on a free port of ``host``, its log in ``directory/moto.log``.

    Raises:
        RuntimeError: moto is not installed, or its server did not serve within
            MOTO_START_TIMEOUT_S (the message carries its log).
    """
    if importlib.util.find_spec("moto") is None:
        raise RuntimeError(
            "lab pairs need moto's server as their EC2 API; it is a test dependency: "
            "pip install 'moto[server]' (or pip install -e '.[dev]')"
        )
    port = free_port(host)
    log_path = directory / "moto.log"
    with log_path.open("ab") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # No canned AMIs: the lab makes none, and moto starts faster without.
            env={**os.environ, **_CREDENTIALS, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"},
        )
    try:
        try:
            with trio.fail_after(MOTO_START_TIMEOUT_S):
                await _wait_listening(host, port, process)
        except (TimeoutError, OSError):
            raise RuntimeError(f"moto's server did not serve; log:\n{_tail(log_path)}") from None
        endpoint_url = f"http://{host}:{port}"
        session = boto3.session.Session(
            aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        aws = ClientFactory(endpoint_url=endpoint_url, max_attempts=1, session=session)
        yield LabEc2(endpoint_url, aws)
    finally:
        await stop_process(process)


async def _wait_listening(host: str, port: int, process: trio.Process) -> None:
    """Until something accepts TCP at host:port (polled: a server says nothing when it listens).

    Raises:
        OSError: ``process`` exited first.
    """
    while True:
        if process.poll() is not None:
            raise OSError(f"exited with {process.returncode}")
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            await trio.sleep(POLL_S)
            continue
        await stream.aclose()
        return


def make_pair(ec2: Any, node: LabNode, index: int) -> str:  # noqa: ANN401 (a boto3 client)
    """Make ``node``'s pair in EC2 as the deployer would, the address on its first member's
    ENI (role ``active``), in the ``index``-th VPC; returns the floating private IP."""
    net = f"10.{index + 1}"
    vpc = ec2.create_vpc(CidrBlock=f"{net}.0.0/16")["Vpc"]["VpcId"]
    zone = node.az or f"{node.region}a"
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{net}.1.0/24", AvailabilityZone=zone)
    enis = {}
    for host, role in enumerate(ROLES, start=11):
        created = ec2.create_network_interface(
            SubnetId=subnet["Subnet"]["SubnetId"],
            PrivateIpAddresses=[{"PrivateIpAddress": f"{net}.1.{host}", "Primary": True}],
            TagSpecifications=_tagged("network-interface", f"{FLEET}-{node.node_id}-{role}"),
        )
        enis[role] = created["NetworkInterface"]["NetworkInterfaceId"]
    floating = f"{net}.1.10"
    active = enis[ROLES[0]]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=active, PrivateIpAddresses=[floating])
    allocation = ec2.allocate_address(
        Domain="vpc", TagSpecifications=_tagged("elastic-ip", f"{FLEET}-{node.node_id}")
    )["AllocationId"]
    ec2.associate_address(
        AllocationId=allocation, NetworkInterfaceId=active, PrivateIpAddress=floating
    )
    return floating


def _tagged(resource: str, name: str) -> list[dict[str, Any]]:
    tags = [{"Key": "overlay:fleet", "Value": FLEET}, {"Key": "overlay:name", "Value": name}]
    return [{"ResourceType": resource, "Tags": tags}]


def ha_config(
    member: PairMember,
    peer: PairMember,
    node: LabNode,
    *,
    role: str,
    floating_ip: str,
    tls: Sequence[str],
) -> str:
    """``ha.toml`` of ``member``'s agent: its pair by the lab's tags, its peer's node at the
    peer's own address, the hold file in place of an interface, default timings (detection
    in 3 heartbeats of 0.5 s, as in a fleet); ``tls``: the node's ``[grpc]`` TLS keys."""
    return "\n".join(
        [
            "[ha]",
            f'region = "{node.region}"',
            f'fleet = "{FLEET}"',
            f'pair = "{node.node_id}"',
            f'role = "{role}"',
            f'floating_private_ip = "{floating_ip}"',
            f'peer_grpc = "{peer.grpc_target}"',
            f'hold_file = "{member.hold_file}"',
            f'member = "{member.name}"',
            *tls,
            "",
        ]
    )


@dataclass
class AgentProcess:
    """A running HA agent: its process and where its log (JSON lines) goes."""

    process: trio.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def open_agent(
    config_text: str, *, endpoint_url: str, workdir: Path
) -> AsyncIterator[AgentProcess]:
    """Start ``overlay ha`` with ``config_text`` (its ha.toml) against ``endpoint_url``; its
    config and log (``agent.log``) go in ``workdir``. Stopped by PID on exit."""
    config = workdir / "ha.toml"
    config.write_text(config_text)
    log_path = workdir / "agent.log"
    with log_path.open("ab") as log_file:
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "overlay", "ha", "--config", str(config)),
                *("--endpoint-url", endpoint_url, "--log-json"),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **_CREDENTIALS, **_NO_AWS_FILES},
        )
    try:
        yield AgentProcess(process, log_path)
    finally:
        await stop_process(process)


@dataclass
class LabPair:
    """A running lab pair: node ``node_id``'s two members, their nodes and their agents."""

    node_id: str
    hold_file: str
    members: dict[str, PairMember]  # by name; the first held the address at the start
    nodes: dict[str, NodeProcess]
    agents: dict[str, AgentProcess]
    dead: set[str] = field(default_factory=set)  # members killed

    def holder(self) -> str | None:
        """The member that holds the node's address now (its hold file), if any."""
        return read_holder(self.hold_file)

    async def wait_holder(self, accept: Callable[[str], bool]) -> str:
        """Until the address is held by a member ``accept`` takes; returns it. Polled: an agent,
        another process, writes the file."""
        while True:
            holder = self.holder()
            if holder is not None and accept(holder):
                return holder
            await trio.sleep(POLL_S)

    def kill(self, member: str) -> None:
        """SIGKILL ``member``'s node and agent at once, as its machine would die."""
        self.nodes[member].kill()
        self.agents[member].process.kill()
        self.dead.add(member)

    def logs(self) -> str:
        """Every member's node and agent log, for a failure's message."""
        return "\n".join(
            f"--- {name} {what}\n{text[-4000:]}"
            for name in self.members
            for what, text in (("node", self.nodes[name].log()), ("agent", self.agents[name].log()))
        )


@contextlib.asynccontextmanager
async def open_pair(
    node: LabNode,
    members: tuple[PairMember, PairMember],
    *,
    configs: Mapping[str, str],
    tls: Sequence[str],
    ec2: LabEc2,
    index: int,
    directory: Path,
    member_ready: Callable[[PairMember], Awaitable[None]],
) -> AsyncIterator[LabPair]:
    """Run ``node`` as a pair: its EC2 resources (``make_pair``, the ``index``-th), both
    members' nodes (``configs``: node.toml by member name; ready when ``member_ready`` says),
    then both agents (``tls``: the node's TLS keys for their heartbeats); yields once the first
    member holds the address and answers SIP at it. Each member's files and logs go in
    ``directory/<member>``.

    Raises:
        RuntimeError: a member's node did not start, or the pair did not come up within
            READY_TIMEOUT_S (the message carries the logs).
    """
    floating_ip = await trio.to_thread.run_sync(
        make_pair, ec2.aws.client("ec2", node.region), node, index
    )
    first, second = members
    async with contextlib.AsyncExitStack() as stack:
        nodes: dict[str, NodeProcess] = {}
        async with trio.open_nursery() as nursery:

            async def start(member: PairMember) -> None:
                workdir = directory / member.name
                workdir.mkdir(parents=True, exist_ok=True)
                nodes[member.name] = await stack.enter_async_context(
                    open_node(
                        configs[member.name],
                        host=node.host,
                        port=SIP_PORT,
                        workdir=workdir,
                        ready=lambda: member_ready(member),
                    )
                )

            for member in members:
                nursery.start_soon(start, member)
        agents: dict[str, AgentProcess] = {}
        for member, peer, role in ((first, second, ROLES[0]), (second, first, ROLES[1])):
            text = ha_config(member, peer, node, role=role, floating_ip=floating_ip, tls=tls)
            agents[member.name] = await stack.enter_async_context(
                open_agent(text, endpoint_url=ec2.endpoint_url, workdir=directory / member.name)
            )
        pair = LabPair(node.node_id, first.hold_file, {m.name: m for m in members}, nodes, agents)
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                await pair.wait_holder(lambda holder: holder == first.name)
                await wait_answers_options(node.host, SIP_PORT, within=READY_TIMEOUT_S)
        except trio.TooSlowError:
            logs = pair.logs()
            raise RuntimeError(f"pair {node.node_id} did not come up; logs:\n{logs}") from None
        yield pair


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_text(errors="replace")[-size:]
