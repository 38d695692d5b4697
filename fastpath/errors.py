"""Errors of the fastpath package; importable without the compiled extension."""

from __future__ import annotations


class BadPacket(ValueError):
    """An overlay datagram that the header codec refuses.

    Attributes:
        reason: the drop reason the relay counts for the same datagram, one of
            ``fastpath.DROP_REASONS`` (``"short"``, ``"bad_version"``, ``"bad_flags"`` or
            ``"reserved"``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
