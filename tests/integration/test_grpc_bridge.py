"""The gRPC bridge over real gRPC on loopback: trio handlers and clients, grpc.aio inside."""

from __future__ import annotations

import datetime
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import grpc
import pytest
import structlog.testing
import trio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from overlay.grpc import (
    BridgedStream,
    Caller,
    GrpcBridge,
    Role,
    RpcError,
    Service,
    StreamBroken,
    TlsCredentials,
    current_caller,
    open_grpc_bridge,
    server_stream_handler,
    stream_handler,
    unary_handler,
)
from overlay.grpc._stream import STREAM_BUFFER_SIZE
from overlay.tls import Issued, create_ca, issue_client, issue_node
from overlay.v1 import control_pb2, linkstate_pb2

pytestmark = [pytest.mark.integration, pytest.mark.trio]

HOST = "127.0.0.1"
TIMEOUT = 10  # bound on every test body
GET_LINKS = "/overlay.v1.Control/ListLinks"
GET_ROUTES = "/overlay.v1.Control/GetRoutes"
INJECT_FAULT = "/overlay.v1.Control/InjectFault"
CLEAR_FAULTS = "/overlay.v1.Control/ClearFaults"
FLOOD = "/overlay.v1.LinkState/Flood"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

LINK = control_pb2.LinkStatus(
    neighbor="us-east-1a",
    state=control_pb2.LinkStatus.UP,
    measured=control_pb2.LinkMetrics(rtt_ms=68.0),
    probes_sent=10,
)


class FakeNode:
    """Control and LinkState handlers that record what they saw."""

    def __init__(self) -> None:
        self.lsas: list[tuple[str, int]] = []
        self.flood_ended: list[str] = []  # "EndOfChannel" or "StreamBroken:<code>"
        self.flood_done = trio.Event()
        self.clear_faults_cancelled = trio.Event()

    def get_links(self, request: control_pb2.ListLinksRequest) -> control_pb2.ListLinksResponse:
        return control_pb2.ListLinksResponse(node_id="us-west-2a", links=[LINK])

    async def get_routes(
        self, request: control_pb2.GetRoutesRequest
    ) -> control_pb2.GetRoutesResponse:
        await trio.lowlevel.checkpoint()  # really async: a task of the bridge's nursery
        return control_pb2.GetRoutesResponse(node_id="us-west-2a", version=7)

    def inject_fault(
        self, request: control_pb2.InjectFaultRequest
    ) -> control_pb2.InjectFaultResponse:
        if request.fault.loss_ratio > 1:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "loss_ratio must be in 0..1")
        raise ZeroDivisionError("a bug")

    async def clear_faults(
        self, request: control_pb2.ClearFaultsRequest
    ) -> control_pb2.ClearFaultsResponse:
        try:
            await trio.sleep_forever()
        finally:
            self.clear_faults_cancelled.set()

    async def flood(self, stream: BridgedStream) -> None:
        """Hello first, then ack every LSA; "reject" as a node id fails the RPC."""
        try:
            hello = (await stream.receive()).hello
            if hello.node_id == "reject":
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "unknown node 'reject'")
            await stream.send(linkstate_pb2.FloodReply(hello=linkstate_pb2.Hello(node_id="srv")))
            while True:
                lsa = (await stream.receive()).lsa
                self.lsas.append((lsa.origin, lsa.seq))
                ack = linkstate_pb2.LsaAck(origin=lsa.origin, seq=lsa.seq)
                await stream.send(linkstate_pb2.FloodReply(ack=ack))
        except trio.EndOfChannel:
            self.flood_ended.append("EndOfChannel")
        except StreamBroken as exc:
            self.flood_ended.append(f"StreamBroken:{exc.code.name}")
        finally:
            self.flood_done.set()

    def services(self) -> list[Service]:
        return [
            Service(
                "overlay.v1.Control",
                {
                    "ListLinks": unary_handler(
                        self.get_links,
                        control_pb2.ListLinksRequest.FromString,
                        control_pb2.ListLinksResponse.SerializeToString,
                    ),
                    "GetRoutes": unary_handler(
                        self.get_routes,
                        control_pb2.GetRoutesRequest.FromString,
                        control_pb2.GetRoutesResponse.SerializeToString,
                    ),
                    "InjectFault": unary_handler(
                        self.inject_fault,
                        control_pb2.InjectFaultRequest.FromString,
                        control_pb2.InjectFaultResponse.SerializeToString,
                    ),
                    "ClearFaults": unary_handler(
                        self.clear_faults,
                        control_pb2.ClearFaultsRequest.FromString,
                        control_pb2.ClearFaultsResponse.SerializeToString,
                    ),
                },
            ),
            Service(
                "overlay.v1.LinkState",
                {
                    "Flood": stream_handler(
                        self.flood,
                        linkstate_pb2.FloodMessage.FromString,
                        linkstate_pb2.FloodReply.SerializeToString,
                    )
                },
            ),
        ]


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def bridge() -> AsyncIterator[GrpcBridge]:
    async with open_grpc_bridge() as bridge:
        yield bridge


@pytest.fixture
async def target(bridge: GrpcBridge, node: FakeNode) -> str:
    """The address of a server (on the same bridge) serving ``node``."""
    port = await bridge.start_server(HOST, 0, node.services())
    return f"{HOST}:{port}"


def hello(node_id: str = "us-west-2a") -> linkstate_pb2.FloodMessage:
    return linkstate_pb2.FloodMessage(hello=linkstate_pb2.Hello(node_id=node_id, region="r"))


def lsa(seq: int) -> linkstate_pb2.FloodMessage:
    return linkstate_pb2.FloodMessage(lsa=linkstate_pb2.Lsa(origin="us-west-2a", seq=seq))


def open_flood(bridge: GrpcBridge, target: str) -> AbstractAsyncContextManager[BridgedStream]:
    return bridge.open_stream(
        target,
        FLOOD,
        linkstate_pb2.FloodMessage.SerializeToString,
        linkstate_pb2.FloodReply.FromString,
    )


async def get_links(bridge: GrpcBridge, target: str) -> control_pb2.ListLinksResponse:
    return await bridge.unary(
        target,
        GET_LINKS,
        control_pb2.ListLinksRequest(),
        control_pb2.ListLinksRequest.SerializeToString,
        control_pb2.ListLinksResponse.FromString,
        timeout=5,
    )


# --- unary -----------------------------------------------------------------------------------


async def test_unary_handler_answers(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT):
        response = await get_links(bridge, target)
    assert response == control_pb2.ListLinksResponse(node_id="us-west-2a", links=[LINK])


async def test_rpc_error_becomes_the_status(bridge: GrpcBridge, target: str):
    request = control_pb2.InjectFaultRequest(fault=control_pb2.Fault(peer="x", loss_ratio=2))
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError) as caught:
        await bridge.unary(
            target,
            INJECT_FAULT,
            request,
            control_pb2.InjectFaultRequest.SerializeToString,
            control_pb2.InjectFaultResponse.FromString,
            timeout=5,
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "loss_ratio must be in 0..1"


async def test_unexpected_exception_is_internal_and_logged(bridge: GrpcBridge, target: str):
    request = control_pb2.InjectFaultRequest(fault=control_pb2.Fault(peer="x"))
    with (
        structlog.testing.capture_logs() as logs,
        trio.fail_after(TIMEOUT),
        pytest.raises(RpcError) as caught,
    ):
        await bridge.unary(
            target,
            INJECT_FAULT,
            request,
            control_pb2.InjectFaultRequest.SerializeToString,
            control_pb2.InjectFaultResponse.FromString,
            timeout=5,
        )
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "a bug" not in caught.value.message  # no internals leak to the client
    [entry] = [e for e in logs if e["event"] == "gRPC handler failed"]
    assert entry["method"] == INJECT_FAULT
    assert entry["log_level"] == "error"
    assert entry["exc_info"] is True


async def test_async_unary_handler(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT):
        response = await bridge.unary(
            target,
            GET_ROUTES,
            control_pb2.GetRoutesRequest(),
            control_pb2.GetRoutesRequest.SerializeToString,
            control_pb2.GetRoutesResponse.FromString,
            timeout=5,
        )
    assert response.version == 7


async def test_deadline_cancels_an_async_handler(bridge: GrpcBridge, target: str, node: FakeNode):
    with trio.fail_after(TIMEOUT):
        with pytest.raises(RpcError) as caught:
            await bridge.unary(
                target,
                CLEAR_FAULTS,
                control_pb2.ClearFaultsRequest(),
                control_pb2.ClearFaultsRequest.SerializeToString,
                control_pb2.ClearFaultsResponse.FromString,
                timeout=0.2,
            )
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await node.clear_faults_cancelled.wait()


async def test_undecodable_request_is_invalid_argument(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError) as caught:
        await bridge.unary(
            target,
            GET_LINKS,
            b"\xff\xff",
            bytes,
            control_pb2.ListLinksResponse.FromString,
            timeout=5,
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_unreachable_target_is_unavailable(bridge: GrpcBridge):
    # A port nobody listens on: bind one, note it, close it.
    with trio.socket.socket() as sock:
        await sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError) as caught:
        await get_links(bridge, f"{HOST}:{port}")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# --- streams ---------------------------------------------------------------------------------


async def test_flood_stream_in_order_both_ways(bridge: GrpcBridge, target: str, node: FakeNode):
    acks: list[tuple[str, int]] = []
    with trio.fail_after(TIMEOUT):
        async with open_flood(bridge, target) as stream:

            async def send_all() -> None:
                await stream.send(hello())
                for seq in range(1, 101):
                    await stream.send(lsa(seq))  # more than the buffer: send() waits for room
                stream.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                assert (await stream.receive()).hello.node_id == "srv"
                for _ in range(100):
                    ack = (await stream.receive()).ack
                    acks.append((ack.origin, ack.seq))
                # The server returns after our half-close: the RPC ends with OK.
                with pytest.raises(trio.EndOfChannel):
                    await stream.receive()
            assert stream.peer == target
        await node.flood_done.wait()
    expected = [("us-west-2a", seq) for seq in range(1, 101)]
    assert node.lsas == expected
    assert acks == expected
    assert node.flood_ended == ["EndOfChannel"]


async def test_server_rpc_error_breaks_the_client_stream(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT):
        async with open_flood(bridge, target) as stream:
            await stream.send(hello("reject"))
            with pytest.raises(StreamBroken) as caught:
                await stream.receive()
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.details == "unknown node 'reject'"
            # Broken for good, both ways.
            with pytest.raises(StreamBroken):
                await stream.receive()
            with pytest.raises(StreamBroken):
                await stream.send(lsa(1))


async def test_client_going_away_breaks_the_server_stream(
    bridge: GrpcBridge, target: str, node: FakeNode
):
    with trio.fail_after(TIMEOUT):
        async with open_flood(bridge, target) as stream:
            await stream.send(hello())
            await stream.receive()
        # Leaving the block cancelled the RPC: the handler's receive() raised StreamBroken.
        await node.flood_done.wait()
    assert node.flood_ended == ["StreamBroken:CANCELLED"]


async def test_server_bridge_exit_breaks_the_client_stream_promptly(bridge: GrpcBridge):
    """The server's bridge exits while a client stream to it is open."""
    node = FakeNode()
    stop_server = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_grpc_bridge() as server_bridge:
            port = await server_bridge.start_server(HOST, 0, node.services())
            task_status.started(f"{HOST}:{port}")
            await stop_server.wait()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve)
            async with open_flood(bridge, target) as stream:
                await stream.send(hello())
                await stream.receive()
                stop_server.set()
                with trio.fail_after(5), pytest.raises(StreamBroken) as caught:
                    await stream.receive()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    # The server's handler was cancelled by its bridge's exit.
    assert node.flood_done.is_set()
    assert node.flood_ended == []


async def test_send_nowait_raises_would_block_when_the_buffer_is_full(
    bridge: GrpcBridge, target: str
):
    with trio.fail_after(TIMEOUT):
        async with open_flood(bridge, target) as stream:
            # No checkpoint in between: the bridge thread cannot report any write as done.
            for seq in range(STREAM_BUFFER_SIZE):
                stream.send_nowait(lsa(seq))
            with pytest.raises(trio.WouldBlock):
                stream.send_nowait(lsa(STREAM_BUFFER_SIZE))


async def test_bad_message_raises_at_the_sender(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT):
        async with open_flood(bridge, target) as stream:
            with pytest.raises(TypeError):
                stream.send_nowait("not a FloodMessage")
            await stream.send(hello())  # the stream is still usable
            assert (await stream.receive()).hello.node_id == "srv"


# --- server streams --------------------------------------------------------------------------

WATCH = "/test.Watch/Watch"


class Watching:
    """A server-streaming method: ``n`` events (ListLinksResponse), then the stream ends or,
    with ``hold``, waits until the client goes away."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.ended = trio.Event()
        self.outcome = ""

    async def watch(self, request: control_pb2.ListLinksRequest, stream: BridgedStream) -> None:
        try:
            for n in range(3):
                await stream.send(control_pb2.ListLinksResponse(node_id=f"event-{n}"))
            if self.hold:
                await trio.sleep_forever()
        except StreamBroken as exc:
            self.outcome = f"StreamBroken:{exc.code.name}"
        except trio.Cancelled:
            self.outcome = "cancelled"
            raise
        finally:
            self.ended.set()

    def service(self, authorize: Callable[[str, Caller], None] | None = None) -> Service:
        handler = server_stream_handler(
            self.watch, control_pb2.ListLinksRequest.FromString, _serialize
        )
        return Service("test.Watch", {"Watch": handler}, authorize)


def _serialize(message: control_pb2.ListLinksResponse) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def open_watch(bridge: GrpcBridge, target: str) -> AbstractAsyncContextManager[BridgedStream]:
    return bridge.open_server_stream(
        target,
        WATCH,
        control_pb2.ListLinksRequest(),
        control_pb2.ListLinksRequest.SerializeToString,
        control_pb2.ListLinksResponse.FromString,
    )


async def test_server_stream_delivers_in_order_then_ends(bridge: GrpcBridge):
    watching = Watching()
    port = await bridge.start_server(HOST, 0, [watching.service()])
    with trio.fail_after(TIMEOUT):
        async with open_watch(bridge, f"{HOST}:{port}") as stream:
            with pytest.raises(trio.ClosedResourceError):  # the client only receives
                stream.send_nowait(control_pb2.ListLinksRequest())
            got = [(await stream.receive()).node_id for _ in range(3)]
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
    assert got == ["event-0", "event-1", "event-2"]


async def test_server_stream_handler_is_cancelled_when_the_client_leaves(bridge: GrpcBridge):
    watching = Watching(hold=True)
    port = await bridge.start_server(HOST, 0, [watching.service()])
    with trio.fail_after(TIMEOUT):
        async with open_watch(bridge, f"{HOST}:{port}") as stream:
            await stream.receive()
        await watching.ended.wait()
    assert watching.outcome == "cancelled"


async def test_server_stream_with_an_undecodable_request_is_invalid_argument(bridge: GrpcBridge):
    watching = Watching()
    port = await bridge.start_server(HOST, 0, [watching.service()])
    with trio.fail_after(TIMEOUT):
        async with bridge.open_server_stream(
            f"{HOST}:{port}", WATCH, b"\xff\xff", bytes, control_pb2.ListLinksResponse.FromString
        ) as stream:
            with pytest.raises(StreamBroken) as caught:
                await stream.receive()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not watching.ended.is_set()


# --- authorization and identities ------------------------------------------------------------


async def test_authorize_refuses_before_any_handler_runs(bridge: GrpcBridge, node: FakeNode):
    seen: list[tuple[str, str]] = []

    def authorize(method: str, caller: Caller) -> None:
        seen.append((method, caller.peer.rsplit(":", 1)[0]))
        if method != "ListLinks":
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, f"not {method}")

    watching = Watching()
    admin, _ = node.services()
    services = [Service(admin.name, admin.methods, authorize), watching.service(authorize)]
    port = await bridge.start_server(HOST, 0, services)
    target = f"{HOST}:{port}"
    with trio.fail_after(TIMEOUT):
        assert (await get_links(bridge, target)).node_id == "us-west-2a"
        with pytest.raises(RpcError) as caught:
            await bridge.unary(
                target,
                INJECT_FAULT,
                control_pb2.InjectFaultRequest(),
                control_pb2.InjectFaultRequest.SerializeToString,
                control_pb2.InjectFaultResponse.FromString,
                timeout=5,
            )
        assert (caught.value.code, caught.value.message) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "not InjectFault",
        )
        async with open_watch(bridge, target) as stream:
            with pytest.raises(StreamBroken, match="PERMISSION_DENIED: not Watch"):
                await stream.receive()
    assert seen == [("ListLinks", "ipv4:127.0.0.1"), ("InjectFault", "ipv4:127.0.0.1"),
                    ("Watch", "ipv4:127.0.0.1")]  # fmt: skip
    assert not watching.ended.is_set()


NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def pki() -> dict[str, TlsCredentials]:
    """A CA, a server certificate for HOST, an operator client, and one from another CA."""
    ca = create_ca("test CA", now=NOW)
    other = create_ca("another CA", now=NOW)

    def tls(issued: Issued, authority: Issued = ca) -> TlsCredentials:
        return TlsCredentials(authority.cert, issued.cert, issued.key)

    return {
        "server": tls(issue_node(ca, "srv", [HOST], now=NOW)),
        "wrong name": tls(issue_node(ca, "srv", ["127.0.0.99"], now=NOW)),
        "client": tls(issue_client(ca, "olga", Role.OPERATOR, now=NOW)),
        "stranger": tls(issue_client(other, "eve", Role.OPERATOR, now=NOW), other),
    }


async def test_mutual_tls_tells_the_handler_who_calls(pki: dict[str, TlsCredentials]):
    callers: list[Caller | None] = []

    def whoami(request: control_pb2.ListLinksRequest) -> control_pb2.ListLinksResponse:
        callers.append(current_caller())
        return control_pb2.ListLinksResponse(node_id="srv")

    service = Service(
        "overlay.v1.Control",
        {"ListLinks": unary_handler(whoami, control_pb2.ListLinksRequest.FromString, _serialize)},
    )
    with trio.fail_after(TIMEOUT):
        async with (
            open_grpc_bridge(tls=pki["server"]) as server,
            open_grpc_bridge(tls=pki["client"]) as client,
        ):
            port = await server.start_server(HOST, 0, [service])
            assert (await get_links(client, f"{HOST}:{port}")).node_id == "srv"
    (caller,) = callers
    assert caller is not None
    assert caller.certificate == pki["client"].cert
    assert current_caller() is None  # only inside a handler


@pytest.mark.parametrize(
    ("server_tls", "client_tls"),
    [
        ("server", None),  # no client certificate: the handshake fails
        ("server", "stranger"),  # a client certificate from another CA
        ("wrong name", "client"),  # the server's certificate does not name the dialled address
        (None, "client"),  # TLS to a plaintext server
    ],
)
async def test_handshakes_that_must_fail_are_unavailable(
    pki: dict[str, TlsCredentials], server_tls: str | None, client_tls: str | None
):
    with trio.fail_after(TIMEOUT):
        async with (
            open_grpc_bridge(tls=None if server_tls is None else pki[server_tls]) as server,
            open_grpc_bridge(tls=None if client_tls is None else pki[client_tls]) as client,
        ):
            port = await server.start_server(HOST, 0, FakeNode().services())
            with pytest.raises(RpcError) as caught:
                await get_links(client, f"{HOST}:{port}")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# --- health and reflection -------------------------------------------------------------------


async def health_status(bridge: GrpcBridge, target: str, service: str) -> int:
    response = await bridge.unary(
        target,
        HEALTH_CHECK,
        health_pb2.HealthCheckRequest(service=service),
        health_pb2.HealthCheckRequest.SerializeToString,
        health_pb2.HealthCheckResponse.FromString,
        timeout=5,
    )
    status: int = response.status
    return status


async def test_health_serving_then_not_serving(bridge: GrpcBridge, target: str):
    serving = health_pb2.HealthCheckResponse.SERVING
    with trio.fail_after(TIMEOUT):
        assert await health_status(bridge, target, "") == serving
        assert await health_status(bridge, target, "overlay.v1.Control") == serving
        bridge.set_serving("overlay.v1.Control", False)
        assert (
            await health_status(bridge, target, "overlay.v1.Control")
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert await health_status(bridge, target, "overlay.v1.LinkState") == serving
        bridge.set_serving("overlay.v1.Control", True)
        assert await health_status(bridge, target, "overlay.v1.Control") == serving


async def test_a_beaten_status_lapses_when_the_beats_stop(bridge: GrpcBridge, target: str):
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    with trio.fail_after(TIMEOUT):
        for _ in range(4):  # beats closer together than the ttl keep it up
            bridge.beat("overlay.v1.Liveness", ttl=0.3)
            assert await health_status(bridge, target, "overlay.v1.Liveness") == serving
            await trio.sleep(0.1)
        await trio.sleep(0.5)  # no beat for longer than the ttl: as if trio were wedged
        assert await health_status(bridge, target, "overlay.v1.Liveness") == not_serving
        assert await health_status(bridge, target, "") == serving  # the server is not
        bridge.beat("overlay.v1.Liveness", ttl=0.3)
        assert await health_status(bridge, target, "overlay.v1.Liveness") == serving


async def test_reflection_lists_the_services(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT):
        async with bridge.open_stream(
            target,
            REFLECTION,
            reflection_pb2.ServerReflectionRequest.SerializeToString,
            reflection_pb2.ServerReflectionResponse.FromString,
        ) as stream:
            await stream.send(reflection_pb2.ServerReflectionRequest(list_services=""))
            response = await stream.receive()
            stream.close()
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
    names = {service.name for service in response.list_services_response.service}
    assert {"overlay.v1.Control", "overlay.v1.LinkState", "grpc.health.v1.Health"} <= names


# --- lifecycle -------------------------------------------------------------------------------


async def test_second_bridge_cannot_bind_the_same_port(bridge: GrpcBridge, target: str):
    port = int(target.rsplit(":", 1)[1])
    with trio.fail_after(TIMEOUT):
        async with open_grpc_bridge() as other:
            with pytest.raises(OSError, match=f"cannot bind the gRPC server to {target}"):
                await other.start_server(HOST, port, FakeNode().services())
            # The first server is unaffected.
            assert (await get_links(other, target)).node_id == "us-west-2a"


async def test_exit_leaves_no_thread_behind():
    before = threading.active_count()
    node = FakeNode()
    with trio.fail_after(TIMEOUT):
        async with open_grpc_bridge() as bridge:
            assert threading.active_count() > before
            port = await bridge.start_server(HOST, 0, node.services())
            target = f"{HOST}:{port}"
            await get_links(bridge, target)
            async with open_flood(bridge, target) as stream:
                await stream.send(hello())
                await stream.receive()
        assert threading.active_count() == before

        # Also when the body raises while a stream is open (the bridge re-raises it as is)...
        async def fail() -> None:
            async with open_grpc_bridge() as bridge:
                port = await bridge.start_server(HOST, 0, FakeNode().services())
                async with open_flood(bridge, f"{HOST}:{port}") as stream:
                    await stream.send(hello())
                    await stream.receive()
                    raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await fail()
        assert threading.active_count() == before

        # ...and when it is cancelled.
        with trio.move_on_after(0.2):
            async with open_grpc_bridge() as bridge:
                await bridge.start_server(HOST, 0, FakeNode().services())
                await trio.sleep_forever()
        assert threading.active_count() == before


async def test_closed_bridge_refuses_calls():
    async with open_grpc_bridge() as bridge:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await bridge.start_server(HOST, 0, [])
