"""SIP over TLS configuration: ``tls:`` listeners, ``[sip.tls]``, TLS dialplan targets, and the
start-up checks of the certificate files (``overlay.tls._sip``)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from overlay.config import (
    ConfigError,
    DnsTarget,
    ListenAddress,
    SipTlsSection,
    StaticTarget,
    parse_config,
)
from overlay.tls import TlsError, create_ca, issue_node, load_sip_tls

NOW = datetime.datetime.now(datetime.UTC)
SIPS_RULE = '[[dialplan]]\ntarget = "sips:trunk.example"\n'


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A CA, and a node certificate and key it signed, as files."""
    ca = create_ca("ca", now=NOW)
    node = issue_node(ca, "node", ["127.0.0.1", "node.example"], now=NOW)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "node.pem", "key": tmp_path / "node.key"}
    files["ca"].write_bytes(ca.cert)
    node.write(files["cert"], files["key"])
    return files


def config(pem: dict[str, Path], *, listen: str = '"udp:127.0.0.1:5060", "tls:127.0.0.1:5061"',
           tls: str | None = None, dialplan: str = "") -> str:  # fmt: skip
    if tls is None:
        tls = f'cert = "{pem["cert"]}"\nkey = "{pem["key"]}"\n'
    section = f"\n[sip.tls]\n{tls}" if tls else ""
    return (
        f'[node]\nnode_id = "a"\nregion = "r"\n\n[sip]\nlisten = [{listen}]\n{section}\n{dialplan}'
    )


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="node.toml")
    return caught.value


def test_tls_listener_and_section(pem: dict[str, Path]) -> None:
    tls = (
        f'cert = "{pem["cert"]}"\nkey = "{pem["key"]}"\nca = "{pem["ca"]}"\nverify_client = true\n'
    )
    parsed = parse_config(config(pem, tls=tls + "handshake_timeout = 2\n"), source="n.toml")
    assert parsed.sip.listen[1] == ListenAddress("tls", "127.0.0.1", 5061)
    assert parsed.sip.tls == SipTlsSection(
        str(pem["cert"]), str(pem["key"]), str(pem["ca"]), True, 2.0
    )
    defaults = parse_config(config(pem), source="n.toml").sip.tls
    assert defaults == SipTlsSection(str(pem["cert"]), str(pem["key"]))
    assert (defaults.ca, defaults.verify_client, defaults.handshake_timeout) == (None, False, 5.0)


def test_dialplan_tls_targets(pem: dict[str, Path]) -> None:
    dialplan = (
        '[[dialplan]]\nuser_prefix = "1"\ntarget = "127.0.0.9:5061"\ntransport = "tls"\n'
        '[[dialplan]]\nuser_prefix = "2"\ntarget = "sips:trunk.example"\ntransport = "tcp"\n'
        '[[dialplan]]\nuser_prefix = "3"\ntarget = "sip:trunk.example"\ntransport = "tls"\n'
    )
    rules = parse_config(config(pem, dialplan=dialplan), source="n.toml").dialplan
    assert [rule.target for rule in rules] == [
        StaticTarget("127.0.0.9", 5061, "tls"),
        DnsTarget("sips", "trunk.example", "tls"),  # sips: over TCP is TLS (RFC 3261 §26.2.2)
        DnsTarget("sip", "trunk.example", "tls"),
    ]


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ({"tls": ""}, "sip.listen[1]", "needs [sip.tls] with the node's cert and key"),
        ({"tls": 'cert = "/nonexistent/node.pem"\nkey = "x"\n'}, "sip.tls.cert", "cannot read"),
        ({"tls": 'key = "x"\n'}, "sip.tls.cert", "required"),
        ({"tls": "CERT\nverify_client = true\n"}, "sip.tls.verify_client", "needs ca"),
        ({"tls": "CERT\nhandshake_timeout = 0\n"}, "sip.tls.handshake_timeout", "> 0"),
        ({"tls": "CERT\nciphers = 'ALL'\n"}, "sip.tls.ciphers", "unknown key"),
        (
            {"listen": '"udp:127.0.0.1:5060"', "tls": "", "dialplan": SIPS_RULE},
            "dialplan[0].target",
            "sip.listen needs a tls: address",
        ),
    ],
)
def test_bad_tls_config(
    pem: dict[str, Path], change: dict[str, str], key: str, reason: str
) -> None:
    cert = f'cert = "{pem["cert"]}"\nkey = "{pem["key"]}"'
    change = {name: value.replace("CERT", cert) for name, value in change.items()}
    problem = error(config(pem, **change))
    assert problem.key == key
    assert reason in problem.reason


def test_tls_egress_on_another_node_needs_no_tls_listener(pem: dict[str, Path]) -> None:
    text = config(
        pem,
        listen='"udp:127.0.0.1:5060"',
        tls="",
        dialplan='[[dialplan]]\ntarget = "sips:trunk.example"\negress = "b"\n',
    )
    text = text.replace("[sip]", '[grpc]\nlisten = "127.0.0.1:7000"\ninsecure = true\n\n[sip]')
    text += '\n[[peers]]\nnode_id = "b"\nregion = "r"\nsip = "127.0.0.2:5060"\n'
    text += 'grpc = "127.0.0.2:7000"\n'
    assert parse_config(text, source="n.toml").dialplan[0].egress == ("b",)


# -- the files, checked at start (overlay.tls._sip) --------------------------------------------


def test_contexts_from_good_files(pem: dict[str, Path]) -> None:
    section = SipTlsSection(str(pem["cert"]), str(pem["key"]), str(pem["ca"]), True, 3.0)
    contexts = load_sip_tls(section, now=NOW)
    assert contexts.server is not None
    assert contexts.handshake_timeout == 3.0
    for context in (contexts.client, contexts.server):
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert contexts.client.check_hostname
    assert contexts.client.verify_mode == ssl.CERT_REQUIRED
    assert contexts.server.verify_mode == ssl.CERT_REQUIRED  # verify_client


def test_without_section_only_the_client_side() -> None:
    contexts = load_sip_tls(None, now=NOW)
    assert contexts.server is None
    assert contexts.client.verify_mode == ssl.CERT_REQUIRED  # against the system's store


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("cert not PEM", "node.pem: not a PEM certificate"),
        ("key not PEM", "node.key: not an unencrypted PEM private key"),
        ("another key", "node.key: not the private key of"),
        ("ca not PEM", "ca.pem: not a PEM certificate"),
        ("expired", "node.pem: expired on"),
    ],
)
def test_files_that_cannot_work_are_refused(
    pem: dict[str, Path], breakage: str, message: str
) -> None:
    now = NOW
    if breakage == "cert not PEM":
        pem["cert"].write_text("hello")
    elif breakage == "key not PEM":
        pem["key"].write_text("hello")
    elif breakage == "another key":
        other = issue_node(create_ca("x", now=NOW), "other", ["127.0.0.1"], now=NOW)
        pem["key"].write_bytes(other.key)
    elif breakage == "ca not PEM":
        pem["ca"].write_text("hello")
    else:
        now = NOW + datetime.timedelta(days=3650)
    section = SipTlsSection(str(pem["cert"]), str(pem["key"]), str(pem["ca"]))
    with pytest.raises(TlsError, match=message):
        load_sip_tls(section, now=now)
