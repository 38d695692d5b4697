"""RTP through the four-region lab: audio both ways, and a transit region killed mid-call.

A caller and a callee (``overlay.lab.rtp``: a minimal SIP UA and an RTP endpoint sending a
20 ms stream each way) set up one call through real node processes; each edge anchors the
media in its fastpath relay, and RTP crosses the overlay hop by hop. The gap is measured on
the receiving endpoints from packet arrival times.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from overlay.lab.lab import EGRESS, INGRESS, open_lab
from overlay.lab.rtp import Callee, Caller, RtpEndpoint, SipSocket
from overlay.lab.topology import REGIONS, SIP_PORT

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.slow]

DIRECT = [INGRESS, EGRESS]
STREAM_S = 6.0


@pytest.mark.trio
async def test_audio_survives_the_transit_region_dying(loopback_host: Callable[[], str]) -> None:
    hosts = {node_id: loopback_host() for node_id, _ in REGIONS}
    caller_host, callee_host = loopback_host(), loopback_host()
    async with (
        RtpEndpoint.open(caller_host) as caller_rtp,
        RtpEndpoint.open(callee_host) as callee_rtp,
        SipSocket.open(caller_host) as caller_sip,
        SipSocket.open(callee_host) as callee_sip,
    ):
        callee = Callee(callee_sip, [callee_rtp.address])
        callee_address = (callee_sip.host, callee_sip.port)
        async with (
            open_lab(
                hosts, uas_host=callee_host, uac_host=caller_host, callee=callee_address
            ) as lab,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(callee.serve)
            await lab.wait_all_links_up(within=15)
            await lab.wait_path(INGRESS, EGRESS, lambda p: p == DIRECT, within=15)
            # The direct link is degraded, so the call's media crosses a transit region.
            await lab.degrade(INGRESS, EGRESS, delay_ms=150.0, loss_ratio=0.0)
            path, _ = await lab.wait_path(INGRESS, EGRESS, lambda p: p != DIRECT, within=5)
            transit = path[1]

            caller = Caller(caller_sip, (hosts[INGRESS], SIP_PORT), caller_rtp.address)
            await caller.invite()
            # Each endpoint was told to send to its own edge's relay, not to the other.
            assert caller.answer_media is not None
            assert caller.answer_media[0] == hosts[INGRESS]
            offer_media = await callee.peer_media(caller.call_id)
            assert offer_media[0] == hosts[EGRESS]

            async with trio.open_nursery() as streams:
                streams.start_soon(caller_rtp.stream, caller.answer_media, STREAM_S)
                streams.start_soon(callee_rtp.stream, offer_media, STREAM_S)
                await trio.sleep(STREAM_S / 3)  # audio flows, through the transit
                # The transit relays the media of a call it holds no state for.
                through = await lab.counters(transit)
                assert through["media.overlay_in.packets"] > 50
                assert through["media.relay_sessions"] == 0
                killed_at = trio.current_time()
                lab.kill(transit)
            await caller.bye()
            # Both edges freed the call's relay ports.
            for node_id in DIRECT:
                counters = await lab.counters(node_id)
                assert (counters["media.sessions"], counters["media.ports_in_use"]) == (0, 0)

            for name, endpoint, sent in (
                ("callee", callee_rtp, caller_rtp.sent),
                ("caller", caller_rtp, callee_rtp.sent),
            ):
                received = endpoint.received
                got = len(received.arrivals)
                assert got > 0.5 * sent, f"{name} got {got} of {sent} packets"
                # Packets kept coming after the kill: the call survived it.
                assert any(t > killed_at + 1.5 for _, t in received.arrivals), name
                gap = received.max_gap()
                print(f"{name}: {got}/{sent} packets, longest gap {gap * 1000:.0f} ms")
                assert gap <= 1.0, f"{name}: {gap:.3f} s without audio"
            nursery.cancel_scope.cancel()
