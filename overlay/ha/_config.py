"""``ha.toml``: what the HA agent of one pair member needs (``overlay deploy render`` makes it).

```toml
[ha]
region = "us-west-2"
fleet = "voice"            # the pair's ENIs and EIP are found by the deployer's tags:
pair = "us-west-2a"        # overlay:name "<fleet>-<pair>-<role>" for an ENI, "<fleet>-<pair>"
role = "active"            # for the EIP; role is "active" or "standby"
floating_private_ip = "10.20.1.10"
peer_grpc = "10.20.1.12:7000"
heartbeat_interval = 0.5   # optional, seconds
dead_after = 3             # optional, missed heartbeats
hold_down = 10.0           # optional, seconds
api_check_interval = 5.0   # optional, seconds
interface = "auto"         # optional: add the address to this machine's interface while it
                           # holds it ("auto": the one it is routed through); absent: never
hold_file = "/run/overlay/use1.hold"  # optional, instead of interface: write member into this
member = "use1.1"                     # file while holding (both members on one machine: the
                                      # lab; the nodes' [pair] hold = "file")
ca = "/etc/overlay/tls/ca.pem"      # mutual TLS toward the peer's health service (this
cert = "/etc/overlay/tls/node.pem"  # node's own certificate will do), or insecure = true
key = "/etc/overlay/tls/node.key"
```

The file names the pair by tags, not by EC2 ids, so it is known before the fleet exists (and
reviewable with ``overlay deploy render``); the agent finds the ids at start (``find_pair``).
A bad file is refused with ``overlay.config.ConfigError`` naming the line and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.config import (
    TLS_KEYS,
    Invalid,
    KeyPath,
    Reader,
    Table,
    files_checked,
    grpc_tls,
    integer,
    ip_address,
    matching,
    parse_toml,
    read_text,
    seconds,
    string,
)

from ._agent import HaAgentConfig
from ._ec2 import ROLES, PairResources

_KEYS = (
    "region",
    "fleet",
    "pair",
    "role",
    "floating_private_ip",
    "peer_grpc",
    "heartbeat_interval",
    "dead_after",
    "hold_down",
    "api_check_interval",
    "interface",
    "hold_file",
    "member",
    *TLS_KEYS,
)
_OPTIONAL: dict[str, Reader[Any]] = {
    "heartbeat_interval": seconds,
    "dead_after": integer(1, 100),
    "hold_down": seconds,
    "api_check_interval": seconds,
    "interface": matching(r"[A-Za-z0-9_.:-]{1,15}", 'be "auto" or an interface name'),
    "hold_file": matching(r"/.+", "be an absolute path"),
    "member": matching(r"[a-z0-9.-]{1,63}", "match [a-z0-9.-]{1,63} (the node's [pair] member)"),
}
_fleet = matching(r"[a-z0-9-]{1,32}", "match [a-z0-9-]{1,32} (the fleet's name in fleet.toml)")
_pair = matching(r"[a-z0-9-]{1,63}", "be the pair's AZ, such as us-west-2a")


@dataclass(frozen=True, slots=True)
class HaMember:
    """One pair member as ha.toml names it; ``config`` once its ENIs and EIP are found."""

    region: str
    fleet: str
    pair: str
    role: str
    floating_private_ip: str
    peer_grpc_target: str
    tls_files: tuple[str, str, str] | None
    options: Mapping[str, Any]  # HaAgentConfig's optional settings the file gives

    def config(self, found: PairResources) -> HaAgentConfig:
        """The agent's configuration with the ids ``find_pair`` found."""
        return HaAgentConfig(
            region=self.region,
            own_eni_id=found.own_eni,
            peer_eni_id=found.peer_eni,
            floating_private_ip=self.floating_private_ip,
            allocation_id=found.allocation_id,
            peer_grpc_target=self.peer_grpc_target,
            tls_files=self.tls_files,
            fleet=self.fleet,
            pair=self.pair,
            **self.options,
        )


def load_ha_config(path: str | Path) -> HaMember:
    """Read and check ``ha.toml``.

    Raises:
        ConfigError: unreadable, not TOML, an unknown or missing key, or a bad value.
    """
    return parse_ha_config(read_text(path), source=str(path))


def parse_ha_config(text: str, *, source: str = "ha.toml", check_files: bool = True) -> HaMember:
    """``check_files``: whether the TLS files must be readable here (``False`` for a file made
    for another machine)."""
    with files_checked(check_files):
        return parse_toml(text, source=source, build=_build)


def _build(root: dict[str, object]) -> HaMember:
    Table(root, (), ("ha",))
    table = Table(root.get("ha"), ("ha",), _KEYS)
    for key, other in (("hold_file", "member"), ("member", "hold_file")):
        if table.has(key) and not table.has(other):
            raise Invalid(("ha", key), f"needs {other}: the file names the member that holds")
    if table.has("hold_file") and table.has("interface"):
        raise Invalid(
            ("ha", "hold_file"), "stands for interface (two members on one machine): give one"
        )
    return HaMember(
        region=table.require("region", string),
        fleet=table.require("fleet", _fleet),
        pair=table.require("pair", _pair),
        role=table.require("role", _role),
        floating_private_ip=table.require("floating_private_ip", ip_address),
        peer_grpc_target=table.require("peer_grpc", _host_port),
        tls_files=grpc_tls(table, ("ha",)),
        options={
            key: table.require(key, read) for key, read in _OPTIONAL.items() if table.has(key)
        },
    )


def _role(value: object, path: KeyPath) -> str:
    text = string(value, path)
    if text not in ROLES:
        raise Invalid(path, f"must be one of {', '.join(ROLES)}, got {text!r}")
    return text


def _host_port(value: object, path: KeyPath) -> str:
    text = string(value, path)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(path, f'must be "host:port", got {text!r}')
    return text
