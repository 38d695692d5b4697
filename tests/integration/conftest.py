"""Fixtures for tests with real sockets."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """trio's MockClock for tests that drive real sockets.

    A small autojump threshold rather than 0, so that time never jumps while a datagram is in
    flight (trio's own DTLS tests do the same). A test uses it by naming ``clock``.
    """
    return trio.testing.MockClock(autojump_threshold=0.01)
