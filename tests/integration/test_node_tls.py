"""A node process with SIP over TLS toward real TLS trunks (Kamailio's TLS module), SIPp on the
UDP side (Debian's SIPp is built without TLS), and RFC 3263 DNS from a test server."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from overlay.lab.node_process import NODE_PORT, node_config, open_node
from overlay.lab.sipp import free_port, open_uas, run_uac
from overlay.shell.transport import SipTransport, bind_listeners
from overlay.tls import TlsContexts
from tests.dnsserver import Zone, serve_zone
from tests.integration.raw_sip import invite, udp_socket
from tests.integration.tls_peers import (
    KAMAILIO,
    KAMAILIO_TLS_MODULE,
    Pki,
    client_context,
    open_kamailio_tls,
    open_tls,
)

pytestmark = [pytest.mark.integration, pytest.mark.trio]
needs_kamailio_tls = pytest.mark.skipif(
    KAMAILIO is None or KAMAILIO_TLS_MODULE is None,
    reason="Kamailio's TLS module is not installed (apt-get install kamailio-tls-modules)",
)

TLS_PORT = 5061
CALLS = 20


def tls_node_config(
    pki: Pki,
    *,
    host: str,
    target: str,
    verify_client: bool = False,
    extra: str = "",
) -> str:
    cert, key = pki.issue("node-" + host.replace(".", "-"), [host])
    metrics_port = free_port(host)
    section = (
        f'[sip.tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki.ca_file}"\n'
        f"verify_client = {'true' if verify_client else 'false'}\n\n"
        f'[metrics]\nlisten = "{host}:{metrics_port}"\n\n{extra}'
    )
    return node_config(
        host=host,
        port=NODE_PORT,
        target=target,
        transports=("udp",),
        extra=section,
    ).replace(
        f'listen = ["udp:{host}:{NODE_PORT}"]',
        f'listen = ["udp:{host}:{NODE_PORT}", "tls:{host}:{TLS_PORT}"]',
    )


async def metrics(config: str) -> str:
    """The node's /metrics page (its [metrics] listen address is in ``config``)."""
    address = config.split("[metrics]\nlisten = ")[1].split("\n")[0].strip('"')
    url = f"http://{address}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    return await trio.to_thread.run_sync(get)


@needs_kamailio_tls
@pytest.mark.sipp
async def test_call_from_tls_trunk_to_udp_callee(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    node_host, trunk_host, uas_host, uac_host = (loopback_host() for _ in range(4))
    pki = Pki.create(tmp_path)
    with trio.fail_after(90):
        async with open_uas(uas_host, scenario="uas_no180") as uas:
            # The node asks the trunk for a certificate its CA signed (verify_client).
            config = tls_node_config(
                pki, host=node_host, target=f"{uas.host}:{uas.port}", verify_client=True
            )
            async with (
                open_node(config, host=node_host, port=NODE_PORT) as node,
                open_kamailio_tls(
                    trunk_host,
                    destination=f"sip:{node_host}:{TLS_PORT};transport=tls",
                    pki=pki,
                    names=[trunk_host],
                ) as trunk,
            ):
                result = await run_uac(
                    (trunk.host, trunk.udp_port),
                    local_host=uac_host,
                    scenario="uac_rr",
                    calls=CALLS,
                    rate=10,
                    max_seconds=60,
                )
                page = await metrics(config)
                assert (result.calls_successful, result.calls_failed) == (CALLS, 0), (
                    f"{result}\n--- node\n{node.log()}\n--- kamailio\n{trunk.log()}"
                )
    assert 'overlay_transport_tls_handshakes_total{direction="in"}' in page
    assert "overlay_transport_tls_handshake_failures_total" not in page
    assert uas.result().calls_failed == 0


def sips_zone(trunk_host: str, tls_port: int, wrong_host: str, wrong_port: int) -> Zone:
    """trunk.test: its SRV lists a server with a certificate for another name first, then
    Kamailio; bad.test lists only the wrong one."""
    return Zone(
        {
            "trunk.test": {"NAPTR": ['10 10 "s" "SIPS+D2T" "" _sips._tcp.trunk.test.']},
            "_sips._tcp.trunk.test": {
                "SRV": [
                    f"10 100 {wrong_port} wrong.trunk.test.",
                    f"20 100 {tls_port} sbc.trunk.test.",
                ]
            },
            "wrong.trunk.test": {"A": [wrong_host]},
            "sbc.trunk.test": {"A": [trunk_host]},
            "_sips._tcp.bad.test": {"SRV": [f"10 100 {wrong_port} wrong.trunk.test."]},
            "bad.test": {"A": [wrong_host]},
        }
    )


@needs_kamailio_tls
@pytest.mark.sipp
async def test_call_to_sips_trunk_checks_the_domain_and_fails_over(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    node_host, trunk_host, uas_host, uac_host, dns_host, wrong_host = (
        loopback_host() for _ in range(6)
    )
    pki = Pki.create(tmp_path)
    # A TLS server whose certificate names another domain: the node must not talk SIP to it.
    cert, key = pki.issue("impostor", ["other.test", wrong_host])
    impostor = SipTransport(
        deliver=lambda data, peer: pytest.fail("the impostor got a SIP message"),
        transport_error=lambda peer: None,
        tls=TlsContexts.create(cert=str(cert), key=str(key)),
    )
    impostor_sockets = bind_listeners([("tls", wrong_host, 0)])
    wrong_port = impostor_sockets[0].listener.port
    with trio.fail_after(120):
        async with (
            trio.open_nursery() as nursery,
            open_uas(uas_host, scenario="uas_no180") as uas,
            open_kamailio_tls(
                trunk_host,
                destination=f"sip:{uas.host}:{uas.port}",
                pki=pki,
                # The SIP domain only (RFC 5922 §7.2): not the SRV target, not the address.
                names=["trunk.test"],
                verify_client=True,  # and the trunk wants the node's certificate
            ) as trunk,
        ):
            await nursery.start(impostor.serve, impostor_sockets)
            zone = sips_zone(trunk.host, trunk.tls_port, wrong_host, wrong_port)
            async with serve_zone(zone, dns_host) as (dns_ip, dns_port):
                extra = f'[dns]\nnameservers = ["{dns_ip}:{dns_port}"]\n'
                config = tls_node_config(pki, host=node_host, target="sips:trunk.test", extra=extra)
                config += '\n[[dialplan]]\nuser_prefix = "bad"\ntarget = "sips:bad.test"\n'
                async with open_node(config, host=node_host, port=NODE_PORT) as node:
                    result = await run_uac(
                        (node_host, NODE_PORT),
                        local_host=uac_host,
                        scenario="uac_rr",
                        calls=CALLS,
                        rate=10,
                        max_seconds=60,
                    )
                    assert (result.calls_successful, result.calls_failed) == (CALLS, 0), (
                        f"{result}\n--- node\n{node.log()}\n--- kamailio\n{trunk.log()}"
                    )
                    # With only the impostor to try, the call fails at once with 503.
                    statuses = await final_statuses(uac_host, node_host, "bad-1")
                    page = await metrics(config)
            nursery.cancel_scope.cancel()
    assert statuses == [100, 503]
    failures = 'overlay_transport_tls_handshake_failures_total{direction="out",'
    assert failures + 'reason="certificate_verify_failed"}' in page
    assert 'overlay_transport_tls_handshakes_total{direction="out"}' in page
    counters = impostor.statistics().counters
    assert not any(name.startswith("tls.handshakes.") for name in counters), counters
    assert uas.result().calls_failed == 0


async def final_statuses(uac_host: str, node_host: str, user: str) -> list[int]:
    """Send one INVITE for ``user`` over UDP; the statuses that come back until a final one."""
    with await udp_socket(uac_host) as sock:
        message = invite(uac_host, sock.getsockname()[1], call_id=f"{user}@{uac_host}")
        await sock.sendto(message.replace(b"service@", f"{user}@".encode()), (node_host, NODE_PORT))
        statuses: list[int] = []
        with trio.fail_after(10):
            while not statuses or statuses[-1] < 200:
                statuses.append(int((await sock.recv(65535)).split(b" ", 2)[1]))
        return statuses


async def test_node_refuses_to_start_with_a_bad_certificate(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    host = loopback_host()
    pki = Pki.create(tmp_path)
    config = tmp_path / "node.toml"
    text = tls_node_config(pki, host=host, target="127.0.0.1:5070")
    config.write_text(text)
    key = tmp_path / f"node-{host.replace('.', '-')}.key"
    key.write_bytes(pki.issue("someone-else", [host])[1].read_bytes())
    result = await trio.run_process(
        [sys.executable, "-m", "overlay", "node", "--config", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"overlay: refusing to start: {config}: [sip.tls] {key}: not the private key of" in (
        result.stderr.decode()
    )


async def test_edge_security_closes_a_denied_source_before_the_handshake(
    loopback_host: Callable[[], str], tmp_path: Path
) -> None:
    host, trunk, stranger = loopback_host(), loopback_host(), loopback_host()
    pki = Pki.create(tmp_path)
    # The node's own address is let in for open_node's readiness probe (OPTIONS from it).
    security = f'[security]\nallow = ["{host}/32"]\n\n[[security.trunks]]\ncidr = "{trunk}/32"\n'
    config = tls_node_config(pki, host=host, target="127.0.0.1:5070", extra=security)
    context = client_context(pki)
    with trio.fail_after(30):
        async with open_node(config, host=host, port=NODE_PORT):
            tcp = await trio.open_tcp_stream(host, TLS_PORT, local_address=stranger)
            refused = trio.SSLStream(tcp, context, server_hostname=host)
            with pytest.raises(trio.BrokenResourceError):
                await refused.do_handshake()  # closed at accept: no handshake spent on it
            await tcp.aclose()
            admitted = await open_tls(host, TLS_PORT, context, local_address=trunk)  # a trunk
            await admitted.aclose()
            page = await metrics(config)
    assert 'overlay_transport_errors_total{reason="tls refused at accept"} 1.0' in page
    assert 'overlay_transport_tls_handshakes_total{direction="in"} 1.0' in page
