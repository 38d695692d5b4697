"""The node's wall clock, read in one place.

Protocol time is trio's clock (``trio.current_time()``, a ``MockClock`` in tests) and is passed
to the cores as ``now``. The wall clock is only for what the outside world reads: certificate
validity, the start of an LSA sequence, timestamps in the NOC's answers and in CloudWatch.
"""

from __future__ import annotations

import datetime
import time


def wall_time() -> float:
    """Seconds since the epoch."""
    return time.time()


def wall_datetime() -> datetime.datetime:
    """The current UTC time."""
    return datetime.datetime.now(datetime.UTC)
