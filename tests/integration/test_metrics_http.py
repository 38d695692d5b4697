"""The /metrics HTTP server over real sockets: what Prometheus and misbehaving clients see."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trio
import trio.testing
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from overlay.shell.telemetry import MetricsServer
from overlay.shell.telemetry._http import IDLE_TIMEOUT, MAX_CONNECTIONS

pytestmark = [pytest.mark.integration, pytest.mark.trio]


class Calls(Collector):
    """One counter; raises while ``broken`` is set, as a collector with a bug would."""

    def __init__(self) -> None:
        self.broken = False

    def collect(self) -> Iterator[Metric]:
        if self.broken:
            raise RuntimeError("a bug in a collector")
        yield CounterMetricFamily("overlay_calls_offered", "calls", value=3)


@pytest.fixture
def collector() -> Calls:
    return Calls()


@pytest.fixture
async def served(
    collector: Calls, loopback_host: Callable[[], str]
) -> AsyncIterator[tuple[MetricsServer, tuple[str, int]]]:
    registry = CollectorRegistry()
    registry.register(collector)
    server = MetricsServer(registry)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, loopback_host(), 0)
        yield server, address
        nursery.cancel_scope.cancel()


def request(
    address: tuple[str, int], method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (http.client): status, headers, body."""
    connection = http.client.HTTPConnection(*address, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


async def call(
    address: tuple[str, int], method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(request, address, method, path, headers)


async def test_get_and_head(served: tuple[MetricsServer, tuple[str, int]]) -> None:
    _, address = served
    status, headers, body = await call(address, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"overlay_calls_offered_total 3.0\n" in body
    assert int(headers["Content-Length"]) == len(body)
    status, headers, body = await call(address, "HEAD", "/metrics")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0


async def test_openmetrics_and_gzip_on_request(
    served: tuple[MetricsServer, tuple[str, int]],
) -> None:
    _, address = served
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    status, headers, body = await call(
        address, "GET", "/metrics", {"Accept": accept, "Accept-Encoding": "gzip"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body)
    assert b"overlay_calls_offered_total 3.0\n" in text
    assert text.endswith(b"# EOF\n")


async def test_other_paths_and_methods_are_refused(
    served: tuple[MetricsServer, tuple[str, int]],
) -> None:
    _, address = served
    status, _, body = await call(address, "GET", "/")
    assert status == 404
    assert b"/metrics" in body
    status, headers, _ = await call(address, "POST", "/metrics")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert headers["Connection"] == "close"
    # A query string does not change the resource.
    status, _, _ = await call(address, "GET", "/metrics?name[]=x")
    assert status == 200


async def test_keep_alive_serves_several_scrapes_on_one_connection(
    served: tuple[MetricsServer, tuple[str, int]],
) -> None:
    _, address = served

    def three_scrapes() -> list[int]:
        connection = http.client.HTTPConnection(*address, timeout=5)
        statuses = []
        try:
            for _ in range(3):
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            assert connection.sock is not None  # the same connection all along
        finally:
            connection.close()
        return statuses

    assert await trio.to_thread.run_sync(three_scrapes) == [200, 200, 200]


async def test_bad_http_gets_400_and_is_counted(
    served: tuple[MetricsServer, tuple[str, int]],
) -> None:
    server, address = served
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")
        reply = await receive_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert server.bad_requests == 1


async def test_a_failing_collector_costs_one_scrape(
    served: tuple[MetricsServer, tuple[str, int]], collector: Calls
) -> None:
    server, address = served
    collector.broken = True
    status, _, _ = await call(address, "GET", "/metrics")
    assert status == 500
    assert server.scrape_errors == 1
    collector.broken = False
    status, _, _ = await call(address, "GET", "/metrics")
    assert status == 200


async def test_connections_beyond_the_limit_are_closed_at_once(
    served: tuple[MetricsServer, tuple[str, int]],
) -> None:
    server, address = served
    idle = [await trio.open_tcp_stream(*address) for _ in range(MAX_CONNECTIONS)]
    try:
        # Each idle connection is served by a task once accepted: wait until all wait for data.
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert server.connections == MAX_CONNECTIONS
        async with await trio.open_tcp_stream(*address) as extra:
            assert await receive_until_closed(extra) == b""
        assert server.refused == 1
    finally:
        for stream in idle:
            await stream.aclose()
    status, _, _ = await call(address, "GET", "/metrics")
    assert status == 200


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
    loopback_host: Callable[[], str], clock: trio.testing.MockClock
) -> None:
    server = MetricsServer(CollectorRegistry())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, loopback_host(), 0)
        async with await trio.open_tcp_stream(*address) as stream:
            start = trio.current_time()
            await stream.send_all(b"GET /metr")  # half a request, then silence
            assert await receive_until_closed(stream) == b""
            assert trio.current_time() - start >= IDLE_TIMEOUT
        nursery.cancel_scope.cancel()


async def receive_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(60):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_ready_says_whether_the_node_takes_new_calls(
    loopback_host: Callable[[], str],
) -> None:
    """``[health]``'s server: /ready only, 200 or 503 with the reason, HEAD as GET."""
    why: str | None = None
    server = MetricsServer(ready=lambda: why)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, loopback_host(), 0)
        assert (await call(address, "GET", "/ready"))[::2] == (200, b"ready\n")
        why = "draining"
        assert (await call(address, "GET", "/ready"))[::2] == (503, b"not ready: draining\n")
        assert (await call(address, "HEAD", "/ready"))[::2] == (503, b"")
        # No counter leaves through it.
        status, _, body = await call(address, "GET", "/metrics")
        assert (status, body) == (404, b"not found; served here: /ready\n")
        nursery.cancel_scope.cancel()
