"""overlay.lab.sipp against real SIPp processes on 127.0.0.0/8, with no proxy in between.

These check the harness and the scenario pairs themselves, so that a failure seen through a proxy
can be blamed on the proxy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from overlay.lab.sipp import (
    SippError,
    SippResult,
    free_port,
    open_uas,
    parse_stat_csv,
    run_uac,
    scenario_path,
    sipp_binary,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sipp,
    pytest.mark.skipif(
        shutil.which("sipp") is None, reason="SIPp is not installed (apt-get install sip-tester)"
    ),
]

UAS_HOST = "127.0.0.61"
UAC_HOST = "127.0.0.62"

# Header and one row as SIPp 3.6.1 writes them with -trace_stat (trimmed to the columns read).
STAT_CSV = textwrap.dedent("""\
    StartTime;LastResetTime;CurrentTime;ElapsedTime(C);TotalCallCreated;CurrentCall;\
SuccessfulCall(C);FailedCall(C);FailedUnexpectedMessage(C);Retransmissions(C);
    2026-11-25\t10:33:09.315744\t1795602789.315744;2026-11-25\t10:33:09.315744\t1795602789.315744;\
2026-11-25\t10:33:09.316359\t1795602789.316359;00:00:00;0;0;0;0;0;0;
    2026-11-25\t10:33:09.315744\t1795602789.315744;2026-11-25\t10:33:10.323994\t1795602790.323994;\
2026-11-25\t10:33:11.315744\t1795602791.315744;00:00:02;20;1;17;2;1;3;
    """)


def test_parse_stat_csv_reads_last_row():
    stats = parse_stat_csv(STAT_CSV)
    assert stats["TotalCallCreated"] == "20"
    result = SippResult.from_stats(stats, returncode=1, fallback_elapsed_s=99.0)
    assert result.calls_attempted == 20
    assert result.calls_successful == 17
    assert result.calls_failed == 2
    assert result.unexpected_messages == 1
    assert result.retransmissions == 3
    assert result.returncode == 1
    assert result.elapsed_s == pytest.approx(2.0)  # CurrentTime - StartTime, not the fallback
    assert result.rate == pytest.approx(8.5)
    assert result.retransmission_ratio == pytest.approx(0.15)


def test_parse_stat_csv_without_rows_is_an_error():
    with pytest.raises(SippError):
        parse_stat_csv("StartTime;CurrentTime;\n")


def test_scenario_path_names_the_known_scenarios():
    assert scenario_path("uas_no180").name == "uas_no180.xml"
    with pytest.raises(FileNotFoundError, match="uac_rr"):
        scenario_path("no_such_scenario")
    assert sipp_binary().endswith("sipp")


@pytest.mark.trio
async def test_builtin_uac_to_builtin_uas_50_calls():
    with trio.fail_after(60):
        async with open_uas(UAS_HOST) as uas:
            result = await run_uac(
                uas.address, local_host=UAC_HOST, calls=50, rate=50, max_seconds=20
            )
    assert (result.calls_successful, result.calls_failed) == (50, 0), result.stderr
    assert result.calls_attempted == 50
    assert result.returncode == 0
    assert result.unexpected_messages == 0
    assert 0.5 < result.elapsed_s < 10
    assert result.rate > 0
    assert uas.result().calls_attempted == 50
    assert uas.result().calls_failed == 0


@pytest.mark.trio
@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario"),
    [
        ("uas_486", "uac_486"),
        ("uas_no180", "uac_rr"),
        ("uas_no180", "uac"),
        ("uas_ring_noanswer", "uac_cancel"),
    ],
)
async def test_scenario_pair_direct(uas_scenario: str, uac_scenario: str):
    with trio.fail_after(60):
        async with open_uas(UAS_HOST, scenario=uas_scenario) as uas:
            result = await run_uac(
                uas.address,
                local_host=UAC_HOST,
                scenario=uac_scenario,
                calls=10,
                rate=20,
                max_seconds=20,
            )
    assert (result.calls_successful, result.calls_failed) == (10, 0), result.stderr
    assert result.returncode == 0
    # The callee side must have completed too (e.g. received the ACK for its 486 or 487).
    callee = uas.result()
    assert callee.calls_failed == 0, callee.stderr
    assert callee.calls_attempted == 10


@pytest.mark.trio
async def test_tcp_transport():
    with trio.fail_after(60):
        async with open_uas(UAS_HOST, scenario="uas_no180", transport="tcp") as uas:
            result = await run_uac(
                uas.address,
                local_host=UAC_HOST,
                scenario="uac_rr",
                transport="tcp",
                calls=10,
                rate=20,
                max_seconds=20,
            )
    assert (result.calls_successful, result.calls_failed) == (10, 0), result.stderr


@pytest.mark.trio
async def test_failed_calls_are_counted_not_raised():
    # uac_486 expects a 486; SIPp's built-in uas answers 180/200: every call fails.
    with trio.fail_after(60):
        async with open_uas(UAS_HOST) as uas:
            result = await run_uac(
                uas.address, local_host=UAC_HOST, scenario="uac_486", calls=5, rate=10,
                max_seconds=20,
            )  # fmt: skip
    assert result.calls_failed == 5
    assert result.calls_successful == 0
    assert result.unexpected_messages == 5
    assert result.returncode == 1


@pytest.mark.trio
async def test_uas_that_cannot_bind_raises_with_sipp_stderr():
    with trio.fail_after(30):
        async with open_uas(UAS_HOST) as uas:
            with pytest.raises(SippError, match="status"):
                async with open_uas(UAS_HOST, port=uas.port):
                    pass  # pragma: no cover


@pytest.mark.trio
async def test_uas_result_before_exit_is_an_error():
    with trio.fail_after(30):
        async with open_uas(UAS_HOST) as uas:
            assert uas.pid > 0
            with pytest.raises(RuntimeError):
                uas.result()
    assert uas.result().calls_attempted == 0


# --------------------------------------------------------------------------------------------
# The same pairs through Kamailio (bench/kamailio/kamailio-proxy.cfg), the reference proxy: what
# passes here and fails through the overlay node points at the node, not at the scenario.
# --------------------------------------------------------------------------------------------

KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
)
KAMAILIO_CFG = Path(__file__).resolve().parents[2] / "bench" / "kamailio" / "kamailio-proxy.cfg"
PROXY_HOST = "127.0.0.63"
needs_kamailio = pytest.mark.skipif(KAMAILIO is None, reason="Kamailio is not installed")


def _options_mf0(port: int, local_port: int) -> bytes:
    # Max-Forwards 0: the proxy answers itself (483), so the probe never reaches the UAS.
    return (
        f"OPTIONS sip:{PROXY_HOST}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PROXY_HOST}:{local_port};branch=z9hG4bK-probe{local_port}\r\n"
        "Max-Forwards: 0\r\n"
        f"From: <sip:probe@{PROXY_HOST}>;tag=probe\r\nTo: <sip:{PROXY_HOST}:{port}>\r\n"
        f"Call-ID: probe-{local_port}@{PROXY_HOST}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def _kamailio(
    destination: tuple[str, int], *, fr_timer_ms: int = 30000
) -> AsyncIterator[tuple[str, int]]:
    """Kamailio in the foreground on PROXY_HOST, relaying to ``destination``; stopped by PID."""
    assert KAMAILIO is not None
    port = free_port(PROXY_HOST)
    with tempfile.TemporaryDirectory(prefix="kamailio-test-") as tmp:
        args = [
            KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E",
            "-P", f"{tmp}/kamailio.pid", "-Y", tmp, "-w", tmp,
            "-A", f"LISTEN=udp:{PROXY_HOST}:{port}",
            "-A", f'DST_URI="sip:{destination[0]}:{destination[1]}"',
            "-A", f"FR_TIMER={fr_timer_ms}", "-A", f"FR_INV_TIMER={fr_timer_ms}",
        ]  # fmt: skip
        proc = await trio.lowlevel.open_process(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                await sock.bind((PROXY_HOST, 0))
                local_port = sock.getsockname()[1]
                with trio.fail_after(10):
                    while True:
                        assert proc.poll() is None, f"kamailio exited with {proc.returncode}"
                        await sock.sendto(_options_mf0(port, local_port), (PROXY_HOST, port))
                        with trio.move_on_after(0.1):
                            if (await sock.recv(65535)).startswith(b"SIP/2.0 "):
                                break
            yield (PROXY_HOST, port)
        finally:
            with trio.CancelScope(shield=True):
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(5):
                    await proc.wait()
                # Its own session: only Kamailio's workers are in this group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


@needs_kamailio
@pytest.mark.trio
@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario"),
    [
        ("uas_486", "uac_486"),
        ("uas_no180", "uac_rr"),
        ("uas_no180", "uac"),
        ("uas_ring_noanswer", "uac_cancel"),
    ],
)
async def test_scenario_pair_through_kamailio(uas_scenario: str, uac_scenario: str):
    with trio.fail_after(60):
        async with (
            open_uas(UAS_HOST, scenario=uas_scenario) as uas,
            _kamailio(uas.address) as proxy,
        ):
            result = await run_uac(
                proxy, local_host=UAC_HOST, scenario=uac_scenario, calls=10, rate=20,
                max_seconds=20,
            )  # fmt: skip
    assert (result.calls_successful, result.calls_failed) == (10, 0), result.stderr
    callee = uas.result()
    assert callee.calls_failed == 0, callee.stderr
    assert callee.calls_attempted == 10


@needs_kamailio
@pytest.mark.slow
@pytest.mark.trio
async def test_silent_callee_gets_408_from_kamailio_timer_b():
    # fr_timer 3.2 s stands for Timer B = 64 * T1 with T1 = 0.05 s.
    with trio.fail_after(60):
        async with (
            open_uas(UAS_HOST, scenario="uas_silent") as uas,
            _kamailio(uas.address, fr_timer_ms=3200) as proxy,
        ):
            result = await run_uac(
                proxy, local_host=UAC_HOST, scenario="uac_expect_408", calls=5, rate=5,
                max_seconds=20,
            )  # fmt: skip
    assert (result.calls_successful, result.calls_failed) == (5, 0), result.stderr
    assert result.elapsed_s >= 3.2
    assert uas.result().calls_attempted == 5
