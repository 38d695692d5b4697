"""Read a TOML file into typed values, refusing it with a ``ConfigError`` that names the line.

Theory of operation: tomllib turns the text into dicts, then every table is read through a
``Table`` that hands out its keys one by one and, before anything else, refuses keys the
schema does not know, so that a typo is reported as itself rather than as a missing key.
Readers are functions ``(value, path) -> typed value`` that raise ``Invalid(path, reason)``;
``parse_toml`` turns the first one into a ``ConfigError`` and looks up the line of the path in
the text (``_lines``). A schema (the node's in ``_schema``, the fleet's in ``deploy.fleet``) is
a ``build`` function made of tables and readers; nothing here knows any schema.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from ._errors import ConfigError
from ._lines import Path as KeyPath
from ._lines import format_path, key_at, key_lines, line_of

T = TypeVar("T")

#: A reader: the raw value from tomllib and its key path in, the typed value out.
Reader = Callable[[object, KeyPath], T]

_TOML_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$")


class Invalid(Exception):
    """The value at ``path`` breaks the schema; ``parse_toml`` makes it a ``ConfigError``.

    Attributes:
        path: the key path, e.g. ``("regions", 0, "vpc_cidr")`` (array entries by 0-based index).
        reason: what is wrong, in words an operator can act on.
    """

    def __init__(self, path: KeyPath, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


class _Missing:
    """Marks an absent key, so that ``None`` never stands for "not given"."""


_MISSING = _Missing()


class Table:
    """A TOML table read key by key; unknown keys are refused up front.

    Args:
        value: the parsed value that should be a table.
        path: its key path (``()`` for the root).
        known: every key the schema allows here, in the order an error message lists them.

    Raises:
        Invalid: ``value`` is not a table, or holds a key not in ``known``.
    """

    def __init__(self, value: object, path: KeyPath, known: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise Invalid(path, f"must be a table, not {kind(value)}")
        for key in value:
            if key not in known:
                raise Invalid((*path, key), f"unknown key (expected one of: {', '.join(known)})")
        self._data: dict[str, object] = value
        self.path = path

    def has(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, read: Reader[T], default: T) -> T:
        """``read`` the value of ``key``, or ``default`` (not read) when the key is absent."""
        value = self._data.get(key, _MISSING)
        return default if value is _MISSING else read(value, (*self.path, key))

    def require(self, key: str, read: Reader[T]) -> T:
        """``read`` the value of ``key``; its absence is an ``Invalid`` naming the key."""
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            raise Invalid((*self.path, key), "required key is missing")
        return read(value, (*self.path, key))


def read_text(path: str | Path) -> str:
    """The UTF-8 text of the file at ``path``.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8 (named as ``str(path)``).
    """
    source = str(path)
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(source, None, "", f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(source, None, "", f"not UTF-8 text ({error.reason})") from None


def parse_toml(text: str, *, source: str, build: Callable[[dict[str, object]], T]) -> T:
    """Parse the TOML ``text`` and ``build`` a typed value from its root table.

    Args:
        text: the file contents.
        source: the file name used in error messages.
        build: makes the value from tomllib's root table (usually through a ``Table``);
            raises ``Invalid`` on the first problem.

    Returns:
        What ``build`` returns.

    Raises:
        ConfigError: on a TOML syntax error, or the ``Invalid`` raised by ``build`` with the
            line of its key (of the nearest enclosing key or table found in the text, else no
            line); only the first problem is reported.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(str(error), text, source) from None
    try:
        return build(data)
    except Invalid as error:
        line = line_of(key_lines(text), error.path)
        raise ConfigError(source, line, format_path(error.path), error.reason) from None


def _syntax_error(message: str, text: str, source: str) -> ConfigError:
    # tomllib (3.11) only puts the position into the message text.
    match = _TOML_POSITION.search(message)
    if match is None:
        return ConfigError(source, None, "", f"invalid TOML: {message}")
    line, column = int(match[1]), int(match[2])
    path = key_at(text, line, column)
    reason = f"invalid TOML: {message[: match.start()]} (column {column})"
    return ConfigError(source, line, "" if path is None else format_path(path), reason)


# Readers any schema can use: (value, path) -> typed value, or Invalid naming the path.


def string(value: object, path: KeyPath) -> str:
    if not isinstance(value, str):
        raise Invalid(path, f"must be a string, not {kind(value)}")
    return value


def boolean(value: object, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        raise Invalid(path, f"must be true or false, not {kind(value)}")
    return value


def integer(low: int, high: int) -> Reader[int]:
    """A reader of integers in ``low..high`` (inclusive)."""

    def read(value: object, path: KeyPath) -> int:
        # bool is an int subclass in Python; TOML's true is not a number.
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(path, f"must be an integer, not {kind(value)}")
        if not low <= value <= high:
            raise Invalid(path, f"must be between {low} and {high}, got {value}")
        return value

    return read


def matching(pattern: str, what: str) -> Reader[str]:
    """A reader of strings that fully match ``pattern``; ``what`` completes "must ..." in the
    error, e.g. ``'be an AWS region name such as "us-west-2"'``."""
    compiled = re.compile(pattern)

    def read(value: object, path: KeyPath) -> str:
        text = string(value, path)
        if not compiled.fullmatch(text):
            raise Invalid(path, f"must {what}, got {text!r}")
        return text

    return read


def choice(options: Mapping[str, T]) -> Reader[T]:
    """A reader of one of the strings ``options`` names, giving its value (typed as the
    ``Literal`` the model wants); the error lists the choices in order."""
    quoted = [f'"{name}"' for name in options]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"

    def read(value: object, path: KeyPath) -> T:
        text = string(value, path)
        if text not in options:
            raise Invalid(path, f"must be {listed}, got {text!r}")
        return options[text]

    return read


def seconds(value: object, path: KeyPath) -> float:
    """A duration: a finite number of seconds > 0 (an integer is taken as a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Invalid(path, f"must be a number of seconds, not {kind(value)}")
    # TOML allows inf and nan; neither is a usable timer.
    if not math.isfinite(value) or value <= 0:
        raise Invalid(path, f"must be a finite number of seconds > 0, got {value}")
    return float(value)


def seconds_or_off(value: object, path: KeyPath) -> float:
    """A duration in seconds, or 0 for "off"."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return seconds(value, path)


def milliseconds(value: object, path: KeyPath) -> float:
    """A finite number of milliseconds >= 0 (an integer is taken as a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Invalid(path, f"must be a number of milliseconds, not {kind(value)}")
    if not math.isfinite(value) or value < 0:
        raise Invalid(path, f"must be a finite number of milliseconds >= 0, got {value}")
    return float(value)


def network(value: object, path: KeyPath) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4 or IPv6 network written ``address/prefix``, its host bits zero.

    Strict on purpose: ``10.20.1.5/24`` is more likely a typo than a way to say ``10.20.1.0/24``.
    """
    text = string(value, path)
    reason = f"must be a network written address/prefix, got {text!r}"
    if "/" not in text:
        raise Invalid(path, reason)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise Invalid(path, f"{reason} ({error})") from None


_KINDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def kind(value: object) -> str:
    """Name a parsed TOML value's type in TOML's words (anything else is a date/time)."""
    return _KINDS.get(type(value), "a date/time")
