"""Fixtures shared by every test directory.

Generic helpers live here, and the four-region lab that both chaos/ and integration/ test.
Harnesses for one package (the UAC <-> proxy <-> UAS pair of cores) go in that test
directory's helpers (STYLE.md §9).

Addresses and ports
-------------------
Every test that opens real sockets binds them to addresses from ``loopback_host``, so that a
node, its UAS and its UAC each get an address of their own and can all use their usual ports
without clashing with other tests, with a second ``./run test`` running in the same machine, or
with whatever a developer left listening on 127.0.0.1. Prefer port 0 and read the bound port back;
use ``free_port`` only when a peer that cannot report its port (SIPp, Kamailio) must be told one
in advance.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

import pytest

from overlay.lab.lab import EGRESS, INGRESS, Lab, open_lab
from overlay.lab.topology import REGIONS

PortKind = Literal["udp", "tcp", "both"]

# All of 127.0.0.0/8 reaches `lo` on Linux. 127.0.0.0/24 is left alone: 127.0.0.1 is everybody's
# default, 127.0.0.53 is systemd-resolved's stub, and developers run ad-hoc SIPp/Kamailio there.
# Each pytest process (each xdist worker too) takes its own 127.N.0.0/16 block, N picked from
# its pid, so concurrent runs are unlikely to share addresses; within a process no address is
# handed out twice. That gives 65,024 addresses per process.
_SECOND_OCTET = 1 + os.getpid() % 254
_addresses: Iterator[str] = (
    f"127.{_SECOND_OCTET}.{third}.{fourth}"
    for third, fourth in itertools.product(range(256), range(1, 255))
)


@pytest.fixture
def loopback_host() -> Callable[[], str]:
    """Factory of loopback IPv4 addresses, a new one on every call.

    Example::

        def test_call(loopback_host: Callable[[], str]) -> None:
            node, uas, uac = loopback_host(), loopback_host(), loopback_host()

    Returns:
        A function taking no argument that returns an address such as ``"127.42.0.7"`` that no
        other test of this session has been given.
    """
    return lambda: next(_addresses)


def _bind(host: str, port: int, kind: Literal["udp", "tcp"]) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    try:
        if kind == "tcp":
            # As servers do (trio's open_tcp_listeners): a port in TIME_WAIT counts as free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _free_port(host: str, kind: PortKind = "both") -> int:
    if kind != "both":
        with _bind(host, 0, kind) as sock:
            port: int = sock.getsockname()[1]
            return port
    # SIP listens on UDP and TCP with the same port number: find one free for both.
    for _ in range(100):
        with _bind(host, 0, "udp") as udp:
            port = udp.getsockname()[1]
            try:
                _bind(host, port, "tcp").close()
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


@pytest.fixture
def free_port() -> Callable[..., int]:
    """Helper that finds a free port on a host: ``free_port(host, kind="both") -> int``.

    Annotate the fixture argument as ``free_port: Callable[..., int]``.

    Args (of the returned function):
        host: the address to bind, e.g. one from ``loopback_host``.
        kind: ``"udp"``, ``"tcp"`` or ``"both"`` (default): a port number free for UDP and TCP
            at once, as a SIP listener on both transports needs.

    Returns:
        The port number. It was free when checked and the sockets are closed again, so another
        process could take it before the test binds it; distinct loopback hosts per test make
        that unlikely. Prefer binding port 0 when the code under test can report its port.

    Raises:
        RuntimeError: no port pair found after 100 tries.
    """
    return _free_port


@pytest.fixture
async def lab(loopback_host: Callable[[], str]) -> AsyncIterator[Lab]:
    """The four reference regions, one OS process each on its own loopback address, with
    every link up and the ingress's path to the egress direct."""
    hosts = {node_id: loopback_host() for node_id, _ in REGIONS}
    async with open_lab(hosts, uas_host=loopback_host(), uac_host=loopback_host()) as lab:
        await lab.wait_all_links_up(within=15)
        await lab.wait_path(INGRESS, EGRESS, lambda path: path == [INGRESS, EGRESS], within=15)
        yield lab
