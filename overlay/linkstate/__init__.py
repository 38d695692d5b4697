"""Link state: probes and per-link metrics, the LSDB and reliable flooding (all sans-IO)."""

from ._codec import BadLsa, lsa_from_message_untrusted, lsa_to_message
from ._flood import FloodConfig, Flooder, FloodStatistics, LsaAck, significant_change
from ._lsa import METRIC_NAMES, LinkMetrics, Lsa
from ._lsdb import InstallResult, LinkStateDb
from ._monitor import LinkMonitor, LinkState, LinkStatistics, ProbeConfig
from ._probe import (
    PROBE_MARK,
    ProbeAnswer,
    ProbeRequest,
    answer_probe,
    probe_request,
    read_probe_untrusted,
)

__all__ = [
    "METRIC_NAMES",
    "PROBE_MARK",
    "BadLsa",
    "FloodConfig",
    "FloodStatistics",
    "Flooder",
    "InstallResult",
    "LinkMetrics",
    "LinkMonitor",
    "LinkState",
    "LinkStateDb",
    "LinkStatistics",
    "Lsa",
    "LsaAck",
    "ProbeAnswer",
    "ProbeConfig",
    "ProbeRequest",
    "answer_probe",
    "lsa_from_message_untrusted",
    "lsa_to_message",
    "probe_request",
    "read_probe_untrusted",
    "significant_change",
]
