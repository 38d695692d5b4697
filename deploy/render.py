"""What every pair member of a fleet boots with, made from fleet.toml alone.

``overlay deploy render`` prints it for an operator to review and diff; the deployer writes the
same files into each member's user data. Nothing here calls AWS: a member's addresses are fixed
by its AZ's subnet (the floating address, then the active's and the standby's own), and the
overlay's settings come from fleet.toml's ``[[dialplan]]``, ``[linkstate]``, ``[security]`` and
``[media]``, which ``deploy.fleet`` checked with the node's own parsers.

Each pair is one overlay node, named after its AZ, addressed by its floating address: the
node of either member binds it (the standby's before it holds it: a non-local bind), so the
moment the HA agent moves the address the standby's node receives what was the active's. The
gRPC server listens on every address: the other nodes flood to the floating address, the
pair's HA agents check each other's node at its own address. Every ``node.toml`` rendered is
loaded by the node's own loader before it is shown or used.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from deploy.fleet import AzSpec, Fleet, RegionSpec
from overlay.config import parse_config
from overlay.ha import ROLES, parse_ha_config, peer_role
from overlay.secrets import FETCH_WAIT_S, TLS_PARAMETERS, member_path

#: Host numbers inside each AZ's subnet (AWS reserves .0-.3): the floating address, then the
#: active's and the standby's own addresses.
FLOATING_HOST, ROLE_HOSTS = 10, {"active": 11, "standby": 12}

CONFIG_DIR = "/etc/overlay"
UNIT_DIR = "/etc/systemd/system"
#: The appliance as the image installs it: its own virtualenv.
OVERLAY_BIN = "/opt/overlay/bin/overlay"
#: Where a member's mutual-TLS files live: systemd's RuntimeDirectory (a tmpfs) of
#: overlay-secrets.service, which fetches them from SSM Parameter Store (``overlay.secrets``).
TLS_RUNTIME_DIR = "overlay/tls"
TLS_DIR = f"/run/{TLS_RUNTIME_DIR}"
NODE_TLS_FILES = {leaf: f"{TLS_DIR}/{name}" for leaf, name in TLS_PARAMETERS.items()}
NODE_TOML = f"{CONFIG_DIR}/node.toml"
NODE_UNIT = f"{UNIT_DIR}/overlay.service"
HA_TOML = f"{CONFIG_DIR}/ha.toml"
HA_UNIT = f"{UNIT_DIR}/overlay-ha.service"
SECRETS_UNIT = f"{UNIT_DIR}/overlay-secrets.service"


@dataclass(frozen=True)
class Member:
    """One instance of an AZ's active/standby pair."""

    region: RegionSpec
    az: AzSpec
    role: str

    @property
    def id(self) -> str:
        """``"<AZ>-<role>"``, as ``overlay deploy render --member`` takes it."""
        return f"{self.az.name}-{self.role}"

    @property
    def node_id(self) -> str:
        """The overlay node of the pair: both members run it, one at a time holds its address."""
        return self.az.name

    @property
    def floating_ip(self) -> str:
        return floating_ip(self.az)

    @property
    def peer_role(self) -> str:
        return peer_role(self.role)

    def own_ip(self, role: str | None = None) -> str:
        """This member's own address, or its pair's ``role`` member's."""
        return str(ipaddress.ip_network(self.az.subnet_cidr)[ROLE_HOSTS[role or self.role]])


def floating_ip(az: AzSpec) -> str:
    """The address an AZ's pair is reached at, whichever member holds it."""
    return str(ipaddress.ip_network(az.subnet_cidr)[FLOATING_HOST])


def members(fleet: Fleet) -> list[Member]:
    """Every pair member of the fleet, region by region, AZ by AZ, the active first."""
    return [
        Member(region, az, role) for region in fleet.regions for az in region.azs for role in ROLES
    ]


def member_files(fleet: Fleet, member: Member, public_ip: str | None = None) -> dict[str, str]:
    """The files ``member`` boots with: path on the instance -> contents; ``public_ip`` is its
    pair's Elastic IP once apply made it."""
    return {
        NODE_TOML: node_toml(fleet, member, public_ip),
        NODE_UNIT: NODE_SERVICE,
        HA_TOML: ha_toml(fleet, member),
        HA_UNIT: HA_SERVICE,
        SECRETS_UNIT: secrets_service(fleet, member),
    }


def ha_toml(fleet: Fleet, member: Member) -> str:
    """``member``'s ha.toml, checked by the agent's own loader: its pair named by the tags the
    deployer gives the ENIs and the EIP, its peer's node checked at the peer's own address."""
    values = {
        "region": member.region.name,
        "fleet": fleet.name,
        "pair": member.az.name,
        "role": member.role,
        "floating_private_ip": member.floating_ip,
        "peer_grpc": f"{member.own_ip(member.peer_role)}:{fleet.ports.grpc}",
        "heartbeat_interval": fleet.ha.heartbeat_interval,
        "dead_after": fleet.ha.dead_after,
        "hold_down": fleet.ha.hold_down,
        # The standby's node joins the mesh once the address is on its interface.
        "interface": "auto",
        **NODE_TLS_FILES,
    }
    text = _header(member) + _table("ha", values)
    parse_ha_config(text, source=f"{member.id}:{HA_TOML}", check_files=False)
    return text


def _header(member: Member) -> str:
    return f"# {member.id}: made by `overlay deploy render` from fleet.toml; edit that instead.\n"


def node_toml(fleet: Fleet, member: Member, public_ip: str | None = None) -> str:
    """``member``'s node.toml, checked by the node's own loader. With ``public_ip`` (its pair's
    Elastic IP, 1:1 NAT to the floating address) the node shows the trunks that address, in
    SIP (Via, Record-Route) and in SDP (``advertise``), and the overlay its private one.

    Raises:
        ConfigError: the fleet makes a node configuration the node would refuse (a bug here or
            a combination fleet.toml's checks missed), naming the rendered file and its line.
    """
    ports, overlay = fleet.ports, fleet.overlay
    floating = member.floating_ip
    advertise = {} if public_ip is None else {"advertise": public_ip}
    tables: list[tuple[str, Mapping[str, object]]] = [
        ("node", {"node_id": member.node_id, "region": member.region.name, "az": member.az.name}),
        (
            "sip",
            {
                "listen": [f"udp:{floating}:{ports.sip}", f"tcp:{floating}:{ports.sip}"],
                **advertise,
            },
        ),
        ("grpc", {"listen": f"0.0.0.0:{ports.grpc}", **NODE_TLS_FILES}),
        (
            "media",
            {
                "address": floating,
                "overlay": f"{floating}:{ports.relay}",
                "port_first": ports.rtp_first,
                "port_last": ports.rtp_last,
                **overlay.media,
                **advertise,
            },
        ),
        ("metrics", {"listen": f"0.0.0.0:{ports.metrics}"}),
        # What Route 53 checks: 503 while draining or standing by.
        ("health", {"listen": f"0.0.0.0:{ports.health}"}),
        ("log", {"format": "json"}),
        ("cloudwatch", {"fleet": fleet.name}),
        # In the mesh only while the HA agent has given this member the address; the standby
        # follows the active's calls at the other member's own address (pair replication).
        (
            "pair",
            {
                "address": floating,
                "peer_grpc": f"{member.own_ip(member.peer_role)}:{ports.grpc}",
            },
        ),
    ]
    if overlay.linkstate:
        tables.append(("linkstate", overlay.linkstate))
    if overlay.security is not None:
        tables.append(("security", overlay.security))
    peers = [
        {
            "node_id": az.name,
            "region": region.name,
            "az": az.name,
            "sip": f"{floating_ip(az)}:{ports.sip}",
            "grpc": f"{floating_ip(az)}:{ports.grpc}",
            "media": f"{floating_ip(az)}:{ports.relay}",
        }
        for region in fleet.regions
        for az in region.azs
        if az.name != member.node_id
    ]
    node_ids = {region.name: [az.name for az in region.azs] for region in fleet.regions}
    dialplan = [_rule(rule, node_ids) for rule in overlay.dialplan]
    text = _header(member) + "".join(_table(name, values) for name, values in tables)
    text += "".join(_table("peers", peer, array=True) for peer in peers)
    text += "".join(_table("dialplan", rule, array=True) for rule in dialplan)
    parse_config(text, source=f"{member.id}:{NODE_TOML}", check_files=False)
    return text


def _rule(rule: Mapping[str, object], node_ids: Mapping[str, list[str]]) -> dict[str, object]:
    """A fleet dialplan rule as a node's: its egress regions become their pairs' nodes."""
    node_rule = dict(rule)
    egress = rule.get("egress")
    if egress is not None:
        regions = [egress] if isinstance(egress, str) else egress
        assert isinstance(regions, list)  # checked by deploy.fleet
        node_rule["egress"] = [node for region in regions for node in node_ids[str(region)]]
    return node_rule


def _unit(description: str, command: str, service: str, *, needs: str = "") -> str:
    """A systemd unit of the appliance: its own user, a read-only system; started after
    ``needs`` has, and stopped or restarted with it."""
    needed = f"Requires={needs}\nAfter={needs}\n" if needs else ""
    return f"""[Unit]
Description={description}
Wants=network-online.target
After=network-online.target
{needed}
[Service]
{service}User=overlay
Group=overlay
ExecStart={OVERLAY_BIN} {command}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadOnlyPaths={CONFIG_DIR}

[Install]
WantedBy=multi-user.target
"""


NODE_SERVICE = _unit(
    "overlay SIP router node",
    f"node --config {NODE_TOML}",
    # Ready once every part serves; a node whose event loop stops feeding the watchdog for
    # 10 s is killed and restarted (overlay.shell.systemd).
    "Type=notify\nNotifyAccess=main\nWatchdogSec=10\nTimeoutStartSec=60\n"
    "Restart=always\nRestartSec=1\nLimitNOFILE=65536\n"
    # The media relay's thread runs real-time, ahead of the rest ([media] thread_realtime).
    "AmbientCapabilities=CAP_SYS_NICE\nCapabilityBoundingSet=CAP_SYS_NICE\n",
    needs="overlay-secrets.service",
)
HA_SERVICE = _unit(
    "overlay HA agent (the pair's floating address)",
    f"ha --config {HA_TOML} --log-json",
    # It exits while its pair is not found yet: started again. It adds and removes the
    # floating address on the interface (iproute2): that capability, and no other.
    "Type=simple\nRestart=always\nRestartSec=5\n"
    "AmbientCapabilities=CAP_NET_ADMIN\nCapabilityBoundingSet=CAP_NET_ADMIN\n",
    needs="overlay-secrets.service",
)


def secrets_service(fleet: Fleet, member: Member) -> str:
    """The oneshot that fetches ``member``'s TLS files before its node and agent start: into a
    tmpfs that outlives the fetch (RemainAfterExit) and its restarts (Preserve), for both to
    read; bounded, as the fetch is, and a little longer."""
    path = member_path(fleet.name, member.id)
    return _unit(
        "overlay TLS files from SSM Parameter Store",
        f"secrets fetch --region {member.region.name} --path {path} --dir {TLS_DIR} --log-json",
        f"Type=oneshot\nRemainAfterExit=yes\nTimeoutStartSec={FETCH_WAIT_S + 60:.0f}\n"
        f"RuntimeDirectory={TLS_RUNTIME_DIR}\nRuntimeDirectoryMode=0700\n"
        "RuntimeDirectoryPreserve=yes\n",
    )


# --- TOML -------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _table(name: str, values: Mapping[str, object], *, array: bool = False) -> str:
    header = f"[[{name}]]" if array else f"[{name}]"
    lines = [f"{_key(key)} = {_value(value)}" for key, value in values.items()]
    return "\n" + "\n".join([header, *lines]) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: object) -> str:
    """A TOML value: JSON's string escapes are TOML basic strings' too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")
