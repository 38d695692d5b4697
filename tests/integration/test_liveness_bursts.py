"""Liveness echoes from a real relay to a peer that answers in bursts, as a relay whose machine
is too busy to run it on time would: the detection time stretches to the answers' uneven
spacing (never below the configured one, never above four times it) instead of taking the link
down, and comes back to the configured one once the answers are even again. A peer that stops
answering is still detected."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

from fastpath import (
    FLAG_ECHO_REPLY,
    FLAG_ECHO_REQUEST,
    Header,
    Relay,
    decode_header_untrusted,
    encode_header,
)

pytestmark = [pytest.mark.integration, pytest.mark.trio]

A_ID, B_ID = 0xA, 0xB
INTERVAL, DETECTION = 0.02, 0.12


class BurstyPeer:
    """Answers echo requests as a relay does, but holds them and answers ``hold`` seconds'
    worth at once (0: at once); ``answering`` False: not at all."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.hold = 0.0
        self.answering = True
        self._held: list[tuple[bytes, object]] = []

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._release)
            while True:
                data, source = await self.sock.recvfrom(2048)
                header, payload = decode_header_untrusted(data)
                if header.flags != FLAG_ECHO_REQUEST or not self.answering:
                    continue
                reply = Header(header.source, B_ID, header.session, FLAG_ECHO_REPLY)
                self._held.append((encode_header(reply, payload), source))
                if not self.hold:
                    await self._send()

    async def _release(self) -> None:
        while True:
            await trio.sleep(self.hold or INTERVAL)
            await self._send()

    async def _send(self) -> None:
        held, self._held = self._held, []
        for data, destination in held:
            await self.sock.sendto(data, destination)


async def wait_for(check: Callable[[], bool], within: float) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - the relay's thread: no trio event to wait on
            await trio.sleep(0.05)


async def test_bursty_answers_stretch_the_detection_time_instead_of_taking_the_link_down(
    loopback_host: Callable[[], str],
) -> None:
    a = Relay(A_ID, loopback_host(), 0)
    a.start()
    try:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind((loopback_host(), 0))
            peer = BurstyPeer(sock)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.serve)
                a.set_liveness({B_ID: sock.getsockname()}, INTERVAL, DETECTION)

                def state() -> dict[str, object]:
                    return dict(a.liveness()[B_ID])

                await wait_for(lambda: state()["answered"] >= 20, within=5)
                assert state()["detection"] == pytest.approx(DETECTION)
                # Five answers at once every 100 ms: gaps of 0 and 100 ms, none past 120.
                peer.hold = 0.1
                await wait_for(lambda: state()["detection"] > DETECTION * 1.1, within=5)
                await trio.sleep(2)
                bursty = state()
                assert not bursty["silent"]
                assert not a.take_liveness_notice()
                assert DETECTION < bursty["detection"] <= 4 * DETECTION
                # Even again: back to the configured detection time.
                peer.hold = 0.0
                await wait_for(lambda: state()["detection"] < DETECTION * 1.05, within=10)
                # Silent: detected.
                peer.answering = False
                await wait_for(lambda: bool(state()["silent"]), within=2)
                assert a.take_liveness_notice()
                nursery.cancel_scope.cancel()
    finally:
        a.stop()
