"""Raw-socket SIP helpers for integration tests: a hand-made INVITE, the hostile corpus."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import trio

from overlay.routing import TRUNK_MARK

NODE_PORT = 5060
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def invite(host: str, port: int, *, branch: str = "z9hG4bK-raw-1", call_id: str = "raw-1") -> bytes:
    lines = [
        f"INVITE sip:service@{host}:{NODE_PORT} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:caller@{host}>;tag=raw",
        f"To: <sip:service@{host}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:caller@{host}:{port}>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def udp_socket(host: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def receive_all(sock: trio.socket.SocketType, quiet: float = 0.3) -> list[bytes]:
    """Every datagram until ``quiet`` seconds pass without one.

    A node's trunk probes (``[trunks]``: an OPTIONS every 0.25 s to a socket the dialplan sends
    calls to) are left out, and do not count as traffic: this socket never answers them.
    """
    received = []
    while True:
        with trio.move_on_after(quiet) as scope:
            while is_trunk_probe(data := await sock.recv(65535)):
                pass
            received.append(data)
        if scope.cancelled_caught:
            return received


def is_trunk_probe(data: bytes) -> bool:
    """Whether ``data`` is a node's OPTIONS to a trunk (``overlay.routing.TrunkHealth``)."""
    return data.startswith(b"OPTIONS ") and TRUNK_MARK in data


def hostile_messages(uac_host: str) -> list[bytes]:
    """At least 500 malformed or mutated messages: the corpora plus seeded mutations."""
    messages: list[bytes] = []
    if CORPUS.exists():
        messages += [p.read_bytes() for p in sorted((CORPUS / "rfc4475").glob("*.dat"))]
        messages += [
            p.read_bytes()
            for p in sorted((CORPUS / "rfc5118").iterdir())
            if p.is_file() and p.suffix not in (".md",) and p.name != "SHA256SUMS"
        ]
        protos = sorted((CORPUS / "protos-c07-sip" / "rendered").glob("*[0-9]-*.sip"))
        messages += [p.read_bytes() for p in protos if ".teardown" not in p.name]
    rng = random.Random(0)
    base = invite(uac_host, 5999, branch="z9hG4bK-mut", call_id="mut")
    while len(messages) < 900:
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            if not data:
                break
            op = rng.randrange(4)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 20)]
            elif op == 2:
                data[pos:pos] = rng.choice([b"\r\n", b":", b";", b",", b"<", b'"', b"\x00", b" "])
            else:
                data = data[:pos]
        messages.append(bytes(data) or b"x")
    return messages
