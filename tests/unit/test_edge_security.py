"""overlay.shell.security: one log line per block, unblock and overload episode, on trio's clock."""

from __future__ import annotations

import dataclasses

import pytest
import structlog.testing
import trio
import trio.testing

from overlay.config import OverloadSection, SecuritySection
from overlay.security import EdgeGuard, Overload
from overlay.shell.security import EdgeSecurity
from overlay.sip import Request
from tests.unit.sip_helpers import parse, request

SCANNER = "192.0.2.66"


def _scan() -> Request:
    message = parse(request("OPTIONS", extra=("User-Agent: friendly-scanner",)))
    assert isinstance(message, Request)
    return message


@pytest.mark.trio
async def test_one_line_per_block_and_per_unblock(autojump_clock: trio.testing.MockClock) -> None:
    section = dataclasses.replace(SecuritySection(), block_time=30.0)
    guard = EdgeGuard(section)
    security = EdgeSecurity(guard)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(security.run)
            assert guard.screen(SCANNER, trio.current_time())
            guard.admit(_scan(), SCANNER, trio.current_time())
            for _ in range(1000):  # a flood while blocked: still two lines in all
                assert not guard.screen(SCANNER, trio.current_time())
                await trio.sleep(0.01)
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    assert logs == [
        {
            "event": "source blocked",
            "log_level": "warning",
            "source": SCANNER,
            "reason": "user_agent",
            "detail": "friendly-scanner",
            "seconds": 29,  # logged at the next housekeeping tick, up to a second later
        },
        {"event": "source unblocked", "log_level": "info", "source": SCANNER, "dropped": 1000},
    ]


@pytest.mark.trio
async def test_overload_episode_lines(autojump_clock: trio.testing.MockClock) -> None:
    guard = EdgeGuard(SecuritySection())
    overload = Overload(OverloadSection(), inner=guard)
    security = EdgeSecurity(guard, overload)
    assert security.admission is overload
    assert security.backlog is not None
    invite = parse(request("INVITE"))
    assert isinstance(invite, Request)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(security.run)
            for wait in (0.0, 0.1, 0.15, 0.2, 0.25, 0.3):  # the node falls further behind
                security.backlog(wait, trio.current_time())
                await trio.sleep(0.1)
            for _ in range(3):
                assert overload.admit(invite, "127.0.0.9", trio.current_time()) is not None
            security.backlog(0.0, trio.current_time())
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert [(entry["event"], entry.get("backlog_ms", entry.get("refused"))) for entry in logs] == [
        ("overload: refusing new calls", 200),
        ("overload over", 3),
    ]
