"""A fleet in a box: moto's EC2 mirrored into Linux network namespaces, each instance booted
from its own user data (``fabric`` explains the network, ``instance`` the boot)."""

from tests.fleet._netns import CommandError, Process
from tests.fleet.fabric import (
    INET_HOSTS,
    INTERNET,
    PUBLIC_POOL,
    ROUTER,
    TRANSIT,
    Fabric,
    open_fabric,
    unavailable,
)
from tests.fleet.instance import BootError, Instance

__all__ = [
    "INET_HOSTS",
    "INTERNET",
    "PUBLIC_POOL",
    "ROUTER",
    "TRANSIT",
    "BootError",
    "CommandError",
    "Fabric",
    "Instance",
    "Process",
    "open_fabric",
    "unavailable",
]
