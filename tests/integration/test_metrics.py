"""Prometheus /metrics of real nodes, fetched with a real HTTP client over loopback.

Two in-process nodes form a mesh; one is scraped while its link is up and after its peer has
stopped. Calls placed by SIPp through a node process show in its call counters, and a node with
two workers serves each worker's counters on a port of its own.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from overlay.config import parse_config
from overlay.lab.node_process import NODE_PORT, node_config, open_node
from overlay.lab.sipp import open_uas, run_uac
from overlay.linkstate import LinkState
from overlay.shell.node import open_node as serve_node
from tests.mesh_helpers import mesh_config, wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def config(node_id: str, host: str, peer_id: str, peer_host: str) -> str:
    metrics = f'\n[metrics]\nlisten = "{host}:0"\n'
    return mesh_config(
        node_id, host, peer_id, peer_host, region="us-west-2", media=True, extra=metrics
    )


@pytest.mark.trio
async def test_ready_follows_drain(loopback_host: Callable[[], str]) -> None:
    """What a Route 53 HTTP check of ``[health]`` sees: 503 while the node drains."""
    host, peer = loopback_host(), loopback_host()
    health = f'[health]\nlisten = "{host}:0"\n'
    loaded = parse_config(config("mx-a", host, "mx-b", peer) + health, source="a.toml")
    async with serve_node(loaded) as node:
        assert node.telemetry.health_address is not None
        host, port = node.telemetry.health_address

        def status() -> int:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=5) as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert await trio.to_thread.run_sync(status) == 200
        node.drain.draining = True
        assert await trio.to_thread.run_sync(status) == 503
        node.drain.draining = False
        assert await trio.to_thread.run_sync(status) == 200


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """GET ``url``: (Content-Type, body)."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


async def scrape(address: tuple[str, int]) -> Samples:
    host, port = address
    content_type, body = await trio.to_thread.run_sync(fetch, f"http://{host}:{port}/metrics")
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


@pytest.mark.trio
async def test_scrape_shows_the_link_while_up_and_after_the_peer_stops(
    loopback_host: Callable[[], str],
) -> None:
    host_a, host_b = loopback_host(), loopback_host()
    a_config = parse_config(config("mx-a", host_a, "mx-b", host_b), source="a.toml")
    b_config = parse_config(config("mx-b", host_b, "mx-a", host_a), source="b.toml")
    async with serve_node(a_config) as a, trio.open_nursery() as nursery:
        b_scope = trio.CancelScope()

        async def run_b(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with b_scope:
                async with serve_node(b_config):
                    task_status.started()
                    await trio.sleep_forever()

        await nursery.start(run_b)
        assert a.mesh is not None
        monitor = a.mesh.monitors["mx-b"]

        def up_and_measured() -> bool:
            stats = monitor.statistics(trio.current_time())
            return stats.state is LinkState.UP and stats.probes_answered >= 20

        await wait_for(up_and_measured, within=15)
        await wait_for(lambda: a.mesh is not None and a.mesh.view.reachable("mx-b"), within=5)
        assert a.telemetry.metrics_address is not None
        samples = await scrape(a.telemetry.metrics_address)

        info = {"node_id": "mx-a", "region": "us-west-2", "az": "", "worker": "0"}
        assert value(samples, "overlay_node_info", **info) == 1
        assert value(samples, "overlay_link_up", neighbor="mx-b") == 1
        assert value(samples, "overlay_link_state", neighbor="mx-b", state="UP") == 1
        assert value(samples, "overlay_link_state", neighbor="mx-b", state="DOWN") == 0
        # Loopback: well under a millisecond, unless the shared test machine stalls a node.
        assert 0 < value(samples, "overlay_link_rtt_seconds", neighbor="mx-b") < 0.25
        assert 0 <= value(samples, "overlay_link_jitter_seconds", neighbor="mx-b") < 0.25
        assert value(samples, "overlay_link_loss_ratio", neighbor="mx-b") < 0.1
        assert value(samples, "overlay_link_retransmission_ratio", neighbor="mx-b") == 0
        sent = value(samples, "overlay_link_probes_sent_total", neighbor="mx-b", probe="sip")
        answered = value(
            samples, "overlay_link_probes_answered_total", neighbor="mx-b", probe="sip"
        )
        assert 20 <= answered <= sent
        # The relays echo each other too (media probes), and serve no call yet.
        assert value(samples, "overlay_link_probes_sent_total", neighbor="mx-b", probe="media") > 0
        assert value(samples, "overlay_media_sessions") == 0
        assert value(samples, "overlay_route_reachable", destination="mx-b") == 1
        assert value(samples, "overlay_route_hops", destination="mx-b") == 1
        assert value(samples, "overlay_route_next_hop", destination="mx-b", next_hop="mx-b") == 1
        assert value(samples, "overlay_route_cost", destination="mx-b") > 0
        assert value(samples, "overlay_route_table_updates_total") >= 1
        assert value(samples, "overlay_flood_messages_total", direction="sent", type="lsa") >= 1
        assert value(samples, "overlay_flood_sessions") == 1
        assert value(samples, "overlay_calls_active") == 0
        assert value(samples, "overlay_draining") == 0  # the Control service's state too
        assert value(samples, "overlay_lsdb_lsas") == 2
        assert value(samples, "process_resident_memory_bytes") > 0
        # Every counter has a family of its own, and every family is documented.
        assert not [key for key in samples if key[0] == "overlay_counter"]
        doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
        names = {name for name, _ in samples if name.startswith("overlay_")}
        # A histogram is documented by its family name, not its _bucket/_sum/_count samples.
        histograms = {name.removesuffix("_bucket") for name in names if name.endswith("_bucket")}
        families = {
            name.rsplit("_", 1)[0] if name.rsplit("_", 1)[0] in histograms else name
            for name in names
        }
        assert {name for name in families if f"`{name}`" not in doc} == set()

        b_scope.cancel()  # B stops: A declares the link down within the detection time
        await wait_for(lambda: monitor.state is LinkState.DOWN, within=5)
        await wait_for(lambda: a.mesh is not None and not a.mesh.view.reachable("mx-b"), within=5)
        samples = await scrape(a.telemetry.metrics_address)
        assert value(samples, "overlay_link_up", neighbor="mx-b") == 0
        assert value(samples, "overlay_link_state", neighbor="mx-b", state="DOWN") == 1
        assert ("overlay_link_rtt_seconds", frozenset({("neighbor", "mx-b")})) not in samples
        assert value(samples, "overlay_route_reachable", destination="mx-b") == 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
@pytest.mark.sipp
async def test_calls_through_a_node_are_counted_by_result(
    loopback_host: Callable[[], str], free_port: Callable[..., int]
) -> None:
    node_host, uas_host, uac_host, busy_host = (loopback_host() for _ in range(4))
    metrics_port = free_port(node_host, "tcp")
    async with (
        open_uas(uas_host, scenario="uas") as uas,
        open_uas(busy_host, scenario="uas_486") as busy,
    ):
        config = node_config(
            host=node_host,
            port=NODE_PORT,
            target=f"{uas.host}:{uas.port}",
            extra=f'[metrics]\nlisten = "{node_host}:{metrics_port}"\n',
        )
        config += f'\n[[dialplan]]\nuser_prefix = "busy"\ntarget = "{busy.host}:{busy.port}"\n'
        async with open_node(config, host=node_host, port=NODE_PORT) as node:
            answered = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario="uac_rr",
                calls=10,
                rate=20,
                max_seconds=30,
            )
            rejected = await run_uac(
                (node_host, NODE_PORT),
                local_host=uac_host,
                scenario="uac_486",
                calls=4,
                rate=20,
                service="busy",
                max_seconds=30,
            )
            samples = await scrape((node_host, metrics_port))
            assert node.process.returncode is None, node.log()
    assert (answered.calls_successful, rejected.calls_successful) == (10, 4)
    assert value(samples, "overlay_calls_offered_total") == 14
    assert value(samples, "overlay_calls_answered_total") == 10
    assert value(samples, "overlay_calls_failed_total", status="486") == 4
    assert value(samples, "overlay_calls_in_setup") == 0
    assert value(samples, "overlay_sip_requests_total", method="INVITE") >= 14
    assert value(samples, "overlay_sip_responses_total", status_class="4xx") >= 4  # + resends


@pytest.mark.trio
async def test_each_worker_serves_its_own_counters_on_its_own_port(
    loopback_host: Callable[[], str], free_port: Callable[..., int]
) -> None:
    node_host = loopback_host()
    first = free_port(node_host, "tcp")
    # port + 1 must be free as well: find a pair.
    while not _tcp_port_free(node_host, first + 1):
        first = free_port(node_host, "tcp")
    config = node_config(
        host=node_host,
        port=NODE_PORT,
        target="127.0.0.1:9",
        workers=2,
        extra=f'[metrics]\nlisten = "{node_host}:{first}"\n',
    )
    async with open_node(config, host=node_host, port=NODE_PORT) as node:
        workers = set()
        for port in (first, first + 1):
            with trio.fail_after(10):
                while True:  # each worker starts its listener on its own
                    try:
                        samples = await scrape((node_host, port))
                        break
                    except OSError:
                        await trio.sleep(0.05)
            (labels,) = (dict(key[1]) for key in samples if key[0] == "overlay_node_info")
            workers.add(labels["worker"])
        assert node.process.returncode is None, node.log()
    assert workers == {"0", "1"}


def _tcp_port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
