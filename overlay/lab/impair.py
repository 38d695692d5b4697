"""A UDP impairment relay: delay, jitter and loss on the path between two programs, both ways.

The lab's nodes impair what they send themselves (``overlay.shell.transport.Impairments``).
A program without such a layer (Kamailio, SIPp, a node seen from outside) gets its impaired
path from this relay instead, put between it and the party it talks to::

    client ──► X ═══════ relay ═══════ Y ──► target
    client ◄── X ═══════ relay ═══════ Y ◄── target

* side X (``client_side``) stands in for the target as the client sees it: the client sends to
  X and hears the target's datagrams from X;
* side Y (``target_side``) stands in for the client as the target sees it: the target hears the
  client's datagrams from Y and answers to Y.

Both ends see the relay's address as the other party, so a program that checks or answers to
source addresses (an overlay peer, a SIP proxy or UA replying to the source) works through it.
The client is whoever sent the latest datagram to X (one client at a time); Y takes datagrams
from the target only: anything else is dropped and counted (``foreign``).

Each direction has its own ``Fault`` (delay, jitter, loss, blackhole: the record the node's own
fault injection uses), replaced at run time with ``impair``: a datagram gets the fault in force
when it arrives, and one already held keeps its departure time. Loss and jitter are drawn from
one ``random.Random(seed)``; without a seed one is drawn and kept in ``seed``, so a run can be
repeated. Jitter is uniform in ``[0, jitter_ms]`` on top of the delay, and jittered datagrams
may overtake each other, as on a real network. Datagrams are held in a ``DelayLine`` (the one
the node's own fault injection uses) per direction, on trio's clock; the relay itself adds a
task switch and a loopback send (tens of µs) to every datagram, delayed or not.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from overlay.shell.transport import DelayLine, Fault

__all__ = [
    "NO_FAULT",
    "DirectionStatistics",
    "ImpairmentRelay",
    "RelayStatistics",
    "open_impairment_relay",
]

NO_FAULT = Fault()
#: The largest UDP payload.
MAX_DATAGRAM = 65535

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class DirectionStatistics:
    """One direction's counts since the relay opened."""

    received: int  # datagrams that arrived for this direction
    forwarded: int  # sent on
    dropped: int  # dropped by the fault in force (loss or blackhole)
    held: int  # delayed, not sent yet
    send_errors: int  # the kernel refused the send (counted, not retried)


@dataclass(frozen=True, slots=True)
class RelayStatistics:
    """``ImpairmentRelay.statistics()``."""

    to_target: DirectionStatistics  # client → X → Y → target
    to_client: DirectionStatistics  # target → Y → X → client
    foreign: int  # datagrams to Y from another address than the target (dropped)
    client: Address | None  # the client as last seen on X


class _Direction:
    """The datagrams of one direction: the fault's verdict on arrival, then a delay line, then
    a non-blocking send from ``sock`` (the side they leave by)."""

    def __init__(self, rng: random.Random, fault: Fault, sock: socket.socket) -> None:
        self.fault = fault
        self._rng = rng
        self._sock = sock
        self.line = DelayLine()
        self.received = self.forwarded = self.dropped = self.send_errors = 0

    def offer(self, data: bytes, destination: Address) -> None:
        """Drop ``data`` or schedule it for ``destination`` (never blocks)."""
        self.received += 1
        fault = self.fault
        if fault.blackhole or (fault.loss_ratio and self._rng.random() < fault.loss_ratio):
            self.dropped += 1
            return
        delay_ms = fault.delay_ms
        if fault.jitter_ms:
            delay_ms += self._rng.uniform(0.0, fault.jitter_ms)
        self.line.schedule(delay_ms / 1000.0, functools.partial(self._send, data, destination))

    def _send(self, data: bytes, destination: Address) -> None:
        try:
            self._sock.sendto(data, destination)
        except OSError:  # a full buffer (the socket never blocks) or an ICMP error
            self.send_errors += 1
        else:
            self.forwarded += 1

    def statistics(self) -> DirectionStatistics:
        return DirectionStatistics(
            self.received, self.forwarded, self.dropped, len(self.line), self.send_errors
        )


class ImpairmentRelay:
    """A running relay; see the module docstring and ``open_impairment_relay``.

    Attributes:
        client_side: X, the address the client sends to (it stands in for the target).
        target_side: Y, the address the target hears the client from.
        target: where the client's datagrams go.
        seed: the seed of the loss and jitter draws.
    """

    def __init__(
        self,
        x: socket.socket,
        y: socket.socket,
        target: Address,
        *,
        seed: int,
        to_target: Fault,
        to_client: Fault,
    ) -> None:
        self._x, self._y = x, y
        self.client_side: Address = x.getsockname()
        self.target_side: Address = y.getsockname()
        self.target = target
        self.seed = seed
        rng = random.Random(seed)
        self._to_target = _Direction(rng, to_target, y)
        self._to_client = _Direction(rng, to_client, x)
        self._client: Address | None = None
        self._foreign = 0

    def impair(self, *, to_target: Fault | None = None, to_client: Fault | None = None) -> None:
        """Replace the fault of one direction or both (``None`` leaves that one as it is).

        Datagrams that arrive from now on get the new fault; those already held keep their
        departure time."""
        if to_target is not None:
            self._to_target.fault = to_target
        if to_client is not None:
            self._to_client.fault = to_client

    def impair_both(self, fault: Fault) -> None:
        """The same fault on both directions (``NO_FAULT`` heals the path)."""
        self.impair(to_target=fault, to_client=fault)

    def faults(self) -> tuple[Fault, Fault]:
        """The faults in force: (to the target, to the client)."""
        return self._to_target.fault, self._to_client.fault

    def statistics(self) -> RelayStatistics:
        return RelayStatistics(
            self._to_target.statistics(),
            self._to_client.statistics(),
            self._foreign,
            self._client,
        )

    async def serve(self) -> None:
        """Relay until cancelled (``open_impairment_relay`` runs it)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._to_target.line.run)
            nursery.start_soon(self._to_client.line.run)
            nursery.start_soon(self._from_client)
            nursery.start_soon(self._from_target)

    async def _from_client(self) -> None:
        while True:
            data, source = await _receive(self._x)
            self._client = source
            self._to_target.offer(data, self.target)

    async def _from_target(self) -> None:
        while True:
            data, source = await _receive(self._y)
            if source != self.target:
                self._foreign += 1
            elif self._client is None:
                # The target spoke first: there is nobody to give it to yet.
                self._foreign += 1
            else:
                self._to_client.offer(data, self._client)


async def _receive(sock: socket.socket) -> tuple[bytes, Address]:
    """The next datagram; an ICMP error reported on the socket is not one (skipped)."""
    while True:
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except (ConnectionRefusedError, ConnectionResetError):
            continue
        await trio.lowlevel.checkpoint()  # a flood on one side must not starve the other
        return data, (source[0], source[1])


@contextlib.asynccontextmanager
async def open_impairment_relay(
    target: Address,
    *,
    client_side: Address,
    target_side: Address,
    to_target: Fault = NO_FAULT,
    to_client: Fault = NO_FAULT,
    seed: int | None = None,
) -> AsyncIterator[ImpairmentRelay]:
    """Relay UDP between a client and ``target`` until the block ends.

    Args:
        target: the address the client's datagrams go to.
        client_side: X, bound for the client to send to (port 0: any free port).
        target_side: Y, bound to send to the target from (port 0: any free port).
        to_target, to_client: each direction's fault to start with (``impair`` changes them).
        seed: of the loss and jitter draws; drawn when ``None`` (read it in ``relay.seed``).

    Raises:
        OSError: an address could not be bound.

    Resource handling: both sockets are closed and the held datagrams discarded on exit.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as x,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as y,
    ):
        for sock, address in ((x, client_side), (y, target_side)):
            sock.setblocking(False)
            sock.bind(address)
        relay = ImpairmentRelay(x, y, target, seed=seed, to_target=to_target, to_client=to_client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay.serve)
                try:
                    yield relay
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            for sock in (x, y):
                trio.lowlevel.notify_closing(sock)
