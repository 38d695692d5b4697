"""What edge security and overload control tell the shell, one event per change (the shell
logs each one)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BlockReason(enum.StrEnum):
    """Why a source was blocked; the values name the ``security.blocked.*`` counters."""

    USER_AGENT = "user_agent"  # a known scanner's User-Agent
    SWEEP = "sweep"  # OPTIONS/REGISTER to many distinct users
    FAILURES = "failures"  # too many requests answered 400/403/404/405/416/484
    FLOOD = "flood"  # kept sending past its rate limit


@dataclass(frozen=True, slots=True)
class SourceBlocked:
    """Everything from ``source`` (an IPv4 address or an IPv6 /64) is dropped until ``until``."""

    source: str
    reason: BlockReason
    until: float
    detail: str  # what tripped it: the User-Agent, or the count and window


@dataclass(frozen=True, slots=True)
class SourceUnblocked:
    """A block ran out; ``dropped`` messages were dropped while it lasted."""

    source: str
    dropped: int


@dataclass(frozen=True, slots=True)
class OverloadStarted:
    """The node began shedding new work (``Overload``), ``backlog`` seconds behind its socket."""

    backlog: float


@dataclass(frozen=True, slots=True)
class OverloadEnded:
    """Nothing was shed for a while; ``shed`` requests were refused in the episode."""

    shed: int


GuardEvent = SourceBlocked | SourceUnblocked | OverloadStarted | OverloadEnded
