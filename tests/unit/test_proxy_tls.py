"""SIP over TLS in the proxy core: sips: and transport=tls pick TLS, Via and Record-Route say
so, responses go back on the connection they came on, and a sips: request is never sent over
anything but TLS (RFC 3261 §26, RFC 5630)."""

from __future__ import annotations

import pytest

from overlay.sip import Listener, OverlayNodes, Peer, Request, Target, overlay_route
from tests.unit.sip_helpers import (
    PROXY,
    UAC,
    UAS,
    ProxyHarness,
    parse,
    request,
    response_to,
    status_of,
)

PROXY_TLS = Listener("tls", "127.0.0.1", 5061)
TRUNK = Peer("tls", "127.0.0.9", 40001)  # a trunk's TLS connection, from its ephemeral port
TLS_UAS = Peer("tls", "127.0.0.3", 5061)
NODE_B = Peer("udp", "127.0.0.50", 5060)


def from_trunk(data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS", 1)


def sent(out: dict[Peer, list[bytes]], peer: Peer) -> Request:
    [data] = out[peer]
    message = parse(data)
    assert isinstance(message, Request)
    return message


def statuses(out: dict[Peer, list[bytes]], peer: Peer) -> list[int]:
    return [status_of(data) for data in out.get(peer, [])]


def test_call_from_tls_trunk_to_udp_callee() -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS))
    out = h.send(TRUNK, from_trunk(request()))
    # Responses go back on the trunk's own connection (RFC 3261 §18.2.2), not to its Via.
    assert statuses(out, TRUNK) == [100]
    invite = sent(out, UAS)
    assert invite.top_via.transport == "UDP"
    # RFC 5658: the trunk's side of the node is TLS, the callee's UDP.
    assert invite.headers.values("Record-Route") == [
        "<sip:127.0.0.1:5060;lr>",
        "<sip:127.0.0.1:5061;transport=tls;lr>",
    ]
    out = h.send(UAS, response_to(out[UAS][0], 200))
    assert statuses(out, TRUNK) == [200]


def test_tls_target_gets_tls_via_and_record_route() -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS), targets={"": Target("127.0.0.3", None, "tls")})
    out = h.send(UAC, request())
    invite = sent(out, TLS_UAS)  # port 5061: TLS's default (RFC 3261 §19.1.2)
    assert str(invite.top_via).startswith("SIP/2.0/TLS 127.0.0.1:5061;")
    assert invite.headers.values("Record-Route") == [
        "<sip:127.0.0.1:5061;transport=tls;lr>",
        "<sip:127.0.0.1:5060;lr>",
    ]


def test_sips_request_records_sips_routes_on_tls() -> None:
    # RFC 3261 §16.6 step 4: a sips: request gets a sips: Record-Route where it is TLS.
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS), targets={"": Target("127.0.0.3", None, "tls")})
    out = h.send(UAC, request(uri="sips:alice@example.com"))
    assert sent(out, TLS_UAS).headers.values("Record-Route") == [
        "<sips:127.0.0.1:5061;lr>",
        "<sip:127.0.0.1:5060;lr>",
    ]


@pytest.mark.parametrize(
    ("uri", "peer"),
    [
        ("sips:alice@127.0.0.3", Peer("tls", "127.0.0.3", 5061)),
        ("sips:alice@127.0.0.3:5071", Peer("tls", "127.0.0.3", 5071)),
        # RFC 3261 §26.2.2: sips: over TCP is TLS over TCP.
        ("sips:alice@127.0.0.3:5071;transport=tcp", Peer("tls", "127.0.0.3", 5071)),
        ("sip:alice@127.0.0.3;transport=TLS", Peer("tls", "127.0.0.3", 5061)),
        ("sip:alice@127.0.0.3;transport=tcp", Peer("tcp", "127.0.0.3", 5060)),
    ],
)
def test_uri_picks_the_transport(uri: str, peer: Peer) -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS))
    out = h.send(UAC, request("BYE", uri=uri, to_tag="callee-tag"))  # in dialog: to the R-URI
    bye = sent(out, peer)
    assert bye.top_via.transport == peer.transport.upper()


def test_dns_target_of_sips_uri_is_resolved_as_sips() -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS))
    h.send(UAC, request("BYE", uri="sips:alice@trunk.example", to_tag="callee-tag"))
    [event] = h.resolve_events()
    assert (event.target.scheme, event.target.host, event.target.transport) == (
        "sips",
        "trunk.example",
        "tls",
    )


@pytest.mark.parametrize(
    "target",
    [Target("127.0.0.3", 5062), Target("127.0.0.3", 5062, "tcp")],
)
def test_sips_request_to_a_non_tls_target_gets_480(target: Target) -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS), targets={"": target})
    out = h.send(UAC, request(uri="sips:alice@example.com"))
    assert statuses(out, UAC) == [100, 480]
    answer = parse(out[UAC][1])
    assert answer.headers.get("Warning") == '380 127.0.0.1:5061 "SIPS Not Allowed"'
    assert list(out) == [UAC]  # nothing left toward the target
    assert h.proxy.statistics().sips_refused == 1


def test_sips_route_needs_tls_too() -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS))
    out = h.send(
        UAC,
        request(
            "BYE",
            uri="sip:alice@127.0.0.3:5062",
            to_tag="callee-tag",
            extra=("Route: <sips:127.0.0.7:5070;transport=udp;lr>",),
        ),
    )
    assert statuses(out, UAC) == [480]


def test_resolved_non_tls_targets_are_skipped_for_sips() -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS))
    h.send(UAC, request("INFO", uri="sips:alice@trunk.example", to_tag="callee-tag"))
    [event] = h.resolve_events()
    out = h.resolved(event.token, [Peer("udp", "127.0.0.3", 5060), TLS_UAS])
    assert sent(out, TLS_UAS).method == "INFO"
    assert Peer("udp", "127.0.0.3", 5060) not in out


def test_sips_request_may_cross_the_overlay_over_udp() -> None:
    # The overlay is one logical hop between its edges; node to node it is UDP
    # (docs/security.md, "SIP over TLS").
    h = ProxyHarness(
        listeners=(PROXY, PROXY_TLS),
        overlay=OverlayNodes("a", {"b": NODE_B}),
        targets={"": Target(NODE_B.host, NODE_B.port, "udp", route=overlay_route("b", NODE_B))},
    )
    out = h.send(TRUNK, from_trunk(request(uri="sips:alice@example.com")))
    assert statuses(out, TRUNK) == [100]
    invite = sent(out, NODE_B)
    assert invite.uri == "sips:alice@example.com"
    assert invite.headers.values("Record-Route") == [
        "<sip:127.0.0.1:5060;lr;ovl=a>",
        "<sips:127.0.0.1:5061;lr;ovl=a>",
    ]


def test_ack_of_a_sips_dialog_is_not_downgraded() -> None:
    h = ProxyHarness(listeners=(PROXY, PROXY_TLS))
    ack = request("ACK", uri="sips:alice@127.0.0.3:5062;transport=udp", to_tag="callee-tag")
    assert h.send(UAC, ack) == {}
    assert h.proxy.statistics().drops == {"sips ACK to a non-TLS next hop": 1}
