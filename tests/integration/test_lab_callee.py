"""The lab's RTP callee (``overlay.lab.rtp.Callee``) as a UAS: its 2xx is sent again until the
ACK comes (RFC 3261 §13.3.1.4), so a 2xx lost in the overlay does not leave a call half set up
(no proxy on the way retransmits a 2xx)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from overlay.lab.rtp import T1, Callee, SipSocket
from overlay.sip import Response, parse_message_untrusted

pytestmark = [pytest.mark.integration, pytest.mark.trio]

INVITE = (
    "INVITE sip:callee@{callee} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {proxy};branch=z9hG4bK-lab-callee\r\n"
    "From: <sip:caller@example.com>;tag=c1\r\n"
    "To: <sip:callee@example.com>\r\n"
    "Call-ID: lab-callee-1\r\n"
    "CSeq: 1 {method}\r\n"
    "Contact: <sip:caller@{proxy}>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


async def test_the_2xx_is_sent_again_until_the_ack(loopback_host: Callable[[], str]) -> None:
    host = loopback_host()
    async with (
        SipSocket.open(host) as callee_sip,
        SipSocket.open(host) as proxy,
        trio.open_nursery() as nursery,
    ):
        callee = Callee(callee_sip, [(host, 40000)])
        nursery.start_soon(callee.serve)
        where = f"{host}:{callee_sip.port}"
        at = f"{host}:{proxy.port}"

        def request(method: str) -> bytes:
            return INVITE.format(callee=where, proxy=at, method=method).encode()

        await proxy.sock.sendto(request("INVITE"), (host, callee_sip.port))
        sent = []
        with trio.fail_after(T1 * 4):
            while len(sent) < 3:  # the answer, then again after T1 and after 2·T1
                message, _ = await proxy.receive()
                assert isinstance(message, Response)
                assert message.status == 200
                sent.append(trio.current_time())
        # Never early; late by a loaded machine's scheduling at most.
        assert T1 - 0.02 <= sent[1] - sent[0] <= T1 + 0.3
        assert 2 * T1 - 0.02 <= sent[2] - sent[1] <= 2 * T1 + 0.3
        ack = parse_message_untrusted(request("ACK").replace(b"INVITE sip", b"ACK sip", 1))
        await proxy.send(ack, (host, callee_sip.port))
        with trio.move_on_after(4 * T1) as quiet:  # no more after the ACK
            await proxy.receive()
        assert quiet.cancelled_caught
        nursery.cancel_scope.cancel()
