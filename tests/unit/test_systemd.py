"""overlay.shell.systemd: READY=1, a watchdog fed every half period, STOPPING=1, on MockClock."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay.shell.systemd import Notifier


def received(sock: socket.socket) -> list[str]:
    states = []
    while True:
        try:
            states.append(sock.recv(256).decode())
        except BlockingIOError:
            return states


@pytest.fixture
def manager(tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


async def serve_for(notifier: Notifier, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await notifier.serve()


@pytest.mark.trio
async def test_ready_then_a_watchdog_every_half_period_then_stopping(
    manager: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = manager
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval == 1.0
    await serve_for(notifier, 3.5)  # watchdog at 0, 1, 2 and 3 s
    assert received(sock) == ["READY=1", *["WATCHDOG=1"] * 4, "STOPPING=1"]
    sock.close()


@pytest.mark.trio
async def test_without_a_watchdog_only_ready_and_stopping(
    manager: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = manager
    await serve_for(Notifier({"NOTIFY_SOCKET": path}), 60.0)
    assert received(sock) == ["READY=1", "STOPPING=1"]
    sock.close()


@pytest.mark.trio
async def test_an_abstract_socket(autojump_clock: trio.testing.MockClock) -> None:
    name = f"overlay-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        await serve_for(Notifier({"NOTIFY_SOCKET": "@" + name}), 1.0)
        assert received(sock)[0] == "READY=1"


@pytest.mark.trio
async def test_not_under_a_service_manager_nothing_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    with trio.fail_after(1):
        await notifier.serve()  # returns at once


def test_a_manager_that_went_away_is_logged_not_raised(tmp_path: Path) -> None:
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("READY=1")
