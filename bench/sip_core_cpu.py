"""CPU time per call through one node's signalling path, without SIPp and without the clock's
noise: what bench/sip_cps's calls cost the node, measured in process time.

Run: ``python bench/sip_core_cpu.py [--calls N] [--runs R] [--mode pump|core]``.

Each call is bench/sip_cps's flow with SIPp's uac_rr and uas_no180 messages, byte for byte in
shape: INVITE → 100 + INVITE, 200 → 200, ACK → ACK, BYE → BYE, 200 → 200 (5 messages in, 6
out). The node is built as ``overlay node`` builds it for bench/sip_cps's configuration (one
catch-all dialplan rule, no overlay, no ``[security]``).

``--mode pump`` (the default) hands each datagram to the ``SignallingPump`` as the UDP loop
does, so it includes the pump's flush and the transport's send: real ``sendto`` calls on
127.0.0.1 toward two sink sockets that stand for the caller and the callee. The sinks are read
between the timed steps, and the callee's and caller's messages are built from what they
received. ``--mode core`` feeds the ``ProxyCore`` alone and takes its ``datagrams_to_send``
(parse, transactions, proxy and serialisation; no system calls).

Only the node's work is timed (``time.process_time`` around each delivery, so kernel time in
``sendto`` counts): the harness's own parsing and building of the peers' messages is not. The
cyclic collector runs as in a node (``overlay.shell.workers``: off the allocation counter, a
young pass every ``YOUNG_COLLECTION_INTERVAL``, here every ``CALLS_PER_YOUNG_PASS`` calls,
timed too); left on its allocation counter it would walk the calls' live state at random
moments and charge them to whatever allocated. The figure is the median over ``--runs`` runs
of µs of CPU per call; the spread is printed too.
"""

from __future__ import annotations

import argparse
import gc
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from overlay.config import NodeConfig, load_config  # noqa: E402
from overlay.routing import CallRouter, Dialplan, DrainState  # noqa: E402
from overlay.shell.node import proxy_config  # noqa: E402
from overlay.shell.signalling import SignallingPump  # noqa: E402
from overlay.shell.workers import tune_garbage_collector  # noqa: E402
from overlay.sip import Listener, Peer, ProxyCore  # noqa: E402

#: A node makes a young pass every 0.1 s (``YOUNG_COLLECTION_INTERVAL``): about this many
#: calls at the rates bench/sip_cps offers one worker.
CALLS_PER_YOUNG_PASS = 100
PROXY_HOST = "127.0.0.1"
PROXY_PORT = 5060
SDP = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


def config_text(uas: tuple[str, int]) -> str:
    """bench/sip_cps's overlay configuration (one worker: a worker's share of the load)."""
    return (
        '[node]\nnode_id = "bench-corecpu"\nregion = "bench"\n\n'
        f'[sip]\nlisten = ["udp:{PROXY_HOST}:{PROXY_PORT}"]\nworkers = 1\n\n'
        f'[[dialplan]]\ntarget = "{uas[0]}:{uas[1]}"\ntransport = "udp"\n'
    )


def make_core(config: NodeConfig) -> ProxyCore:
    """The proxy core as ``overlay.shell.node.open_node`` makes it without peers or trunks."""
    router = CallRouter(
        config.node.node_id,
        Dialplan(config.dialplan),
        None,
        DrainState(),
        route_wait=bool(config.linkstate.route_wait),
    )
    listeners = tuple(Listener(a.transport, a.host, a.port) for a in config.sip.listen)
    return ProxyCore(proxy_config(config, listeners), router.locate)


# -- the peers' messages, shaped as SIPp's uac_rr and uas_no180 send them ----------------------


def _crlf(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def invite(uac: tuple[str, int], n: int) -> bytes:
    host, port = uac
    head = (
        f"INVITE sip:service@{PROXY_HOST}:{PROXY_PORT} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-4242-{n}-0",
        f"From: sipp <sip:sipp@{host}:{port}>;tag=4242SIPpTag00{n}",
        f"To: service <sip:service@{PROXY_HOST}:{PROXY_PORT}>",
        f"Call-ID: {n}-4242@{host}",
        "CSeq: 1 INVITE",
        f"Contact: sip:sipp@{host}:{port}",
        "Max-Forwards: 70",
        "Subject: Performance Test",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
    )
    return _crlf(*head) + SDP


def _fields(data: bytes) -> list[tuple[str, str]]:
    head = data.partition(b"\r\n\r\n")[0].decode()
    return [
        (name, value.strip())
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    ]


def _all(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in fields if key == name]


def uas_answer(request: bytes, uas: tuple[str, int], n: int, *, invite: bool) -> bytes:
    """uas_no180's 200: [last_Via:] [last_Record-Route:] [last_From:] [last_To:] ..."""
    fields = _fields(request)
    lines = ["SIP/2.0 200 OK"]
    lines += [f"Via: {value}" for value in _all(fields, "Via")]
    if invite:
        lines += [f"Record-Route: {value}" for value in _all(fields, "Record-Route")]
    lines.append(f"From: {_all(fields, 'From')[0]}")
    to = _all(fields, "To")[0]
    lines.append(f"To: {to};tag=4343SIPpTag01{n}" if invite else f"To: {to}")
    lines += [f"Call-ID: {_all(fields, 'Call-ID')[0]}", f"CSeq: {_all(fields, 'CSeq')[0]}"]
    lines.append(f"Contact: <sip:{uas[0]}:{uas[1]};transport=UDP>")
    if not invite:
        return _crlf(*lines, "Content-Length: 0")
    return _crlf(*lines, "Content-Type: application/sdp", f"Content-Length: {len(SDP)}") + SDP


def in_dialog(method: str, ok: bytes, uac: tuple[str, int], n: int) -> bytes:
    """uac_rr's ACK or BYE: to the 200's Contact, Route from its reversed Record-Route."""
    fields = _fields(ok)
    contact = _all(fields, "Contact")[0].strip("<>")
    routes = list(reversed(_all(fields, "Record-Route")))
    host, port = uac
    to = _all(fields, "To")[0]
    lines = [
        f"{method} {contact} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-4242-{n}-{method}",
    ]
    if routes:
        lines.append("Route: " + ", ".join(routes))
    lines += [
        f"From: sipp <sip:sipp@{host}:{port}>;tag=4242SIPpTag00{n}",
        f"To: {to}",
        f"Call-ID: {n}-4242@{host}",
        f"CSeq: {1 if method == 'ACK' else 2} {method}",
        f"Contact: sip:sipp@{host}:{port}",
        "Max-Forwards: 70",
        "Subject: Performance Test",
        "Content-Length: 0",
    ]
    return _crlf(*lines)


# -- the two ways in ------------------------------------------------------------------------


class _Sinks:
    """The caller's and the callee's sockets on 127.0.0.1: what the node sends lands here."""

    def __init__(self) -> None:
        self.uac = self._bound()
        self.uas = self._bound()

    @staticmethod
    def _bound() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    @staticmethod
    def take(sock: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(65535))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.uac.close()
        self.uas.close()


def _expect(received: list[bytes], start: bytes) -> bytes:
    """The one message a peer should have received, starting with ``start``."""
    if len(received) != 1 or not received[0].startswith(start):
        raise RuntimeError(f"expected one {start!r}..., got {received!r}")
    return received[0]


def _run_calls(
    deliver: Callable[[bytes, Peer], None],
    collect: Callable[[], tuple[list[bytes], list[bytes]]],
    uac: tuple[str, int],
    uas: tuple[str, int],
    calls: int,
    first: int,
) -> float:
    """``calls`` calls; returns the CPU seconds spent in ``deliver``."""
    uac_peer = Peer("udp", *uac)
    uas_peer = Peer("udp", *uas)
    clock = time.process_time
    spent = 0.0

    def timed(data: bytes, peer: Peer) -> tuple[list[bytes], list[bytes]]:
        nonlocal spent
        start = clock()
        deliver(data, peer)
        spent += clock() - start
        return collect()

    for n in range(first, first + calls):
        to_uac, to_uas = timed(invite(uac, n), uac_peer)
        _expect(to_uac, b"SIP/2.0 100")
        ok = uas_answer(_expect(to_uas, b"INVITE "), uas, n, invite=True)
        to_uac, _ = timed(ok, uas_peer)
        ok = _expect(to_uac, b"SIP/2.0 200")
        _, to_uas = timed(in_dialog("ACK", ok, uac, n), uac_peer)
        _expect(to_uas, b"ACK ")
        _, to_uas = timed(in_dialog("BYE", ok, uac, n), uac_peer)
        bye = _expect(to_uas, b"BYE ")
        to_uac, _ = timed(uas_answer(bye, uas, n, invite=False), uas_peer)
        _expect(to_uac, b"SIP/2.0 200")
        if n % CALLS_PER_YOUNG_PASS == 0:
            start = clock()
            gc.collect(1)
            spent += clock() - start
    return spent


async def one_run(mode: str, calls: int) -> float:
    """µs of CPU per call for ``calls`` calls through a fresh node."""
    sinks = _Sinks()
    uac, uas = sinks.uac.getsockname(), sinks.uas.getsockname()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((PROXY_HOST, 0))
    sender.setblocking(False)
    try:
        with tempfile.TemporaryDirectory(prefix="sip-core-cpu-") as tmp:
            path = Path(tmp) / "node.toml"
            path.write_text(config_text(uas))
            config = load_config(path)
        core = make_core(config)
        by_port = {uac[1]: 0, uas[1]: 1}
        if mode == "core":
            outbox: tuple[list[bytes], list[bytes]] = ([], [])

            def deliver(data: bytes, peer: Peer) -> None:
                core.receive_data(data, peer, trio.current_time())
                for out, to in core.datagrams_to_send():
                    outbox[by_port[to.port]].append(out)

            def collect() -> tuple[list[bytes], list[bytes]]:
                taken = (outbox[0][:], outbox[1][:])
                outbox[0].clear()
                outbox[1].clear()
                return taken

        else:
            pump = SignallingPump(
                config,
                core,
                tls=None,  # type: ignore[arg-type]  # UDP only
                steering=None,
                impairments=None,
                security=None,
                media=None,
                mesh=None,
                view=None,
                events=lambda event: None,
            )
            pump.transport._udp[socket.AF_INET] = sender  # what serve() would have set
            deliver = pump._deliver

            def collect() -> tuple[list[bytes], list[bytes]]:
                return sinks.take(sinks.uac), sinks.take(sinks.uas)

        _run_calls(deliver, collect, uac, uas, min(200, calls), 0)  # warm the caches up
        gc.collect()
        tune_garbage_collector()
        spent = _run_calls(deliver, collect, uac, uas, calls, 1_000_000)
        return spent / calls * 1e6
    finally:
        gc.unfreeze()
        gc.enable()
        sender.close()
        sinks.close()


async def main(args: argparse.Namespace) -> None:
    results = []
    for run in range(args.runs):
        us = await one_run(args.mode, args.calls)
        results.append(us)
        print(f"run {run + 1}: {us:7.1f} µs/call", flush=True)
    print(
        f"{args.mode}: median {statistics.median(results):.1f} µs of CPU per call "
        f"(min {min(results):.1f}, max {max(results):.1f}; {args.runs} runs of {args.calls} calls)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per run (default 5000)")
    parser.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    parser.add_argument("--mode", choices=["pump", "core"], default="pump")
    args = parser.parse_args()
    if not 1 <= args.calls <= 200_000 or not 1 <= args.runs <= 50:
        parser.error("calls must be 1..200000 and runs 1..50")
    return args


if __name__ == "__main__":
    trio.run(main, parse_args())
