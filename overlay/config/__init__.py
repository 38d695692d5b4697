"""Node configuration: ``load_config`` reads the TOML file described in docs/internal/config.md.

A bad file is refused with ``ConfigError`` before any socket opens.

The reader under it is public for the project's other TOML files (``deploy.fleet``), so that
they are refused the same way, naming file, line, dotted key and reason:

- ``parse_toml(text, source=..., build=...)`` runs tomllib, then ``build`` on the root table,
  and turns a syntax error or the ``Invalid(path, reason)`` that ``build`` raises into the
  ``ConfigError``, with the line of ``path`` found in the text;
- ``Table(value, path, known)`` reads a table key by key (``require``, ``get``, ``has``) and
  refuses unknown keys first, so that a typo is reported as itself;
- readers ``(value, path) -> typed value`` raise ``Invalid``: ``string``,
  ``integer(low, high)`` (makes one), ``seconds`` (> 0) and ``network`` (CIDR, host bits
  zero); ``kind`` names a value's TOML type for messages;
- ``read_text(path)`` reads a file, refusing it with a ``ConfigError`` naming it;
- ``KeyPath`` is the type of a path such as ``("regions", 0, "vpc_cidr")``.
"""

from __future__ import annotations

from pathlib import Path

from ._errors import ConfigError
from ._lines import Path as KeyPath
from ._model import (
    LOG_LEVELS,
    READY_PATH,
    CloudwatchSection,
    DialplanRule,
    DnsSection,
    DnsTarget,
    GrpcSection,
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
    Scheme,
    SecuritySection,
    SipSection,
    SipTlsSection,
    StaticTarget,
    TimerConfig,
    Transport,
    TrunkLimit,
    TrunksSection,
)
from ._overload import overload as overload_section
from ._reader import (
    Invalid,
    Reader,
    Table,
    integer,
    kind,
    matching,
    network,
    parse_toml,
    read_text,
    seconds,
    string,
)
from ._schema import (
    TLS_KEYS,
    dialplan_rule,
    files_checked,
    grpc_tls,
    ip_address,
    linkstate_section,
    parse_config,
    trunks_section,
)
from ._security import security as security_section

__all__ = [
    "LOG_LEVELS",
    "READY_PATH",
    "TLS_KEYS",
    "CloudwatchSection",
    "ConfigError",
    "DialplanRule",
    "DnsSection",
    "DnsTarget",
    "GrpcSection",
    "Invalid",
    "KeyPath",
    "LinkstateSection",
    "ListenAddress",
    "LogFormat",
    "LogSection",
    "MediaSection",
    "MetricsSection",
    "NodeConfig",
    "NodeSection",
    "OverloadSection",
    "PairHold",
    "PairSection",
    "PeerConfig",
    "Reader",
    "Scheme",
    "SecuritySection",
    "SipSection",
    "SipTlsSection",
    "StaticTarget",
    "Table",
    "TimerConfig",
    "Transport",
    "TrunkLimit",
    "TrunksSection",
    "dialplan_rule",
    "files_checked",
    "grpc_tls",
    "integer",
    "ip_address",
    "kind",
    "linkstate_section",
    "load_config",
    "matching",
    "network",
    "overload_section",
    "parse_config",
    "parse_toml",
    "read_text",
    "seconds",
    "security_section",
    "string",
    "trunks_section",
]


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node configuration file.

    Args:
        path: the TOML file; it is named as given in error messages.

    Returns:
        The validated configuration, defaults filled in.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 TOML, or breaks the schema.
    """
    return parse_config(read_text(path), source=str(path))
