"""A local EC2 in network namespaces, for a fleet in a box (issue 15).

Once ``overlay deploy apply`` has made a fleet in moto's AWS server, the fabric mirrors moto's
state into Linux network namespaces and boots each instance from its own user data. Everything
it makes is named with a per-run prefix (``Fabric.prefix``) and removed by ``close``:
namespaces ``<prefix>-aws``, ``<prefix>-inet``, ``<prefix>-<vpc id>``, ``<prefix>-<instance
id>``, interfaces ``<prefix>...`` (but each instance's own ``ens5``), the run directory
``<tmp>/<prefix>-...``.

The namespaces, as AWS is made:

``aws``
    moto's server at ``endpoint_url``, over the one link to the root namespace, so that the
    test reaches it. It does not forward: nothing else crosses into the root namespace.
``inet``
    The internet: 100.64.0.0/10 (RFC 6598, never routed publicly). Test hosts (SIP trunks, a
    DNS server) get addresses with ``inet_address()``; each Elastic IP is routed to its VPC's
    gateway. It forwards between gateways, and has no route elsewhere.
a gateway per VPC tagged ``overlay:fleet=<fleet>``
    The VPC router, the internet gateway and the AWS endpoint's path at once. A link to inet,
    a link to aws (a /32 route to moto; aws routes the VPC's CIDR back), a veth per instance
    (its end holds ROUTER, 169.254.0.1/32), a link to the gateway of each VPC it has an active
    peering with. Routes: a /32 to every private address of every instance's ENI, through
    that instance's veth, and the VPC's route tables' routes through its internet gateway or
    an active peering, a destination 0.0.0.0/0 becoming INTERNET (no default route anywhere
    leads out). Elastic IPs: 1:1 NAT with iptables on the inet link. Strict reverse-path
    filtering stands in for EC2's source check.
an instance namespace per running instance of those VPCs
    ``ens5`` with its ENI's primary address /32, an on-link route to ROUTER and the default
    route through it, ``net.ipv4.ip_nonlocal_bind=1`` (the AMI's sysctl file sets it).
    Secondary addresses are routed to the instance whose ENI holds them but, as on EC2, not
    configured: the OS does that (the HA agent, with ``ip addr add``). ``instance.Instance``
    boots it.

Reconciling: ``sync()`` reads moto (``_mirror``) and applies the differences, one line each in
``changes``. ``start_reconciler()`` runs a thread that reads the addresses (ENIs, Elastic IPs)
every 0.1 s and everything every second, so that an HA takeover made through the EC2 API
reaches the namespaces within about 0.2 s. moto's quirks: a reassigned address stays listed on
its old ENI (the latest assignment wins: ``_mirror.choose_holders``); an association's private
address is not reported (an Elastic IP goes to its ENI's first secondary address, else its
primary: ``_mirror.nat_map``). When a gateway's NAT changes, its tracked connections are
flushed, so that every flow follows the new mapping.

Not emulated: security groups and network ACLs, EC2's source/destination check beyond
reverse-path filtering, ENIs other than each instance's first, subnets' route table
associations, IPv6, the instance metadata service (environment variables stand in), DNS in the
VPC.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3

from overlay.aws import ClientFactory
from tests.fleet._mirror import (
    INTERNET as INTERNET_TARGET,
)
from tests.fleet._mirror import (
    Eip,
    Eni,
    InstanceView,
    Topology,
    Vpc,
    choose_holders,
    nat_map,
    read_addresses,
    read_topology,
)
from tests.fleet._netns import (
    COMMAND_TIMEOUT_S,
    CommandError,
    Process,
    add_namespace,
    delete_namespace,
    flush_conntrack,
    ip,
    kill_in,
    load_nat,
    namespaces,
    root_links,
    route_changes,
    run,
    spawn,
)
from tests.fleet.instance import Instance

#: The fabric's internet.
INTERNET = ipaddress.ip_network("100.64.0.0/10")
#: Where ``inet_address()`` takes test hosts' addresses from.
INET_HOSTS = ipaddress.ip_network("100.64.0.0/16")
#: Where a test takes its Elastic IPs from (``allocate_address(Address=...)``): any address of
#: INTERNET outside INET_HOSTS and TRANSIT works, these are free.
PUBLIC_POOL = ipaddress.ip_network("100.100.0.0/16")
#: The fabric's own links, a /30 each.
TRANSIT = ipaddress.ip_network("100.127.0.0/16")
#: The link between the root namespace and aws: a /30 of it per run.
MOTO_LINKS = ipaddress.ip_network("10.255.0.0/16")
#: The gateway's address on every instance link, the instances' next hop.
ROUTER = "169.254.0.1"
MOTO_PORT = 5000
MOTO_START_TIMEOUT_S = 30.0
#: Dummy credentials: every process speaking to moto has them, for the test process as for an
#: instance, where they stand in for the instance profile.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
_NO_AWS_FILES = {
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_TOOLS = ("ip", "iptables-restore", "nsenter", "unshare", "bash", "sysctl")

log = logging.getLogger(__name__)
# A failing test's captured log then shows what the fabric did.
log.setLevel(logging.INFO)


def unavailable() -> str | None:
    """Why the fabric cannot run here, or ``None``: it needs root, iproute2, iptables,
    util-linux and network namespaces."""
    if os.geteuid() != 0:
        return "the fabric needs root (network namespaces, mounts)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the fabric needs {', '.join(missing)}"
    probe = f"fb{secrets.token_hex(2)}-probe"
    try:
        run(["ip", "netns", "add", probe])
    except CommandError as error:
        return f"no network namespaces here: {error}"
    delete_namespace(probe)
    return None


@contextlib.contextmanager
def open_fabric(*, fleet: str, regions: Sequence[str]) -> Iterator[Fabric]:
    """A started ``Fabric`` (moto serving, nothing mirrored yet), closed on the way out,
    whether the block fails or not."""
    fabric = Fabric(fleet=fleet, regions=regions)
    try:
        fabric.start()
        yield fabric
    finally:
        fabric.close()


@dataclass
class _Gateway:
    vpc: Vpc
    number: int
    netns: str
    inet_dev: str
    #: inet's end of the link: the gateway's next hop to the internet.
    inet_peer: str
    #: The gateway's end: inet's next hop to the VPC's Elastic IPs.
    inet_address: str
    #: Peer VPC -> (the link's device here, the peer gateway's address on it).
    links: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Destination -> ``via <address> dev <device>``.
    routes: dict[str, str] = field(default_factory=dict)
    #: Private address -> the instance it is routed to.
    hosts: dict[str, str] = field(default_factory=dict)
    #: Elastic IP -> the private address it is NATed to.
    nat: dict[str, str] = field(default_factory=dict)


class Fabric:
    """The fleet of ``fleet`` in moto, mirrored into network namespaces; see the module
    docstring. Made by ``open_fabric``. Thread-safe.

    Attributes:
        fleet, regions: where the fabric looks: VPCs tagged ``overlay:fleet=<fleet>``.
        prefix: every namespace, interface and host path the fabric makes starts with it.
        run_dir: logs, user data and the instances' layers; removed by ``close``.
        endpoint_url: moto's server, for the test and for every instance.
        aws: boto3 clients on moto (dummy credentials, no retries).
        changes: every change applied, one line each, with seconds since the fabric started.
        errors: the background reconciler's failures (it carries on).
    """

    def __init__(self, *, fleet: str, regions: Sequence[str]) -> None:
        self.fleet = fleet
        self.regions = tuple(regions)
        self.prefix, self._moto_link = _new_prefix()
        self.run_dir = Path(tempfile.gettempdir()) / f"{self.prefix}-run"
        self.endpoint_url = f"http://{self._moto_link[2]}:{MOTO_PORT}"
        self.aws = ClientFactory(
            endpoint_url=self.endpoint_url,
            max_attempts=1,
            session=boto3.session.Session(
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"],
            ),
        )
        self.changes: list[str] = []
        self.errors: list[str] = []
        self._aws = f"{self.prefix}-aws"
        self._inet = f"{self.prefix}-inet"
        self._host_link = f"{self.prefix}h"
        self._lock = threading.RLock()
        self._processes: list[Process] = []
        self._processes_lock = threading.Lock()
        self._namespaces: list[str] = []
        self._gateways: dict[str, _Gateway] = {}
        self._instances: dict[str, Instance] = {}
        self._numbers = itertools.count()
        self._transit_links = itertools.count()
        self._runs = itertools.count()
        self._inet_hosts = INET_HOSTS.hosts()
        self._inet_routes: dict[str, str] = {}
        self._skipped: set[str] = set()
        self._first_seen: dict[tuple[str, str], int] = {}
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._closed = False

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Make the run directory, aws (moto serving) and inet.

        Raises:
            CommandError: a namespace or link could not be made.
            RuntimeError, TimeoutError: moto did not serve within MOTO_START_TIMEOUT_S.
        """
        self.run_dir.mkdir(mode=0o700)
        host, moto = str(self._moto_link[1]), str(self._moto_link[2])
        self._add_namespace(self._aws, {"net.ipv4.ip_forward": "0"})
        ip(
            None,
            f"link add {self._host_link} type veth peer name {self.prefix}m netns {self._aws}",
            f"addr add {host}/30 dev {self._host_link}",
            f"link set {self._host_link} up",
        )
        ip(self._aws, f"addr add {moto}/30 dev {self.prefix}m", f"link set {self.prefix}m up")
        self._add_namespace(self._inet, {"net.ipv4.ip_forward": "1"})
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **CREDENTIALS,
            **_NO_AWS_FILES,
            # As tests/deploy runs moto: no canned AMIs, instance types checked.
            "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
            "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
        }
        argv = [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(MOTO_PORT)]
        server = spawn(
            ["ip", "netns", "exec", self._aws, *argv],
            where="aws",
            name="moto",
            log=self.run_dir / "aws" / "moto.log",
            env=env,
        )
        self._track(server)
        deadline = time.monotonic() + MOTO_START_TIMEOUT_S
        while True:
            if server.popen.poll() is not None:
                raise RuntimeError(f"moto exited ({server.popen.returncode}):\n{server.tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as answer:
                    answer.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto not serving in {MOTO_START_TIMEOUT_S} s") from None
                time.sleep(0.05)
        self._change(f"moto serving at {self.endpoint_url} in {self._aws}")

    def close(self) -> None:
        """Stop the reconciler, kill every process the fabric started (their process groups,
        by PID, then whatever is left in its namespaces), delete its namespaces (their
        interfaces go with them) and the root namespace's link, remove the run directory.
        Idempotent.

        Raises:
            CommandError: something could not be removed (after trying everything else).
        """
        if self._closed:
            return
        self._closed = True
        self.stop_reconciler()
        failures: list[str] = []
        with self._lock:
            for instance in list(self._instances.values()):
                instance.close()
            with self._processes_lock:
                processes = list(self._processes)
            for process in processes:
                process.kill()
            for netns in self._namespaces:
                kill_in(netns, spare=set())
            for process in processes:
                process.reap()
            for netns in reversed(self._namespaces):
                try:
                    delete_namespace(netns)
                except CommandError as error:
                    failures.append(str(error))
            self._namespaces.clear()
            if self._host_link in root_links():
                try:
                    ip(None, f"link del {self._host_link}")
                except CommandError as error:
                    failures.append(str(error))
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if failures:
            raise CommandError("; ".join(failures))

    # --- reconciling ------------------------------------------------------------------------

    def sync(self) -> list[str]:
        """Read moto and make the namespaces match it: gateways, peering links and routes,
        instances appearing and disappearing, where each private address and Elastic IP goes.

        Returns:
            The changes applied, as added to ``changes``.
        """
        with self._lock:
            self._check_open()
            mark = len(self.changes)
            self._apply_topology(read_topology(self._ec2, self.fleet, self.regions))
            self._apply_addresses(*read_addresses(self._ec2, self._vpcs()))
            return self.changes[mark:]

    def start_reconciler(self, *, interval: float = 0.1, full_interval: float = 1.0) -> None:
        """Sync from a background thread until ``stop_reconciler`` or ``close``: the addresses
        every ``interval`` seconds (two calls per region: a takeover is followed fast),
        everything every ``full_interval`` (six per region: the fleet's shape changes seldom,
        and moto's CPU is shared with the fleet). Failures go to ``errors`` and ``changes``;
        the thread carries on."""
        with self._lock:
            self._check_open()
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._reconcile, args=(interval, full_interval), name="fabric", daemon=True
            )
            self._thread.start()

    def stop_reconciler(self) -> None:
        """Stop the background sync, if it runs (waits for the sync under way)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(4 * COMMAND_TIMEOUT_S)

    def _reconcile(self, interval: float, full_interval: float) -> None:
        next_full = 0.0
        last_error = ""
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if began >= next_full:
                    next_full = began + full_interval
                    self.sync()
                else:
                    with self._lock:
                        self._check_open()
                        self._apply_addresses(*read_addresses(self._ec2, self._vpcs()))
                last_error = ""
            except Exception as error:  # a failed read or command: logged, tried again
                if repr(error) != last_error:
                    last_error = repr(error)
                    self.errors.append(last_error)
                    self._change(f"sync failed: {last_error}")
            self._stop.wait(max(0.0, began + interval - time.monotonic()))

    # --- instances --------------------------------------------------------------------------

    @property
    def instances(self) -> dict[str, Instance]:
        """The instances mirrored now, by id."""
        with self._lock:
            return dict(self._instances)

    def instance(self, instance_id: str) -> Instance:
        """The mirrored instance ``instance_id``.

        Raises:
            KeyError: not a running instance of the fleet at the last sync.
        """
        with self._lock:
            try:
                return self._instances[instance_id]
            except KeyError:
                raise KeyError(f"{instance_id} is not mirrored (sync first?)") from None

    def boot(
        self,
        instance_id: str,
        *,
        files: Mapping[str, str | bytes] | None = None,
        timeout: float = 60.0,
    ) -> list[str]:
        """Boot ``instance_id`` from the user data moto holds for it (``Instance.boot``).

        Returns:
            The units started, in their order.
        """
        instance = self.instance(instance_id)
        ec2 = self.aws.client("ec2", instance.region)
        attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        user_data = base64.b64decode(attribute.get("UserData", {}).get("Value", ""))
        units = instance.boot(user_data, files=files, timeout=timeout)
        self._change(f"instance {instance_id}: booted, started {', '.join(units) or 'nothing'}")
        return units

    def boot_all(self, *, timeout: float = 60.0) -> dict[str, list[str]]:
        """Boot every mirrored instance not booted yet, all at once (as a fleet boots).

        Returns:
            Instance id -> the units started, in their order.

        Raises:
            BootError: the first failure, once every boot has ended.
        """
        pending = sorted(instance.id for instance in self.instances.values() if not instance.booted)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(pending))) as pool:
            booting = {id_: pool.submit(self.boot, id_, timeout=timeout) for id_ in pending}
        return {id_: future.result() for id_, future in booting.items()}

    def wait_ready(self, instance_id: str, unit: str, timeout: float) -> None:
        """``Instance.wait_ready``: return once the notify ``unit`` said ``READY=1``."""
        self.instance(instance_id).wait_ready(unit, timeout)

    def kill(self, instance_id: str) -> None:
        """SIGKILL every process of ``instance_id``: a dead instance (moto still says it runs,
        its addresses stay routed to it; nothing restarts its services)."""
        self.instance(instance_id).kill()
        self._change(f"instance {instance_id}: killed")

    # --- the test's own processes -----------------------------------------------------------

    def run(
        self,
        where: str,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``where``: an instance id (in its namespaces, with its environment),
        ``"inet"``, ``"aws"`` or a VPC id (its gateway). Output goes to a log in the run
        directory unless redirected; ``env`` adds to the environment (the test's own outside
        instances). The fabric kills it at close if it still runs; the caller should wait for
        it.
        """
        label = f"{name or Path(argv[0]).name}-{next(self._runs)}"
        instance = self._instances.get(where)
        if instance is not None:
            return instance.popen(
                list(argv),
                name=label,
                env={**instance.env, **(env or {})},
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
            ).popen
        process = spawn(
            ["ip", "netns", "exec", self.netns(where), *argv],
            where=where,
            name=label,
            log=self.run_dir / where / f"{label}.log",
            env={**os.environ, **(env or {})},
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        self._track(process)
        return process.popen

    def netns(self, where: str) -> str:
        """The network namespace of an instance id, ``"inet"``, ``"aws"`` or a VPC id."""
        with self._lock:
            if where in self._instances:
                return self._instances[where].netns
            if where in self._gateways:
                return self._gateways[where].netns
            named = {"inet": self._inet, "aws": self._aws}
            if where not in named:
                raise KeyError(f"{where}: not an instance, VPC, 'inet' or 'aws' of the fabric")
            return named[where]

    def inet_address(self) -> str:
        """A new address of the internet (INET_HOSTS), up in inet: for a trunk, a DNS server."""
        with self._lock:
            address = str(next(self._inet_hosts))
            ip(self._inet, f"addr add {address}/32 dev lo")
            return address

    @property
    def processes(self) -> list[Process]:
        """Every process the fabric started, moto and the instances' services included."""
        with self._processes_lock:
            return list(self._processes)

    def report(self, lines: int = 20) -> str:
        """What the fabric did and the end of every log: for a failing test to print."""
        parts = ["fabric changes:", *self.changes]
        if self.errors:
            parts += ["fabric errors:", *self.errors]
        shown: set[Path] = set()
        for process in self.processes:
            if process.log in shown:
                continue
            shown.add(process.log)
            state = process.popen.poll()
            parts += [
                f"--- {process.where} {process.name} (pid {process.popen.pid}, "
                f"{'running' if state is None else f'exit {state}'}): {process.log}",
                process.tail(lines),
            ]
        return "\n".join(parts)

    # --- applying ---------------------------------------------------------------------------

    def _apply_topology(self, topology: Topology) -> None:
        for instance_id in sorted(self._instances.keys() - topology.instances.keys()):
            self._remove_instance(instance_id)
        for vpc_id in sorted(self._gateways.keys() - topology.vpcs.keys()):
            self._remove_gateway(vpc_id)
        for vpc in sorted(topology.vpcs.values(), key=lambda vpc: vpc.id):
            if vpc.id not in self._gateways:
                self._add_gateway(vpc)
        for view in sorted(topology.instances.values(), key=lambda view: view.id):
            if view.id not in self._instances:
                self._add_instance(view)
        peered = {frozenset(ends) for ends in topology.peerings.values()}
        for gateway in list(self._gateways.values()):
            for peer in sorted(gateway.links):
                if frozenset((gateway.vpc.id, peer)) not in peered:
                    self._unlink(gateway, self._gateways[peer])
        for pair in sorted(peered, key=sorted):
            first, second = sorted(pair)
            if second not in self._gateways[first].links:
                self._link(self._gateways[first], self._gateways[second])
        for gateway in self._gateways.values():
            self._route(gateway, topology.routes.get(gateway.vpc.id, {}))

    def _add_gateway(self, vpc: Vpc) -> None:
        number, prefix = next(self._numbers), self.prefix
        inet_peer, inet_address = self._transit()
        gateway = _Gateway(
            vpc, number, f"{prefix}-{vpc.id}", f"{prefix}g{number}i", inet_peer, inet_address
        )
        self._add_namespace(
            gateway.netns,
            {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "1",
                "net.ipv4.conf.default.rp_filter": "1",
            },
        )
        self._gateways[vpc.id] = gateway
        aws_end, gateway_end = self._transit()
        self._veth(self._aws, f"{prefix}a{number}", aws_end, gateway, f"{prefix}g{number}a")
        ip(gateway.netns, f"route add {self._moto_link[2]}/32 via {aws_end}")
        try:
            ip(self._aws, f"route add {vpc.cidr} via {gateway_end}")
        except CommandError as error:
            self._change(f"gateway {vpc.id}: {vpc.cidr} overlaps another VPC's, no moto: {error}")
        self._veth(self._inet, f"{prefix}i{number}", inet_peer, gateway, gateway.inet_dev)
        self._change(f"gateway {vpc.id} ({vpc.region} {vpc.cidr}): namespace {gateway.netns}")

    def _remove_gateway(self, vpc_id: str) -> None:
        gateway = self._gateways.pop(vpc_id)
        self._delete_namespace(gateway.netns)  # its links, and the routes through them, go too
        self._inet_routes = {
            public: via for public, via in self._inet_routes.items() if via != gateway.inet_address
        }
        for other in self._gateways.values():
            if vpc_id in other.links:
                self._forget_link(other, vpc_id)
        self._change(f"gateway {vpc_id}: removed")

    def _link(self, first: _Gateway, second: _Gateway) -> None:
        """A peering link between two gateways."""
        address, peer_address = self._transit()
        device = f"{self.prefix}g{first.number}p{second.number}"
        peer_device = f"{self.prefix}g{second.number}p{first.number}"
        self._veth(first.netns, device, address, second, peer_device)
        first.links[second.vpc.id] = (device, peer_address)
        second.links[first.vpc.id] = (peer_device, address)
        self._change(f"peering {first.vpc.id} <-> {second.vpc.id}: linked")

    def _unlink(self, first: _Gateway, second: _Gateway) -> None:
        ip(first.netns, f"link del {first.links[second.vpc.id][0]}")
        self._forget_link(first, second.vpc.id)
        self._forget_link(second, first.vpc.id)
        self._change(f"peering {first.vpc.id} <-> {second.vpc.id}: unlinked")

    @staticmethod
    def _forget_link(gateway: _Gateway, peer: str) -> None:
        """The link to ``peer`` is gone, and the kernel dropped the routes through it."""
        device, _ = gateway.links.pop(peer)
        gateway.routes = {
            destination: spec
            for destination, spec in gateway.routes.items()
            if not spec.endswith(f" dev {device}")
        }

    def _route(self, gateway: _Gateway, routes: Mapping[str, str]) -> None:
        """The gateway's routes from its VPC's route tables."""
        wanted: dict[str, str] = {}
        for destination, target in routes.items():
            if destination == "0.0.0.0/0":
                wanted[str(INTERNET)] = f"via {gateway.inet_peer} dev {gateway.inet_dev}"
            elif target == INTERNET_TARGET:
                wanted[destination] = f"via {gateway.inet_peer} dev {gateway.inet_dev}"
            elif target in gateway.links:
                device, via = gateway.links[target]
                wanted[destination] = f"via {via} dev {device}"
        commands = route_changes(gateway.routes, wanted)
        if commands:
            ip(gateway.netns, *commands)
            for command in sorted(commands):
                self._change(f"gateway {gateway.vpc.id}: {command}")
        gateway.routes = wanted

    def _add_instance(self, view: InstanceView) -> None:
        gateway = self._gateways[view.vpc]
        netns = f"{self.prefix}-{view.id}"
        instance = Instance(
            id=view.id,
            region=view.region,
            vpc=view.vpc,
            eni=view.eni,
            private_ip=view.private_ip,
            tags=view.tags,
            netns=netns,
            veth=f"{self.prefix}n{next(self._numbers)}",
            directory=self.run_dir / view.id,
            env=self.environment(view.region),
            track=self._track,
        )
        self._add_namespace(netns, {"net.ipv4.ip_nonlocal_bind": "1"})
        self._instances[view.id] = instance
        ip(
            gateway.netns,
            f"link add {instance.veth} type veth peer name ens5 netns {netns}",
            f"addr add {ROUTER}/32 dev {instance.veth}",
            f"link set {instance.veth} up",
        )
        ip(
            netns,
            f"addr add {view.private_ip}/32 dev ens5",
            "link set ens5 up",
            f"route add {ROUTER} dev ens5 scope link",
            f"route add default via {ROUTER} dev ens5",
        )
        self._change(
            f"instance {view.id} ({view.region} {view.vpc}, {view.eni} {view.private_ip}):"
            f" namespace {netns}"
        )

    def _remove_instance(self, instance_id: str) -> None:
        instance = self._instances.pop(instance_id)
        instance.close()
        self._delete_namespace(instance.netns)  # its veth, and the routes through it, go too
        gateway = self._gateways.get(instance.vpc)
        if gateway is not None:
            gateway.hosts = {a: i for a, i in gateway.hosts.items() if i != instance_id}
        self._change(f"instance {instance_id}: removed")

    def _apply_addresses(self, enis: list[Eni], eips: list[Eip]) -> None:
        self._generation += 1
        instance_of = {instance.eni: instance.id for instance in self._instances.values()}
        holders = choose_holders(enis, instance_of, self._first_seen, self._generation)
        nat = nat_map(enis, eips)
        for gateway in self._gateways.values():
            self._route_hosts(
                gateway,
                {
                    address: holder
                    for address, holder in holders.items()
                    if self._instances[holder].vpc == gateway.vpc.id
                },
            )
            self._load_nat(gateway, self._public(nat.get(gateway.vpc.id, {})))
        wanted = {
            public: gateway.inet_address
            for gateway in self._gateways.values()
            for public in gateway.nat
        }

        def specs(routes: Mapping[str, str]) -> dict[str, str]:
            return {f"{public}/32": f"via {via}" for public, via in routes.items()}

        commands = route_changes(specs(self._inet_routes), specs(wanted))
        if commands:
            ip(self._inet, *commands)
        self._inet_routes = wanted

    def _route_hosts(self, gateway: _Gateway, wanted: dict[str, str]) -> None:
        """/32 routes to the instances holding the VPC's private addresses."""
        commands = [f"route del {address}/32" for address in gateway.hosts.keys() - wanted.keys()]
        moved = sorted(a for a, holder in wanted.items() if gateway.hosts.get(a) != holder)
        commands += [f"route replace {a}/32 dev {self._instances[wanted[a]].veth}" for a in moved]
        if commands:
            ip(gateway.netns, *commands)
        for address in sorted(gateway.hosts.keys() - wanted.keys()):
            self._change(f"address {address} ({gateway.vpc.id}): not routed")
        for address in moved:
            holder = self._instances[wanted[address]]
            self._change(f"address {address} ({gateway.vpc.id}): to {holder.id} ({holder.eni})")
        gateway.hosts = wanted

    def _public(self, nat: Mapping[str, str]) -> dict[str, str]:
        """The mappings whose Elastic IP is a public address of the fabric's internet."""
        kept = {}
        for public, private in nat.items():
            address = ipaddress.ip_address(public)
            if address in INTERNET and address not in INET_HOSTS and address not in TRANSIT:
                kept[public] = private
            elif public not in self._skipped:
                self._skipped.add(public)
                self._change(f"elastic IP {public}: outside the fabric's internet, not mirrored")
        return kept

    def _load_nat(self, gateway: _Gateway, wanted: dict[str, str]) -> None:
        """1:1 NAT of the VPC's Elastic IPs on its inet link."""
        if wanted == gateway.nat:
            return
        device = gateway.inet_dev
        rules = [
            f"-A PREROUTING -i {device} -d {public}/32 -j DNAT --to-destination {private}"
            for public, private in sorted(wanted.items())
        ] + [
            f"-A POSTROUTING -o {device} -s {private}/32 -j SNAT --to-source {public}"
            for public, private in sorted(wanted.items())
        ]
        load_nat(gateway.netns, rules)
        flush_conntrack(gateway.netns)
        for public in sorted(gateway.nat.keys() | wanted.keys()):
            if gateway.nat.get(public) != wanted.get(public):
                to = f"NAT to {wanted[public]}" if public in wanted else "not NATed"
                self._change(f"elastic IP {public} ({gateway.vpc.id}): {to}")
        gateway.nat = wanted

    # --- helpers ----------------------------------------------------------------------------

    def _ec2(self, region: str) -> Any:  # noqa: ANN401 - boto3 clients are untyped
        return self.aws.client("ec2", region)

    def _vpcs(self) -> dict[str, Vpc]:
        return {vpc_id: gateway.vpc for vpc_id, gateway in self._gateways.items()}

    def environment(self, region: str) -> dict[str, str]:
        """The environment of a process speaking to moto as an instance of ``region`` does:
        the endpoint, dummy credentials, the region, no AWS files (e.g. for the deployer's CLI
        run by the test)."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": region,
            **CREDENTIALS,
            **_NO_AWS_FILES,
        }

    def _transit(self) -> tuple[str, str]:
        """The two addresses of a new transit link."""
        base = int(TRANSIT.network_address) + 4 * next(self._transit_links)
        return str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))

    def _veth(
        self, netns: str, device: str, address: str, gateway: _Gateway, gateway_device: str
    ) -> None:
        """A link from ``netns`` to ``gateway``, ``address`` at this end, the next one at the
        gateway's (the two of a ``_transit`` pair)."""
        gateway_address = ipaddress.ip_address(address) + 1
        ip(
            netns,
            f"link add {device} type veth peer name {gateway_device} netns {gateway.netns}",
            f"addr add {address}/30 dev {device}",
            f"link set {device} up",
        )
        ip(
            gateway.netns,
            f"addr add {gateway_address}/30 dev {gateway_device}",
            f"link set {gateway_device} up",
        )

    def _add_namespace(self, name: str, sysctls: Mapping[str, str]) -> None:
        self._namespaces.append(name)
        add_namespace(name, sysctls)

    def _delete_namespace(self, name: str) -> None:
        delete_namespace(name)
        self._namespaces.remove(name)

    def _track(self, process: Process) -> None:
        with self._processes_lock:
            self._processes.append(process)

    def _change(self, message: str) -> None:
        line = f"{time.monotonic() - self._started:8.3f} {message}"
        self.changes.append(line)
        log.info("%s", line)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the fabric is closed")


def _new_prefix() -> tuple[str, ipaddress.IPv4Network]:
    """A prefix no namespace, root interface or temporary path uses, and its /30 of
    MOTO_LINKS, which no root address is in."""
    taken = [*namespaces(), *root_links(), *os.listdir(tempfile.gettempdir())]
    for _ in range(100):
        prefix = f"fb{secrets.token_hex(2)}"
        base = int(MOTO_LINKS.network_address) + 4 * (int(prefix[2:], 16) % 16384)
        link = ipaddress.IPv4Network((base, 30))
        in_use = run(["ip", "-4", "-o", "addr", "show", "to", str(link)]).strip()
        if not in_use and not any(name.startswith(prefix) for name in taken):
            return prefix, link
    raise RuntimeError("no free prefix for the fabric")
