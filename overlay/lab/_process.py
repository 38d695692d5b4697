"""Stopping the lab's child processes (nodes, SIPp), always by their own PID."""

from __future__ import annotations

import contextlib
import signal
from typing import Final

import trio

TERM_GRACE_S: Final = 5.0


async def stop_process(process: trio.Process) -> None:
    """SIGTERM, SIGKILL after TERM_GRACE_S, always reap. Shielded: runs during cancellation."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(TERM_GRACE_S):
                await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
