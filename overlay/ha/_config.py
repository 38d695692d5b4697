"""``ha.toml``: what the HA agent of one pair member needs, written by the deployer at launch.

```toml
[ha]
region = "us-west-2"
own_eni_id = "eni-0123456789abcdef0"
peer_eni_id = "eni-0fedcba9876543210"
floating_private_ip = "10.20.1.10"
allocation_id = "eipalloc-0123456789abcdef0"
peer_grpc = "10.20.1.12:7000"
heartbeat_interval = 0.5   # optional, seconds
dead_after = 3             # optional, missed heartbeats
hold_down = 10.0           # optional, seconds
api_check_interval = 5.0   # optional, seconds
ca = "/etc/overlay/tls/ca.pem"      # mutual TLS toward the peer's health service (this
cert = "/etc/overlay/tls/node.pem"  # node's own certificate will do), or insecure = true
key = "/etc/overlay/tls/node.key"
```

A bad file is refused with ``overlay.config.ConfigError`` naming the line and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overlay.config import (
    TLS_KEYS,
    Invalid,
    Reader,
    Table,
    grpc_tls,
    integer,
    parse_toml,
    read_text,
    seconds,
    string,
)

from ._agent import HaAgentConfig

_KEYS = (
    "region",
    "own_eni_id",
    "peer_eni_id",
    "floating_private_ip",
    "allocation_id",
    "peer_grpc",
    "heartbeat_interval",
    "dead_after",
    "hold_down",
    "api_check_interval",
    *TLS_KEYS,
)


def load_ha_config(path: str | Path) -> HaAgentConfig:
    """Read and check ``ha.toml``.

    Raises:
        ConfigError: unreadable, not TOML, an unknown or missing key, or a bad value.
    """
    return parse_ha_config(read_text(path), source=str(path))


def parse_ha_config(text: str, *, source: str = "ha.toml") -> HaAgentConfig:
    return parse_toml(text, source=source, build=_build)


def _build(root: dict[str, object]) -> HaAgentConfig:
    Table(root, (), ("ha",))
    table = Table(root.get("ha"), ("ha",), _KEYS)
    optional: dict[str, Reader[Any]] = {
        "heartbeat_interval": seconds,
        "dead_after": integer(1, 100),
        "hold_down": seconds,
        "api_check_interval": seconds,
    }
    options = {key: table.require(key, read) for key, read in optional.items() if table.has(key)}
    try:
        return HaAgentConfig(
            region=table.require("region", string),
            own_eni_id=table.require("own_eni_id", string),
            peer_eni_id=table.require("peer_eni_id", string),
            floating_private_ip=table.require("floating_private_ip", string),
            allocation_id=table.require("allocation_id", string),
            peer_grpc_target=table.require("peer_grpc", string),
            tls_files=grpc_tls(table, ("ha",)),
            **options,
        )
    except ValueError as error:
        # HaAgentConfig's own checks (an address that does not parse, the same ENI twice).
        raise Invalid(("ha",), str(error)) from None
