"""One node of an active/standby pair: in the mesh only while it holds the pair's address.

Both members of a pair run the same overlay node (one node id, one address). The standby's node
binds the pair's address before it holds it (a non-local bind) and serves everything but the
mesh: were it to probe, flood or dial its peers, they would meet the same node twice. The HA
agent adds the address to the machine that holds it; this module sees that from the kernel's
own routing (a datagram socket "connected" to a local address takes that address as its
source, to any other address the interface's primary) and joins the mesh then. A node that
loses the address was taken over: it stops (``PairAddressLost``) and its service manager
starts it again, as a standby, with nothing left of the old mesh sessions.
"""

from __future__ import annotations

import socket

import structlog
import trio

from overlay.config import PairSection
from overlay.grpc import GrpcBridge

from .mesh import Mesh

log = structlog.get_logger("overlay.pair")

#: Any port will do: connecting a datagram socket only asks the routing table, sends nothing.
_DISCARD_PORT = 9


class PairAddressLost(RuntimeError):
    """The pair's address left this machine while its node was in the mesh."""


def holds_address(address: str) -> bool:
    """Whether ``address`` is assigned to this machine (not merely bindable)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, _DISCARD_PORT))
        except OSError:  # no route at all: certainly not ours
            return False
        return bool(probe.getsockname()[0] == address)


async def run_mesh(pair: PairSection | None, mesh: Mesh, bridge: GrpcBridge) -> None:
    """Run ``mesh`` for as long as the node runs, or, for a pair member, from the moment it
    holds the pair's address until it loses it.

    Raises:
        PairAddressLost: the address went away after the mesh had started.
    """
    if pair is None:
        mesh.joined = True
        await mesh.run(bridge)
        return
    if not holds_address(pair.address):
        log.info("standby: waiting for the pair's address", address=pair.address)
        # Polled: the kernel tells no one when an address is added (short of netlink).
        while not holds_address(pair.address):  # noqa: ASYNC110
            await trio.sleep(pair.check_interval)
    log.warning("pair address held: joining the mesh", address=pair.address)
    mesh.joined = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mesh.run, bridge)
        while holds_address(pair.address):  # noqa: ASYNC110
            await trio.sleep(pair.check_interval)
        log.error("pair address lost: leaving the mesh and stopping", address=pair.address)
        raise PairAddressLost(f"the pair's address {pair.address} left this machine")
