"""The floating address in this machine's own interface configuration.

Moving a secondary private IP between ENIs through the EC2 API changes where the VPC delivers
its packets, not what the instance's kernel accepts: the OS of the new holder must add the
address to its interface (AWS leaves secondary addresses to the OS), and the old holder must
drop it so that its node sees it is no longer the active (``overlay.shell.pair``). The agent
does both with iproute2, as keepalived does for its virtual addresses.
"""

from __future__ import annotations

import json

import trio

__all__ = ["AUTO_INTERFACE", "OsAddress", "OsAddressError"]

#: ``interface`` that means: the interface the address is, or would be, routed through.
AUTO_INTERFACE = "auto"


class OsAddressError(RuntimeError):
    """iproute2 refused a change or the interface cannot be found (the message says which)."""


class OsAddress:
    """``ip`` (a /32, or /128) on ``interface`` of this machine, added or removed on demand."""

    def __init__(self, ip: str, interface: str) -> None:
        self.ip = ip
        self._prefix = f"{ip}/{128 if ':' in ip else 32}"
        self._interface = None if interface == AUTO_INTERFACE else interface

    async def set_present(self, present: bool) -> str:
        """Add or remove the address; idempotent. Returns the interface.

        Raises:
            OsAddressError: with iproute2's own message.
        """
        device = await self._device()
        if present:
            await _ip("addr", "replace", self._prefix, "dev", device)
        elif (assigned := await self._assigned_to()) is not None:
            await _ip("addr", "del", self._prefix, "dev", assigned)  # wherever it was put
        return device

    async def _device(self) -> str:
        if self._interface is None:
            # Where the address sits now, else where the kernel would send to it: the
            # interface on its subnet.
            device = await self._assigned_to()
            if device is None:
                routes = json.loads(await _ip("-j", "route", "get", self.ip))
                device = routes[0].get("dev") if routes else None
            if not device or device == "lo":
                raise OsAddressError(f"no interface routes to {self.ip}: set interface")
            self._interface = device
        return self._interface

    async def _assigned_to(self) -> str | None:
        interfaces = json.loads(await _ip("-j", "addr", "show", "to", self._prefix))
        return str(interfaces[0]["ifname"]) if interfaces else None


async def _ip(*args: str) -> str:
    try:
        done = await trio.run_process(
            ["ip", *args], capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as exc:  # no iproute2
        raise OsAddressError(f"ip {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise OsAddressError(f"ip {' '.join(args)}: {message or f'exit {done.returncode}'}")
    return str(done.stdout.decode())
