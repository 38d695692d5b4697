"""The lab's stand-in for the floating address on an interface: a file naming its holder.

On one machine every 127/8 address is local to both members of a pair, so the kernel cannot
say which of them holds the pair's address (``overlay.shell.pair.holds_address``), and two
processes cannot both bind it. There the HA agent writes the name of the member that holds the
address into a file (``HoldFile``, in place of ``OsAddress``), and each member's node reads it
(``read_holder``, with ``[pair] hold = "file"``): whoever the file names holds the address, and
serves it. The EC2 API still decides who that is.

A write replaces the file whole (a rename), so a reader sees the old name or the new one, never
half of one. Giving the address up removes the file only while it still names this member, under
a lock the pair's two agents share (``<file>.lock``), so that an agent giving up cannot erase
the name its peer has just written.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import trio

from ._os import OsAddressError

__all__ = ["HoldFile", "read_holder"]


def read_holder(path: str) -> str | None:
    """The member the hold file at ``path`` names; ``None``: no file, nobody holds.

    Raises:
        OSError: the file exists but cannot be read.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    return text.strip() or None


class HoldFile:
    """The hold file at ``path`` as member ``member`` writes it: ``OsAddress``'s interface.

    Args:
        ip: the floating address the file stands for (for the agent's log only).
        path: the file, in a directory both agents and both nodes share.
        member: this member's name, as its node's ``[pair] member`` has it.
    """

    def __init__(self, ip: str, path: str, member: str) -> None:
        self.ip = ip
        self.path = path
        self.member = member

    async def set_present(self, present: bool) -> str:
        """Name this member in the file, or remove the file if it names this member; both
        idempotent. Returns the file's path (where ``OsAddress`` returns the interface).

        Raises:
            OsAddressError: the file or its lock cannot be written (the message says why).
        """
        try:
            await trio.to_thread.run_sync(self._set, present)
        except OSError as exc:
            raise OsAddressError(f"hold file {self.path}: {exc.strerror or exc}") from exc
        return self.path

    def _set(self, present: bool) -> None:
        path = Path(self.path)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if present:
                written = path.with_name(f".{path.name}.{self.member}")
                written.write_text(f"{self.member}\n")
                os.replace(written, path)
            elif read_holder(self.path) == self.member:
                path.unlink()
