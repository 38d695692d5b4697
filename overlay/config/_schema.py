"""Validate parsed TOML into ``NodeConfig``; the schema is docs/internal/config.md.

Theory of operation: tomllib turns the text into dicts, then every table is read through a
``_Table`` that hands out its keys one by one and, before anything else, refuses keys the
schema does not know, so that a typo is reported as itself rather than as a missing key.
Validators raise ``_Invalid(path, reason)``; ``parse_config`` turns the first one into a
``ConfigError`` and looks up the line of the path in the text (``_lines``).
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable
from typing import TypeVar

from ._errors import ConfigError
from ._lines import Path, format_path, key_at, key_lines, line_of
from ._model import (
    DialplanRule,
    DnsSection,
    DnsTarget,
    GrpcSection,
    LinkstateSection,
    ListenAddress,
    NodeConfig,
    NodeSection,
    PeerConfig,
    SipSection,
    StaticTarget,
    TimerConfig,
    Transport,
)

T = TypeVar("T")

_NODE_ID = re.compile(r"[a-z0-9-]{1,63}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)
_TOML_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$")
_TRANSPORTS: dict[str, Transport] = {"udp": "udp", "tcp": "tcp"}
_DEFAULT_DNS_PORT = 53


class _Invalid(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


class _Missing:
    """Marks an absent key, so that ``None`` never stands for "not given"."""


_MISSING = _Missing()


class _Table:
    """A TOML table read key by key; unknown keys are refused up front."""

    def __init__(self, value: object, path: Path, known: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise _Invalid(path, f"must be a table, not {_kind(value)}")
        for key in value:
            if key not in known:
                raise _Invalid((*path, key), f"unknown key (expected one of: {', '.join(known)})")
        self._data: dict[str, object] = value
        self.path = path

    def has(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, read: Callable[[object, Path], T], default: T) -> T:
        value = self._data.get(key, _MISSING)
        return default if value is _MISSING else read(value, (*self.path, key))

    def require(self, key: str, read: Callable[[object, Path], T]) -> T:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            raise _Invalid((*self.path, key), "required key is missing")
        return read(value, (*self.path, key))


def parse_config(text: str, *, source: str) -> NodeConfig:
    """Parse and validate the TOML ``text`` of a node configuration.

    Args:
        text: the file contents.
        source: the file name used in error messages.

    Returns:
        The validated configuration, defaults filled in.

    Raises:
        ConfigError: on a TOML syntax error, an unknown key, a missing required key or a bad
            value; only the first problem is reported.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(str(error), text, source) from None
    try:
        return _node_config(data)
    except _Invalid as error:
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


def _node_config(data: dict[str, object]) -> NodeConfig:
    root = _Table(data, (), ("node", "sip", "dns", "dialplan", "grpc", "linkstate", "peers"))
    node = root.require("node", _node)
    sip = root.require("sip", _sip)
    peers: tuple[PeerConfig, ...] = root.get("peers", _peers, ())
    grpc = root.get("grpc", _grpc, None)
    if peers and grpc is None:
        raise _Invalid(("grpc",), "required when [[peers]] are configured (link-state flooding)")
    if peers and sip.workers > 1:
        # Probes, flooding and the route table live in one process for now.
        raise _Invalid(("sip", "workers"), "must be 1 when [[peers]] are configured")
    if peers and not any(a.transport == "udp" for a in sip.listen):
        raise _Invalid(("sip", "listen"), "needs a udp: address when [[peers]] are configured")
    known = {node.node_id}
    for index, peer in enumerate(peers):
        if peer.node_id in known:
            raise _Invalid(("peers", index, "node_id"), f"duplicate node id {peer.node_id!r}")
        known.add(peer.node_id)
    dialplan: tuple[DialplanRule, ...] = root.get("dialplan", _dialplan, ())
    for index, rule in enumerate(dialplan):
        if rule.egress is not None and rule.egress not in known:
            raise _Invalid(
                ("dialplan", index, "egress"),
                f"names no known node ({rule.egress!r} is neither node.node_id nor a peer)",
            )
    return NodeConfig(
        node=node,
        sip=sip,
        dns=root.get("dns", _dns, DnsSection()),
        dialplan=dialplan,
        grpc=grpc,
        linkstate=root.get("linkstate", _linkstate, LinkstateSection()),
        peers=peers,
    )


def _grpc(value: object, path: Path) -> GrpcSection:
    table = _Table(value, path, ("listen",))
    host, port = table.require("listen", _ip_port_any)
    return GrpcSection(host, port)


def _linkstate(value: object, path: Path) -> LinkstateSection:
    table = _Table(
        value,
        path,
        (
            "probe_interval",
            "probe_multiplier",
            "hold_down",
            "probe_timeout",
            "refresh_interval",
            "max_age",
            "retransmit_interval",
            "route_debounce",
        ),
    )
    d = LinkstateSection()
    section = LinkstateSection(
        probe_interval=table.get("probe_interval", _seconds, d.probe_interval),
        probe_multiplier=table.get("probe_multiplier", _multiplier, d.probe_multiplier),
        hold_down=table.get("hold_down", _seconds, d.hold_down),
        probe_timeout=table.get("probe_timeout", _seconds, d.probe_timeout),
        refresh_interval=table.get("refresh_interval", _seconds, d.refresh_interval),
        max_age=table.get("max_age", _seconds, d.max_age),
        retransmit_interval=table.get("retransmit_interval", _seconds, d.retransmit_interval),
        route_debounce=table.get("route_debounce", _seconds, d.route_debounce),
    )
    if section.probe_timeout < section.probe_interval:
        raise _Invalid((*path, "probe_timeout"), "must be >= probe_interval")
    if section.max_age <= section.refresh_interval:
        raise _Invalid((*path, "max_age"), "must be > refresh_interval (live LSAs would age out)")
    return section


def _peers(value: object, path: Path) -> tuple[PeerConfig, ...]:
    if not isinstance(value, list):
        raise _Invalid(path, f"must be an array of tables ([[peers]]), not {_kind(value)}")
    return tuple(_peer(entry, (*path, index)) for index, entry in enumerate(value))


def _peer(value: object, path: Path) -> PeerConfig:
    table = _Table(
        value, path, ("node_id", "region", "az", "sip", "grpc", "admin_cost", "base_delay_ms")
    )
    return PeerConfig(
        node_id=table.require("node_id", _node_id),
        region=table.require("region", _word),
        az=table.get("az", _string, ""),
        sip=table.require("sip", _ip_port),
        grpc=table.require("grpc", _ip_port),
        admin_cost=table.get("admin_cost", _milliseconds, 0.0),
        base_delay_ms=table.get("base_delay_ms", _milliseconds, 0.0),
    )


def _node(value: object, path: Path) -> NodeSection:
    table = _Table(value, path, ("node_id", "region", "az"))
    return NodeSection(
        node_id=table.require("node_id", _node_id),
        region=table.require("region", _word),
        az=table.get("az", _string, ""),
    )


def _sip(value: object, path: Path) -> SipSection:
    table = _Table(
        value,
        path,
        (
            "listen",
            "workers",
            "max_message_size",
            "tcp_idle_timeout",
            "record_route",
            "user_agent",
            "timers",
        ),
    )
    return SipSection(
        listen=table.require("listen", _listen),
        workers=table.get("workers", _workers, 1),
        max_message_size=table.get("max_message_size", _message_size, 65535),
        tcp_idle_timeout=table.get("tcp_idle_timeout", _seconds, 60.0),
        record_route=table.get("record_route", _bool, True),
        user_agent=table.get("user_agent", _header_value, "overlay"),
        timers=table.get("timers", _timers, TimerConfig()),
    )


def _timers(value: object, path: Path) -> TimerConfig:
    table = _Table(value, path, ("t1", "t2", "t4", "timer_c"))
    default = TimerConfig()
    t1 = table.get("t1", _seconds, default.t1)
    t2 = table.get("t2", _seconds, default.t2)
    if t2 < t1 and table.has("t2"):
        raise _Invalid((*path, "t2"), f"must be >= t1 ({t1} s), got {t2} s")
    if t2 < t1:
        raise _Invalid((*path, "t1"), f"must be <= t2 ({t2} s, the default), got {t1} s")
    return TimerConfig(
        t1=t1,
        t2=t2,
        t4=table.get("t4", _seconds, default.t4),
        timer_c=table.get("timer_c", _seconds, default.timer_c),
    )


def _dns(value: object, path: Path) -> DnsSection:
    table = _Table(value, path, ("nameservers", "timeout"))
    return DnsSection(
        nameservers=table.get("nameservers", _nameservers, ()),
        timeout=table.get("timeout", _seconds, DnsSection().timeout),
    )


def _dialplan(value: object, path: Path) -> tuple[DialplanRule, ...]:
    if not isinstance(value, list):
        raise _Invalid(path, f"must be an array of tables ([[dialplan]]), not {_kind(value)}")
    return tuple(_rule(entry, (*path, index)) for index, entry in enumerate(value))


def _rule(value: object, path: Path) -> DialplanRule:
    table = _Table(
        value, path, ("user_prefix", "domain", "target", "transport", "strip_prefix", "egress")
    )
    user_prefix = table.get("user_prefix", _user_prefix, "")
    domain = table.get("domain", _domain, None)
    transport = table.get("transport", _transport, None)
    target = table.require("target", _target)
    if isinstance(target, StaticTarget):
        target = StaticTarget(target.host, target.port, transport)
    elif target.scheme == "sips" and transport == "udp":
        raise _Invalid((*path, "transport"), "a sips: target needs TLS over TCP, not udp")
    else:
        target = DnsTarget(target.scheme, target.domain, transport)
    strip_prefix = table.get("strip_prefix", _bool, False)
    if strip_prefix and not user_prefix:
        raise _Invalid((*path, "strip_prefix"), "there is no user_prefix to strip")
    egress = table.get("egress", _node_id, None)
    return DialplanRule(target, user_prefix, domain, strip_prefix, egress)


# Leaf validators: (value, path) -> typed value, or _Invalid naming the path.


def _string(value: object, path: Path) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"must be a string, not {_kind(value)}")
    return value


def _word(value: object, path: Path) -> str:
    text = _string(value, path)
    if not text or any(char.isspace() or not char.isprintable() for char in text):
        raise _Invalid(path, f"must be a non-empty string without spaces, got {text!r}")
    return text


def _node_id(value: object, path: Path) -> str:
    text = _string(value, path)
    if not _NODE_ID.fullmatch(text):
        raise _Invalid(path, f"must match [a-z0-9-]{{1,63}}, got {text!r}")
    return text


def _header_value(value: object, path: Path) -> str:
    text = _string(value, path)
    # Goes into a SIP header verbatim: a CR or LF would split the message.
    if not text or not text.isprintable():
        raise _Invalid(path, f"must be a non-empty printable string, got {text!r}")
    return text


def _bool(value: object, path: Path) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, f"must be true or false, not {_kind(value)}")
    return value


def _workers(value: object, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(path, f"must be an integer, not {_kind(value)}")
    if not 1 <= value <= 64:
        raise _Invalid(path, f"must be between 1 and 64, got {value}")
    return value


def _message_size(value: object, path: Path) -> int:
    # bool is an int subclass in Python; TOML's true is not a size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(path, f"must be an integer, not {_kind(value)}")
    if not 1500 <= value <= 65535:
        raise _Invalid(path, f"must be between 1500 and 65535, got {value}")
    return value


def _seconds(value: object, path: Path) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Invalid(path, f"must be a number of seconds, not {_kind(value)}")
    # TOML allows inf and nan; neither is a usable timer.
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(path, f"must be a finite number of seconds > 0, got {value}")
    return float(value)


def _multiplier(value: object, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(path, f"must be an integer, not {_kind(value)}")
    if not 1 <= value <= 20:
        raise _Invalid(path, f"must be between 1 and 20, got {value}")
    return value


def _milliseconds(value: object, path: Path) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Invalid(path, f"must be a number of milliseconds, not {_kind(value)}")
    if not math.isfinite(value) or value < 0:
        raise _Invalid(path, f"must be a finite number of milliseconds >= 0, got {value}")
    return float(value)


def _ip_port(value: object, path: Path) -> tuple[str, int]:
    host, port = _host_port(_string(value, path), path, ip_only=True, min_port=1)
    if port is None:
        raise _Invalid(path, f"needs a port, got {value!r}")
    return host, port


def _ip_port_any(value: object, path: Path) -> tuple[str, int]:
    host, port = _host_port(_string(value, path), path, ip_only=True, min_port=0)
    if port is None:
        raise _Invalid(path, f"needs a port (0 = any), got {value!r}")
    return host, port


def _transport(value: object, path: Path) -> Transport:
    text = _string(value, path)
    if text not in _TRANSPORTS:
        raise _Invalid(path, f'must be "udp" or "tcp", got {text!r}')
    return _TRANSPORTS[text]


def _listen(value: object, path: Path) -> tuple[ListenAddress, ...]:
    if not isinstance(value, list):
        raise _Invalid(path, f"must be an array of strings, not {_kind(value)}")
    if not value:
        raise _Invalid(path, "needs at least one address")
    addresses = []
    for index, item in enumerate(value):
        entry_path = (*path, index)
        text = _string(item, entry_path)
        transport, _, rest = text.partition(":")
        if transport not in _TRANSPORTS:
            raise _Invalid(entry_path, f'must be "udp:" or "tcp:" then IP:port, got {text!r}')
        host, port = _host_port(rest, entry_path, ip_only=True, min_port=0)
        if port is None:
            raise _Invalid(entry_path, f"needs a port (0 = any), got {text!r}")
        address = ListenAddress(_TRANSPORTS[transport], host, port)
        if port and address in addresses:
            raise _Invalid(entry_path, f"duplicate listen address {text!r}")
        addresses.append(address)
    return tuple(addresses)


def _nameservers(value: object, path: Path) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise _Invalid(path, f"must be an array of strings, not {_kind(value)}")
    if not value:
        raise _Invalid(path, "must not be empty (leave it out to use the system resolv.conf)")
    servers = []
    for index, item in enumerate(value):
        entry_path = (*path, index)
        host, port = _host_port(_string(item, entry_path), entry_path, ip_only=True, min_port=1)
        servers.append((host, _DEFAULT_DNS_PORT if port is None else port))
    return tuple(servers)


def _user_prefix(value: object, path: Path) -> str:
    text = _string(value, path)
    if any(char.isspace() or not char.isprintable() for char in text):
        raise _Invalid(path, f"must not contain spaces or control characters, got {text!r}")
    return text


def _domain(value: object, path: Path) -> str:
    text = _string(value, path)
    if not _HOSTNAME.fullmatch(text):
        raise _Invalid(path, f"must be a host name, got {text!r}")
    return text.lower()


def _target(value: object, path: Path) -> StaticTarget | DnsTarget:
    text = _string(value, path)
    scheme, colon, domain = text.partition(":")
    if colon and scheme.lower() in ("sip", "sips"):
        if ":" in domain or not _HOSTNAME.fullmatch(domain) or _is_ip(domain):
            raise _Invalid(
                path,
                f"a {scheme.lower()}: target is a domain name without port, got {text!r}"
                " (use host:port for a fixed address)",
            )
        return DnsTarget("sips" if scheme.lower() == "sips" else "sip", domain.lower())
    host, port = _host_port(text, path, ip_only=False, min_port=1)
    if port is None:
        raise _Invalid(path, f'must be "host:port", "sip:domain" or "sips:domain", got {text!r}')
    return StaticTarget(host, port)


def _host_port(text: str, path: Path, *, ip_only: bool, min_port: int) -> tuple[str, int | None]:
    """Split ``IPv4[:port]``, ``[IPv6][:port]`` or (unless ``ip_only``) ``name[:port]``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ip(host, version=6):
            raise _Invalid(path, f"bad IPv6 address in {text!r}")
        if rest and not rest.startswith(":"):
            raise _Invalid(path, f"expected ':port' after ']' in {text!r}")
        port_text: str | None = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise _Invalid(path, f"write IPv6 addresses in brackets, e.g. [::1]:5060, got {text!r}")
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        if ip_only and not _is_ip(host, version=4):
            raise _Invalid(path, f"bad IPv4 address {host!r} in {text!r}")
        if not ip_only and not _HOSTNAME.fullmatch(host):
            raise _Invalid(path, f"bad host {host!r} in {text!r}")
        host = host.lower()
    if port_text is None:
        return host, None
    port_ok = port_text.isascii() and port_text.isdigit() and min_port <= int(port_text) <= 65535
    if not port_ok:
        raise _Invalid(path, f"port must be {min_port}..65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


_KINDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _kind(value: object) -> str:
    """Name a parsed TOML value's type in TOML's words (anything else is a date/time)."""
    return _KINDS.get(type(value), "a date/time")
