"""Node configuration: ``load_config`` reads the TOML file described in docs/internal/config.md.

A bad file is refused with ``ConfigError`` before any socket opens.
"""

from __future__ import annotations

from pathlib import Path

from ._errors import ConfigError
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
    Scheme,
    SipSection,
    StaticTarget,
    TimerConfig,
    Transport,
)
from ._schema import parse_config

__all__ = [
    "ConfigError",
    "DialplanRule",
    "DnsSection",
    "DnsTarget",
    "GrpcSection",
    "LinkstateSection",
    "ListenAddress",
    "NodeConfig",
    "NodeSection",
    "PeerConfig",
    "Scheme",
    "SipSection",
    "StaticTarget",
    "TimerConfig",
    "Transport",
    "load_config",
    "parse_config",
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
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(source, None, "", f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(source, None, "", f"not UTF-8 text ({error.reason})") from None
    return parse_config(text, source=source)
