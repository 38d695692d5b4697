"""The HA agent of an active/standby pair: a floating private IP and EIP moved by the EC2 API.

``run_agent`` (the trio shell, ``_agent``) checks the peer's gRPC health and drives ``HaCore``
(sans-IO decisions, ``_core``), which asks ``FloatingAddress`` (boto3, ``_ec2``) who holds the
address and when to move it. The agent keeps the machine in step: the address on its interface
(``OsAddress``), or, for two members on one machine (the lab), a file naming the holder
(``HoldFile``), which the nodes read with ``read_holder``.
"""

from ._agent import (
    HEALTH_CHECK_METHOD,
    LIVENESS_SERVICE,
    PEER_UP_METRIC,
    TAKEOVERS_METRIC,
    TAKEOVERS_NAMESPACE,
    HaAgent,
    HaAgentConfig,
    load_agent_tls,
    run_agent,
)
from ._config import HaMember, load_ha_config, parse_ha_config
from ._core import (
    AddressView,
    HaCore,
    HaEvent,
    HaState,
    HaStateError,
    HaStatistics,
    Holder,
    HolderChanged,
    HolderCheck,
    PeerAlive,
    PeerDead,
    Takeover,
    TakeoverSkipped,
    classify,
)
from ._ec2 import (
    API_ERRORS,
    ROLES,
    FloatingAddress,
    MoveReport,
    PairResources,
    find_pair,
    peer_role,
)
from ._hold import HoldFile, read_holder
from ._os import AUTO_INTERFACE, OsAddress, OsAddressError

__all__ = [
    "API_ERRORS",
    "AUTO_INTERFACE",
    "HEALTH_CHECK_METHOD",
    "LIVENESS_SERVICE",
    "PEER_UP_METRIC",
    "ROLES",
    "TAKEOVERS_METRIC",
    "TAKEOVERS_NAMESPACE",
    "AddressView",
    "FloatingAddress",
    "HaAgent",
    "HaAgentConfig",
    "HaCore",
    "HaEvent",
    "HaMember",
    "HaState",
    "HaStateError",
    "HaStatistics",
    "HoldFile",
    "Holder",
    "HolderChanged",
    "HolderCheck",
    "MoveReport",
    "OsAddress",
    "OsAddressError",
    "PairResources",
    "PeerAlive",
    "PeerDead",
    "Takeover",
    "TakeoverSkipped",
    "classify",
    "find_pair",
    "load_agent_tls",
    "load_ha_config",
    "parse_ha_config",
    "peer_role",
    "read_holder",
    "run_agent",
]
