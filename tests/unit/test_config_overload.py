"""The [overload] section of node.toml: on by default, values, and bad values refused by line."""

from __future__ import annotations

import pytest

from overlay.config import ConfigError, OverloadSection, parse_config

BASE = """\
[node]
node_id = "a"
region = "r"

[sip]
listen = ["udp:127.0.0.1:0"]
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="node.toml")
    return caught.value


def test_on_by_default_with_or_without_security() -> None:
    for extra in ("", "[security]\n", "[overload]\n"):
        overload = parse_config(BASE + extra, source="node.toml").overload
        assert overload == OverloadSection()
        assert (overload.enabled, overload.backlog, overload.unknown_backlog) == (True, 0.2, 0.1)
        assert overload.retry_after == 5


def test_every_key() -> None:
    text = BASE + (
        "[overload]\nenabled = false\nbacklog = 0.3\nunknown_backlog = 0.3\nretry_after = 30\n"
    )
    assert parse_config(text, source="node.toml").overload == OverloadSection(
        enabled=False, backlog=0.3, unknown_backlog=0.3, retry_after=30
    )


# (the [overload] line, dotted key, reason fragment); the bad line is always line 8.
BAD = [
    ('enabled = "yes"', "overload.enabled", "must be true or false"),
    ("backlog = 0", "overload.backlog", "> 0"),
    ("backlog = -0.1", "overload.backlog", "> 0"),
    ("backlog = inf", "overload.backlog", "finite"),
    ("backlog = 0.05", "overload.backlog", ">= unknown_backlog (0.1 s, its default)"),
    ('backlog = "0.2"', "overload.backlog", "number of seconds, not a string"),
    ("unknown_backlog = 0", "overload.unknown_backlog", "> 0"),
    ("unknown_backlog = 0.5", "overload.unknown_backlog", "<= backlog (0.2 s)"),
    ("retry_after = 0", "overload.retry_after", "between 1 and 86400"),
    ("retry_after = 1.5", "overload.retry_after", "must be an integer"),
    ("threshold = 1", "overload.threshold", "unknown key (expected one of: enabled, backlog"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_value_is_refused_naming_file_line_and_key(text: str, key: str, reason: str) -> None:
    error = _error(BASE + "[overload]\n" + text + "\n")
    assert (error.source, error.line, error.key) == ("node.toml", 8, key), str(error)
    assert reason in error.reason, str(error)
    assert str(error).startswith(f"node.toml:8: {key}: ")


def test_security_overload_backlog_points_at_the_new_section() -> None:
    error = _error(BASE + "[security]\nrate = 5\noverload_backlog = 0.2\n")
    assert (error.line, error.key) == (9, "security.overload_backlog"), str(error)
    assert "moved to [overload] backlog" in error.reason
    assert "with or without [security]" in error.reason


def test_overload_must_be_a_table() -> None:
    error = _error("overload = 1\n" + BASE)
    assert (error.key, error.reason) == ("overload", "must be a table, not an integer")
