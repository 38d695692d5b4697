"""A pair whose members run two SIP workers each keeps its calls through a takeover (issue 17,
stage 3).

The two-region lab with pairs (``overlay.lab.takeover``), every member with ``sip.workers =
2``: worker i of each standby follows worker i of its active, through the active's worker 0
(``overlay.shell.replication``). Calls with RTP both ways enter at usw2 and leave at use1;
Call-ID steering puts some on each worker. The egress pair's active is killed with SIGKILL
mid-call; its standby's worker 0 binds the SIP sockets and the relay in one sweep and passes
the sockets to worker 1, and both workers promote what they followed, worker 1's media
sessions in worker 0's relay. Every call must keep its audio both ways after the takeover and
end with its caller's BYE answered 200 by the callee.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from overlay.lab.takeover import EGRESS, kill_mid_call, open_takeover_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.sipp, pytest.mark.trio]

WORKERS = 2
CALLS = 20
RATE = 20.0
HOLD_S = 6.0


async def test_calls_on_both_workers_survive_the_takeover_of_a_two_worker_pair(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    async with open_takeover_lab(
        loopback_host, calls=CALLS, workdir=tmp_path, workers=WORKERS
    ) as lab:
        killed = lab.lab.active_member(EGRESS)
        run = await kill_mid_call(
            lab, EGRESS, calls=CALLS, rate=RATE, hold_s=HOLD_S, rng=random.Random(0)
        )

    took_over = run.took_over or {}
    gaps = [max(media.gaps()) for media in run.calls.values()]
    print(
        f"{killed} killed; {run.takeover.holder} held the address {run.takeover.held_s:.2f} s "
        f"after, answered SIP {run.takeover.serving_s:.2f} s after; took over {took_over}; "
        f"longest audio gap {max(gaps) * 1000:.0f} ms"
    )
    # Both workers carried calls (Call-ID steering: crc32 modulo the workers).
    steered = {zlib.crc32(call_id.encode()) % WORKERS for call_id in run.calls}
    assert steered == set(range(WORKERS))
    # Every worker of the new holder took its calls over, all of them together.
    assert took_over.get("workers") == WORKERS
    assert took_over.get("calls") == CALLS
    assert run.takeover.holder != killed
    # Every call kept its audio both ways after the takeover and ended with its BYE answered.
    assert (run.sipp.calls_successful, run.sipp.calls_failed) == (CALLS, 0), run.sipp.stats
    assert run.ended_before_takeover == 0
    assert run.byes_at_callee == CALLS
    assert len(run.kept()) == CALLS
