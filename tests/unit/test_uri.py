"""URIs: RFC 3261 §19.1 / §25.1, RFC 3966 (tel), RFC 5118 (IPv6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.sip import (
    AbsoluteUri,
    RemoteProtocolError,
    SipUri,
    TelUri,
    host_bare,
    parse_uri_untrusted,
)

# (text, expected) checked by the parser and, for canonical text, by __str__.
GOOD_URIS: list[tuple[str, SipUri | TelUri | AbsoluteUri]] = [
    ("sip:example.com", SipUri("sip", None, None, "example.com", None, (), None)),
    (
        "sip:alice@atlanta.example.com:5070",
        SipUri("sip", "alice", None, "atlanta.example.com", 5070, (), None),
    ),
    (
        "sips:alice:secret@192.0.2.4;transport=tcp;lr",
        SipUri(
            "sips", "alice", "secret", "192.0.2.4", None, (("transport", "tcp"), ("lr", None)), None
        ),
    ),
    ("sip:[2001:db8::10]", SipUri("sip", None, None, "[2001:db8::10]", None, (), None)),
    ("sip:[2001:db8::10]:5070", SipUri("sip", None, None, "[2001:db8::10]", 5070, (), None)),
    # RFC 5118 §4.3: this is an address with no port, not port 5070.
    ("sip:[2001:db8::10:5070]", SipUri("sip", None, None, "[2001:db8::10:5070]", None, (), None)),
    # RFC 5118 §4.10: both the correct and the RFC 3261-ABNF (three colons) forms.
    (
        "sip:user@[2001:db8::192.0.2.1]",
        SipUri("sip", "user", None, "[2001:db8::192.0.2.1]", None, (), None),
    ),
    (
        "sip:user@[2001:db8:::192.0.2.1]",
        SipUri("sip", "user", None, "[2001:db8:::192.0.2.1]", None, (), None),
    ),
    (
        "sip:ted@[::ffff:192.0.2.2]",
        SipUri("sip", "ted", None, "[::ffff:192.0.2.2]", None, (), None),
    ),
    # RFC 4475 §3.1.1.9: ";" and an escaped "@" in the user part.
    (
        "sip:user;par=u%40example.net@example.com",
        SipUri("sip", "user;par=u%40example.net", None, "example.com", None, (), None),
    ),
    # RFC 4475 §3.1.1.3: escapes are kept as written.
    (
        "sip:sips%3Auser%40example.com@example.net",
        SipUri("sip", "sips%3Auser%40example.com", None, "example.net", None, (), None),
    ),
    (
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        SipUri("sip", "user", None, "example.com", None, (), "Route=%3Csip:sip.example.com%3E"),
    ),
    (
        "sip:+15551230001@gw.example.com;user=phone",
        SipUri("sip", "+15551230001", None, "gw.example.com", None, (("user", "phone"),), None),
    ),
    ("tel:+1-201-555-0123", TelUri("+1-201-555-0123", ())),
    ("tel:7042;phone-context=example.com", TelUri("7042", (("phone-context", "example.com"),))),
    ("isbn:2983792873", AbsoluteUri("isbn", "2983792873")),
    ("soap.beep://192.0.2.103:3002", AbsoluteUri("soap.beep", "//192.0.2.103:3002")),
    (
        "nobodyknowsthisscheme:totallyopaquecontent",
        AbsoluteUri("nobodyknowsthisscheme", "totallyopaquecontent"),
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_URIS)
def test_parse_and_str(text: str, expected: SipUri | TelUri | AbsoluteUri) -> None:
    assert parse_uri_untrusted(text) == expected
    assert str(expected) == text


def test_case_is_normalised_where_insensitive() -> None:
    uri = parse_uri_untrusted("SIP:Alice@Atlanta.Example.COM;Transport=UDP;LR")
    assert uri == SipUri(
        "sip",
        "Alice",
        None,
        "atlanta.example.com",
        None,
        (("transport", "UDP"), ("lr", None)),
        None,
    )
    assert str(uri) == "sip:Alice@atlanta.example.com;transport=UDP;lr"


def test_intmeth_request_uri() -> None:
    """RFC 4475 §3.1.1.2: unusual but legal user and password characters."""
    text = (
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    uri = parse_uri_untrusted(text)
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert str(uri) == text


def test_param_accessors() -> None:
    uri = parse_uri_untrusted("sip:proxy.example.com;transport=tcp;lr;maddr=192.0.2.1")
    assert isinstance(uri, SipUri)
    assert uri.transport == "TCP"
    assert uri.lr
    assert uri.maddr == "192.0.2.1"
    assert uri.param("LR") == ""
    assert uri.param("ttl") is None
    assert uri.has_param("maddr")
    assert not uri.has_param("ttl")
    plain = parse_uri_untrusted("sip:example.com")
    assert isinstance(plain, SipUri)
    assert plain.transport is None
    assert not plain.lr
    assert plain.maddr is None
    tel = parse_uri_untrusted("tel:7042;phone-context=example.com")
    assert isinstance(tel, TelUri)
    assert tel.param("phone-context") == "example.com"


def test_host_bare() -> None:
    assert host_bare("[::1]") == "::1"
    assert host_bare("[2001:db8::1]") == "2001:db8::1"
    assert host_bare("192.0.2.1") == "192.0.2.1"
    assert host_bare("example.com") == "example.com"


BAD_URIS: list[tuple[str, str]] = [
    ("sip:user@example.com; lr", "URI contains whitespace"),  # RFC 4475 §3.1.2.8
    ("sip:user@example.com\t", "URI contains whitespace"),
    ("example.com", "URI has no scheme"),
    ("sip:2001:db8::10", "IPv6 address without brackets in SIP URI"),  # RFC 5118 §4.2
    ("sip:[2001:db8::10", "Bad IPv6 reference in SIP URI"),
    ("sip:[zz::1]", "Bad IPv6 reference in SIP URI"),
    ("sip:[::1]x", "Bad host in SIP URI"),
    ("sip:", "Bad host in SIP URI"),
    ("sip:@example.com", "Bad user part in SIP URI"),
    ("sip:a@b@example.com", "Unescaped @ in SIP URI"),
    ("sip:user@exa mple.com", "URI contains whitespace"),
    ("sip:user@host:", "Bad port in SIP URI"),
    ("sip:user@host:65536", "Bad port in SIP URI"),
    ("sip:user@host:5x", "Bad port in SIP URI"),
    ("sip:user@host;;lr", "Bad parameter in SIP URI"),
    ("sip:user@host;transport=", "Bad parameter value in SIP URI"),
    ("sip:user@host?", "Bad headers in SIP URI"),
    ("sip:us%zzer@host", "Bad user part in SIP URI"),
    ("sip:user:pa@ss@host", "Unescaped @ in SIP URI"),
    ("sip:user:p<w@host", "Bad password in SIP URI"),
    ("sip:host_with-<bracket", "Bad host in SIP URI"),
    ("tel:", "Bad tel URI number"),
    ("tel:--", "Bad tel URI number"),
    ("1abc:foo", "Bad URI scheme"),
    ("http:", "Malformed URI"),
    ("http:<x>", "Malformed URI"),
]


@pytest.mark.parametrize(("text", "reason"), BAD_URIS)
def test_bad_uris(text: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_uri_untrusted(text)
    assert info.value.reason == reason
    assert info.value.status_hint == 400


# --- property tests ------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_label = st.text(_ALNUM, min_size=1, max_size=8)
_hostname = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(_label, max_size=3),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6),
)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
_host = st.one_of(_hostname, _ipv4, _ipv6)
_escaped = st.sampled_from(["%41", "%00", "%3a", "%40"])
_user = st.lists(
    st.one_of(st.sampled_from(list(_ALNUM + "-_.!~*'()&=+$,;?/")), _escaped),
    min_size=1,
    max_size=12,
).map("".join)
_password = st.lists(
    st.one_of(st.sampled_from(list(_ALNUM + "-_.!~*'()&=+$,")), _escaped), max_size=8
).map("".join)
_pchar = st.lists(
    st.one_of(st.sampled_from(list(_ALNUM + "-_.!~*'()[]/:&+$")), _escaped), min_size=1, max_size=8
).map("".join)
_params = st.lists(st.tuples(_pchar.map(str.lower), st.one_of(st.none(), _pchar)), max_size=4).map(
    tuple
)
_hchar = st.lists(
    st.one_of(st.sampled_from(list(_ALNUM + "-_.!~*'()[]/?:+$")), _escaped), min_size=1, max_size=6
).map("".join)
_headers = st.one_of(
    st.none(),
    st.lists(st.tuples(_hchar, _hchar), min_size=1, max_size=3).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
    ),
)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.one_of(st.none(), _user))
    password = draw(st.one_of(st.none(), _password)) if user is not None else None
    return SipUri(
        draw(st.sampled_from(["sip", "sips"])),
        user,
        password,
        draw(_host),
        draw(st.one_of(st.none(), st.integers(0, 65535))),
        draw(_params),
        draw(_headers),
    )


@settings(max_examples=300, derandomize=True, deadline=None)
@given(sip_uris())
def test_sip_uri_round_trip(uri: SipUri) -> None:
    text = str(uri)
    assert parse_uri_untrusted(text) == uri
    assert str(parse_uri_untrusted(text)) == text


_tel_number = st.builds(
    lambda plus, digits: plus + digits,
    st.sampled_from(["", "+"]),
    st.text("0123456789-.()", min_size=1, max_size=15).filter(
        lambda s: any(c.isdigit() for c in s)
    ),
)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(_tel_number, _params)
def test_tel_uri_round_trip(number: str, params: tuple[tuple[str, str | None], ...]) -> None:
    uri = TelUri(number, params)
    assert parse_uri_untrusted(str(uri)) == uri
