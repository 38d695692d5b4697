"""Two AZs per region: a call lives on one AZ's nodes, and losing an AZ loses only its calls.

The lab runs one node per AZ (``usw2-a``, ``usw2-b``, ..., eight processes). Every node's
dialplan sends calls out through either AZ of us-east-1, so each call is anchored on one ingress
node (the one its caller sent the INVITE to) and one egress node (picked by the Call-ID's
rendezvous hash), and both edges anchor its media in their own relay: a call's signalling and
audio never depend on the other AZ's nodes. Eight calls cover every (ingress AZ, egress AZ)
pair twice; with RTP flowing both ways, the test kills the egress region's AZ a, then the
ingress region's AZ b, and checks that exactly the calls anchored on a dead node went silent,
that all the others kept their audio without a gap, that a new call still gets through, and
that no relay port stays taken (after BYE, a refused call, or a call whose other edge died).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import pytest
import trio

from overlay.lab.lab import EGRESS, INGRESS, Lab, open_lab
from overlay.lab.rtp import Callee, Caller, RtpEndpoint, SipSocket
from overlay.lab.topology import SIP_PORT, lab_node_ids
from overlay.routing import choose_egress

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.slow]

STREAM_S = 9.0
KILL_EGRESS_AT = 3.0  # seconds into the streams
KILL_INGRESS_AT = 6.0
INACTIVITY_S = 3.0


class Leg:
    """One call: its caller's sockets, where it entered and where it left the overlay."""

    def __init__(self, sip: SipSocket, rtp: RtpEndpoint, callee_rtp: RtpEndpoint) -> None:
        self.sip, self.rtp, self.callee_rtp = sip, rtp, callee_rtp
        self.caller: Caller | None = None
        self.ingress = self.egress = ""

    def place(self, lab: Lab, ingress: str, egress: str) -> Caller:
        """A caller toward ``ingress`` whose Call-ID the overlay anchors on ``egress``."""
        for n in itertools.count():
            call_id = f"az-{n}-{self.sip.port}@{self.sip.host}"
            if choose_egress(tuple(lab.site(EGRESS)), call_id, ingress, lambda _: True) == egress:
                break
        caller = Caller(self.sip, (lab.nodes[ingress].host, SIP_PORT), self.rtp.address)
        caller.call_id = call_id
        self.caller, self.ingress, self.egress = caller, ingress, egress
        return caller


@pytest.mark.trio
async def test_losing_an_az_loses_only_the_calls_anchored_in_it(
    loopback_host: Callable[[], str],
) -> None:
    hosts = {node_id: loopback_host() for node_id in lab_node_ids(azs=2)}
    caller_host, callee_host = loopback_host(), loopback_host()
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        callee_sip = await enter(SipSocket.open(callee_host))
        legs = [
            Leg(
                await enter(SipSocket.open(caller_host)),
                await enter(RtpEndpoint.open(caller_host)),
                await enter(RtpEndpoint.open(callee_host)),
            )
            for _ in range(9)
        ]
        callee = Callee(callee_sip, [leg.callee_rtp.address for leg in legs])
        lab = await enter(
            open_lab(
                hosts,
                uas_host=callee_host,
                uac_host=caller_host,
                callee=(callee_sip.host, callee_sip.port),
                azs=2,
                inactivity_timeout=INACTIVITY_S,
            )
        )
        nursery = await enter(trio.open_nursery())
        nursery.start_soon(callee.serve)
        await lab.wait_all_links_up(within=30)
        ingress_a, ingress_b = lab.site(INGRESS)
        egress_a, egress_b = lab.site(EGRESS)

        calls, late = legs[:8], legs[8]
        pairs = itertools.product((ingress_a, ingress_b), (egress_a, egress_b))
        for leg, (ingress, egress) in zip(calls, itertools.cycle(pairs), strict=False):
            caller = leg.place(lab, ingress, egress)
            await caller.invite()
            # Both edges anchored the media on the node that carries the signalling.
            assert caller.answer_media is not None
            assert caller.answer_media[0] == hosts[ingress]
            assert (await callee.peer_media(caller.call_id))[0] == hosts[egress]

        dead_at: dict[str, float] = {}
        async with trio.open_nursery() as streams:
            for leg in calls:
                assert leg.caller is not None
                assert leg.caller.answer_media is not None
                offer = await callee.peer_media(leg.caller.call_id)
                streams.start_soon(leg.rtp.stream, leg.caller.answer_media, STREAM_S)
                streams.start_soon(leg.callee_rtp.stream, offer, STREAM_S)
            start = trio.current_time()
            await trio.sleep_until(start + KILL_EGRESS_AT)
            lab.kill(egress_a)
            dead_at[egress_a] = trio.current_time()
            await trio.sleep_until(start + KILL_INGRESS_AT)
            lab.kill(ingress_b)
            dead_at[ingress_b] = trio.current_time()

        survivors = [leg for leg in calls if not dead_at.keys() & {leg.ingress, leg.egress}]
        assert len(survivors) == 2  # the (ingress a, egress b) calls
        for leg in calls:
            label = f"{leg.ingress}→{leg.egress}"
            for direction, endpoint in (("callee", leg.callee_rtp), ("caller", leg.rtp)):
                arrivals = endpoint.received.arrivals
                if leg in survivors:
                    gap = endpoint.received.max_gap()
                    print(f"{label} {direction}: {len(arrivals)} packets, longest gap {gap:.3f} s")
                    assert len(arrivals) > 0.9 * STREAM_S / 0.02, (label, direction)
                    assert gap <= 1.0, (label, direction, gap)
                else:
                    # Silent from shortly after its anchor died: it was anchored there.
                    died = min(
                        dead_at[node] for node in (leg.ingress, leg.egress) if node in dead_at
                    )
                    assert arrivals, (label, direction)
                    assert max(t for _, t in arrivals) < died + 0.5, (label, direction)

        # A new call enters at the surviving ingress AZ and leaves at the surviving egress AZ;
        # it offers late (the 2xx carries the offer, the ACK the answer).
        late.caller = caller = Caller(late.sip, (hosts[ingress_a], SIP_PORT), late.rtp.address)
        await caller.invite(delayed=True)
        offer = await callee.peer_media(caller.call_id)
        assert offer[0] == hosts[egress_b]
        assert caller.answer_media is not None
        async with trio.open_nursery() as streams:
            streams.start_soon(late.rtp.stream, caller.answer_media, 1.0)
            streams.start_soon(late.callee_rtp.stream, offer, 1.0)
        assert late.callee_rtp.received.arrivals
        assert late.rtp.received.arrivals

        # A call the callee refuses (486: it has no media address left) frees its ports too.
        async with SipSocket.open(caller_host) as sip, RtpEndpoint.open(caller_host) as rtp:
            busy = Caller(sip, (hosts[ingress_a], SIP_PORT), rtp.address)
            with pytest.raises(RuntimeError, match="486"):
                await busy.invite()

        for leg in [*survivors, late]:
            assert leg.caller is not None
            await leg.caller.bye()
        # Every relay port on the live nodes is free again: BYE ends the survivors' sessions,
        # the inactivity timeout those of the calls whose other edge died.
        with trio.fail_after(INACTIVITY_S + 10):
            while True:
                counters = [await lab.counters(node_id) for node_id in lab.live()]
                if all(c["media.ports_in_use"] == 0 for c in counters):
                    break
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
