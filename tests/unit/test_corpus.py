"""The torture-test corpora: RFC 4475, RFC 5118 and the PROTOS c07-sip rendered cases.

The corpora live beside the repository (``../shared/corpus``) and are read by path; see each
corpus's INDEX.md for where the files come from and what each one expects.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from overlay.sip import (
    AbsoluteUri,
    NameAddr,
    RemoteProtocolError,
    Request,
    Response,
    SipUri,
    StreamFramer,
    make_error_response,
    parse_message_untrusted,
    parse_uri_untrusted,
    serialize,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
RFC4475 = CORPUS / "rfc4475"
RFC5118 = CORPUS / "rfc5118"
PROTOS = CORPUS / "protos-c07-sip" / "rendered"

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"torture-test corpus not found at {CORPUS}"
)


def _parse(path: Path) -> Request | Response:
    return parse_message_untrusted(path.read_bytes())


def _reject(path: Path) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        _parse(path)
    return info.value


# --- RFC 4475 §3.1.1: valid messages --------------------------------------------------------

VALID_4475 = [
    "wsinv.dat",
    "intmeth.dat",
    "esc01.dat",
    "escnull.dat",
    "esc02.dat",
    "lwsdisp.dat",
    "longreq.dat",
    "dblreq.dat",
    "semiuri.dat",
    "transports.dat",
    "mpart01.dat",
    "unreason.dat",
    "noreason.dat",
]


@pytest.mark.parametrize("name", VALID_4475)
def test_rfc4475_valid(name: str) -> None:
    message = _parse(RFC4475 / name)
    # Every accessor works on a valid message.
    assert message.call_id
    assert message.cseq.number >= 0
    assert message.top_via.host
    assert message.vias
    message.from_tag  # noqa: B018 (must not raise)
    message.to_tag  # noqa: B018
    data = serialize(message)
    assert serialize(parse_message_untrusted(data)) == data
    assert parse_message_untrusted(data, stream=True).body == message.body


def test_rfc4475_wsinv_details() -> None:
    message = _parse(RFC4475 / "wsinv.dat")
    assert isinstance(message, Request)
    assert message.max_forwards == 68
    assert message.cseq.number == 9
    assert message.to_tag == "1918181833n"
    assert message.from_tag == "98asjd8"
    assert [(via.transport, via.host, via.branch) for via in message.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert message.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert message.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert message.headers.get("Subject") == ""
    contact = NameAddr.parse_untrusted(message.headers.get("Contact") or "")
    assert contact.param("q") == "0.33"
    assert len(message.body) == 150


def test_rfc4475_unusual_values_are_kept() -> None:
    intmeth = _parse(RFC4475 / "intmeth.dat")
    assert isinstance(intmeth, Request)
    assert intmeth.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert intmeth.from_tag == "_token~1'+`*%!-."
    assert intmeth.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert "\x00" in (intmeth.headers.get("To") or "")
    esc02 = _parse(RFC4475 / "esc02.dat")
    assert isinstance(esc02, Request)
    assert esc02.method == "RE%47IST%45R"
    assert len(esc02.headers.values("Contact")) == 2
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    escnull = _parse(RFC4475 / "escnull.dat")
    assert escnull.headers.values("Contact") == [
        "<sip:%00@host5.example.com>",
        "<sip:%00%00@host5.example.com>",
    ]
    longreq = _parse(RFC4475 / "longreq.dat")
    assert len(longreq.vias) == 34
    assert len(longreq.from_tag or "") > 100


def test_rfc4475_dblreq_ignores_trailing_octets() -> None:
    message = _parse(RFC4475 / "dblreq.dat")
    assert isinstance(message, Request)
    assert message.method == "REGISTER"
    assert message.body == b""


def test_rfc4475_mpart01_binary_body() -> None:
    message = _parse(RFC4475 / "mpart01.dat")
    assert len(message.body) == 553
    assert b"\x00" in message.body


def test_rfc4475_reason_phrases() -> None:
    unreason = _parse(RFC4475 / "unreason.dat")
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert "2**3 * 5**2" in unreason.reason
    noreason = _parse(RFC4475 / "noreason.dat")
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")
    assert serialize(noreason).startswith(b"SIP/2.0 100 \r\n")


def test_rfc4475_semiuri_and_transports() -> None:
    semiuri = _parse(RFC4475 / "semiuri.dat")
    assert isinstance(semiuri, Request)
    uri = parse_uri_untrusted(semiuri.uri)
    assert isinstance(uri, SipUri)
    assert uri.user == "user;par=u%40example.net"
    assert uri.params == ()
    transports = _parse(RFC4475 / "transports.dat")
    assert [via.transport for via in transports.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


# --- RFC 4475 §3.1.2: invalid messages -------------------------------------------------------

# (file, status hint, reason). Requests get 400 (505 for the version); responses get None.
INVALID_4475: list[tuple[str, int | None, str]] = [
    ("badinv01.dat", 400, "Bad parameter in Via"),
    ("clerr.dat", 400, "Content-Length larger than message"),
    ("ncl.dat", 400, "Bad Content-Length"),
    ("scalar02.dat", 400, "CSeq number too large"),
    ("scalarlg.dat", None, "CSeq number too large"),
    ("quotbal.dat", 400, "Unterminated quoted string in To"),
    ("ltgtruri.dat", 400, "Request-URI enclosed in <>"),
    ("lwsruri.dat", 400, "Request-URI contains whitespace"),
    ("lwsstart.dat", 400, "Extra SP in Request-Line"),
    ("trws.dat", 400, "Extra SP in Request-Line"),
    ("escruri.dat", 400, "Request-URI contains headers"),
    ("badaspec.dat", 400, "Malformed URI in To"),
    # The archive copy has no empty line after the headers (INDEX.md); the variant does.
    ("baddn.dat", 400, "Header section not terminated by an empty line"),
    ("variants/baddn.dat", 400, "Bad display name in From"),
    ("badvers.dat", 505, "Version Not Supported"),
    ("mismatch01.dat", 400, "CSeq method does not match request method"),
    # 501 is preferred at a proxy, 400 acceptable (RFC 4475 §3.1.2.18): the parser cannot know
    # which methods the element supports, so it answers 400.
    ("mismatch02.dat", 400, "CSeq method does not match request method"),
    ("bigcode.dat", None, "Bad status code"),
]


@pytest.mark.parametrize(("name", "hint", "reason"), INVALID_4475)
def test_rfc4475_invalid(name: str, hint: int | None, reason: str) -> None:
    error = _reject(RFC4475 / name)
    assert error.status_hint == hint
    assert error.reason == reason
    response = make_error_response(error)
    if hint is None:
        assert response is None
    else:
        assert response is not None
        assert response.status == hint
        assert response.reason == reason
        assert error.headers is not None
        assert response.headers.get_all("Via") == error.headers.get_all("Via")
        assert response.headers.get("Call-ID") == error.headers.get("Call-ID")
        serialize(response)


# --- RFC 4475 §3.1.2 cases that are accepted here, the decision being a higher layer's -------

HIGHER_LAYER_4475 = [
    # §3.1.2.12: only the Date is wrong; a proxy should ignore it and forward.
    "baddate.dat",
    # §3.1.2.13: the Contact is not in <>; Contact matters to a registrar, not to the parser's
    # mandatory headers (NameAddr.parse_untrusted refuses it, see below).
    "regbadct.dat",
]


@pytest.mark.parametrize("name", HIGHER_LAYER_4475)
def test_rfc4475_invalid_but_for_a_higher_layer(name: str) -> None:
    _parse(RFC4475 / name)


def test_rfc4475_regbadct_contact_refused_by_name_addr() -> None:
    message = _parse(RFC4475 / "regbadct.dat")
    with pytest.raises(RemoteProtocolError, match="enclosed in <>"):
        NameAddr.parse_untrusted(message.headers.get("Contact") or "", field="Contact")


# --- RFC 4475 §3.2 - §3.4 and test.dat --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        # §3.2.1: branch is just the magic cookie; the transaction layer decides what to do.
        "badbranch.dat",
        # §3.3.2 / §3.3.3: unknown or atypical scheme; the proxy answers 416 (or 404).
        "unkscm.dat",
        "novelsc.dat",
        # §3.3.4: other schemes in To/From/Contact; only a registrar answers 400.
        "unksm2.dat",
        # §3.3.5: a proxy answers 420 for Proxy-Require; the parser leaves it alone.
        "bext01.dat",
        # §3.3.6, §3.3.7, §3.3.15: body type, Authorization scheme and Accept are for the UAS.
        "invut.dat",
        "regaut01.dat",
        "sdp01.dat",
        # §3.3.10: must parse; not sending to the broadcast address is the transport's job.
        "bcast.dat",
        # §3.3.11: Max-Forwards 0 is valid syntax; the proxy answers 483 (or OPTIONS itself).
        "zeromf.dat",
        # §3.3.12 - §3.3.14: REGISTER parameter and escaped-header handling is the registrar's.
        "cparam01.dat",
        "cparam02.dat",
        "regescrt.dat",
        # §3.4.1: RFC 2543 syntax (no branch, no tags, no Content-Length, no Max-Forwards).
        "inv2543.dat",
    ],
)
def test_rfc4475_semantic_cases_parse(name: str) -> None:
    message = _parse(RFC4475 / name)
    serialize(message)


def test_rfc4475_semantic_details() -> None:
    unkscm = _parse(RFC4475 / "unkscm.dat")
    assert isinstance(unkscm, Request)
    assert isinstance(parse_uri_untrusted(unkscm.uri), AbsoluteUri)
    novelsc = _parse(RFC4475 / "novelsc.dat")
    assert isinstance(novelsc, Request)
    assert parse_uri_untrusted(novelsc.uri) == AbsoluteUri("soap.beep", "//192.0.2.103:3002")
    zeromf = _parse(RFC4475 / "zeromf.dat")
    assert isinstance(zeromf, Request)
    assert zeromf.max_forwards == 0
    badbranch = _parse(RFC4475 / "badbranch.dat")
    assert badbranch.top_via.branch == "z9hG4bK"
    inv2543 = _parse(RFC4475 / "inv2543.dat")
    assert isinstance(inv2543, Request)
    assert inv2543.max_forwards is None
    assert inv2543.from_tag is None
    assert inv2543.top_via.branch is None
    assert inv2543.body.startswith(b"v=0")
    cparam01 = _parse(RFC4475 / "cparam01.dat")
    contact = NameAddr.parse_untrusted(cparam01.headers.get("Contact") or "")
    assert contact.param("unknownparam") == ""
    assert contact.uri == "sip:+19725552222@gw1.example.net"
    cparam02 = _parse(RFC4475 / "cparam02.dat")
    contact = NameAddr.parse_untrusted(cparam02.headers.get("Contact") or "")
    assert contact.params == ()
    assert contact.uri == "sip:+19725552222@gw1.example.net;unknownparam"
    regescrt = _parse(RFC4475 / "regescrt.dat")
    contact = NameAddr.parse_untrusted(regescrt.headers.get("Contact") or "")
    uri = parse_uri_untrusted(contact.uri)
    assert isinstance(uri, SipUri)
    assert uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert regescrt.headers.get("Route") is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # §3.3.1: no To, From, Call-ID; ideally 400.
        ("insuf.dat", "Missing From header"),
        # §3.3.8: two of each single-valued header: 400.
        ("multi01.dat", "Multiple CSeq headers"),
        # §3.3.9: two Content-Lengths: a framing error, answered with 400.
        ("mcl01.dat", "Multiple Content-Length headers"),
    ],
)
def test_rfc4475_semantic_cases_rejected(name: str, reason: str) -> None:
    error = _reject(RFC4475 / name)
    assert (error.status_hint, error.reason) == (400, reason)
    assert make_error_response(error) is not None


def test_rfc4475_test_dat() -> None:
    """Not referenced by the RFC: no SIP-Version and a line without a colon. It has no Via, so
    there is nowhere to send a 400: it is dropped."""
    error = _reject(RFC4475 / "test.dat")
    assert error.status_hint is None
    assert make_error_response(error) is None


def test_rfc4475_every_file_is_covered() -> None:
    covered = {
        *VALID_4475,
        *(name for name, _, _ in INVALID_4475 if "/" not in name),
        *HIGHER_LAYER_4475,
    }
    names = {path.name for path in RFC4475.glob("*.dat")}
    assert len(names) == 50
    rest = names - covered
    assert rest == {
        "badbranch.dat", "unkscm.dat", "novelsc.dat", "unksm2.dat", "bext01.dat", "invut.dat",
        "regaut01.dat", "sdp01.dat", "bcast.dat", "zeromf.dat", "cparam01.dat", "cparam02.dat",
        "regescrt.dat", "inv2543.dat", "insuf.dat", "multi01.dat", "mcl01.dat", "test.dat",
    }  # fmt: skip


# --- RFC 5118 -----------------------------------------------------------------------------------

VALID_5118 = [
    "ipv6-good",
    "port-ambiguous",
    "port-unambiguous",
    "via-received-param-with-delim",
    "via-received-param-no-delim",
    "ipv6-in-sdp",
    "mult-ip-in-header",
    "mult-ip-in-sdp",
    "ipv4-mapped-ipv6",
    # §4.10: the three-colon form must be tolerated (robustness principle).
    "ipv6-bug-abnf-3-colons",
    "ipv6-correct-abnf-2-colons",
]


@pytest.mark.parametrize("name", VALID_5118)
def test_rfc5118_valid(name: str) -> None:
    message = _parse(RFC5118 / "wire" / f"{name}.sip")
    if isinstance(message, Request):
        assert isinstance(parse_uri_untrusted(message.uri), SipUri)
    assert message.vias
    serialize(message)


def test_rfc5118_ipv6_bad() -> None:
    error = _reject(RFC5118 / "wire" / "ipv6-bad.sip")
    assert error.status_hint == 400
    assert "IPv6" in error.reason


def test_rfc5118_details() -> None:
    def ruri(name: str) -> SipUri:
        message = _parse(RFC5118 / "wire" / f"{name}.sip")
        assert isinstance(message, Request)
        uri = parse_uri_untrusted(message.uri)
        assert isinstance(uri, SipUri)
        return uri

    # §4.3: the 5070 is part of the address, not a port.
    assert (ruri("port-ambiguous").host, ruri("port-ambiguous").port) == (
        "[2001:db8::10:5070]",
        None,
    )
    assert (ruri("port-unambiguous").host, ruri("port-unambiguous").port) == (
        "[2001:db8::10]",
        5070,
    )
    with_delim = _parse(RFC5118 / "wire" / "via-received-param-with-delim.sip")
    assert with_delim.top_via.param("received") == "[2001:db8::9:255]"
    no_delim = _parse(RFC5118 / "wire" / "via-received-param-no-delim.sip")
    assert no_delim.top_via.param("received") == "2001:db8::9:255"
    mapped = _parse(RFC5118 / "wire" / "ipv4-mapped-ipv6.sip")
    assert [(via.host, via.port) for via in mapped.vias] == [
        ("[::ffff:192.0.2.10]", 19823),
        ("[::ffff:192.0.2.2]", None),
    ]
    mult = _parse(RFC5118 / "wire" / "mult-ip-in-header.sip")
    assert [via.host for via in mult.vias] == ["[2001:db8::9:1]", "192.0.2.1", "[2001:db8::9:255]"]


@pytest.mark.parametrize("name", [*VALID_5118, "ipv6-bad"])
def test_rfc5118_raw_archive_members_never_crash(name: str) -> None:
    """The archive members have bare-LF line ends (INDEX.md): not SIP on the wire, refused."""
    with pytest.raises(RemoteProtocolError):
        _parse(RFC5118 / name)


# --- PROTOS c07-sip ---------------------------------------------------------------------------


def _protos_files() -> list[Path]:
    return sorted(PROTOS.glob("*.sip")) if PROTOS.is_dir() else []


def test_protos_corpus_present() -> None:
    assert len(_protos_files()) == 1288


def test_protos_valid_case() -> None:
    message = _parse(PROTOS / "0000000-valid.sip")
    assert isinstance(message, Request)
    assert message.method == "INVITE"
    teardown = _parse(PROTOS / "0000000-valid.teardown.sip")
    assert isinstance(teardown, Request)
    assert teardown.method == "CANCEL"


def _check_refusal(error: RemoteProtocolError) -> None:
    assert "\r" not in error.reason
    assert "\n" not in error.reason
    response = make_error_response(error)
    if response is not None:
        assert serialize(response).startswith(f"SIP/2.0 {response.status} ".encode())


def test_protos_every_case_parses_or_is_refused() -> None:
    """Robustness (INDEX.md): every case either parses or raises RemoteProtocolError, and the
    error response, when there is one, serialises. Over TCP the framer must agree."""
    parsed = refused = 0
    for path in _protos_files():
        data = path.read_bytes()
        try:
            message = parse_message_untrusted(data)
        except RemoteProtocolError as error:
            refused += 1
            _check_refusal(error)
        else:
            parsed += 1
            serialize(message)
        framer = StreamFramer()
        framer.receive_data(data)
        try:
            while (framed := framer.next_message()) is not None:
                with contextlib.suppress(RemoteProtocolError):
                    parse_message_untrusted(framed, stream=True)
        except RemoteProtocolError as error:
            response = make_error_response(error)
            if response is not None:
                serialize(response)
    assert parsed > 0
    assert refused > 0
