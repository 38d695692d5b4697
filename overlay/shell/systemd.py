"""The service manager's view of a node: ready once it serves, and a watchdog fed from the
event loop, so that a wedged node is restarted (systemd's ``sd_notify`` protocol).

Under a unit with ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket,
``@`` for the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The node says
``READY=1`` once every part serves, then ``WATCHDOG=1`` every half watchdog period from a trio
task: a node whose event loop stops turning (a bug, a stall that never ends) stops saying it,
and systemd kills and restarts it. Without ``NOTIFY_SOCKET`` (not under systemd) nothing is
sent. The protocol is a few datagrams: no library is needed for it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import structlog
import trio

log = structlog.get_logger("overlay.node")


class Notifier:
    """``sd_notify`` for one process; see the module docstring."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is named with a leading NUL, written "@".
        self._address = "\0" + path[1:] if path.startswith("@") else path
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        """Send one state line (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``); errors are logged,
        never raised: the node serves whether or not its manager listens."""
        if not self._address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(state.encode(), self._address)
            except OSError as exc:
                log.warning("service manager notification failed", state=state, error=str(exc))

    async def serve(self) -> None:
        """Say ready, then feed the watchdog until cancelled, then say stopping."""
        if not self._address:
            return
        self.notify("READY=1")
        try:
            if self.watchdog_interval is None:
                await trio.sleep_forever()
            while True:
                self.notify("WATCHDOG=1")
                await trio.sleep(self.watchdog_interval)
        finally:
            self.notify("STOPPING=1")
