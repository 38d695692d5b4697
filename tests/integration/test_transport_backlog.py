"""SipTransport tells how long datagrams waited in its UDP socket while its receive loop is
behind, and when it catches up."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

from overlay.shell.transport import SipTransport, bind_listeners
from overlay.shell.transport._sip import SO_TIMESTAMPNS, UDP_BATCH, _Backlog
from overlay.sip import Peer

pytestmark = pytest.mark.integration


async def stamped_on_arrival(
    sender: socket.socket, receiver: socket.socket, address: tuple[str, int]
) -> None:
    """Until the kernel stamps datagrams as they arrive. Turning SO_TIMESTAMPNS on enables
    the kernel's timestamping through deferred work: until it has run, with no other socket of
    the machine asking for stamps, a datagram is stamped when it is read."""
    receiver.setblocking(False)
    with trio.fail_after(5):
        while True:
            sender.sendto(b"stamp", address)
            await trio.sleep(0.05)  # the datagram waits in the socket this long
            await trio.lowlevel.wait_readable(receiver)
            _, ancillary, _, _ = receiver.recvmsg(64, 64)
            age = trio.current_time() - _Backlog.arrival(ancillary)
            if age >= 0.04:
                return


@pytest.mark.trio
async def test_backlog_reported_for_each_batch_behind_and_once_caught_up(
    loopback_host: Callable[[], str],
) -> None:
    reports: list[tuple[float, float]] = []  # (wait, now)
    delivered: list[bytes] = []
    all_in = trio.Event()
    queued = 3 * UDP_BATCH + 5

    def deliver(data: bytes, peer: Peer) -> None:
        delivered.append(data)
        if len(delivered) in (queued, queued + 10):
            all_in.set()

    transport = SipTransport(
        deliver=deliver,
        transport_error=lambda peer: None,
        backlog=lambda wait, now: reports.append((wait, now)),
    )
    host = loopback_host()
    bound = bind_listeners([("udp", host, 0)])
    address = (host, bound[0].listener.port)
    # As on a node that has been serving: the kernel stamps datagrams as they arrive only once
    # the option is on (the transport turns it on when it starts; before, it stamps them when
    # they are read).
    bound[0].sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((loopback_host(), 0))
        await stamped_on_arrival(sender, bound[0].sock, address)
        # Waiting in the socket before the loop first reads it: more than one batch.
        for n in range(queued):
            sender.sendto(b"x%d" % n, address)
        await trio.sleep(0.2)  # they wait there at least this long
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            await nursery.start(transport.serve, bound)
            with trio.fail_after(5):
                await all_in.wait()
            # Before each of the three full batches, with more left in the socket: how long
            # its first datagram waited, measured by the kernel's receive timestamp. The
            # fourth batch empties the socket: caught up.
            assert len(reports) == 4, reports
            for wait, now in reports[:3]:
                assert 0.2 <= wait < 0.2 + (now - started) + 0.1, reports
            assert reports[3][0] == 0.0
            # A few datagrams at a time are read in one batch: nothing to report.
            all_in = trio.Event()
            for n in range(10):
                sender.sendto(b"y%d" % n, address)
            with trio.fail_after(5):
                await all_in.wait()
            assert len(reports) == 4
            nursery.cancel_scope.cancel()
    assert len(delivered) == queued + 10
