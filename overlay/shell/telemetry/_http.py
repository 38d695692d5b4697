"""The node's ``/metrics`` and ``/ready`` endpoints: HTTP/1.1 parsed by h11, served by trio on the
node's thread.

Why not ``prometheus_client.start_http_server``: it serves from a thread of its own, so the
collector would read the proxy core, the link monitors and the route table while the trio
thread changes them (a dict resized during iteration, a snapshot taken half before and half
after an event). Locking every counter of the hot path, or copying snapshots to that thread on
a timer, would cost the signalling path for the sake of a scrape every 15 s. Served from trio,
a scrape is rendered between two events, consistent and fresh, with no lock and no copy; what
it costs is the rendering itself (about a millisecond per hundred series) on the event loop.

Each connection is one task; it may carry several requests (keep-alive, as Prometheus uses)
and is closed when idle for ``IDLE_TIMEOUT``, on bad HTTP (400), or when the client closes.
At most ``MAX_CONNECTIONS`` are served at once; more are closed at once, so a misbehaving
client cannot pile up tasks on the node. Only ``GET`` and ``HEAD`` are served: of ``/metrics``,
the Prometheus text format or OpenMetrics (by ``Accept``), gzipped when asked; of ``/ready``
(a server given ``ready``, on its own address: ``[health]``), 200 or 503 with the reason.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

import h11
import structlog
import trio
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from overlay.config import READY_PATH

log = structlog.get_logger("overlay.telemetry")

PATH = "/metrics"
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 30.0  # seconds a connection may wait for (the rest of) a request
MAX_REQUEST_HEAD = 16 * 1024  # bytes of request line and headers
_RECEIVE_SIZE = 4096


class MetricsServer:
    """Serves ``registry`` on ``/metrics`` and, with ``ready`` (which says why the node is not
    ready, or ``None``), ``/ready``; see the module docstring."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        ready: Callable[[], str | None] | None = None,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._paths = [path for path, on in ((PATH, registry), (READY_PATH, ready)) if on]
        self.connections = 0  # being served now
        self.refused = 0  # connections closed at once, over MAX_CONNECTIONS
        self.bad_requests = 0
        self.scrape_errors = 0

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: any free port) and serve until cancelled.

        Reports the bound address via ``task_status``.

        Raises:
            OSError: the address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        task_status.started((sockname[0], sockname[1]))
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self.connections >= MAX_CONNECTIONS:
            self.refused += 1
            await stream.aclose()
            return
        self.connections += 1
        try:
            async with stream:
                await self._serve_requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-response
        finally:
            self.connections -= 1

    async def _serve_requests(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        while True:
            try:
                with trio.move_on_after(IDLE_TIMEOUT):
                    request = await _next_request(conn, stream)
                    if request is None:
                        return
                    await self._respond(conn, stream, request)
                if conn.our_state is not h11.DONE:
                    return  # the idle timeout struck, or the response closes the connection
                if conn.their_state is h11.SEND_BODY and not isinstance(
                    conn.next_event(), h11.EndOfMessage
                ):
                    return  # a request body nobody asked for: close rather than read it
                if conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            except h11.RemoteProtocolError as error:
                self.bad_requests += 1
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = f"bad request: {error}\n".encode()
                    with trio.move_on_after(IDLE_TIMEOUT):  # a client that does not read
                        await _send(conn, stream, error.error_status_hint, body, close=True)
                return

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> None:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").partition("?")[0]
        if method not in ("GET", "HEAD"):
            allow = [("Allow", "GET, HEAD")]
            await _send(conn, stream, 405, b"only GET and HEAD\n", allow, close=True)
            return
        if target not in self._paths:
            served = " and ".join(self._paths)
            await _send(conn, stream, 404, f"not found; served here: {served}\n".encode())
            return
        head = method == "HEAD"
        if target == READY_PATH:
            assert self._ready is not None
            why = self._ready()
            status, text = (200, "ready") if why is None else (503, f"not ready: {why}")
            await _send(conn, stream, status, f"{text}\n".encode(), head=head)
            return
        assert self._registry is not None
        headers = {name.decode("latin-1").lower(): value for name, value in request.headers}
        accept = headers.get("accept", b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        try:
            body = encoder(self._registry)
        except Exception:
            # A bug in a collector must cost this scrape, not the node.
            self.scrape_errors += 1
            log.exception("metrics scrape failed")
            await _send(conn, stream, 500, b"scrape failed; see the node's log\n")
            return
        extra = [("Content-Type", content_type)]
        if gzip_accepted(headers.get("accept-encoding", b"").decode("latin-1")):
            body = gzip.compress(body, compresslevel=1)
            extra.append(("Content-Encoding", "gzip"))
        await _send(conn, stream, 200, body, extra, head=head)


async def _next_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next request's head, or ``None`` when the client closed the connection first."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
        elif isinstance(event, h11.Request):
            return event
        else:  # ConnectionClosed (or PAUSED after a close)
            return None


async def _send(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    *,
    head: bool = False,
    close: bool = False,
) -> None:
    fields = [("Content-Length", str(len(body)))]
    if not any(name == "Content-Type" for name, _ in headers or ()):
        fields.append(("Content-Type", "text/plain; charset=utf-8"))
    if close:
        fields.append(("Connection", "close"))
    parts: list[h11.Event] = [h11.Response(status_code=status, headers=fields + (headers or []))]
    if not head:
        parts.append(h11.Data(data=body))
    parts.append(h11.EndOfMessage())
    await stream.send_all(b"".join(conn.send(part) or b"" for part in parts))
