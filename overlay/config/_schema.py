"""Validate parsed TOML into ``NodeConfig``; the schema is docs/internal/config.md.

The reading machinery (``Table``, ``Invalid``, the generic readers, ``parse_toml`` and its
error lines) is ``_reader``; this module is only the node's schema built from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

from overlay.media import media_id, port_slice

from ._lines import Path
from ._model import (
    LOG_LEVELS,
    CloudwatchSection,
    DialplanRule,
    DnsSection,
    DnsTarget,
    GrpcSection,
    HealthSection,
    LinkstateSection,
    ListenAddress,
    LogFormat,
    LogSection,
    MediaSection,
    MetricsSection,
    NodeConfig,
    NodeSection,
    OverloadSection,
    PairHold,
    PairSection,
    PeerConfig,
    SipSection,
    SipTlsSection,
    StaticTarget,
    TimerConfig,
    Transport,
    TrunksSection,
)
from ._overload import overload
from ._reader import (
    Invalid,
    Reader,
    Table,
    boolean,
    choice,
    integer,
    kind,
    matching,
    milliseconds,
    parse_toml,
    seconds,
    seconds_or_off,
    string,
)
from ._security import security

_NODE_ID = re.compile(r"[a-z0-9-]{1,63}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)
_TRANSPORTS: dict[str, Transport] = {"udp": "udp", "tcp": "tcp", "tls": "tls"}
_DEFAULT_DNS_PORT = 53
#: ``files_checked``'s flag, for the file readers.
_check_files: ContextVar[bool] = ContextVar("check_files", default=True)


def parse_config(text: str, *, source: str, check_files: bool = True) -> NodeConfig:
    """Parse and validate the TOML ``text`` of a node configuration.

    Args:
        text: the file contents.
        source: the file name used in error messages.
        check_files: whether the files it names (certificates, keys) must be readable here;
            ``False`` for a configuration made for another machine (``overlay deploy render``).

    Returns:
        The validated configuration, defaults filled in.

    Raises:
        ConfigError: on a TOML syntax error, an unknown key, a missing required key or a bad
            value; only the first problem is reported.
    """
    with files_checked(check_files):
        return parse_toml(text, source=source, build=_node_config)


@contextlib.contextmanager
def files_checked(check: bool) -> Iterator[None]:
    """While in it, file paths (certificates, keys) must be readable here (``check``), or only
    well formed: a configuration made for another machine (``overlay deploy render``)."""
    token = _check_files.set(check)
    try:
        yield
    finally:
        _check_files.reset(token)


def _node_config(data: dict[str, object]) -> NodeConfig:
    root = Table(
        data,
        (),
        (
            "node",
            "sip",
            "dns",
            "dialplan",
            "grpc",
            "media",
            "linkstate",
            "peers",
            "metrics",
            "log",
            "cloudwatch",
            "security",
            "overload",
            "pair",
            "health",
            "trunks",
        ),
    )
    node = root.require("node", _node)
    sip = root.require("sip", _sip)
    peers: tuple[PeerConfig, ...] = root.get("peers", _peers, ())
    grpc = root.get("grpc", _grpc, None)
    if peers and grpc is None:
        raise Invalid(("grpc",), "required when [[peers]] are configured (link-state flooding)")
    if peers and not any(a.transport == "udp" for a in sip.listen):
        raise Invalid(("sip", "listen"), "needs a udp: address when [[peers]] are configured")
    media = root.get("media", _media, None)
    if media is not None and not peers:
        raise Invalid(("media",), "needs [[peers]]: media is relayed between overlay nodes")
    if media is not None and sip.workers > 1:
        # Each worker's edge hands out ports from its own slice of the range (port_slice; the
        # relay, worker 0's, binds them all): a worker with no pair could anchor no call.
        try:
            port_slice(media.port_first, media.port_last, sip.workers, 0)
        except ValueError:
            pairs = (media.port_last + 1 - media.port_first) // 2
            raise Invalid(
                ("media", "port_last"),
                f"the range holds {pairs} RTP/RTCP pairs, fewer than sip.workers = {sip.workers}:"
                " each worker anchors its calls on its own slice of the range",
            ) from None
    known = {node.node_id}
    media_ids = {media_id(node.node_id): node.node_id}
    for index, peer in enumerate(peers):
        if peer.node_id in known:
            raise Invalid(("peers", index, "node_id"), f"duplicate node id {peer.node_id!r}")
        known.add(peer.node_id)
        if media is not None and peer.media is None:
            raise Invalid(("peers", index, "media"), "required when [media] is configured")
        clash = media_ids.setdefault(media_id(peer.node_id), peer.node_id)
        if clash != peer.node_id:
            raise Invalid(
                ("peers", index, "node_id"),
                f"its media id (CRC-32) equals {clash!r}'s: rename one of them",
            )
    metrics = root.get("metrics", _metrics, None)
    if metrics is not None and metrics.port and metrics.port + sip.workers - 1 > 65535:
        raise Invalid(
            ("metrics", "listen"),
            f"worker i serves on port + i: port + sip.workers - 1 must be <= 65535 "
            f"({sip.workers} workers)",
        )
    cloudwatch = root.get("cloudwatch", _cloudwatch, None)
    if cloudwatch is not None and not peers:
        raise Invalid(("cloudwatch",), "needs [[peers]]: it publishes the links to them")
    if cloudwatch is not None and not cloudwatch.region:
        if not _AWS_REGION.fullmatch(node.region):
            raise Invalid(
                ("cloudwatch",),
                f"needs region: node.region {node.region!r} is not an AWS region name",
            )
        cloudwatch = dataclasses.replace(cloudwatch, region=node.region)
    health = root.get("health", _health, None)
    if (
        health is not None
        and metrics is not None
        and metrics.port
        and health.host == metrics.host
        and metrics.port <= health.port < metrics.port + sip.workers
    ):
        raise Invalid(
            ("health", "listen"),
            f"port {health.port} is a worker's [metrics] port (port + i for worker i of "
            f"{sip.workers}): choose another",
        )
    dialplan: tuple[DialplanRule, ...] = root.get("dialplan", _dialplan, ())
    for index, rule in enumerate(dialplan):
        for position, egress in enumerate(rule.egress):
            if egress not in known:
                path: Path = ("dialplan", index, "egress")
                raise Invalid(
                    (*path, position) if len(rule.egress) > 1 else path,
                    f"names no known node ({egress!r} is neither node.node_id nor a peer)",
                )
        _check_tls_egress(rule, index, node.node_id, sip)
    return NodeConfig(
        node=node,
        sip=sip,
        dns=root.get("dns", _dns, DnsSection()),
        dialplan=dialplan,
        grpc=grpc,
        media=media,
        linkstate=root.get("linkstate", linkstate_section, LinkstateSection()),
        peers=peers,
        metrics=metrics,
        log=root.get("log", _log, LogSection()),
        cloudwatch=cloudwatch,
        security=root.get("security", security, None),
        overload=root.get("overload", overload, OverloadSection()),
        pair=_pair_of(root, sip, peers, {"grpc": grpc, "metrics": metrics, "health": health}),
        health=health,
        trunks=root.get("trunks", trunks_section, TrunksSection()),
    )


def _pair_of(
    root: Table,
    sip: SipSection,
    peers: tuple[PeerConfig, ...],
    own: Mapping[str, GrpcSection | MetricsSection | HealthSection | None],
) -> PairSection | None:
    """``[pair]``, checked against the sections it constrains; ``own``: the sections whose
    ``listen`` each member serves for itself, by name."""
    pair: PairSection | None = root.get("pair", _pair, None)
    if pair is None:
        return None
    if not peers:
        raise Invalid(("pair",), "needs [[peers]]: a pair member holds back only from the mesh")
    if pair.address not in {listen.host for listen in sip.listen}:
        raise Invalid(
            ("pair", "address"),
            f"{pair.address} must be a sip.listen address: the pair is reached there",
        )
    if pair.hold == "file":
        _check_held_by_file(pair.address, sip, own)
    return pair


def _check_held_by_file(
    address: str,
    sip: SipSection,
    own: Mapping[str, GrpcSection | MetricsSection | HealthSection | None],
) -> None:
    """With ``hold = "file"`` both members share one machine: the SIP sockets are bound only
    once the member holds the address, though their ports are advertised from the start, and
    what each member serves for itself needs an address of its own (two processes cannot
    bind one address:port, and a wildcard takes the port on every address)."""
    for index, listen in enumerate(sip.listen):
        if listen.port == 0:
            raise Invalid(
                ("sip", "listen", index),
                'needs a port with [pair] hold = "file": it is bound only once the pair\'s '
                "address is held, and advertised before",
            )
    for section, served in own.items():
        if served is None:
            continue
        if served.host == address or ipaddress.ip_address(served.host).is_unspecified:
            also = " (the holder serves gRPC there too, on this port)" if section == "grpc" else ""
            raise Invalid(
                (section, "listen"),
                f'must be this member\'s own address with [pair] hold = "file": both members '
                f"share the machine, and {address} is its holder's{also}",
            )


#: A member's name in the hold file: one line, no path or shell meaning.
_MEMBER = r"[a-z0-9.-]{1,63}"


def _pair(value: object, path: Path) -> PairSection:
    table = Table(
        value,
        path,
        ("address", "check_interval", "takeover_grace", "hold", "hold_file", "member", "peer_grpc"),
    )
    default = PairSection("")
    interval = table.get("check_interval", seconds, default.check_interval)
    grace = table.get("takeover_grace", seconds, default.takeover_grace)
    if grace > _MAX_TAKEOVER_GRACE:
        raise Invalid(
            (*path, "takeover_grace"),
            f"must be <= {_MAX_TAKEOVER_GRACE:g} s: peers hold a silent pair's calls that "
            f"long before ending them, got {grace:g}",
        )
    if not 0 < interval <= _MAX_PAIR_CHECK_INTERVAL:
        raise Invalid(
            (*path, "check_interval"),
            f"must be > 0 and <= {_MAX_PAIR_CHECK_INTERVAL:g} s: the standby's node joins the "
            f"mesh that much after it gets the address, got {interval:g}",
        )
    hold = table.get("hold", _pair_hold, default.hold)
    if hold == "kernel":
        for key in ("hold_file", "member"):
            if table.has(key):
                raise Invalid(
                    (*path, key),
                    'only with hold = "file": the kernel says whether this machine holds the '
                    "address",
                )
        hold_file = member = None
    else:
        hold_file = table.require("hold_file", _hold_file)
        member = table.require("member", matching(_MEMBER, f"match {_MEMBER}"))
    return PairSection(
        address=table.require("address", ip_address),
        check_interval=interval,
        takeover_grace=grace,
        peer_grpc=table.get("peer_grpc", _ip_port, None),
        hold=hold,
        hold_file=hold_file,
        member=member,
    )


_pair_hold: Reader[PairHold] = choice({"kernel": "kernel", "file": "file"})


def _hold_file(value: object, path: Path) -> str:
    """An absolute path whose directory exists here (the file itself comes and goes)."""
    text = string(value, path)
    if not text.startswith("/"):
        raise Invalid(path, f"must be an absolute path, got {text!r}")
    if _check_files.get() and not os.path.isdir(os.path.dirname(text)):
        raise Invalid(path, f"{os.path.dirname(text)} is not a directory here")
    return text


def _check_tls_egress(rule: DialplanRule, index: int, node_id: str, sip: SipSection) -> None:
    """A rule whose calls leave here over TLS needs a tls: listener: the trunk reaches the
    node's Record-Route, and sends its own in-dialog requests, over TLS (RFC 3261 §16.6)."""
    target = rule.target
    tls = target.transport == "tls" or (isinstance(target, DnsTarget) and target.scheme == "sips")
    leaves_here = not rule.egress or node_id in rule.egress
    if tls and leaves_here and not any(a.transport == "tls" for a in sip.listen):
        raise Invalid(
            ("dialplan", index, "target"),
            "its calls leave this node over TLS: sip.listen needs a tls: address",
        )


def _grpc(value: object, path: Path) -> GrpcSection:
    table = Table(value, path, ("listen", *TLS_KEYS))
    host, port = table.require("listen", _ip_port_any)
    tls = grpc_tls(table, path)
    if tls is None:
        return GrpcSection(host, port, insecure=True)
    ca, cert, key = tls
    return GrpcSection(host, port, ca=ca, cert=cert, key=key)


#: The keys of a table that serves or dials gRPC with mutual TLS (``grpc_tls``).
TLS_KEYS = ("ca", "cert", "key", "insecure")


def grpc_tls(table: Table, path: Path) -> tuple[str, str, str] | None:
    """The ``ca``, ``cert`` and ``key`` files of ``table`` (the node's ``[grpc]``, the HA
    agent's ``[ha]``), or ``None`` with ``insecure = true``; one or the other is required."""
    insecure = table.get("insecure", boolean, False)
    files = [name for name in ("ca", "cert", "key") if table.has(name)]
    if insecure and files:
        raise Invalid(
            (*path, files[0]), "insecure = true runs without TLS: remove ca, cert and key"
        )
    if insecure:
        return None
    missing = [name for name in ("ca", "cert", "key") if name not in files]
    if missing:
        raise Invalid(
            (*path, missing[0]) if files else path,
            f"required: {', '.join(missing)} (PEM files for mutual TLS, made by "
            "`overlay certs`), or insecure = true to run without TLS (a lab only)",
        )
    ca, cert, key = (table.require(name, _file) for name in ("ca", "cert", "key"))
    return ca, cert, key


def _file(value: object, path: Path) -> str:
    """A path to a file the node must be able to read when it starts."""
    text = string(value, path)
    if not text:
        raise Invalid(path, "must be a file path, not empty")
    if not _check_files.get():
        return text
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise Invalid(path, f"cannot read {text}: {exc.strerror or exc}") from None
    return text


def _media(value: object, path: Path) -> MediaSection:
    table = Table(
        value,
        path,
        (
            "address",
            "overlay",
            "port_first",
            "port_last",
            "inactivity_timeout",
            "advertise",
            "thread_niceness",
            "thread_realtime",
        ),
    )
    d = MediaSection("", ("", 0))
    address = table.require("address", ip_address)
    port = integer(1024, 65534)
    section = MediaSection(
        address=address,
        overlay=table.require("overlay", _ip_port),
        port_first=table.get("port_first", port, d.port_first),
        port_last=table.get("port_last", port, d.port_last),
        inactivity_timeout=table.get("inactivity_timeout", seconds, d.inactivity_timeout),
        advertise=table.get("advertise", ip_address, None),
        thread_niceness=table.get("thread_niceness", integer(-20, 19), d.thread_niceness),
        thread_realtime=table.get("thread_realtime", integer(0, 99), d.thread_realtime),
    )
    if section.port_first % 2:
        raise Invalid((*path, "port_first"), "must be even (RTP on even ports, RFC 3550)")
    if section.port_last <= section.port_first:
        raise Invalid((*path, "port_last"), "must be above port_first")
    if section.port_first <= section.overlay[1] <= section.port_last:
        raise Invalid((*path, "overlay"), "its port is inside the relay port range")
    return section


def _metrics(value: object, path: Path) -> MetricsSection:
    return MetricsSection(*_listen_only(value, path))


def _health(value: object, path: Path) -> HealthSection:
    return HealthSection(*_listen_only(value, path))


def _listen_only(value: object, path: Path) -> tuple[str, int]:
    """The address of a table whose one key is ``listen = "host:port"``."""
    listen: tuple[str, int] = Table(value, path, ("listen",)).require("listen", _ip_port_any)
    return listen


def _log(value: object, path: Path) -> LogSection:
    table = Table(value, path, ("format", "level"))
    d = LogSection()
    return LogSection(
        format=table.get("format", _log_format, d.format),
        level=table.get("level", _log_level, d.level),
    )


def _log_level(value: object, path: Path) -> str:
    text = string(value, path)
    if text.upper() not in LOG_LEVELS:
        raise Invalid(path, f'must be "debug", "info", "warning" or "error", got {text!r}')
    return text.upper()


_MAX_PAIR_CHECK_INTERVAL = 1.0
_MAX_TAKEOVER_GRACE = 60.0  # the LSA codec refuses more


def _cloudwatch(value: object, path: Path) -> CloudwatchSection:
    table = Table(
        value,
        path,
        ("fleet", "region", "namespace", "interval", "sample_interval", "endpoint_url"),
    )
    d = CloudwatchSection("", "")
    section = CloudwatchSection(
        fleet=table.require("fleet", _fleet),
        region=table.get("region", _aws_region, ""),  # "": node.region, checked by the caller
        namespace=table.get("namespace", _namespace, d.namespace),
        interval=table.get("interval", seconds, d.interval),
        sample_interval=table.get("sample_interval", seconds, d.sample_interval),
        endpoint_url=table.get("endpoint_url", _http_url, None),
    )
    if section.interval > _MAX_CLOUDWATCH_INTERVAL:
        raise Invalid(
            (*path, "interval"),
            f"must be <= {_MAX_CLOUDWATCH_INTERVAL:g} s: the fleet's alarms take a minute "
            f"without data as breaching, got {section.interval:g}",
        )
    if section.sample_interval > section.interval:
        raise Invalid((*path, "sample_interval"), "must be <= interval")
    return section


def _namespace(value: object, path: Path) -> str:
    text = _cloudwatch_namespace(value, path)
    if text.startswith("AWS/"):
        raise Invalid(path, f"must not start with AWS/ (reserved for AWS services), got {text!r}")
    return text


def _http_url(value: object, path: Path) -> str:
    text = string(value, path)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(path, f"must be an http:// or https:// URL, got {text!r}")
    return text


def linkstate_section(value: object, path: Path) -> LinkstateSection:
    table = Table(
        value,
        path,
        (
            "probe_interval",
            "probe_multiplier",
            "liveness_interval",
            "liveness_multiplier",
            "hold_down",
            "probe_timeout",
            "refresh_interval",
            "max_age",
            "retransmit_interval",
            "route_debounce",
            "route_wait",
            "far_edge_wait",
        ),
    )
    d = LinkstateSection()
    section = LinkstateSection(
        probe_interval=table.get("probe_interval", seconds, d.probe_interval),
        probe_multiplier=table.get("probe_multiplier", _multiplier, d.probe_multiplier),
        liveness_interval=table.get("liveness_interval", _liveness_interval, d.liveness_interval),
        liveness_multiplier=table.get("liveness_multiplier", _multiplier, d.liveness_multiplier),
        hold_down=table.get("hold_down", seconds, d.hold_down),
        probe_timeout=table.get("probe_timeout", seconds, d.probe_timeout),
        refresh_interval=table.get("refresh_interval", seconds, d.refresh_interval),
        max_age=table.get("max_age", seconds, d.max_age),
        retransmit_interval=table.get("retransmit_interval", seconds, d.retransmit_interval),
        route_debounce=table.get("route_debounce", seconds, d.route_debounce),
        route_wait=table.get("route_wait", seconds_or_off, d.route_wait),
        far_edge_wait=table.get("far_edge_wait", seconds, d.far_edge_wait),
    )
    if section.probe_timeout < section.probe_interval:
        raise Invalid((*path, "probe_timeout"), "must be >= probe_interval")
    if section.max_age <= section.refresh_interval:
        raise Invalid((*path, "max_age"), "must be > refresh_interval (live LSAs would age out)")
    return section


def trunks_section(value: object, path: Path) -> TrunksSection:
    table = Table(
        value,
        path,
        (
            "enabled",
            "probe_interval",
            "probe_multiplier",
            "hold_down",
            "probe_timeout",
            "reply_codes",
        ),
    )
    d = TrunksSection()
    section = TrunksSection(
        enabled=table.get("enabled", boolean, d.enabled),
        probe_interval=table.get("probe_interval", seconds, d.probe_interval),
        probe_multiplier=table.get("probe_multiplier", _multiplier, d.probe_multiplier),
        hold_down=table.get("hold_down", seconds, d.hold_down),
        probe_timeout=table.get("probe_timeout", seconds, d.probe_timeout),
        reply_codes=table.get("reply_codes", _reply_codes, d.reply_codes),
    )
    if section.probe_timeout < section.probe_interval:
        raise Invalid((*path, "probe_timeout"), "must be >= probe_interval")
    return section


_final_status = integer(200, 699)


def _reply_codes(value: object, path: Path) -> tuple[int, ...]:
    """Final status codes that prove a trunk alive; a 408 is refused (``TrunksSection``)."""
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of status codes, not {kind(value)}")
    codes: list[int] = []
    for index, item in enumerate(value):
        code = _final_status(item, (*path, index))
        if code == 408:
            raise Invalid(
                (*path, index),
                "408 never proves a trunk alive: a proxy in front of a dead trunk answers it",
            )
        if code in codes:
            raise Invalid((*path, index), f"names {code} twice")
        codes.append(code)
    return tuple(codes)


def _peers(value: object, path: Path) -> tuple[PeerConfig, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of tables ([[peers]]), not {kind(value)}")
    return tuple(_peer(entry, (*path, index)) for index, entry in enumerate(value))


def _peer(value: object, path: Path) -> PeerConfig:
    table = Table(
        value,
        path,
        ("node_id", "region", "az", "sip", "grpc", "media", "admin_cost", "base_delay_ms"),
    )
    return PeerConfig(
        node_id=table.require("node_id", _node_id),
        region=table.require("region", _word),
        az=table.get("az", string, ""),
        sip=table.require("sip", _ip_port),
        grpc=table.require("grpc", _ip_port),
        media=table.get("media", _ip_port, None),
        admin_cost=table.get("admin_cost", milliseconds, 0.0),
        base_delay_ms=table.get("base_delay_ms", milliseconds, 0.0),
    )


def _node(value: object, path: Path) -> NodeSection:
    table = Table(value, path, ("node_id", "region", "az"))
    return NodeSection(
        node_id=table.require("node_id", _node_id),
        region=table.require("region", _word),
        az=table.get("az", string, ""),
    )


def _sip(value: object, path: Path) -> SipSection:
    table = Table(
        value,
        path,
        (
            "listen",
            "workers",
            "max_message_size",
            "tcp_idle_timeout",
            "tcp_connect_timeout",
            "record_route",
            "user_agent",
            "timers",
            "tls",
            "advertise",
        ),
    )
    section = SipSection(
        listen=table.require("listen", _listen),
        workers=table.get("workers", _workers, 1),
        max_message_size=table.get("max_message_size", _message_size, 65535),
        tcp_idle_timeout=table.get("tcp_idle_timeout", seconds, 60.0),
        tcp_connect_timeout=table.get("tcp_connect_timeout", seconds, 2.0),
        record_route=table.get("record_route", boolean, True),
        user_agent=table.get("user_agent", _header_value, "overlay"),
        timers=table.get("timers", _timers, TimerConfig()),
        tls=table.get("tls", _sip_tls, None),
        advertise=table.get("advertise", ip_address, None),
    )
    if section.tls is None:
        for index, address in enumerate(section.listen):
            if address.transport == "tls":
                raise Invalid(
                    (*path, "listen", index),
                    "a tls: address needs [sip.tls] with the node's cert and key",
                )
    return section


def _sip_tls(value: object, path: Path) -> SipTlsSection:
    table = Table(value, path, ("cert", "key", "ca", "verify_client", "handshake_timeout"))
    section = SipTlsSection(
        cert=table.require("cert", _file),
        key=table.require("key", _file),
        ca=table.get("ca", _file, None),
        verify_client=table.get("verify_client", boolean, False),
        handshake_timeout=table.get(
            "handshake_timeout", seconds, SipTlsSection("", "").handshake_timeout
        ),
    )
    if section.verify_client and section.ca is None:
        raise Invalid(
            (*path, "verify_client"), "needs ca: the CA bundle that signs the trunks' certificates"
        )
    return section


def _timers(value: object, path: Path) -> TimerConfig:
    table = Table(value, path, ("t1", "t2", "t4", "timer_c", "fr"))
    default = TimerConfig()
    t1 = table.get("t1", seconds, default.t1)
    t2 = table.get("t2", seconds, default.t2)
    if t2 < t1 and table.has("t2"):
        raise Invalid((*path, "t2"), f"must be >= t1 ({t1} s), got {t2} s")
    if t2 < t1:
        raise Invalid((*path, "t1"), f"must be <= t2 ({t2} s, the default), got {t1} s")
    return TimerConfig(
        t1=t1,
        t2=t2,
        t4=table.get("t4", seconds, default.t4),
        timer_c=table.get("timer_c", seconds, default.timer_c),
        fr=table.get("fr", seconds_or_off, default.fr),
    )


def _dns(value: object, path: Path) -> DnsSection:
    table = Table(value, path, ("nameservers", "timeout"))
    return DnsSection(
        nameservers=table.get("nameservers", _nameservers, ()),
        timeout=table.get("timeout", seconds, DnsSection().timeout),
    )


def _dialplan(value: object, path: Path) -> tuple[DialplanRule, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of tables ([[dialplan]]), not {kind(value)}")
    return tuple(dialplan_rule(entry, (*path, index)) for index, entry in enumerate(value))


def dialplan_rule(value: object, path: Path) -> DialplanRule:
    table = Table(
        value, path, ("user_prefix", "domain", "target", "transport", "strip_prefix", "egress")
    )
    user_prefix = table.get("user_prefix", _user_prefix, "")
    domain = table.get("domain", _domain, None)
    transport = table.get("transport", _transport, None)
    target = table.require("target", _target)
    if isinstance(target, StaticTarget):
        target = StaticTarget(target.host, target.port, transport)
    elif target.scheme == "sips" and transport == "udp":
        raise Invalid((*path, "transport"), "a sips: target needs TLS over TCP, not udp")
    else:
        if target.scheme == "sips" and transport == "tcp":
            transport = "tls"  # RFC 3261 §26.2.2: sips: over TCP is TLS over TCP
        target = DnsTarget(target.scheme, target.domain, transport)
    strip_prefix = table.get("strip_prefix", boolean, False)
    if strip_prefix and not user_prefix:
        raise Invalid((*path, "strip_prefix"), "there is no user_prefix to strip")
    this_node: tuple[str, ...] = ()
    egress = table.get("egress", _egress, this_node)
    return DialplanRule(target, user_prefix, domain, strip_prefix, egress)


# Leaf validators: (value, path) -> typed value, or Invalid naming the path.

_workers = integer(1, 64)
_LOG_FORMATS: dict[str, LogFormat] = {"console": "console", "json": "json"}
_log_format: Reader[LogFormat] = choice(_LOG_FORMATS)
#: CloudWatch: the fleet name as fleet.toml has it, and AWS region names such as us-gov-west-1.
_fleet = matching(r"[a-z0-9-]{1,32}", "match [a-z0-9-]{1,32} (the fleet's name in fleet.toml)")
_AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_aws_region = matching(_AWS_REGION.pattern, 'be an AWS region name such as "us-west-2"')
_cloudwatch_namespace = matching(r"[A-Za-z0-9._/#:-]{1,255}", "be a CloudWatch namespace")
_MAX_CLOUDWATCH_INTERVAL = 60.0
_message_size = integer(1500, 65535)
_multiplier = integer(1, 20)


def _liveness_interval(value: object, path: Path) -> float:
    """Seconds between liveness echoes, 0.001-60 (what the relay's timer takes), or 0: off."""
    interval = seconds_or_off(value, path)
    if interval and not 0.001 <= interval <= 60:
        raise Invalid(path, f"must be 0 (off) or between 0.001 and 60 seconds, got {interval}")
    return interval


def _word(value: object, path: Path) -> str:
    text = string(value, path)
    if not text or any(char.isspace() or not char.isprintable() for char in text):
        raise Invalid(path, f"must be a non-empty string without spaces, got {text!r}")
    return text


_node_id = matching(_NODE_ID.pattern, "match [a-z0-9-]{1,63}")


def _header_value(value: object, path: Path) -> str:
    text = string(value, path)
    # Goes into a SIP header verbatim: a CR or LF would split the message.
    if not text or not text.isprintable():
        raise Invalid(path, f"must be a non-empty printable string, got {text!r}")
    return text


def ip_address(value: object, path: Path) -> str:
    text = string(value, path)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Invalid(path, f"must be an IPv4 or IPv6 address, got {text!r}") from None


def _ip_port(value: object, path: Path) -> tuple[str, int]:
    host, port = _host_port(string(value, path), path, ip_only=True, min_port=1)
    if port is None:
        raise Invalid(path, f"needs a port, got {value!r}")
    return host, port


def _ip_port_any(value: object, path: Path) -> tuple[str, int]:
    host, port = _host_port(string(value, path), path, ip_only=True, min_port=0)
    if port is None:
        raise Invalid(path, f"needs a port (0 = any), got {value!r}")
    return host, port


_transport: Reader[Transport] = choice(_TRANSPORTS)


def _listen(value: object, path: Path) -> tuple[ListenAddress, ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of strings, not {kind(value)}")
    if not value:
        raise Invalid(path, "needs at least one address")
    addresses = []
    for index, item in enumerate(value):
        entry_path = (*path, index)
        text = string(item, entry_path)
        transport, _, rest = text.partition(":")
        if transport not in _TRANSPORTS:
            raise Invalid(
                entry_path, f'must be "udp:", "tcp:" or "tls:" then IP:port, got {text!r}'
            )
        host, port = _host_port(rest, entry_path, ip_only=True, min_port=0)
        if port is None:
            raise Invalid(entry_path, f"needs a port (0 = any), got {text!r}")
        address = ListenAddress(_TRANSPORTS[transport], host, port)
        if port and address in addresses:
            raise Invalid(entry_path, f"duplicate listen address {text!r}")
        addresses.append(address)
    return tuple(addresses)


def _egress(value: object, path: Path) -> tuple[str, ...]:
    """One node id, or an array of them (the call is anchored on one, see DialplanRule)."""
    if isinstance(value, str):
        return (_node_id(value, path),)
    if not isinstance(value, list):
        raise Invalid(path, f"must be a node id or an array of node ids, not {kind(value)}")
    if not value:
        raise Invalid(path, "must name at least one node (leave it out for this node)")
    nodes: list[str] = []
    for index, item in enumerate(value):
        node = _node_id(item, (*path, index))
        if node in nodes:
            raise Invalid((*path, index), f"names {node!r} twice")
        nodes.append(node)
    return tuple(nodes)


def _nameservers(value: object, path: Path) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be an array of strings, not {kind(value)}")
    if not value:
        raise Invalid(path, "must not be empty (leave it out to use the system resolv.conf)")
    servers = []
    for index, item in enumerate(value):
        entry_path = (*path, index)
        host, port = _host_port(string(item, entry_path), entry_path, ip_only=True, min_port=1)
        servers.append((host, _DEFAULT_DNS_PORT if port is None else port))
    return tuple(servers)


def _user_prefix(value: object, path: Path) -> str:
    text = string(value, path)
    if any(char.isspace() or not char.isprintable() for char in text):
        raise Invalid(path, f"must not contain spaces or control characters, got {text!r}")
    return text


def _domain(value: object, path: Path) -> str:
    text = string(value, path)
    if not _HOSTNAME.fullmatch(text):
        raise Invalid(path, f"must be a host name, got {text!r}")
    return text.lower()


def _target(value: object, path: Path) -> StaticTarget | DnsTarget:
    text = string(value, path)
    scheme, colon, domain = text.partition(":")
    if colon and scheme.lower() in ("sip", "sips"):
        if ":" in domain or not _HOSTNAME.fullmatch(domain) or _is_ip(domain):
            raise Invalid(
                path,
                f"a {scheme.lower()}: target is a domain name without port, got {text!r}"
                " (use host:port for a fixed address)",
            )
        return DnsTarget("sips" if scheme.lower() == "sips" else "sip", domain.lower())
    host, port = _host_port(text, path, ip_only=False, min_port=1)
    if port is None:
        raise Invalid(path, f'must be "host:port", "sip:domain" or "sips:domain", got {text!r}')
    return StaticTarget(host, port)


def _host_port(text: str, path: Path, *, ip_only: bool, min_port: int) -> tuple[str, int | None]:
    """Split ``IPv4[:port]``, ``[IPv6][:port]`` or (unless ``ip_only``) ``name[:port]``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ip(host, version=6):
            raise Invalid(path, f"bad IPv6 address in {text!r}")
        if rest and not rest.startswith(":"):
            raise Invalid(path, f"expected ':port' after ']' in {text!r}")
        port_text: str | None = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise Invalid(path, f"write IPv6 addresses in brackets, e.g. [::1]:5060, got {text!r}")
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        if ip_only and not _is_ip(host, version=4):
            raise Invalid(path, f"bad IPv4 address {host!r} in {text!r}")
        if not ip_only and not _HOSTNAME.fullmatch(host):
            raise Invalid(path, f"bad host {host!r} in {text!r}")
        host = host.lower()
    if port_text is None:
        return host, None
    port_ok = port_text.isascii() and port_text.isdigit() and min_port <= int(port_text) <= 65535
    if not port_ok:
        raise Invalid(path, f"port must be {min_port}..65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version
