"""Link probes on the wire: SIP OPTIONS between overlay nodes, and their answers.

A probe is an ordinary out-of-dialog OPTIONS sent from one node's SIP address to a peer's, so it
measures exactly the path that calls take (socket, impairment layer, the peer's event loop). It
is recognised by its Call-ID, ``ovlprobe.<from-node>.<to-node>``; the probe number is the CSeq.
``Max-Forwards: 0`` makes any SIP proxy that is not an overlay node answer it itself rather than
forward it (RFC 3261 §16.3 step 3), so a misaddressed probe never reaches a customer's SBC.
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.sip import (
    Peer,
    RemoteProtocolError,
    Request,
    Response,
    host_reference,
    make_response,
    parse_message_untrusted,
    serialize,
)

PROBE_MARK = b"ovlprobe."
_PREFIX = "ovlprobe."
_TAG = "ovlprobe"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """A peer's probe to us; answer it with ``answer_probe``."""

    request: Request


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """The answer to one of our probes: ``sender`` probed ``responder`` with number ``seq``."""

    sender: str
    responder: str
    seq: int
    status: int


def probe_request(sender: str, local: Peer, responder: str, remote: Peer, seq: int) -> bytes:
    """The bytes of probe number ``seq`` from node ``sender`` to node ``responder``."""
    transport = local.transport.upper()
    here = _hostport(local)
    there = _hostport(remote)
    return (
        f"OPTIONS sip:{responder}@{there} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {here};branch=z9hG4bK.{_TAG}.{seq};rport\r\n"
        f"Max-Forwards: 0\r\n"
        f"From: <sip:{sender}@{here}>;tag={_TAG}\r\n"
        f"To: <sip:{responder}@{there}>\r\n"
        f"Call-ID: {_PREFIX}{sender}.{responder}\r\n"
        f"CSeq: {seq} OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def _hostport(peer: Peer) -> str:
    return f"{host_reference(peer.host)}:{peer.port}"


def read_probe_untrusted(data: bytes) -> ProbeRequest | ProbeAnswer | None:
    """Classify a datagram that contains ``PROBE_MARK``; ``None`` when it is not a probe.

    Not-a-probe includes anything malformed: the caller hands those to the SIP core, which
    answers or drops them with its usual accounting.
    """
    try:
        message = parse_message_untrusted(data)
        call_id = message.call_id
        if not call_id.startswith(_PREFIX):
            return None
        cseq = message.cseq
    except RemoteProtocolError:
        return None
    if cseq.method != "OPTIONS":
        return None
    if isinstance(message, Request):
        return ProbeRequest(message) if message.method == "OPTIONS" else None
    sender, _, responder = call_id[len(_PREFIX) :].partition(".")
    if not sender or not responder:
        return None
    return ProbeAnswer(sender, responder, cseq.number, message.status)


def answer_probe(probe: ProbeRequest, *, user_agent: str) -> bytes:
    """200 OK to a peer's probe (sent back to the top Via's address by the caller)."""
    response: Response = make_response(probe.request, 200, to_tag=_TAG)
    response.headers.add("Server", user_agent)
    return serialize(response)
