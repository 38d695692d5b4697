"""The node's wall clock, read in one place.

Protocol time is trio's clock (``trio.current_time()``, a ``MockClock`` in tests) and is passed
to the cores as ``now``. The wall clock is only for what the outside world reads: certificate
validity, the start of an LSA sequence, timestamps in the NOC's answers and in CloudWatch, and
the age of the kernel's receive timestamps on datagrams, which are on the wall clock (overload
control's backlog, ``overlay.shell.transport``).
"""

from __future__ import annotations

import datetime
import time


def wall_time() -> float:
    """Seconds since the epoch."""
    return time.time()


def wall_time_ns() -> int:
    """Nanoseconds since the epoch (the clock of ``SO_TIMESTAMPNS``)."""
    return time.time_ns()


def wall_datetime() -> datetime.datetime:
    """The current UTC time."""
    return datetime.datetime.now(datetime.UTC)
