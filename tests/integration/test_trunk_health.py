"""Trunk health on a real node: OPTIONS probes find a silent trunk, and calls go around it.

An in-process overlay node (its Control service on real gRPC) sends calls for
``sip:trunk.example`` to the two SRV targets a tiny DNS server gives (``tests/dnsserver.py``):
first a silent UDP socket that never answers anything, then a SIPp UAS. Without trunk health
every call would wait for the silent one first (``[sip.timers] fr``, or Timer B); with it, the
prober marks the silent one DOWN within about the detection time (4 x 0.25 s), ListTrunks shows
it, and SIPp's calls complete through the live one at once. A second test changes the SRV
records under a short TTL and sees the prober follow them.
"""

from __future__ import annotations

import contextlib
import csv
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from overlay.config import NodeConfig, parse_config
from overlay.grpc import open_grpc_bridge
from overlay.lab.node_process import node_config as process_node_config
from overlay.lab.node_process import open_node as open_process_node
from overlay.lab.sipp import open_uas, run_uac
from overlay.noc import Published, TrunkChanged
from overlay.shell.events import Watcher
from overlay.shell.node import open_node
from overlay.sip import Request, parse_message_untrusted
from overlay.v1 import control_pb2 as c
from tests.dnsserver import Zone, serve_zone
from tests.mesh_helpers import mesh_config

pytestmark = [pytest.mark.integration, pytest.mark.trio]

NODE_ID = "trunk-a"
GRPC_PORT = 7000  # mesh_config's
METRICS_PORT = 9100  # worker i serves on 9100 + i (each test has addresses of its own)
DETECTION = 1.0  # [trunks] defaults: probe_interval 0.25 x probe_multiplier 4
CALLS = 20
#: Set-up time of a call through the node to the live trunk, INVITE to 200 at the caller. A
#: few ms on loopback (measured: at most 4 ms, SIPp's timer resolution, over 20 calls); were
#: the silent trunk tried first, every call would wait fr (1 s; measured 1004-1008 ms with
#: [trunks] enabled = false) or, without fr, Timer B (32 s).
MAX_SETUP_MS = 50.0


def node_config(
    host: str, ghost: str, dns: tuple[str, int], extra: str = "", t1: float = 0.5
) -> NodeConfig:
    """An overlay node (a peer that never runs, so that it serves the Control service) whose
    calls all leave here, to ``sip:trunk.example`` over UDP."""
    text = mesh_config(
        NODE_ID,
        host,
        "ghost",
        ghost,
        region="lab",
        extra=(
            f"\n[sip.timers]\nt1 = {t1}\n"
            f'\n[dns]\nnameservers = ["{dns[0]}:{dns[1]}"]\ntimeout = 1.0\n'
            '\n[[dialplan]]\ntarget = "sip:trunk.example"\ntransport = "udp"\n'
            f"{extra}"
        ),
    )
    return parse_config(text, source=f"{NODE_ID}.toml")


@contextlib.contextmanager
def silent_socket(host: str) -> Iterator[socket.socket]:
    """A UDP socket that never answers: what it received is read back after the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host, 0))
        sock.setblocking(False)
        yield sock


def received(sock: socket.socket) -> list[Request]:
    """Every request waiting in ``sock`` (it never reads otherwise)."""
    requests = []
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return requests
        message = parse_message_untrusted(data)
        assert isinstance(message, Request)
        requests.append(message)


async def next_trunk_event(watcher: Watcher, *, within: float) -> tuple[TrunkChanged, float]:
    """The next TRUNK_UP/TRUNK_DOWN and when it arrived (the node's clock)."""
    with trio.fail_after(within):
        item: Published = await watcher.receive()
    assert isinstance(item.event, TrunkChanged)
    return item.event, trio.current_time()


async def list_trunks(host: str) -> c.ListTrunksResponse:
    async with open_grpc_bridge() as bridge:
        return await bridge.unary(
            f"{host}:{GRPC_PORT}",
            "/overlay.v1.Control/ListTrunks",
            c.ListTrunksRequest(),
            lambda message: message.SerializeToString(),
            c.ListTrunksResponse.FromString,
            timeout=5.0,
        )


def setup_times_ms(directory: Path) -> list[float]:
    """Per call, INVITE sent to 200 received, from SIPp's ``-trace_rtt`` file (``uac_rr``
    measures that span as its one response-time interval)."""
    (path,) = directory.glob("*_rtt.csv")
    with path.open() as file:
        rows = list(csv.DictReader(file, delimiter=";"))
    return [float(row["response_time_ms"]) for row in rows]


@dataclass
class TwoTrunks:
    """``sip:trunk.example``'s two SRV targets: a silent socket first, a SIPp UAS second."""

    silent: socket.socket
    silent_trunk: str
    live_trunk: str
    dns: tuple[str, int]


@contextlib.asynccontextmanager
async def two_trunks(loopback_host: Callable[[], str]) -> AsyncIterator[TwoTrunks]:
    live_host, silent_host, dns_host = (loopback_host() for _ in range(3))
    with silent_socket(silent_host) as silent:
        silent_port = silent.getsockname()[1]
        async with open_uas(live_host) as uas:  # it answers OPTIONS (-aa)
            zone = Zone(
                {
                    "trunk.example": {"SRV": []},
                    # RFC 2782: priority 10 first. The silent trunk heads the RFC 3263 list.
                    "_sip._udp.trunk.example": {
                        "SRV": [
                            f"10 0 {silent_port} silent.trunk.example.",
                            f"20 0 {uas.port} live.trunk.example.",
                        ]
                    },
                    "silent.trunk.example": {"A": [silent_host]},
                    "live.trunk.example": {"A": [live_host]},
                }
            )
            async with serve_zone(zone, dns_host) as dns:
                yield TwoTrunks(
                    silent,
                    f"udp:{silent_host}:{silent_port}",
                    f"udp:{live_host}:{uas.port}",
                    dns,
                )


async def place_calls(host: str, uac_host: str, directory: Path, calls: int) -> list[float]:
    """SIPp's calls through the node at ``host``; returns their set-up times (ms)."""
    result = await run_uac(
        (host, 5060),
        local_host=uac_host,
        scenario="uac_rr",
        calls=calls,
        rate=10,
        max_seconds=40,
        keep_in=directory,
        extra_args=["-trace_rtt", "-rtt_freq", "1"],
    )
    assert (result.calls_successful, result.calls_failed) == (calls, 0), result
    setups = setup_times_ms(directory)
    assert len(setups) == calls
    print(f"set-up ms: max {max(setups):.1f}, all {sorted(setups)}")
    return setups


@pytest.mark.sipp
async def test_a_silent_trunk_is_marked_down_and_calls_go_to_the_live_one(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    host, ghost, uac_host = (loopback_host() for _ in range(3))
    async with two_trunks(loopback_host) as trunks:
        started = trio.current_time()
        async with open_node(node_config(host, ghost, trunks.dns)) as node:
            with node.events.watch(("TRUNK_UP", "TRUNK_DOWN")) as watcher:
                seen = {}
                for _ in range(2):
                    event, at = await next_trunk_event(watcher, within=5.0)
                    seen[event.trunk] = (event.up, at - started)
            assert seen.keys() == {trunks.silent_trunk, trunks.live_trunk}
            silent_up, down_after = seen[trunks.silent_trunk]
            live_up, up_after = seen[trunks.live_trunk]
            print(f"silent DOWN after {down_after:.3f} s, live UP after {up_after:.3f} s")
            assert not silent_up
            assert live_up
            # The first probe leaves once DNS answered (a few ms); DOWN 1 s after it.
            assert DETECTION <= down_after < DETECTION + 0.3

            listed = await list_trunks(host)
            assert listed.node_id == NODE_ID
            assert listed.enabled
            by_name = {trunk.trunk: trunk for trunk in listed.trunks}
            assert by_name.keys() == {trunks.silent_trunk, trunks.live_trunk}
            silent, live = by_name[trunks.silent_trunk], by_name[trunks.live_trunk]
            assert silent.state == c.TrunkStatus.DOWN
            assert list(silent.targets) == ["sip:trunk.example;transport=udp"]
            assert silent.probes_answered == 0
            assert not silent.HasField("silent_s")  # never heard
            assert live.state == c.TrunkStatus.UP
            assert live.last_status == 200
            assert 0 < live.rtt_ms < 100
            assert list(listed.unresolved) == []

            setups = await place_calls(host, uac_host, tmp_path, CALLS)
            counters = node.counters()
            after = await list_trunks(host)
        assert max(setups) < MAX_SETUP_MS
        # Every INVITE went to the live trunk: the silent one got only probes.
        probes = received(trunks.silent)
        assert {request.method for request in probes} == {"OPTIONS"}
        assert counters.get("sip.generated.408", 0) == 0
        assert counters["trunks.all_down_tried"] == 0
        assert after.all_down_tried == 0
        probe = probes[0]
        assert probe.call_id.startswith(f"ovltrunk.{NODE_ID}.")
        assert probe.headers.get("Max-Forwards") == "70"
        assert str(probe.uri) == "sip:" + trunks.silent_trunk.removeprefix("udp:")


@pytest.mark.sipp
async def test_without_trunk_health_calls_wait_for_the_silent_trunk(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    # What the first test saves: each call waits for the silent trunk before the live one,
    # fr if the node has it ([sip.timers] fr), at most Timer B (64 x T1 = 3.2 s here).
    host, ghost, uac_host = (loopback_host() for _ in range(3))
    async with two_trunks(loopback_host) as trunks:
        config = node_config(
            host, ghost, trunks.dns, extra="\n[trunks]\nenabled = false\n", t1=0.05
        )
        async with open_node(config) as node:
            assert node.trunks is None
            setups = await place_calls(host, uac_host, tmp_path, 3)
            listed = await list_trunks(host)
        assert min(setups) >= 900.0  # fr, 1 s (or Timer B)
        assert not listed.enabled
        assert list(listed.trunks) == []
        assert "INVITE" in {request.method for request in received(trunks.silent)}


async def test_the_prober_follows_the_srv_records_at_their_ttl(
    loopback_host: Callable[[], str],
) -> None:
    host, ghost, first_host, second_host, dns_host = (loopback_host() for _ in range(5))
    with silent_socket(first_host) as first, silent_socket(second_host) as second:
        ports = first.getsockname()[1], second.getsockname()[1]
        srv = "_sip._udp.trunk.example"
        zone = Zone(
            {
                "trunk.example": {"SRV": []},
                srv: {"SRV": [f"10 0 {ports[0]} one.trunk.example."]},
                "one.trunk.example": {"A": [first_host]},
                "two.trunk.example": {"A": [second_host]},
            },
            ttl=1,
        )
        async with (
            serve_zone(zone, dns_host) as dns,
            open_node(node_config(host, ghost, dns)) as node,
        ):
            node_trunks = node.trunks
            assert node_trunks is not None
            with node.events.watch(("TRUNK_DOWN",)) as watcher:
                event, _ = await next_trunk_event(watcher, within=5.0)
                assert event.trunk == f"udp:{first_host}:{ports[0]}"
                zone.records[srv] = {"SRV": [f"10 0 {ports[1]} two.trunk.example."]}
                changed = trio.current_time()
                # Looked up again within the TTL (1 s), then DOWN after the detection time.
                event, at = await next_trunk_event(watcher, within=5.0)
            assert event.trunk == f"udp:{second_host}:{ports[1]}"
            assert at - changed < 1.0 + DETECTION + 0.5
            trunks = await list_trunks(host)
            assert [trunk.trunk for trunk in trunks.trunks] == [event.trunk]
            assert node_trunks.counters()["trunks.lookups"] >= 2


@pytest.mark.sipp
async def test_each_worker_probes_and_hears_its_own_answers(
    loopback_host: Callable[[], str],
) -> None:
    # Two worker processes share the node's sockets; each probes the trunk itself, and the
    # Call-IDs it picks steer the answers back to it, so each sees the trunk UP.
    node_host, uas_host = loopback_host(), loopback_host()
    async with open_uas(uas_host) as uas:
        config = process_node_config(
            host=node_host,
            port=5060,
            target=f"{uas.host}:{uas.port}",
            workers=2,
            extra=f'[metrics]\nlisten = "{node_host}:{METRICS_PORT}"\n',
        )
        trunk = f'overlay_trunk_up{{trunk="udp:{uas.host}:{uas.port}"}} 1.0'
        async with open_process_node(config, host=node_host, port=5060):
            # Another process's state: no event reaches the test, so poll, bounded.
            pages = []
            with trio.fail_after(10):
                for worker in (0, 1):
                    while True:
                        page = await metrics_page(node_host, METRICS_PORT + worker)
                        if trunk in page:
                            break
                        await trio.sleep(0.1)
                    pages.append(page)
    for page in pages:
        assert "overlay_trunk_probes_answered_total" in page
        assert 'overlay_trunk_answers_total{kind="stray_answers"} 0.0' in page


async def metrics_page(host: str, port: int) -> str:
    """A worker's /metrics page; "" while it does not listen yet (the node is ready once one
    worker answers SIP)."""

    def get() -> str:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
                body: bytes = response.read()
                return body.decode()
        except urllib.error.URLError:
            return ""

    return await trio.to_thread.run_sync(get)
