"""The proxy core's view of edge security: which messages it lets in (``overlay.security``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ._message import Request


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse a new request: answer it statelessly with ``status`` (and ``Retry-After`` when
    ``retry_after`` is set), or, with ``status`` ``None``, drop it without a word."""

    status: int | None
    reason: str = ""
    retry_after: int | None = None


class Admission(Protocol):
    """Edge security as the proxy core sees it.

    The core asks at three points, cheapest first: ``screen`` for every message before it is
    parsed, by its source address alone; ``admit`` for every new request from outside the
    overlay once it is parsed (never for a retransmission the transaction layer absorbs, an ACK,
    or a CANCEL of a known INVITE); ``answered`` for every 4xx the core sends, on a server
    transaction or to a message it could not parse. ``host`` is the source's IP address as the
    transport reported it.
    """

    def screen(self, host: str, now: float) -> bool:
        """Whether to parse a message from ``host`` at all (``False``: drop it)."""
        ...

    def admit(self, request: Request, host: str, now: float) -> Reject | None:
        """``None`` to handle ``request``, or how to refuse it."""
        ...

    def answered(self, host: str, status: int, now: float) -> None:
        """The core answered a request from ``host`` with ``status`` (400-499)."""
        ...
