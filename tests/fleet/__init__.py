"""A fleet in a box: moto's EC2 mirrored into Linux network namespaces, each instance booted
from its own user data (``fabric`` explains the network, ``instance`` the boot). Needs root:
skip with ``unavailable()``'s reason otherwise.

Usage::

    with open_fabric(fleet="demo", regions=["us-west-2", "us-east-1"]) as fabric:
        ...                                  # deploy against fabric.endpoint_url
        fabric.sync()                        # moto's fleet into namespaces, routes, NAT
        fabric.boot_all()                    # every instance from its user data
        fabric.wait_ready(instance_id, "overlay.service", 60)
        fabric.start_reconciler()            # follow takeovers made through the EC2 API
        trunk = fabric.inet_address()        # a host of the internet, e.g. for SIPp
        sipp = fabric.run("inet", ["sipp", ...])
        fabric.kill(instance_id)             # an instance's death
        print(fabric.report())               # on failure: what the fabric did, log tails
"""

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
