"""overlay.config: the schema of docs/internal/config.md; errors name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.config import (
    ConfigError,
    DialplanRule,
    DnsSection,
    DnsTarget,
    ListenAddress,
    NodeConfig,
    NodeSection,
    SipSection,
    StaticTarget,
    TimerConfig,
    load_config,
    parse_config,
)

# Line numbers matter: the cases below point at them.
GOOD = """\
[node]
node_id = "usw2-a"
region = "us-west-2"
az = "us-west-2a"

[sip]
listen = ["udp:127.0.0.1:5060", "tcp:[::1]:0"]
max_message_size = 4096
tcp_idle_timeout = 30
record_route = false
user_agent = "overlay/1.0"

[sip.timers]
t1 = 0.25
t2 = 2.0
t4 = 2.5
timer_c = 90

[dns]
nameservers = ["127.0.0.1:5353", "[::1]:53", "127.0.0.2"]
timeout = 1.5

[[dialplan]]
user_prefix = "+1"
domain = "Example.COM"
target = "sip:Carrier.Example"
transport = "tcp"
strip_prefix = true

[[dialplan]]
target = "127.0.10.5:5070"
"""

MINIMAL = """\
[node]
node_id = "a"
region = "r"
[sip]
listen = ["udp:127.0.0.1:0"]
"""


def _with_line(number: int, text: str) -> str:
    lines = GOOD.splitlines()
    lines[number - 1] = text
    return "\n".join(lines) + "\n"


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="node.toml")
    return caught.value


def test_good_file() -> None:
    assert parse_config(GOOD, source="node.toml") == NodeConfig(
        node=NodeSection("usw2-a", "us-west-2", "us-west-2a"),
        sip=SipSection(
            listen=(ListenAddress("udp", "127.0.0.1", 5060), ListenAddress("tcp", "::1", 0)),
            max_message_size=4096,
            tcp_idle_timeout=30.0,
            record_route=False,
            user_agent="overlay/1.0",
            timers=TimerConfig(t1=0.25, t2=2.0, t4=2.5, timer_c=90.0),
        ),
        dns=DnsSection(
            nameservers=(("127.0.0.1", 5353), ("::1", 53), ("127.0.0.2", 53)), timeout=1.5
        ),
        dialplan=(
            DialplanRule(
                DnsTarget("sip", "carrier.example", "tcp"),
                user_prefix="+1",
                domain="example.com",
                strip_prefix=True,
            ),
            DialplanRule(StaticTarget("127.0.10.5", 5070)),
        ),
    )


def test_defaults() -> None:
    config = parse_config(MINIMAL, source="node.toml")
    assert config.node.az == ""
    assert config.sip == SipSection(listen=(ListenAddress("udp", "127.0.0.1", 0),))
    assert config.sip.max_message_size == 65535
    assert config.sip.tcp_idle_timeout == 60.0
    assert config.sip.record_route is True
    assert config.sip.user_agent == "overlay"
    assert config.sip.timers == TimerConfig(t1=0.5, t2=4.0, t4=5.0, timer_c=180.0)
    assert config.dns == DnsSection(nameservers=(), timeout=2.0)
    assert config.dialplan == ()


def test_partial_timers_keep_other_defaults() -> None:
    config = parse_config(MINIMAL + "[sip.timers]\nt2 = 8\n", source="node.toml")
    assert config.sip.timers == TimerConfig(t2=8.0)


def test_t1_above_default_t2() -> None:
    error = _error(MINIMAL + "[sip.timers]\nt1 = 5\n")
    assert str(error) == "node.toml:7: sip.timers.t1: must be <= t2 (4.0 s, the default), got 5.0 s"


def test_timer_floats_from_integers() -> None:
    timers = parse_config(GOOD, source="node.toml").sip.timers
    assert isinstance(timers.timer_c, float)


def test_static_targets() -> None:
    text = MINIMAL + '[[dialplan]]\ntarget = "[2001:db8::5]:5070"\ntransport = "udp"\n'
    text += '[[dialplan]]\ntarget = "PBX.example.com:5080"\n'
    rules = parse_config(text, source="node.toml").dialplan
    assert [rule.target for rule in rules] == [
        StaticTarget("2001:db8::5", 5070, "udp"),
        StaticTarget("pbx.example.com", 5080, None),
    ]


# (line to replace, its new text, dotted key, reason fragment)
BAD_VALUES = [
    (2, 'node_id = "USW2"', "node.node_id", "must match [a-z0-9-]{1,63}"),
    (2, "node_id = 7", "node.node_id", "must be a string, not an integer"),
    (2, 'node_id = ""', "node.node_id", "must match"),
    (2, f'node_id = "{"a" * 64}"', "node.node_id", "must match"),
    (3, 'region = ""', "node.region", "non-empty string"),
    (3, "region = [1]", "node.region", "not an array"),
    (4, "az = 1", "node.az", "must be a string"),
    (7, "listen = []", "sip.listen", "at least one"),
    (7, 'listen = "udp:127.0.0.1:5060"', "sip.listen", "must be an array of strings"),
    (7, 'listen = ["sctp:127.0.0.1:5060"]', "sip.listen[0]", '"udp:", "tcp:" or "tls:"'),
    (7, 'listen = ["udp:127.0.0.1"]', "sip.listen[0]", "needs a port"),
    (7, 'listen = ["udp:localhost:5060"]', "sip.listen[0]", "bad IPv4 address 'localhost'"),
    (7, 'listen = ["udp:127.0.0.1:65536"]', "sip.listen[0]", "port must be 0..65535"),
    (7, 'listen = ["udp:127.0.0.1:-1"]', "sip.listen[0]", "port must be"),
    (7, 'listen = ["udp:::1:5060"]', "sip.listen[0]", "in brackets"),
    (7, 'listen = ["udp:[::1:5060"]', "sip.listen[0]", "bad IPv6 address"),
    (7, 'listen = ["udp:[127.0.0.1]:5060"]', "sip.listen[0]", "bad IPv6 address"),
    (7, 'listen = ["udp:[::1]5060"]', "sip.listen[0]", "expected ':port'"),
    (7, 'listen = ["udp:127.0.0.1:5060", 5]', "sip.listen[1]", "must be a string"),
    (7, 'listen = ["udp:127.0.0.1:1", "udp:127.0.0.1:1"]', "sip.listen[1]", "duplicate"),
    (8, "workers = 0", "sip.workers", "between 1 and 64"),
    (8, "workers = 2.0", "sip.workers", "must be an integer, not a float"),
    (8, "max_message_size = 1499", "sip.max_message_size", "between 1500 and 65535"),
    (8, "max_message_size = 65536", "sip.max_message_size", "between 1500 and 65535"),
    (8, "max_message_size = 4096.0", "sip.max_message_size", "must be an integer, not a float"),
    (8, "max_message_size = true", "sip.max_message_size", "not a boolean"),
    (9, "tcp_idle_timeout = 0", "sip.tcp_idle_timeout", "> 0"),
    (9, "tcp_idle_timeout = -1.5", "sip.tcp_idle_timeout", "> 0"),
    (9, "tcp_idle_timeout = inf", "sip.tcp_idle_timeout", "finite"),
    (9, "tcp_idle_timeout = nan", "sip.tcp_idle_timeout", "finite"),
    (9, 'tcp_idle_timeout = "60"', "sip.tcp_idle_timeout", "number of seconds, not a string"),
    (9, "tcp_idle_timeout = true", "sip.tcp_idle_timeout", "not a boolean"),
    (9, "tcp_idle_timeout = 1979-05-27", "sip.tcp_idle_timeout", "not a date/time"),
    (10, 'record_route = "yes"', "sip.record_route", "true or false"),
    (10, "record_route = 1", "sip.record_route", "true or false"),
    (11, 'user_agent = ""', "sip.user_agent", "non-empty printable"),
    (11, 'user_agent = "x\\r\\nVia: evil"', "sip.user_agent", "printable"),
    (14, "t1 = 0", "sip.timers.t1", "> 0"),
    (15, "t2 = 0.1", "sip.timers.t2", "must be >= t1 (0.25 s)"),
    (16, "t4 = false", "sip.timers.t4", "not a boolean"),
    (17, "timer_c = -180", "sip.timers.timer_c", "> 0"),
    (20, "nameservers = []", "dns.nameservers", "system resolv.conf"),
    (20, 'nameservers = "127.0.0.1"', "dns.nameservers", "array"),
    (20, 'nameservers = ["dns.example:53"]', "dns.nameservers[0]", "bad IPv4 address"),
    (20, 'nameservers = ["127.0.0.1:0"]', "dns.nameservers[0]", "port must be 1..65535"),
    (20, "nameservers = [53]", "dns.nameservers[0]", "must be a string"),
    (21, "timeout = 0", "dns.timeout", "> 0"),
    (24, "user_prefix = 1", "dialplan[0].user_prefix", "must be a string"),
    (24, 'user_prefix = "+1 "', "dialplan[0].user_prefix", "spaces"),
    (25, 'domain = "exa mple.com"', "dialplan[0].domain", "host name"),
    (25, 'domain = ""', "dialplan[0].domain", "host name"),
    (26, "target = 5070", "dialplan[0].target", "must be a string"),
    (26, 'target = "carrier.example"', "dialplan[0].target", '"host:port", "sip:domain"'),
    (26, 'target = "sip:carrier.example:5060"', "dialplan[0].target", "without port"),
    (26, 'target = "sip:127.0.10.1"', "dialplan[0].target", "use host:port"),
    (26, 'target = "sip:"', "dialplan[0].target", "domain name"),
    (26, 'target = "127.0.10.1:0"', "dialplan[0].target", "port must be 1..65535"),
    (26, 'target = "bad_host!:5060"', "dialplan[0].target", "bad host"),
    (27, 'transport = "sctp"', "dialplan[0].transport", 'must be "udp", "tcp" or "tls"'),
    (27, 'transport = "UDP"', "dialplan[0].transport", 'must be "udp", "tcp" or "tls"'),
    (28, 'strip_prefix = "yes"', "dialplan[0].strip_prefix", "true or false"),
    (31, 'target = "sips:x.example"\ntransport = "udp"', "dialplan[1].transport", "TLS over TCP"),
]


@pytest.mark.parametrize(("number", "text", "key", "reason"), BAD_VALUES)
def test_bad_value(number: int, text: str, key: str, reason: str) -> None:
    error = _error(_with_line(number, text))
    assert (error.source, error.key) == ("node.toml", key)
    assert reason in error.reason
    expected_line = number + text.count("\n")  # the sips case adds a line before its key
    assert error.line == expected_line
    assert str(error) == f"node.toml:{expected_line}: {key}: {error.reason}"


@pytest.mark.parametrize(
    ("number", "text", "key"),
    [
        (2, 'nodeid = "usw2-a"', "node.nodeid"),
        (5, "zone = 1", "node.zone"),
        (12, 'listen_address = "x"', "sip.listen_address"),
        (18, "t3 = 1.0", "sip.timers.t3"),
        (22, "retries = 2", "dns.retries"),
        (29, 'prefix = "+1"', "dialplan[0].prefix"),
        (32, "[sipp]", "sipp"),
        (32, "[sip.extra]", "sip.extra"),
    ],
)
def test_unknown_key(number: int, text: str, key: str) -> None:
    lines = [*GOOD.splitlines(), ""]
    lines[number - 1] = text
    error = _error("\n".join(lines))
    assert (error.key, error.line) == (key, number)
    assert error.reason.startswith("unknown key (expected one of: ")


def test_unknown_top_level_key() -> None:
    error = _error("version = 2\n" + GOOD)
    assert str(error) == (
        "node.toml:1: version: unknown key"
        " (expected one of: node, sip, dns, dialplan, grpc, media, linkstate, peers, metrics,"
        " log, cloudwatch, security, overload, pair, health, trunks)"
    )


def test_unknown_key_reported_before_missing_one() -> None:
    # A typo is reported as itself, not as the required key it was meant to be.
    error = _error(_with_line(3, 'regoin = "us-west-2"'))
    assert (error.key, error.line) == ("node.regoin", 3)


def test_missing_required_key_points_at_its_table() -> None:
    error = _error(_with_line(3, ""))
    assert str(error) == "node.toml:1: node.region: required key is missing"
    error = _error(_with_line(31, ""))
    assert str(error) == "node.toml:30: dialplan[1].target: required key is missing"


def test_missing_required_table_has_no_line() -> None:
    error = _error(MINIMAL.split("[sip]")[0])
    assert str(error) == "node.toml: sip: required key is missing"
    assert error.line is None


def test_strip_prefix_needs_prefix() -> None:
    error = _error(_with_line(24, ""))
    assert (error.key, error.line) == ("dialplan[0].strip_prefix", 28)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("sip = 5\n" + MINIMAL.split("[sip]")[0], "sip", "must be a table, not an integer"),
        (MINIMAL + "timers = 3\n", "sip.timers", "must be a table"),
        ("dialplan = 1\n" + MINIMAL, "dialplan", "array of tables ([[dialplan]])"),
        (MINIMAL + '[dialplan]\ntarget = "sip:x.example"\n', "dialplan", "array of tables"),
        ("dialplan = [1]\n" + MINIMAL, "dialplan[0]", "must be a table, not an integer"),
    ],
)
def test_wrong_structure(text: str, key: str, reason: str) -> None:
    error = _error(text)
    assert error.key == key
    assert reason in error.reason


def test_line_of_dotted_and_inline_keys() -> None:
    dotted = _error(MINIMAL + "timers.t2 = 0.1\n")
    assert (dotted.key, dotted.line) == ("sip.timers.t2", 6)
    inline = _error(MINIMAL + "timers = { t1 = 1.0, t2 = 0.5 }\n")
    assert (inline.key, inline.line) == ("sip.timers.t2", 6)


def test_line_of_quoted_keys() -> None:
    error = _error(MINIMAL + '"user_agent" = ""\n')
    assert (error.key, error.line) == ("sip.user_agent", 6)


def test_multiline_string_does_not_fool_line_search() -> None:
    text = MINIMAL + 'user_agent = """\nrecord_route = true\n"""\nrecord_route = "no"\n'
    error = _error(text)
    assert (error.key, error.line) == ("sip.record_route", 9)


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (_with_line(14, "t1 = 0.5.5"), 14, "sip.timers.t1"),
        (_with_line(3, 'node_id = "again"'), 3, "node.node_id"),
        (_with_line(6, "[sip"), 6, ""),
        (_with_line(7, 'listen = ["udp:127.0.0.1:5060"'), 8, ""),  # not max_message_size
        (_with_line(25, 'domain = "example.com" "x"'), 25, "dialplan[0].domain"),
        (_with_line(25, '"d\\q" = 1'), 25, ""),
    ],
)
def test_toml_syntax_error(text: str, line: int, key: str) -> None:
    error = _error(text)
    assert (error.line, error.key) == (line, key)
    assert error.reason.startswith("invalid TOML: ")
    assert "(column " in error.reason
    assert str(error).startswith(f"node.toml:{line}: ")


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(GOOD)
    assert load_config(path) == parse_config(GOOD, source=str(path))
    assert load_config(str(path)) == load_config(path)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(_with_line(9, "tcp_idle_timeout = 0"))
    with pytest.raises(ConfigError, match=rf"^{path}:9: sip.tcp_idle_timeout: "):
        load_config(path)


def test_load_config_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read: No such file"):
        load_config(missing)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(b'[node]\nnode_id = "\xff"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text"):
        load_config(path)


def test_config_is_frozen() -> None:
    config = parse_config(GOOD, source="node.toml")
    with pytest.raises(AttributeError):
        config.sip.timers.t1 = 1.0  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(
    number=st.integers(min_value=1, max_value=GOOD.count("\n")),
    text=st.text(alphabet=st.sampled_from(list("[]{}\"'=.,:#\\ \nabt1_+-0123456789"))),
)
def test_any_edit_loads_or_is_refused_cleanly(number: int, text: str) -> None:
    # Fuzz invariant (STYLE.md §9): a config either loads or raises ConfigError, nothing else.
    error: ConfigError | None = None
    try:
        parse_config(_with_line(number, text), source="node.toml")
    except ConfigError as refused:
        error = refused
    if error is not None:
        assert str(error).startswith("node.toml")
        assert error.line is None or 1 <= error.line <= GOOD.count("\n") + text.count("\n") + 1


OVERLAY = """\
[node]
node_id = "usw2"
region = "us-west-2"

[sip]
listen = ["udp:127.0.0.11:5060"]

[grpc]
listen = "127.0.0.11:7000"
insecure = true

[linkstate]
probe_interval = 0.15
probe_multiplier = 4

[[peers]]
node_id = "use1"
region = "us-east-1"
sip = "127.0.0.14:5060"
grpc = "127.0.0.14:7000"
base_delay_ms = 34

[[dialplan]]
target = "127.0.0.20:5070"
egress = "use1"
"""


def test_overlay_sections() -> None:
    config = parse_config(OVERLAY, source="node.toml")
    assert config.grpc is not None
    assert (config.grpc.host, config.grpc.port) == ("127.0.0.11", 7000)
    assert config.linkstate.probe_interval == 0.15
    assert config.linkstate.probe_multiplier == 4
    assert config.linkstate.hold_down == 2.0
    assert config.linkstate.route_wait == 2.5
    (peer,) = config.peers
    assert peer.node_id == "use1"
    assert peer.sip == ("127.0.0.14", 5060)
    assert peer.base_delay_ms == 34.0
    assert config.dialplan[0].egress == ("use1",)
    both = parse_config(OVERLAY.replace('egress = "use1"', 'egress = ["use1", "usw2"]'), source="n")
    assert both.dialplan[0].egress == ("use1", "usw2")


@pytest.mark.parametrize(("text", "expected"), [("0", 0.0), ("1.5", 1.5)])
def test_route_wait_is_seconds_or_off(text: str, expected: float) -> None:
    config = parse_config(
        OVERLAY.replace("probe_multiplier = 4", f"probe_multiplier = 4\nroute_wait = {text}"),
        source="node.toml",
    )
    assert config.linkstate.route_wait == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("", (0.02, 6)),
        ("liveness_interval = 0.05\nliveness_multiplier = 4", (0.05, 4)),
        ("liveness_interval = 0", (0.0, 6)),
    ],
)
def test_liveness_echoes_are_on_by_default_and_tunable(
    lines: str, expected: tuple[float, int]
) -> None:
    config = parse_config(
        OVERLAY.replace("probe_multiplier = 4", f"probe_multiplier = 4\n{lines}"),
        source="node.toml",
    )
    linkstate = config.linkstate
    assert (linkstate.liveness_interval, linkstate.liveness_multiplier) == expected


def test_negative_route_wait_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"linkstate\.route_wait: must be a finite number"):
        parse_config(
            OVERLAY.replace("probe_multiplier = 4", "probe_multiplier = 4\nroute_wait = -1"),
            source="node.toml",
        )


def test_no_peers_means_no_overlay() -> None:
    config = parse_config(MINIMAL, source="node.toml")
    assert config.peers == ()
    assert config.grpc is None


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ('egress = "use1"', 'egress = "nowhere"', "dialplan[0].egress", "names no known node"),
        ('egress = "use1"', 'egress = ["use1", "x"]', "dialplan[0].egress[1]", "no known node"),
        ('egress = "use1"', 'egress = ["use1", "use1"]', "dialplan[0].egress[1]", "twice"),
        ('egress = "use1"', "egress = []", "dialplan[0].egress", "at least one node"),
        ('egress = "use1"', "egress = 1", "dialplan[0].egress", "a node id or an array"),
        ('node_id = "use1"', 'node_id = "usw2"', "peers[0].node_id", "duplicate node id"),
        ('[grpc]\nlisten = "127.0.0.11:7000"\ninsecure = true', "", "grpc", "required when"),
        ("udp:127.0.0.11:5060", "tcp:127.0.0.11:5060", "sip.listen", "needs a udp:"),
        ("probe_multiplier = 4", "probe_multiplier = 0", "linkstate.probe_multiplier", "1 and 20"),
        ("probe_interval = 0.15", "probe_timeout = 0.05", "linkstate.probe_timeout", ">= probe"),
        ("probe_interval = 0.15", "max_age = 5", "linkstate.max_age", "> refresh_interval"),
        (
            "probe_interval = 0.15",
            "liveness_interval = 0.0005",
            "linkstate.liveness_interval",
            "between 0.001 and 60",
        ),
        (
            "probe_interval = 0.15",
            "liveness_interval = -1",
            "linkstate.liveness_interval",
            "finite number of seconds > 0",
        ),
        (
            "probe_interval = 0.15",
            "liveness_multiplier = 0",
            "linkstate.liveness_multiplier",
            "1 and 20",
        ),
        ("base_delay_ms = 34", "base_delay_ms = -1", "peers[0].base_delay_ms", ">= 0"),
        ('sip = "127.0.0.14:5060"', 'sip = "127.0.0.14"', "peers[0].sip", "needs a port"),
        ('region = "us-east-1"', "", "peers[0].region", "required key is missing"),
    ],
)
def test_bad_overlay_config(old: str, new: str, key: str, reason: str) -> None:
    assert old in OVERLAY
    error = _error(OVERLAY.replace(old, new, 1))
    assert error.key == key
    assert reason in error.reason


def with_workers(text: str, workers: int) -> str:
    listen = 'listen = ["udp:127.0.0.11:5060"]'
    assert listen in text
    return text.replace(listen, f"{listen}\nworkers = {workers}", 1)


def test_overlay_runs_on_several_workers() -> None:
    assert parse_config(with_workers(OVERLAY, 2), source="node.toml").sip.workers == 2


MEDIA = OVERLAY.replace(
    "[linkstate]",
    '[media]\naddress = "127.0.0.11"\noverlay = "127.0.0.11:7100"\nport_first = 30000\n'
    "port_last = 30999\n\n[linkstate]",
).replace("base_delay_ms = 34", 'base_delay_ms = 34\nmedia = "127.0.0.14:7100"')


def test_media_with_several_workers_needs_a_pair_of_ports_for_each() -> None:
    config = parse_config(with_workers(MEDIA, 2), source="node.toml")
    assert config.sip.workers == 2
    assert config.media is not None
    text = with_workers(MEDIA.replace("port_last = 30999", "port_last = 30003"), 3)
    error = _error(text)
    assert error.key == "media.port_last"
    assert "holds 2 RTP/RTCP pairs, fewer than sip.workers = 3" in error.reason
    assert parse_config(text.replace("workers = 3", "workers = 2"), source="node.toml").media


def test_health_port_is_none_of_the_workers_metrics_ports() -> None:
    sections = '\n[metrics]\nlisten = "127.0.0.11:9100"\n\n[health]\nlisten = "127.0.0.11:{}"\n'
    two = MINIMAL.replace(
        'listen = ["udp:127.0.0.1:0"]', 'listen = ["udp:127.0.0.1:0"]\nworkers = 2'
    )
    assert parse_config(two + sections.format(9102), source="node.toml").health is not None
    assert parse_config(MINIMAL + sections.format(9101), source="node.toml").health is not None
    error = _error(two + sections.format(9101))
    assert error.key == "health.listen"
    assert "port 9101 is a worker's [metrics] port" in error.reason


def test_media_section() -> None:
    config = parse_config(MEDIA, source="node.toml")
    assert config.media is not None
    assert config.media.address == "127.0.0.11"
    assert config.media.overlay == ("127.0.0.11", 7100)
    assert (config.media.port_first, config.media.port_last) == (30000, 30999)
    assert config.media.inactivity_timeout == 60.0
    assert config.media.thread_niceness == -10
    assert config.media.thread_realtime == 1
    assert config.peers[0].media == ("127.0.0.14", 7100)


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ('media = "127.0.0.14:7100"', "", "peers[0].media", "required when [media]"),
        ("port_first = 30000", "port_first = 30001", "media.port_first", "must be even"),
        ("port_last = 30999", "port_last = 29000", "media.port_last", "above port_first"),
        ('overlay = "127.0.0.11:7100"', 'overlay = "127.0.0.11:30500"', "media.overlay", "range"),
        ('address = "127.0.0.11"', 'address = "relay.example"', "media.address", "IPv4 or"),
        (
            "port_last = 30999",
            "port_last = 30999\nthread_niceness = -21",
            "media.thread_niceness",
            "-20",
        ),
        (
            "port_last = 30999",
            "port_last = 30999\nthread_realtime = 100",
            "media.thread_realtime",
            "99",
        ),
    ],
)
def test_bad_media_config(old: str, new: str, key: str, reason: str) -> None:
    assert old in MEDIA
    error = _error(MEDIA.replace(old, new, 1))
    assert error.key == key
    assert reason in error.reason


def test_media_needs_peers() -> None:
    error = _error(MINIMAL + '\n[media]\naddress = "127.0.0.1"\noverlay = "127.0.0.1:7100"\n')
    assert error.key == "media"
    assert "needs [[peers]]" in error.reason


# --- [grpc] mutual TLS -------------------------------------------------------------------------

INSECURE = 'listen = "127.0.0.11:7000"\ninsecure = true'


def test_overlay_node_needs_tls_or_an_explicit_insecure() -> None:
    error = _error(OVERLAY.replace(INSECURE, 'listen = "127.0.0.11:7000"'))
    assert (error.key, error.line) == ("grpc", 8)
    assert "required: ca, cert, key" in error.reason
    assert "insecure = true" in error.reason


def test_grpc_tls_files_are_kept_and_must_be_readable(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "usw2.pem", "usw2.key"))
    for path in (ca, cert, key):
        path.write_text("the node checks what is in them when it starts")
    tls = f'listen = "127.0.0.11:7000"\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"'
    grpc = parse_config(OVERLAY.replace(INSECURE, tls), source="node.toml").grpc
    assert grpc is not None
    assert (grpc.ca, grpc.cert, grpc.key, grpc.insecure) == (str(ca), str(cert), str(key), False)

    error = _error(OVERLAY.replace(INSECURE, tls.replace(f'\nkey = "{key}"', "")))
    assert (error.key, error.reason.split(" (")[0]) == ("grpc.key", "required: key")
    cert.unlink()
    error = _error(OVERLAY.replace(INSECURE, tls))
    assert error.key == "grpc.cert"
    assert error.reason == f"cannot read {cert}: No such file or directory"


def test_insecure_excludes_tls_files() -> None:
    error = _error(OVERLAY.replace(INSECURE, INSECURE + '\nca = "ca.pem"'))
    assert (error.key, error.reason) == (
        "grpc.ca",
        "insecure = true runs without TLS: remove ca, cert and key",
    )


def test_advertise_addresses() -> None:
    config = parse_config(MINIMAL + 'advertise = "198.51.100.7"\n', source="node.toml")
    assert config.sip.advertise == "198.51.100.7"
    assert parse_config(MINIMAL, source="node.toml").sip.advertise is None
    error = _error(MINIMAL + 'advertise = "sip.example.com"\n')
    assert (error.key, error.line) == ("sip.advertise", 6)
    media = parse_config(
        MEDIA.replace("port_first = 30000", 'advertise = "198.51.100.8"'), source="n"
    )
    assert media.media is not None
    assert (media.media.address, media.media.advertise) == ("127.0.0.11", "198.51.100.8")
