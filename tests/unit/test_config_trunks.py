"""``[trunks]``: probing the trunks a node sends calls to; bad values refused naming file, line,
key and reason."""

from __future__ import annotations

import pytest

from overlay.config import ConfigError, TrunksSection, parse_config

BASE = """\
[node]
node_id = "usw2-a"
region = "us-west-2"

[sip]
listen = ["udp:127.0.0.1:5060"]

[[dialplan]]
target = "sip:carrier.example"
"""


def _parse(trunks: str) -> TrunksSection:
    return parse_config(f"{BASE}\n[trunks]\n{trunks}\n", source="node.toml").trunks


def test_defaults_without_the_section() -> None:
    trunks = parse_config(BASE, source="node.toml").trunks
    assert trunks == TrunksSection()
    assert (trunks.enabled, trunks.probe_interval, trunks.probe_multiplier) == (True, 0.25, 4)
    assert (trunks.hold_down, trunks.probe_timeout, trunks.reply_codes) == (5.0, 1.0, ())
    assert trunks.detection_time == 1.0


def test_every_key() -> None:
    trunks = _parse(
        "enabled = false\nprobe_interval = 0.5\nprobe_multiplier = 3\nhold_down = 10\n"
        "probe_timeout = 2\nreply_codes = [200, 404, 405]"
    )
    assert trunks == TrunksSection(
        enabled=False,
        probe_interval=0.5,
        probe_multiplier=3,
        hold_down=10.0,
        probe_timeout=2.0,
        reply_codes=(200, 404, 405),
    )
    assert trunks.detection_time == 1.5


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("enabled = 1", "trunks.enabled", "must be true or false"),
        ("probe_interval = 0", "trunks.probe_interval", "finite number of seconds > 0"),
        ("probe_interval = -0.25", "trunks.probe_interval", "> 0"),
        ('probe_interval = "fast"', "trunks.probe_interval", "a number of seconds"),
        ("probe_multiplier = 0", "trunks.probe_multiplier", "between 1 and 20"),
        ("probe_multiplier = 2.5", "trunks.probe_multiplier", "must be an integer"),
        ("hold_down = inf", "trunks.hold_down", "finite"),
        ("probe_interval = 0.5\nprobe_timeout = 0.25", "trunks.probe_timeout", ">= probe_interval"),
        ("reply_codes = 200", "trunks.reply_codes", "an array of status codes"),
        ("reply_codes = [200, 408]", "trunks.reply_codes[1]", "408 never proves a trunk alive"),
        ("reply_codes = [180]", "trunks.reply_codes[0]", "between 200 and 699"),
        ("reply_codes = [700]", "trunks.reply_codes[0]", "between 200 and 699"),
        ('reply_codes = ["200"]', "trunks.reply_codes[0]", "must be an integer"),
        ("reply_codes = [404, 404]", "trunks.reply_codes[1]", "names 404 twice"),
        ("interval = 1", "trunks.interval", "unknown key (expected one of: enabled,"),
    ],
)
def test_bad_values_are_refused(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    error = caught.value
    assert (error.source, error.key) == ("node.toml", key)
    assert reason in error.reason
    # The line of the offending key: the section starts on line 11.
    assert error.line is not None
    assert error.line >= 11
    assert str(error).startswith(f"node.toml:{error.line}: {key}: ")


def test_a_table_is_required() -> None:
    with pytest.raises(ConfigError, match=r"^node\.toml:1: trunks: must be a table"):
        parse_config("trunks = 1\n" + BASE, source="node.toml")
