"""The gRPC bridge over real gRPC on loopback: trio handlers and clients, grpc.aio inside."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import grpc
import pytest
import structlog.testing
import trio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from overlay.control import (
    BridgedStream,
    GrpcBridge,
    RpcError,
    Service,
    StreamBroken,
    open_grpc_bridge,
    stream_handler,
    unary_handler,
)
from overlay.control._bridge import STREAM_BUFFER_SIZE
from overlay.v1 import admin_pb2, linkstate_pb2

pytestmark = [pytest.mark.integration, pytest.mark.trio]

HOST = "127.0.0.1"
TIMEOUT = 10  # bound on every test body
GET_LINKS = "/overlay.v1.Admin/GetLinks"
GET_ROUTES = "/overlay.v1.Admin/GetRoutes"
INJECT_FAULT = "/overlay.v1.Admin/InjectFault"
CLEAR_FAULTS = "/overlay.v1.Admin/ClearFaults"
FLOOD = "/overlay.v1.LinkState/Flood"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

LINK = admin_pb2.LinkStatus(neighbor="us-east-1a", state="UP", rtt_ms=68.0, probes_sent=10)


class FakeNode:
    """Admin and LinkState handlers that record what they saw."""

    def __init__(self) -> None:
        self.lsas: list[tuple[str, int]] = []
        self.flood_ended: list[str] = []  # "EndOfChannel" or "StreamBroken:<code>"
        self.flood_done = trio.Event()
        self.clear_faults_cancelled = trio.Event()

    def get_links(self, request: admin_pb2.GetLinksRequest) -> admin_pb2.GetLinksResponse:
        return admin_pb2.GetLinksResponse(node_id="us-west-2a", links=[LINK])

    async def get_routes(self, request: admin_pb2.GetRoutesRequest) -> admin_pb2.GetRoutesResponse:
        await trio.lowlevel.checkpoint()  # really async: a task of the bridge's nursery
        return admin_pb2.GetRoutesResponse(node_id="us-west-2a", version=7)

    def inject_fault(self, request: admin_pb2.InjectFaultRequest) -> admin_pb2.InjectFaultResponse:
        if request.fault.loss_ratio > 1:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "loss_ratio must be in 0..1")
        raise ZeroDivisionError("a bug")

    async def clear_faults(
        self, request: admin_pb2.ClearFaultsRequest
    ) -> admin_pb2.ClearFaultsResponse:
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
                "overlay.v1.Admin",
                {
                    "GetLinks": unary_handler(
                        self.get_links,
                        admin_pb2.GetLinksRequest.FromString,
                        admin_pb2.GetLinksResponse.SerializeToString,
                    ),
                    "GetRoutes": unary_handler(
                        self.get_routes,
                        admin_pb2.GetRoutesRequest.FromString,
                        admin_pb2.GetRoutesResponse.SerializeToString,
                    ),
                    "InjectFault": unary_handler(
                        self.inject_fault,
                        admin_pb2.InjectFaultRequest.FromString,
                        admin_pb2.InjectFaultResponse.SerializeToString,
                    ),
                    "ClearFaults": unary_handler(
                        self.clear_faults,
                        admin_pb2.ClearFaultsRequest.FromString,
                        admin_pb2.ClearFaultsResponse.SerializeToString,
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


async def get_links(bridge: GrpcBridge, target: str) -> admin_pb2.GetLinksResponse:
    return await bridge.unary(
        target,
        GET_LINKS,
        admin_pb2.GetLinksRequest(),
        admin_pb2.GetLinksRequest.SerializeToString,
        admin_pb2.GetLinksResponse.FromString,
        timeout=5,
    )


# --- unary -----------------------------------------------------------------------------------


async def test_unary_handler_answers(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT):
        response = await get_links(bridge, target)
    assert response == admin_pb2.GetLinksResponse(node_id="us-west-2a", links=[LINK])


async def test_rpc_error_becomes_the_status(bridge: GrpcBridge, target: str):
    request = admin_pb2.InjectFaultRequest(fault=admin_pb2.Fault(peer="x", loss_ratio=2))
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError) as caught:
        await bridge.unary(
            target,
            INJECT_FAULT,
            request,
            admin_pb2.InjectFaultRequest.SerializeToString,
            admin_pb2.InjectFaultResponse.FromString,
            timeout=5,
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "loss_ratio must be in 0..1"


async def test_unexpected_exception_is_internal_and_logged(bridge: GrpcBridge, target: str):
    request = admin_pb2.InjectFaultRequest(fault=admin_pb2.Fault(peer="x"))
    with (
        structlog.testing.capture_logs() as logs,
        trio.fail_after(TIMEOUT),
        pytest.raises(RpcError) as caught,
    ):
        await bridge.unary(
            target,
            INJECT_FAULT,
            request,
            admin_pb2.InjectFaultRequest.SerializeToString,
            admin_pb2.InjectFaultResponse.FromString,
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
            admin_pb2.GetRoutesRequest(),
            admin_pb2.GetRoutesRequest.SerializeToString,
            admin_pb2.GetRoutesResponse.FromString,
            timeout=5,
        )
    assert response.version == 7


async def test_deadline_cancels_an_async_handler(bridge: GrpcBridge, target: str, node: FakeNode):
    with trio.fail_after(TIMEOUT):
        with pytest.raises(RpcError) as caught:
            await bridge.unary(
                target,
                CLEAR_FAULTS,
                admin_pb2.ClearFaultsRequest(),
                admin_pb2.ClearFaultsRequest.SerializeToString,
                admin_pb2.ClearFaultsResponse.FromString,
                timeout=0.2,
            )
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await node.clear_faults_cancelled.wait()


async def test_undecodable_request_is_invalid_argument(bridge: GrpcBridge, target: str):
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError) as caught:
        await bridge.unary(
            target, GET_LINKS, b"\xff\xff", bytes, admin_pb2.GetLinksResponse.FromString, timeout=5
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
        assert await health_status(bridge, target, "overlay.v1.Admin") == serving
        bridge.set_serving("overlay.v1.Admin", False)
        assert (
            await health_status(bridge, target, "overlay.v1.Admin")
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert await health_status(bridge, target, "overlay.v1.LinkState") == serving
        bridge.set_serving("overlay.v1.Admin", True)
        assert await health_status(bridge, target, "overlay.v1.Admin") == serving


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
    assert {"overlay.v1.Admin", "overlay.v1.LinkState", "grpc.health.v1.Health"} <= names


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
