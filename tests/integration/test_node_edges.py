"""A real node process against raw sockets, hostile input, a DNS server, and bad configs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from overlay.lab.node_process import node_config, open_node, options_probe
from overlay.lab.sipp import open_uas, run_uac
from tests.dnsserver import Zone, serve_zone
from tests.integration.raw_sip import NODE_PORT, hostile_messages, invite, receive_all, udp_socket

pytestmark = pytest.mark.integration


@pytest.mark.trio
async def test_retransmitted_invite_is_forwarded_once(loopback_host: Callable[[], str]) -> None:
    node_host, uas_host, uac_host = loopback_host(), loopback_host(), loopback_host()
    with await udp_socket(uas_host) as uas, await udp_socket(uac_host) as uac:
        uas_port = uas.getsockname()[1]
        config = node_config(host=node_host, port=NODE_PORT, target=f"{uas_host}:{uas_port}")
        async with open_node(config, host=node_host, port=NODE_PORT):
            message = invite(uac_host, uac.getsockname()[1])
            for _ in range(4):
                await uac.sendto(message, (node_host, NODE_PORT))
            at_uas = await receive_all(uas, quiet=0.4)  # below T1: no Timer A resend yet
            at_uac = await receive_all(uac)
    assert [m.split(b" ", 1)[0] for m in at_uas] == [b"INVITE"]
    assert at_uac
    assert all(m.startswith(b"SIP/2.0 100 ") for m in at_uac)


@pytest.mark.trio
@pytest.mark.sipp
async def test_hostile_input_then_calls_complete(loopback_host: Callable[[], str]) -> None:
    node_host, uas_host, uac_host, hostile_host = (loopback_host() for _ in range(4))
    messages = hostile_messages(hostile_host)
    assert len(messages) >= 500
    with await udp_socket(uas_host) as sink:  # requests the hostile traffic reaches go nowhere
        sink_port = sink.getsockname()[1]
        async with open_uas(uas_host, scenario="uas") as uas:
            config = node_config(host=node_host, port=NODE_PORT, target=f"{uas_host}:{sink_port}")
            config += f'\n[[dialplan]]\nuser_prefix = "service"\ntarget = "{uas.host}:{uas.port}"\n'
            async with open_node(config, host=node_host, port=NODE_PORT) as node:
                with await udp_socket(hostile_host) as attacker:
                    for data in messages:
                        await attacker.sendto(data[:65000], (node_host, NODE_PORT))
                        await trio.lowlevel.checkpoint()
                    answers = await receive_all(attacker)
                    assert answers, "the node answered none of the hostile messages"
                    assert any(a.startswith(b"SIP/2.0 400 ") for a in answers)
                    # Still alive and answering.
                    await attacker.sendto(
                        options_probe(node_host, NODE_PORT), (node_host, NODE_PORT)
                    )
                    with trio.fail_after(2):
                        while not (await attacker.recv(65535)).startswith(b"SIP/2.0 200"):
                            pass
                result = await run_uac(
                    (node_host, NODE_PORT),
                    local_host=uac_host,
                    scenario="uac_rr",
                    calls=200,
                    rate=100,
                    max_seconds=30,
                )
                assert node.process.returncode is None, node.log()
    assert (result.calls_successful, result.calls_failed) == (200, 0), result


@pytest.mark.trio
@pytest.mark.sipp
async def test_rfc3263_srv_failover_to_second_target(loopback_host: Callable[[], str]) -> None:
    node_host, dns_host, uas_host, dead_host, uac_host = (loopback_host() for _ in range(5))
    async with open_uas(uas_host, scenario="uas", transport="tcp") as uas:
        zone = Zone(
            {
                "trunk.test": {
                    "NAPTR": ['10 10 "s" "SIP+D2T" "" _sip._tcp.trunk.test.'],
                },
                "_sip._tcp.trunk.test": {
                    "SRV": [
                        f"10 100 {uas.port} dead.trunk.test.",  # priority 10: tried first
                        f"20 100 {uas.port} live.trunk.test.",
                    ]
                },
                "dead.trunk.test": {"A": [dead_host]},  # nothing listens: connection refused
                "live.trunk.test": {"A": [uas.host]},
            }
        )
        async with serve_zone(zone, dns_host) as (dns_ip, dns_port):
            extra = f'[dns]\nnameservers = ["{dns_ip}:{dns_port}"]\ntimeout = 2.0\n'
            config = node_config(
                host=node_host, port=NODE_PORT, target="sip:trunk.test", extra=extra
            )
            async with open_node(config, host=node_host, port=NODE_PORT):
                result = await run_uac(
                    (node_host, NODE_PORT),
                    local_host=uac_host,
                    scenario="uac_rr",
                    calls=20,
                    rate=10,
                    max_seconds=30,
                )
        assert ("trunk.test", "NAPTR") in zone.queries
        assert ("dead.trunk.test", "A") in zone.queries
    assert (result.calls_successful, result.calls_failed) == (20, 0), result


def test_bad_config_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text(
        '[node]\nnode_id = "a"\nregion = "r"\n\n[sip]\nlisten = ["udp:127.0.0.1:5060"]\n\n'
        "[sip.timers]\nt1 = -1\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "overlay", "node", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{bad}:9: sip.timers.t1:" in done.stderr
