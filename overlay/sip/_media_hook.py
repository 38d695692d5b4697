"""The media hook: what the proxy core shows the media plane of the calls crossing the
overlay's edge at this node (``overlay.media.MediaEdge``, behind the call book)."""

from __future__ import annotations

import enum
from typing import Protocol

from ._message import Request, Response


class MediaDirection(enum.Enum):
    """Where a message with a body crosses this node: into the overlay (from an endpoint, this
    node is the edge it enters at) or out of it (toward an endpoint)."""

    ENTERING = "entering"
    LEAVING = "leaving"

    def reverse(self) -> MediaDirection:
        return (
            MediaDirection.LEAVING if self is MediaDirection.ENTERING else MediaDirection.ENTERING
        )


class MediaRefused(Exception):
    """Raised by a ``MediaHook`` for a request it cannot anchor (answered with ``status``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class MediaHook(Protocol):
    """The media plane's view of the calls an edge node proxies (``overlay.media``).

    It sees every request forwarded across the overlay's edge at this node, and every response
    (forwarded or generated) to such a request, before it is sent, and may rewrite their bodies
    (SDP); an ACK of a 2xx counts as such a request. It must not raise on a response or an ACK;
    on another request it may raise ``MediaRefused``.
    """

    def request(self, request: Request, direction: MediaDirection, now: float) -> None: ...

    def response(self, response: Response, direction: MediaDirection, now: float) -> None: ...
