"""Find the line of a key in TOML text, so that errors can point at it.

tomllib returns plain dicts without positions, so this scans the text a second time. It only
has to understand what locates a key: ``[table]`` and ``[[array.of.tables]]`` headers and
``dotted.key =`` lines, skipping the inside of multi-line strings. It never decides whether the
file is valid (tomllib does); on anything it does not recognise it simply records nothing, and
the error is reported without a line.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterator

Path = tuple[str | int, ...]

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_ARRAY_TABLE = re.compile(rf"[ \t]*\[\[[ \t]*({_DOTTED})[ \t]*\]\]")
_TABLE = re.compile(rf"[ \t]*\[[ \t]*({_DOTTED})[ \t]*\]")
_KEY = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")
_PART = re.compile(_KEY_PART)


def format_path(path: Path) -> str:
    """``("dialplan", 0, "target")`` -> ``"dialplan[0].target"``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _split(dotted: str) -> list[str]:
    parts = []
    for raw in _PART.findall(dotted):
        part = raw
        if raw[0] in "\"'":
            # Quoted keys may hold escapes: let tomllib decode them. The text may be invalid
            # TOML (this also runs to place syntax errors), so a bad escape stays as written.
            with contextlib.suppress(tomllib.TOMLDecodeError):
                part = tomllib.loads(f"k = {raw}")["k"]
        parts.append(part)
    return parts


def key_lines(text: str) -> dict[Path, int]:
    """Map every key and table path found in ``text`` to the 1-based line that defines it.

    Array-of-tables entries get their 0-based index as a path element, as in the parsed data.
    """
    lines: dict[Path, int] = {}
    for path, number, _ in _scan(text):
        lines.setdefault(path, number)
    return lines


def key_at(text: str, line: int, column: int) -> Path | None:
    """The key whose value holds 1-based ``line``:``column`` (where tomllib saw an error).

    ``None`` when the position is not inside a ``key = value`` line's value: there the key
    would only mislead (an unclosed array is reported at the start of the next line).
    """
    found = None
    for path, number, value_start in _scan(text):
        if number == line and value_start is not None and column > value_start:
            found = path  # the last, i.e. longest, path of a dotted key
    return found


def _scan(text: str) -> Iterator[tuple[Path, int, int | None]]:
    """Yield ``(path, line, value_start)`` for every table header and key, duplicates too.

    ``value_start`` is the 0-based column after the ``=`` of a key, ``None`` for a header.
    """
    table: Path = ()
    array_counts: dict[tuple[str, ...], int] = {}
    in_string: str | None = None  # the delimiter of the open multi-line string
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        if match := _ARRAY_TABLE.match(line):
            names = tuple(_split(match[1]))
            array_counts[names] = array_counts.get(names, 0) + 1
            table = _with_indexes(names, array_counts)
            yield table, number, None
        elif match := _TABLE.match(line):
            table = _with_indexes(tuple(_split(match[1])), array_counts)
            yield table, number, None
        elif match := _KEY.match(line):
            path = table
            for part in _split(match[1]):
                path = (*path, part)
                yield path, number, match.end()
            rest = line[match.end() :]
            for delimiter in ('"""', "'''"):
                if rest.count(delimiter) % 2:
                    in_string = delimiter
                    break


def _with_indexes(names: tuple[str, ...], array_counts: dict[tuple[str, ...], int]) -> Path:
    """Insert the current index after every prefix that names an array of tables."""
    path: Path = ()
    for end in range(1, len(names) + 1):
        path = (*path, names[end - 1])
        count = array_counts.get(names[:end])
        if count is not None:
            path = (*path, count - 1)
    return path


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, else of its nearest enclosing key or table, else ``None``."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None
