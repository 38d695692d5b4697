"""Operator overrides of this node's links (the Control service's SetLinkOverride), sans-IO.

An override changes what this node *advertises* about its link to one peer, not what the probes
measure: its admin cost replaces the configured one, or the link is advertised down whatever the
probes say. The mesh applies the overrides to every set of links it hands to the flooder
(``apply``), so the LSA carries them, every node's routing takes them into account (a link
advertised down drops out of everyone's graph by the two-way check), and an override ends by
itself at its expiry (``expire``, checked at least every probe round). Times are ``now`` values
on the node's trio clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from overlay.linkstate import LinkMetrics

#: The longest an override may last: a forgotten one must not outlive a week of operations.
MAX_OVERRIDE_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LinkOverride:
    """One override of the link to ``peer``; see the module docstring.

    Attributes:
        peer: the neighbour at the other end.
        admin_cost_ms: replaces the link's configured admin cost; ``None`` leaves it.
        force_down: the link is advertised down.
        expires_at: when it ends (``now`` time).
        set_by: who set it (certificate subject), for people.
        reason: why, for people.
    """

    peer: str
    admin_cost_ms: float | None
    force_down: bool
    expires_at: float
    set_by: str = ""
    reason: str = ""

    def apply(self, link: LinkMetrics) -> LinkMetrics:
        """``link`` as advertised under this override."""
        if self.force_down:
            return dataclasses.replace(link, up=False)
        if self.admin_cost_ms is not None:
            return dataclasses.replace(link, admin_cost=self.admin_cost_ms)
        return link

    def describe(self) -> str:
        """``"forced down"``, ``"admin cost 500 ms"``, for logs and events."""
        if self.force_down:
            return "forced down"
        return f"admin cost {self.admin_cost_ms:g} ms"


def new_override(
    peer: str,
    *,
    admin_cost_ms: float | None,
    force_down: bool,
    ttl_s: float | None = None,
    expires_at: float | None = None,
    now: float,
    set_by: str = "",
    reason: str = "",
) -> LinkOverride:
    """Validate an operator's override request.

    Give exactly one of ``ttl_s`` (seconds from ``now``) and ``expires_at`` (a ``now`` time).

    Raises:
        ValueError: what is wrong, naming the field (the Control service answers it with
            INVALID_ARGUMENT): no effect, a negative or non-finite cost, both effects, no
            expiry or two, an expiry in the past or more than MAX_OVERRIDE_S ahead.
    """
    if admin_cost_ms is not None and not (math.isfinite(admin_cost_ms) and admin_cost_ms >= 0):
        raise ValueError(f"admin_cost_ms must be a finite number >= 0, got {admin_cost_ms}")
    if admin_cost_ms is None and not force_down:
        raise ValueError("nothing to override: give admin_cost_ms or force_down")
    if admin_cost_ms is not None and force_down:
        raise ValueError("give admin_cost_ms or force_down, not both (a down link has no cost)")
    if (ttl_s is None) == (expires_at is None):
        raise ValueError("an override needs one expiry: ttl_s or expires_at")
    if ttl_s is not None:
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
        expires_at = now + ttl_s
    assert expires_at is not None
    if not math.isfinite(expires_at) or expires_at <= now:
        raise ValueError(f"expires_at is {now - expires_at:.0f} s in the past")
    if expires_at - now > MAX_OVERRIDE_S:
        raise ValueError(
            f"the expiry is {(expires_at - now) / 3600:.1f} h away; at most "
            f"{MAX_OVERRIDE_S / 3600:.0f} h"
        )
    return LinkOverride(peer, admin_cost_ms, force_down, expires_at, set_by, reason)


class LinkOverrides:
    """The overrides in force, at most one per peer."""

    def __init__(self) -> None:
        self._by_peer: dict[str, LinkOverride] = {}

    def __iter__(self) -> Iterator[LinkOverride]:
        """Every override, by peer."""
        return iter([self._by_peer[peer] for peer in sorted(self._by_peer)])

    def __len__(self) -> int:
        return len(self._by_peer)

    def get(self, peer: str) -> LinkOverride | None:
        return self._by_peer.get(peer)

    def set(self, override: LinkOverride) -> LinkOverride | None:
        """Put ``override`` in force; returns the one it replaces, if any."""
        replaced = self._by_peer.get(override.peer)
        self._by_peer[override.peer] = override
        return replaced

    def clear(self, peer: str | None = None) -> list[LinkOverride]:
        """Remove the override of ``peer`` (``None``: every override); returns those removed."""
        if peer is None:
            removed = list(self)
            self._by_peer.clear()
            return removed
        gone = self._by_peer.pop(peer, None)
        return [] if gone is None else [gone]

    def expire(self, now: float) -> list[LinkOverride]:
        """Remove the overrides whose expiry has come; returns them."""
        due = [o for o in self if o.expires_at <= now]
        for override in due:
            del self._by_peer[override.peer]
        return due

    def apply(self, links: Iterable[LinkMetrics]) -> list[LinkMetrics]:
        """``links`` as advertised under the overrides in force."""
        by_peer = self._by_peer
        return [
            override.apply(link) if (override := by_peer.get(link.neighbor)) else link
            for link in links
        ]

    def get_timer(self) -> float | None:
        """When the next override expires."""
        return min((o.expires_at for o in self._by_peer.values()), default=None)
