"""SipTransport tells when its UDP receive loop falls behind the socket and when it catches up."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

from overlay.shell.transport import SipTransport, bind_listeners
from overlay.shell.transport._sip import UDP_BATCH
from overlay.sip import Peer

pytestmark = pytest.mark.integration


@pytest.mark.trio
async def test_backlog_reported_once_behind_and_once_caught_up(
    loopback_host: Callable[[], str],
) -> None:
    reports: list[float | None] = []
    delivered: list[bytes] = []
    all_in = trio.Event()
    queued = 3 * UDP_BATCH + 5

    def deliver(data: bytes, peer: Peer) -> None:
        delivered.append(data)
        if len(delivered) in (queued, queued + 10):
            all_in.set()

    transport = SipTransport(
        deliver=deliver, transport_error=lambda peer: None, backlog=reports.append
    )
    host = loopback_host()
    bound = bind_listeners([("udp", host, 0)])
    address = (host, bound[0].listener.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((loopback_host(), 0))
        # Waiting in the socket before the loop first reads it: more than one batch.
        for n in range(queued):
            sender.sendto(b"x%d" % n, address)
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            await nursery.start(transport.serve, bound)
            with trio.fail_after(5):
                await all_in.wait()
            [behind, caught_up] = reports
            assert behind is not None
            assert started <= behind <= trio.current_time()
            assert caught_up is None
            # A few datagrams at a time are read in one batch: nothing to report.
            all_in = trio.Event()
            for n in range(10):
                sender.sendto(b"y%d" % n, address)
            with trio.fail_after(5):
                await all_in.wait()
            assert len(reports) == 2
            nursery.cancel_scope.cancel()
    assert len(delivered) == queued + 10
