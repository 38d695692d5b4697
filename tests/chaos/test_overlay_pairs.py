"""Calls survive a pair's takeover, through real node processes, SIPp and RTP (issue 16).

The issue's first "Done when": calls with RTP both ways in progress across two regions; the
active of the egress pair (then, of the ingress pair) is killed with SIGKILL, node and HA agent
at once, as its machine would die. Its standby, which followed every call over gRPC, takes the
address over when its agent has declared the active dead and moved the address through the EC2
API (moto's, ``open_lab(pairs=True)``); every call keeps its audio after a gap no longer than
that takeover plus 200 ms, and ends with its caller's BYE answered 200 end to end.

The agent's bound B is detection (3 missed heartbeats of 0.5 s) plus the EC2 move; each run
measures its own (``Lab.wait_taken_over``'s ``held_s``, from the kill to the hold file naming
the standby) and holds every call's longest silence, in each direction, to ``held_s`` + 200 ms:
the 200 ms are for the standby to see the file (``[pair] check_interval``), bind its relay in
one sweep and the first packets' way through.

Media: each call's offer names an RTP endpoint of the test's own (``overlay.lab.rtp``, SIPp's
``uac_media_bye`` with an injection file), and the minimal callee answers with another; both
stream 20 ms packets for the whole call and record every arrival. The caller (SIPp) hangs up
after the hold; the callee answers the BYE. The lab and the kill are ``overlay.lab.takeover``'s,
which bench/takeover runs too.

A seed (``--chaos-seed N`` or ``OVERLAY_CHAOS_SEED``) draws the moment of the kill; each run
prints it with the command that replays it. The nodes' and agents' logs are kept in the test's
``tmp_path`` (``lab/<member>/node.log``, ``agent.log``).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from overlay.lab.takeover import EGRESS, INGRESS, kill_mid_call, open_takeover_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.sipp,
    pytest.mark.trio,
]

CALLS = 100
RATE = 50.0
#: Each call's hold, from its ACK to its caller's BYE: the calls are placed over CALLS / RATE
#: seconds, the kill comes up to half a second after the last is answered and audio flows,
#: the takeover about 1.5 s later, and every call must then carry audio a while longer.
HOLD_S = 8.0
#: Beyond the measured takeover, how long a call's audio may stay silent: the standby seeing
#: the hold file (check_interval, 50 ms), its bind sweep, the packets' way (the Done-when's).
GAP_MARGIN_S = 0.2


def _replay(request: pytest.FixtureRequest, seed: int) -> str:
    return f"seed {seed}: pytest '{request.node.nodeid}' --chaos-seed {seed}"


def _figures(values: list[float]) -> str:
    """p50 and max of some times in seconds, in ms."""
    return (
        f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
        f" (n={len(values)})"
    )


@pytest.mark.parametrize("victim", [EGRESS, INGRESS], ids=["egress", "ingress"])
async def test_calls_keep_their_audio_through_a_pair_takeover(
    victim: str,
    chaos_seed: int,
    loopback_host: Callable[[], str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    rng = random.Random(chaos_seed)
    print(_replay(request, chaos_seed))
    async with open_takeover_lab(loopback_host, calls=CALLS, workdir=tmp_path) as lab:
        killed = lab.lab.active_member(victim)
        run = await kill_mid_call(lab, victim, calls=CALLS, rate=RATE, hold_s=HOLD_S, rng=rng)

    takeover, took_over = run.takeover, run.took_over or {}
    forward = {c: media.gaps()[0] for c, media in run.calls.items()}
    back = {c: media.gaps()[1] for c, media in run.calls.items()}
    print(
        f"{victim}: {killed} killed, {takeover.holder} held the address "
        f"{takeover.held_s * 1000:.0f} ms after, answered SIP {takeover.serving_s * 1000:.0f} ms "
        f"after; took over {took_over.get('calls')} calls, "
        f"{took_over.get('media_sessions')} media sessions, {took_over.get('invites')} INVITEs"
    )
    print(f"longest audio gap caller->callee: {_figures(list(forward.values()))}")
    print(f"longest audio gap callee->caller: {_figures(list(back.values()))}")
    bound = takeover.held_s + GAP_MARGIN_S
    print(f"bound: held {takeover.held_s * 1000:.0f} ms + {GAP_MARGIN_S * 1000:.0f} ms")

    # Every call ended with its caller's BYE, answered 200 by the callee through the overlay;
    # none failed, none ended before the takeover.
    assert (run.sipp.calls_successful, run.sipp.calls_failed) == (CALLS, 0), run.sipp.stats
    assert run.ended_before_takeover == 0
    assert run.byes_at_callee == CALLS
    assert takeover.holder != killed
    assert took_over.get("calls") == CALLS
    # Every call kept its audio both ways, and its longest silence in each direction was no
    # longer than the takeover plus the margin: toward the endpoint behind the taken-over
    # node, and toward the other region, which needs a route from the new holder.
    assert len(run.kept()) == CALLS
    behind, routed = ("caller->callee", forward), ("callee->caller", back)
    if victim == INGRESS:
        behind, routed = routed, behind
    for name, gaps in (behind, routed):
        over = {c: round(g, 3) for c, g in gaps.items() if g > bound}
        assert not over, f"{name}: {len(over)} gaps over {bound:.3f} s: {over}"
