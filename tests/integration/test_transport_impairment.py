"""SipTransport with fault injection over real UDP: delayed, dropped and clean sends."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio

from overlay.shell.transport import Fault, Impairments, SipTransport, bind_listeners
from overlay.sip import Peer

pytestmark = pytest.mark.integration


@pytest.mark.trio
async def test_udp_sends_to_a_peer_are_delayed_and_dropped_as_injected(
    loopback_host: Callable[[], str],
) -> None:
    host = loopback_host()
    receiver = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await receiver.bind((host, 0))
    peer_address = receiver.getsockname()
    other = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await other.bind((host, 0))
    impairments = Impairments(
        rng=random.Random(0),
        base_delay_ms={"b": 100.0},
        addresses={"b": [peer_address]},
    )
    transport = SipTransport(
        deliver=lambda data, peer: None, transport_error=lambda peer: None, impairments=impairments
    )
    bound = bind_listeners([("udp", host, 0)])
    to_b = Peer("udp", *peer_address)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, bound)
        # Base delay: the datagram arrives no sooner than 100 ms after it was sent.
        start = trio.current_time()
        transport.send(b"first", to_b)
        with trio.fail_after(5):
            assert await receiver.recv(100) == b"first"
        assert trio.current_time() - start >= 0.099
        # Addresses that are not overlay peers are never impaired.
        impairments.inject("*", Fault(blackhole=True))
        transport.send(b"not a peer", Peer("udp", *other.getsockname()))
        with trio.fail_after(5):
            assert await other.recv(100) == b"not a peer"
        # Blackholed: dropped and counted; cleared: flows again.
        transport.send(b"lost", to_b)
        assert transport.statistics().counters["impairment drop"] == 1
        impairments.clear()
        transport.send(b"after", to_b)
        with trio.fail_after(5):
            assert await receiver.recv(100) == b"after"
        nursery.cancel_scope.cancel()
    receiver.close()
    other.close()
