"""One node of an active/standby pair: in the mesh only while it holds the pair's address.

Both members of a pair run the same overlay node (one node id, one address). The standby's node
binds the pair's address before it holds it (a non-local bind) and serves everything but the
mesh: were it to probe, flood or dial its peers, they would meet the same node twice. The HA
agent adds the address to the machine that holds it; this module sees that from the kernel's
own routing (a datagram socket "connected" to a local address takes that address as its
source, to any other address the interface's primary) and joins the mesh then. A node that
loses the address was taken over: it stops (``PairAddressLost``) and its service manager
starts it again, as a standby, with nothing left of the old mesh sessions.

With ``[pair] hold = "file"`` (two members on one machine: the lab) the kernel cannot tell,
since every 127/8 address is local to both: the member holds the address while the hold file
the HA agent writes names it (``overlay.ha.read_holder``). Such a standby binds nothing of the
pair's address before it holds it (``wait_held``; the node binds then, in one sweep).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import structlog
import trio

from overlay.config import PairSection
from overlay.grpc import GrpcBridge
from overlay.ha import read_holder

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


def holds(pair: PairSection) -> bool:
    """Whether this member holds the pair's address, told as ``pair.hold`` says."""
    if pair.hold_file is not None:  # hold = "file" (the configuration sets it then only)
        return read_holder(pair.hold_file) == pair.member
    return holds_address(pair.address)


async def wait_held(pair: PairSection) -> None:
    """Return once this member holds the pair's address (at once if it does)."""
    if not holds(pair):
        log.info("standby: waiting for the pair's address", address=pair.address, hold=pair.hold)
        # Polled: the kernel tells no one when an address is added (short of netlink); the
        # hold file is polled alike, so both modes join within one check_interval.
        while not holds(pair):  # noqa: ASYNC110
            await trio.sleep(pair.check_interval)


async def run_mesh(
    pair: PairSection | None,
    mesh: Mesh,
    bridge: GrpcBridge,
    take_over: Callable[[], None] | None = None,
) -> None:
    """Run ``mesh`` for as long as the node runs, or, for a pair member, from the moment it
    holds the pair's address until it loses it; ``take_over`` runs once it holds, before it
    joins (a standby promotes what it replicated of its active's calls).

    Raises:
        PairAddressLost: the address went away after the mesh had started.
    """
    if pair is None:
        mesh.joined = True
        await mesh.run(bridge)
        return
    await wait_held(pair)
    if take_over is not None:
        take_over()
    log.warning("pair address held: joining the mesh", address=pair.address)
    mesh.joined = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mesh.run, bridge)
        while holds(pair):  # noqa: ASYNC110
            await trio.sleep(pair.check_interval)
        log.error("pair address lost: leaving the mesh and stopping", address=pair.address)
        raise PairAddressLost(f"the pair's address {pair.address} left this machine")
