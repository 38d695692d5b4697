"""Lab tooling around the node: a trio harness for SIPp and its scenarios.

Used by tests/integration, the demo and bench/sip_cps; never imported by the node itself.
"""

from overlay.lab.sipp import (
    SCENARIO_DIR,
    SippError,
    SippResult,
    SippUas,
    free_port,
    open_uas,
    parse_stat_csv,
    run_uac,
    scenario_path,
    sipp_binary,
)

__all__ = [
    "SCENARIO_DIR",
    "SippError",
    "SippResult",
    "SippUas",
    "free_port",
    "open_uas",
    "parse_stat_csv",
    "run_uac",
    "scenario_path",
    "sipp_binary",
]
