"""SIP scanners against a node: SIPVicious' svmap and svwar, and a sweep that hides its name.

svwar 0.3.3 ignores its --bindingip: it binds the wildcard address and its requests leave from
127.0.0.1, which is where the node sees them come from.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from overlay.config import parse_config
from overlay.lab.node_process import options_probe
from overlay.lab.sipp import open_uas
from overlay.shell.node import Node, open_node
from tests.integration.raw_sip import receive_all, udp_socket

pytestmark = [pytest.mark.integration, pytest.mark.sipp, pytest.mark.sipvicious]

SVWAR_SOURCE = "127.0.0.1"
TOOL_TIMEOUT = 60.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: apt-get install sipvicious")
    return path


async def _run(*args: str) -> str:
    """Run a SIPVicious tool to its end (bounded); its report is on stdout, its log on stderr."""
    with trio.fail_after(TOOL_TIMEOUT):
        done = await trio.run_process(
            [_tool(args[0]), *args[1:]], capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return (done.stdout + done.stderr).decode(errors="replace")


@asynccontextmanager
async def serving(node_host: str, uas: tuple[str, int], security: bool) -> AsyncIterator[Node]:
    """A node on node_host:5060 whose dialplan reaches extensions 100-109 on the SIPp UAS."""
    text = (
        f'[node]\nnode_id = "edge"\nregion = "lab"\n[sip]\nlisten = ["udp:{node_host}:5060"]\n'
        + ("[security]\n" if security else "")
        + f'[[dialplan]]\nuser_prefix = "10"\ntarget = "{uas[0]}:{uas[1]}"\n'
    )
    async with open_node(parse_config(text, source="node.toml")) as node:
        yield node


def _svmap(scanner: str, node_host: str, port: int) -> list[str]:
    # Extension 999 is in no dialplan rule: the node answers it itself.
    return ["svmap", "-e", "999", "-b", scanner, "-P", str(port), "-p", "5060", node_host]


def _svwar(node_host: str, port: int, *method: str) -> list[str]:
    return ["svwar", "-x", SVWAR_SOURCE, "-P", str(port), *method, "-e", "100-120", node_host]


@pytest.mark.trio
async def test_without_security_sipvicious_finds_the_node_and_its_extensions(
    loopback_host: Callable[[], str], free_port: Callable[..., int]
) -> None:
    """What the tools see of an unprotected node, so that "found nothing" below means
    something."""
    node_host, uas_host, scanner = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host) as uas, serving(node_host, uas.address, security=False):
        svmap = await _run(*_svmap(scanner, node_host, free_port(scanner, "udp")))
        register = await _run(*_svwar(node_host, free_port("0.0.0.0", "udp")))
        invite = await _run(*_svwar(node_host, free_port("0.0.0.0", "udp"), "-m", "INVITE"))
    assert f"| {node_host}:5060 " in svmap
    assert "method not allowed" in register  # the node takes no REGISTER (405)
    found = [f"| {extension} " for extension in range(100, 110)]
    assert all(line in invite for line in found), invite
    assert "| 110 " not in invite


@pytest.mark.trio
async def test_sipvicious_gets_no_answer_and_is_blocked(
    loopback_host: Callable[[], str], free_port: Callable[..., int]
) -> None:
    node_host, uas_host, scanner, bystander = (loopback_host() for _ in range(4))
    async with open_uas(uas_host) as uas, serving(node_host, uas.address, security=True) as node:
        svmap = await _run(*_svmap(scanner, node_host, free_port(scanner, "udp")))
        register = await _run(*_svwar(node_host, free_port("0.0.0.0", "udp")))
        invite = await _run(*_svwar(node_host, free_port("0.0.0.0", "udp"), "-m", "INVITE"))
        # Blocked: a perfectly good request from the scanner's address gets nothing either,
        # while anyone else is answered.
        answers = {}
        for host in (scanner, bystander):
            with await udp_socket(host) as sock:
                await sock.sendto(options_probe(node_host, 5060), (node_host, 5060))
                answers[host] = await receive_all(sock, quiet=0.5)
        counters = node.counters()
    assert "found nothing" in svmap
    assert "| SIP Device" not in svmap
    for report in (register, invite):
        assert "found nothing" in report
        assert "| Extension" not in report
    assert answers[scanner] == []
    assert [a.split(b"\r\n", 1)[0] for a in answers[bystander]] == [b"SIP/2.0 200 OK"]
    assert counters["security.blocked.user_agent"] == 2  # svmap's address and svwar's
    assert counters["security.blocked_sources"] == 2
    assert counters["sip.requests.OPTIONS"] == 2  # svmap's one, and the bystander's
    assert counters["sip.requests.REGISTER"] == 1  # svwar's first; the rest never parsed
    assert "sip.requests.INVITE" not in counters


def _options(extension: int, host: str, port: int, node_host: str) -> bytes:
    lines = [
        f"OPTIONS sip:{extension}@{node_host}:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-sweep-{extension};rport",
        "Max-Forwards: 70",
        f"From: <sip:{extension}@{node_host}>;tag=sweep",
        f"To: <sip:{extension}@{node_host}>",
        f"Call-ID: sweep-{extension}@{host}",
        "CSeq: 1 OPTIONS",
        "User-Agent: Linphone/5.2",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


@pytest.mark.trio
async def test_a_sweep_under_an_innocent_name_is_blocked(loopback_host: Callable[[], str]) -> None:
    """OPTIONS to extension after extension, with an ordinary phone's User-Agent: answered
    (404) until the 20th distinct user, then nothing."""
    node_host, uas_host, scanner = loopback_host(), loopback_host(), loopback_host()
    async with open_uas(uas_host) as uas, serving(node_host, uas.address, security=True) as node:
        with await udp_socket(scanner) as sock:
            port = sock.getsockname()[1]
            answered = []
            for extension in range(200, 230):
                await sock.sendto(_options(extension, scanner, port, node_host), (node_host, 5060))
                answered += await receive_all(sock, quiet=0.1)
        counters = node.counters()
    assert len(answered) == 19
    assert all(a.startswith(b"SIP/2.0 404 ") for a in answered)
    assert counters["security.blocked.sweep"] == 1
    assert counters["security.blocked_drops"] == 10
