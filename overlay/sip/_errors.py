"""Errors of the SIP core.

Local vs remote, the h11 way: ``LocalProtocolError`` means this code was asked to do something
the protocol forbids (a bug here); ``RemoteProtocolError`` means a peer sent something bad. Both
carry the SIP response to send back as a hint, or ``None`` when no response is possible (the
message has no usable Via, or it is itself a response): the caller then drops and counts it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._message import Headers


class ProtocolError(Exception):
    """Base of the SIP core's errors.

    Attributes:
        reason: a short phrase naming the problem, used as the reason phrase of the response.
        status_hint: the status code to answer with, or ``None`` to drop silently.
    """

    def __init__(self, reason: str, *, status_hint: int | None = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """This side misused the API (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not acceptable SIP.

    Attributes:
        headers: for a request that ``parse_message_untrusted`` rejected, the header fields it
            managed to split before giving up, so that ``make_error_response`` can answer;
            ``None`` otherwise.
    """

    def __init__(
        self, reason: str, *, status_hint: int | None = 400, headers: Headers | None = None
    ) -> None:
        super().__init__(reason, status_hint=status_hint)
        self.headers = headers
