"""The [security] section of node.toml: defaults, values, and bad values refused by line."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from overlay.config import ConfigError, SecuritySection, TrunkLimit, parse_config

BASE = """\
[node]
node_id = "a"
region = "r"
[sip]
listen = ["udp:127.0.0.1:0"]
"""

FULL = (
    BASE
    + """\
[security]
allow = ["192.0.2.0/24", "2001:db8::/32"]
deny_action = "reject"
rate = 5.5
burst = 11
limit_action = "drop"
retry_after = 30
block_time = 3600
window = 10
sweep_users = 0
max_failures = 7
max_limited = 50
scanner_user_agents = ["BadBot ", "evil"]

[[security.trunks]]
cidr = "198.51.100.0/24"
rate = 500
burst = 1000

[[security.trunks]]
cidr = "2001:db8:1::/48"
"""
)


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="node.toml")
    return caught.value


def test_no_section_means_no_edge_security() -> None:
    assert parse_config(BASE, source="node.toml").security is None


def test_empty_section_turns_the_defaults_on() -> None:
    security = parse_config(BASE + "[security]\n", source="node.toml").security
    assert security == SecuritySection()
    assert security.allow == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert (security.rate, security.burst, security.limit_action) == (20.0, 40, "reject")
    assert security.deny_action == "drop"
    assert "sipvicious" in security.scanner_user_agents
    assert "scanner" in security.scanner_user_agents  # SIPVicious' "friendly-scanner"


def test_every_key() -> None:
    security = parse_config(FULL, source="node.toml").security
    assert security == SecuritySection(
        allow=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")),
        deny_action="reject",
        rate=5.5,
        burst=11,
        limit_action="drop",
        retry_after=30,
        block_time=3600.0,
        window=10.0,
        sweep_users=0,
        max_failures=7,
        max_limited=50,
        scanner_user_agents=("badbot", "evil"),
        trunks=(
            TrunkLimit(ip_network("198.51.100.0/24"), 500.0, 1000),
            # A trunk without its own limits takes the section's.
            TrunkLimit(ip_network("2001:db8:1::/48"), 5.5, 11),
        ),
    )


def test_empty_allow_lets_only_trunks_peers_and_targets_in() -> None:
    security = parse_config(BASE + "[security]\nallow = []\n", source="node.toml").security
    assert security is not None
    assert security.allow == ()


def _line(key_line: str) -> str:
    return BASE + "[security]\n" + key_line + "\n"


# (the [security] line, dotted key, reason fragment); the bad line is always line 7.
BAD = [
    ('allow = "10.0.0.0/8"', "security.allow", "must be an array of networks"),
    ('allow = ["10.0.0.1/8"]', "security.allow[0]", "host bits set"),
    ('allow = ["10.0.0.1"]', "security.allow[0]", "address/prefix"),
    ("allow = [10]", "security.allow[0]", "must be a string"),
    ('deny_action = "403"', "security.deny_action", '"drop" or "reject"'),
    ("rate = 0", "security.rate", "> 0"),
    ("rate = -1", "security.rate", "> 0"),
    ("rate = inf", "security.rate", "finite"),
    ('rate = "20"', "security.rate", "requests per second, not a string"),
    ("burst = 0", "security.burst", "between 1 and 1000000"),
    ("burst = 1.5", "security.burst", "must be an integer, not a float"),
    ('limit_action = "503"', "security.limit_action", 'must be "reject" or "drop", got \'503\''),
    ("retry_after = 0", "security.retry_after", "between 1 and 86400"),
    ("block_time = 0", "security.block_time", "> 0"),
    ("window = -5", "security.window", "> 0"),
    ("sweep_users = -1", "security.sweep_users", "between 0 and 1000000"),
    ("max_failures = true", "security.max_failures", "not a boolean"),
    ("max_limited = 2.5", "security.max_limited", "must be an integer"),
    ('scanner_user_agents = "sipvicious"', "security.scanner_user_agents", "array of strings"),
    ('scanner_user_agents = [""]', "security.scanner_user_agents[0]", "non-empty printable"),
    ('scanner_user_agents = ["a\\u0000"]', "security.scanner_user_agents[0]", "printable"),
    # Overload control moved to [overload]: the old key is refused, saying where it went.
    ("overload_backlog = 0.2", "security.overload_backlog", "moved to [overload] backlog"),
    ("rat = 5", "security.rat", "unknown key (expected one of: allow, deny_action, rate"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_value_is_refused_naming_file_line_and_key(text: str, key: str, reason: str) -> None:
    error = _error(_line(text))
    assert (error.source, error.line, error.key) == ("node.toml", 7, key), str(error)
    assert reason in error.reason, str(error)
    assert str(error).startswith(f"node.toml:7: {key}: ")


@pytest.mark.parametrize(
    ("entry", "line", "key", "reason"),
    [
        ("rate = 5\n", 7, "security.trunks[0].cidr", "required key is missing"),
        ('cidr = "198.51.100.0/33"\n', 8, "security.trunks[0].cidr", "address/prefix"),
        ('cidr = "198.51.100.0/24"\nrate = 0\n', 9, "security.trunks[0].rate", "> 0"),
        ('cidr = "198.51.100.0/24"\nburst = -1\n', 9, "security.trunks[0].burst", "between 1"),
        ('cidr = "198.51.100.0/24"\nmax = 1\n', 9, "security.trunks[0].max", "unknown key"),
    ],
)
def test_bad_trunk(entry: str, line: int, key: str, reason: str) -> None:
    error = _error(BASE + "[security]\n[[security.trunks]]\n" + entry)
    assert (error.line, error.key) == (line, key), str(error)
    assert reason in error.reason, str(error)


def test_duplicate_trunk_network() -> None:
    text = BASE + '[security]\n[[security.trunks]]\ncidr = "10.0.0.0/8"\n'
    text += '[[security.trunks]]\ncidr = "10.0.0.0/8"\n'
    error = _error(text)
    assert error.key == "security.trunks[1].cidr"
    assert error.line == 10
    assert "duplicate trunk network 10.0.0.0/8" in error.reason


def test_security_must_be_a_table() -> None:
    error = _error("security = 1\n" + BASE)
    assert (error.key, error.reason) == ("security", "must be a table, not an integer")
