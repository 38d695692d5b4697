"""The link-state database: the newest LSA of every origin, aged on this node's clock.

Rules (a small subset of RFC 2328 §13, enough for a full mesh of tens to hundreds of nodes):

* An instance is **newer** when its ``seq`` is higher. Equal ``seq`` means the same instance
  (only the origin creates instances, so equal numbers carry equal contents), older ones are
  ignored.
* **Age.** An instance arrives with the age it had when sent; the database adds the time it has
  held it. An instance whose age reaches ``max_age`` is removed: an origin refreshes its LSA well
  before that, so only the LSAs of nodes that fell silent (dead, or partitioned away for longer
  than ``max_age``) age out. Each node ages independently; no MaxAge flooding is needed because
  all nodes see the same age within a flooding delay.
* **Own LSA from an earlier life.** A node that restarts starts from a sequence number taken from
  the wall clock, so it normally outnumbers its previous instances. If a peer still holds an
  instance with a higher number (a clock step back), the origin jumps past it when that copy comes
  back (``Flooder`` does this, RFC 2328 §13.4).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ._lsa import Lsa


class InstallResult(enum.Enum):
    NEWER = "NEWER"  # installed: the database changed
    SAME = "SAME"  # the instance we hold
    OLDER = "OLDER"  # we hold a newer instance


@dataclass(frozen=True, slots=True)
class _Entry:
    lsa: Lsa
    installed_at: float


class LinkStateDb:
    """Newest LSA per origin. Only ``Flooder`` mutates it (STYLE.md §3); others read snapshots."""

    def __init__(self, *, max_age: float) -> None:
        self.max_age = max_age
        self._entries: dict[str, _Entry] = {}
        self.version = 0  # increments on every change; lets readers skip unchanged snapshots

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, origin: str) -> bool:
        return origin in self._entries

    def origins(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def seq(self, origin: str) -> int | None:
        entry = self._entries.get(origin)
        return None if entry is None else entry.lsa.seq

    def classify(self, lsa: Lsa) -> InstallResult:
        held = self.seq(lsa.origin)
        if held is None or lsa.seq > held:
            return InstallResult.NEWER
        return InstallResult.SAME if lsa.seq == held else InstallResult.OLDER

    def install(self, lsa: Lsa, now: float) -> InstallResult:
        """Keep ``lsa`` when it is newer than the instance held for its origin."""
        result = self.classify(lsa)
        if result is InstallResult.NEWER and lsa.age < self.max_age:
            self._entries[lsa.origin] = _Entry(lsa, now)
            self.version += 1
        return result

    def peek(self, origin: str) -> Lsa | None:
        """The instance held for ``origin`` as received (its age not brought up to date)."""
        entry = self._entries.get(origin)
        return None if entry is None else entry.lsa

    def get(self, origin: str, now: float) -> Lsa | None:
        """The instance held for ``origin`` with its current age, or ``None``."""
        entry = self._entries.get(origin)
        if entry is None:
            return None
        return dataclasses.replace(entry.lsa, age=entry.lsa.age + (now - entry.installed_at))

    def snapshot(self) -> Mapping[str, Lsa]:
        """Every origin's instance (ages as received): the input of route computation."""
        return {origin: self._entries[origin].lsa for origin in sorted(self._entries)}

    def expire(self, now: float) -> list[str]:
        """Remove instances that reached ``max_age``; returns their origins."""
        gone = [
            origin
            for origin, entry in self._entries.items()
            if entry.lsa.age + (now - entry.installed_at) >= self.max_age
        ]
        for origin in gone:
            del self._entries[origin]
        if gone:
            self.version += 1
        return sorted(gone)

    def get_timer(self) -> float | None:
        """When the next instance reaches ``max_age``."""
        if not self._entries:
            return None
        return min(e.installed_at + self.max_age - e.lsa.age for e in self._entries.values())
