"""The one error a bad configuration file produces."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file that must not be used; raised before any socket is opened.

    ``str(error)`` is ``"<file>:<line>: <dotted.key>: <reason>"``; the line is left out when it
    cannot be found and the key when there is none (unreadable file, some TOML syntax errors).

    Attributes:
        source: the file name (or the ``source`` given to ``parse_config``).
        line: 1-based line of the offending key, or ``None``.
        key: dotted key such as ``"sip.timers.t2"`` or ``"dialplan[0].target"`` (0-based
            index), or ``""``.
        reason: what is wrong, in words an operator can act on.
    """

    def __init__(self, source: str, line: int | None, key: str, reason: str) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        self.source = source
        self.line = line
        self.key = key
        self.reason = reason
