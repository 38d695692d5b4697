"""Header names, structured header values (RFC 3261 §7.3, §20) and the Headers container."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.sip import (
    CSeq,
    Headers,
    LocalProtocolError,
    NameAddr,
    RemoteProtocolError,
    Via,
    canonical_name,
    split_list_untrusted,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("i", "Call-ID"),
        ("I", "Call-ID"),
        ("m", "Contact"),
        ("e", "Content-Encoding"),
        ("l", "Content-Length"),
        ("L", "Content-Length"),
        ("c", "Content-Type"),
        ("f", "From"),
        ("s", "Subject"),
        ("k", "Supported"),
        ("t", "To"),
        ("v", "Via"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("a", "Accept-Contact"),
        ("j", "Reject-Contact"),
        ("d", "Request-Disposition"),
        ("y", "Identity"),
        ("n", "Identity-Info"),
        ("call-id", "Call-ID"),
        ("CALL-ID", "Call-ID"),
        ("cseq", "CSeq"),
        ("via", "Via"),
        ("ViA", "Via"),
        ("www-authenticate", "WWW-Authenticate"),
        ("max-forwards", "Max-Forwards"),
        ("record-route", "Record-Route"),
        ("X-Custom-Thing", "X-Custom-Thing"),
        ("x-custom-thing", "x-custom-thing"),
        ("C%6Fntact", "C%6Fntact"),  # RFC 4475 §3.1.1.5: not Contact
    ],
)
def test_canonical_name(name: str, expected: str) -> None:
    assert canonical_name(name) == expected


# --- Via --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport",
            Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bK776"), ("rport", None))),
        ),
        ("SIP/2.0/tcp Host.Example.COM", Via("TCP", "host.example.com", None, ())),
        # RFC 4475 §3.1.1.1: LWS around every separator (after unfolding).
        (
            "SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw",
            Via("UDP", "192.0.2.2", None, (("branch", "390skdjuw"),)),
        ),
        (
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8",
            Via("TCP", "spindle.example.com", None, (("branch", "z9hG4bK9ikj8"),)),
        ),
        ("SIP/2.0/UDP host : 5070", Via("UDP", "host", 5070, ())),
        ("SIP/2.0/UNKNOWN t4.example.com", Via("UNKNOWN", "t4.example.com", None, ())),
        # RFC 5118 §4.5, §4.7, §4.9
        (
            "SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
            Via(
                "UDP",
                "[2001:db8::9:1]",
                None,
                (("received", "[2001:db8::9:255]"), ("branch", "z9hG4bKas3-111")),
            ),
        ),
        (
            "SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3",
            Via(
                "UDP",
                "[2001:db8::9:1]",
                None,
                (("received", "2001:db8::9:255"), ("branch", "z9hG4bKas3")),
            ),
        ),
        (
            "SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
            Via("UDP", "[::ffff:192.0.2.10]", 19823, (("branch", "z9hG4bKbh19"),)),
        ),
        (
            'SIP/2.0/UDP h;x="a;b,c"',
            Via("UDP", "h", None, (("x", '"a;b,c"'),)),
        ),
        (
            "SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
            Via("TCP", "host1.example.com", None, (("branch", "z9hG4bK-.!%66*_+`'~"),)),
        ),
    ],
)
def test_via_parse(text: str, expected: Via) -> None:
    assert Via.parse_untrusted(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Malformed Via"),
        ("SIP/2.0/UDP", "Malformed Via"),
        ("SIP/7.0/UDP host", "Malformed Via"),
        ("HTTP/2.0/UDP host", "Malformed Via"),
        ("SIP/2.0/UDP host;;", "Bad parameter in Via"),  # RFC 4475 §3.1.2.1
        ("SIP/2.0/UDP 192.0.2.15;;,;,,", "Bad parameter in Via"),
        ("SIP/2.0/UDP host;branch=", "Bad parameter value in Via"),
        ("SIP/2.0/UDP host, SIP/2.0/UDP other", "Bad host in Via"),
        ("SIP/2.0/UDP host:99999", "Bad port in Via"),
        ("SIP/2.0/UDP 2001:db8::1", "IPv6 address without brackets in Via"),
        ("SIP/2.0/UDP host extra", "Bad host in Via"),
        ('SIP/2.0/UDP host;x="unterminated', "Unterminated quoted string in Via"),
    ],
)
def test_via_bad(text: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Via.parse_untrusted(text)
    assert info.value.reason == reason


def test_via_accessors_and_str() -> None:
    via = Via.parse_untrusted("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport")
    assert via.branch == "z9hG4bK776"
    assert via.param("RPORT") == ""
    assert via.has_param("rport")
    assert via.param("received") is None
    assert not via.has_param("received")
    updated = via.with_param("rport", "5061").with_param("received", "203.0.113.9")
    assert str(updated) == (
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport=5061;received=203.0.113.9"
    )
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport"
    assert Via.parse_untrusted("SIP/2.0/UDP h").branch is None


# --- NameAddr ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<sip:a@b>", NameAddr(None, "sip:a@b", ())),
        ("sip:a@b;tag=1", NameAddr(None, "sip:a@b", (("tag", "1"),))),
        ('"Alice" <sip:a@b>;tag=x', NameAddr('"Alice"', "sip:a@b", (("tag", "x"),))),
        ("Bob <sips:b@c;lr>", NameAddr("Bob", "sips:b@c;lr", ())),
        (
            "caller<sip:caller@example.com>;tag=323",
            NameAddr("caller", "sip:caller@example.com", (("tag", "323"),)),
        ),
        # RFC 4475 §3.1.1.1
        (
            "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
            NameAddr(None, "sip:vivekg@chair-dnrc.example.com", (("tag", "1918181833n"),)),
        ),
        (
            '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ; tag = 98asjd8',
            NameAddr('"J Rosenberg \\\\\\""', "sip:jdrosen@example.com", (("tag", "98asjd8"),)),
        ),
        (
            '"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue ; '
            "secondparam ; q = 0.33",
            NameAddr(
                '"Quoted string \\"\\""',
                "sip:jdrosen@example.com",
                (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")),
            ),
        ),
        # RFC 4475 §3.1.1.2: a quoted NUL, and an unquoted display name of odd tokens.
        (
            '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:x@example.com>',
            NameAddr('"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"', "sip:x@example.com", ()),
        ),
        (
            "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=_token~1'+`*%!-.",
            NameAddr(
                "token1~` token2'+_ token3*%!.-",
                "sip:mundane@example.com",
                (("tag", "_token~1'+`*%!-."),),
            ),
        ),
        # RFC 4475 §3.3.4: other schemes.
        ("isbn:2983792873", NameAddr(None, "isbn:2983792873", ())),
        (
            "<http://www.example.com>;tag=3234233",
            NameAddr(None, "http://www.example.com", (("tag", "3234233"),)),
        ),
        # RFC 4475 §3.3.12 / §3.3.13: contact-param vs uri-parameter.
        (
            "sip:+19725552222@gw1.example.net;unknownparam",
            NameAddr(None, "sip:+19725552222@gw1.example.net", (("unknownparam", None),)),
        ),
        (
            "<sip:+19725552222@gw1.example.net;unknownparam>",
            NameAddr(None, "sip:+19725552222@gw1.example.net;unknownparam", ()),
        ),
        (
            '<sip:a@b>;Tag=X;fromParam="quoted;value"',
            NameAddr(None, "sip:a@b", (("tag", "X"), ("fromparam", '"quoted;value"'))),
        ),
    ],
)
def test_name_addr_parse(text: str, expected: NameAddr) -> None:
    assert NameAddr.parse_untrusted(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Empty To"),
        ('"Mr. J. User <sip:j.user@example.com>', "Unterminated quoted string in To"),
        ('"Watson, Thomas" < sip:t.watson@example.org >', "Malformed URI in To"),
        ("Watson, Thomas <sip:t.watson@example.org>", "Bad display name in To"),
        ('"x" sip:a@b', "Missing <URI> after display name in To"),
        ("<sip:a@b", "Unterminated <URI> in To"),
        ("<sip:a@b> junk", "Unexpected text after <URI> in To"),
        ("<>", "Malformed URI in To"),
        ("nocolon", "Malformed URI in To"),
        (
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "URI with ? or , must be enclosed in <> in To",
        ),
        ("<sip:a@b>;;tag=1", "Bad parameter in To"),
        ("<sip:a@b>;tag=", "Bad parameter value in To"),
        ("<sip:a@b>;tag=a b", "Bad parameter value in To"),
    ],
)
def test_name_addr_bad(text: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        NameAddr.parse_untrusted(text, field="To")
    assert info.value.reason == reason
    assert info.value.status_hint == 400


def test_name_addr_accessors_and_str() -> None:
    value = NameAddr.parse_untrusted('"Alice" <sip:alice@example.com>;tag=1928301774;x')
    assert value.tag == "1928301774"
    assert value.param("x") == ""
    assert value.param("y") is None
    assert str(value) == '"Alice" <sip:alice@example.com>;tag=1928301774;x'
    addr_spec = NameAddr.parse_untrusted("sip:bob@example.com")
    assert addr_spec.tag is None
    assert str(addr_spec.with_param("tag", "abc")) == "<sip:bob@example.com>;tag=abc"
    assert str(value.with_param("TAG", "new")) == '"Alice" <sip:alice@example.com>;tag=new;x'


# --- CSeq -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("0009 INVITE", CSeq(9, "INVITE")),  # RFC 4475 §3.1.1.1
        ("0009  \t INVITE", CSeq(9, "INVITE")),
        ("4294967295 ACK", CSeq(2**32 - 1, "ACK")),
        (
            "139122385 !interesting-Method0123456789_*+`.%indeed'~",
            CSeq(139122385, "!interesting-Method0123456789_*+`.%indeed'~"),
        ),
        ("00000000000000000001 BYE", CSeq(1, "BYE")),
        ("0" * 5000 + "7 BYE", CSeq(7, "BYE")),
        ("0 BYE", CSeq(0, "BYE")),
    ],
)
def test_cseq_parse(text: str, expected: CSeq) -> None:
    assert CSeq.parse_untrusted(text) == expected
    assert str(expected) == f"{expected.number} {expected.method}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("INVITE", "Bad CSeq"),
        ("1", "Bad CSeq"),
        ("x INVITE", "Bad CSeq"),
        ("-1 INVITE", "Bad CSeq"),
        ("1_000 INVITE", "Bad CSeq"),
        ("\u00b2 INVITE", "Bad CSeq"),
        ("1 INVITE BYE", "Bad CSeq"),
        ("1 IN<VITE", "Bad CSeq"),
        ("4294967296 INVITE", "CSeq number too large"),
        ("36893488147419103232 REGISTER", "CSeq number too large"),  # RFC 4475 §3.1.2.4
        ("9" * 5000 + " INVITE", "CSeq number too large"),
    ],
)
def test_cseq_bad(text: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        CSeq.parse_untrusted(text)
    assert info.value.reason == reason


# --- lists ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", ["a"]),
        ("a, b ,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y;a=b,c>', ['"Doe, John" <sip:j@x>', "<sip:k@y;a=b,c>"]),
        ('"a \\" , b" <sip:a@b>', ['"a \\" , b" <sip:a@b>']),
        (
            "SIP  /    2.0   / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  ,  "
            "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
            [
                "SIP  /    2.0   / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8",
                "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
            ],
        ),
    ],
)
def test_split_list(text: str, expected: list[str]) -> None:
    assert split_list_untrusted(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Empty element in Route"),
        ("a,,b", "Empty element in Route"),
        ("a,", "Empty element in Route"),
        (";;,,;;,;", "Empty element in Route"),
        ('"abc, <sip:a@b>', "Unterminated quoted string in Route"),
        ("<sip:a@b", "Unbalanced <> in Route"),
        ("sip:a@b>", "Unbalanced <> in Route"),
        ("<sip:a@b>>, <c>", "Unbalanced <> in Route"),
        ("<sip:<a@b>", "Unbalanced <> in Route"),
    ],
)
def test_split_list_bad(text: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        split_list_untrusted(text, field="Route")
    assert info.value.reason == reason


# --- Headers ----------------------------------------------------------------------------------


def _headers() -> Headers:
    return Headers(
        [
            ("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP c;branch=z9hG4bK3"),
            ("Route", "<sip:r1;lr>"),
            ("X-Thing", "one"),
            ("route", "<sip:r2;lr>, <sip:r3;lr>"),
            ("x-thing", "two"),
        ]
    )


def test_headers_lookup_is_canonical() -> None:
    headers = _headers()
    assert [name for name, _ in headers] == ["Via", "Via", "Route", "X-Thing", "Route", "x-thing"]
    assert len(headers) == 6
    assert "VIA" in headers
    assert "v" in headers
    assert "X-THING" in headers
    assert "Contact" not in headers
    assert 42 not in headers
    assert headers.get("via") == "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"
    assert headers.get("X-THING") == "one"
    assert headers.get("Contact") is None
    assert headers.get("x-unknown") is None
    assert headers.get_all("x-thing") == ["one", "two"]
    assert headers.values("Via") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1",
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert headers.values("Route") == ["<sip:r1;lr>", "<sip:r2;lr>", "<sip:r3;lr>"]
    assert headers.first_value("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert headers.first_value("Contact") is None
    assert headers.values("Contact") == []


def test_headers_pop_and_replace_first_value() -> None:
    headers = _headers()
    assert headers.pop_first_value("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert headers.get_all("Via") == [
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert headers.pop_first_value("Via") == "SIP/2.0/UDP b;branch=z9hG4bK2"
    assert headers.get_all("Via") == ["SIP/2.0/UDP c;branch=z9hG4bK3"]
    assert headers.pop_first_value("Via") == "SIP/2.0/UDP c;branch=z9hG4bK3"
    assert headers.pop_first_value("Via") is None
    assert "Via" not in headers

    headers = _headers()
    headers.replace_first_value("Via", "SIP/2.0/UDP a;branch=z9hG4bK1;received=192.0.2.1")
    assert headers.get_all("Via")[0] == (
        "SIP/2.0/UDP a;branch=z9hG4bK1;received=192.0.2.1, SIP/2.0/UDP b;branch=z9hG4bK2"
    )
    headers.replace_first_value("Route", "<sip:new;lr>")
    assert headers.values("Route") == ["<sip:new;lr>", "<sip:r2;lr>", "<sip:r3;lr>"]
    with pytest.raises(LocalProtocolError):
        headers.replace_first_value("Contact", "<sip:x>")


def test_headers_insert_set_remove_copy() -> None:
    headers = _headers()
    headers.insert_first("Route", "<sip:first;lr>")
    assert [name for name, _ in headers][2] == "Route"
    assert headers.get("Route") == "<sip:first;lr>"
    headers.insert_first("Record-Route", "<sip:rr;lr>")
    assert next(iter(headers)) == ("Record-Route", "<sip:rr;lr>")

    copy = headers.copy()
    assert copy == headers
    headers.set("X-Thing", "three")
    assert headers.get_all("x-thing") == ["three"]
    assert copy.get_all("x-thing") == ["one", "two"]
    assert copy != headers
    headers.set("Max-Forwards", "69")
    assert list(headers)[-1] == ("Max-Forwards", "69")
    assert headers.remove("Route") == 3
    assert headers.remove("Route") == 0
    headers.add("m", "  <sip:c@d>  ")
    assert list(headers)[-1] == ("Contact", "<sip:c@d>")
    assert repr(Headers([("To", "x")])) == "Headers([('To', 'x')])"
    assert Headers() != "not headers"


@pytest.mark.parametrize(
    "action",
    [
        lambda h: h.add("X-Evil", "a\r\nVia: injected"),
        lambda h: h.add("Bad Name", "x"),
        lambda h: h.add("", "x"),
        lambda h: h.set("To", "x\nFrom: y"),
        lambda h: h.insert_first("Via", "x\r"),
        lambda h: Headers([("X", "a\nb")]),
    ],
)
def test_headers_refuse_injection(action: object) -> None:
    with pytest.raises(LocalProtocolError):
        action(Headers())  # type: ignore[operator]


def test_headers_malformed_list_raises_remote_error() -> None:
    headers = Headers([("Route", "<sip:a;lr>,, <sip:b>")])
    with pytest.raises(RemoteProtocolError, match="Empty element in Route"):
        headers.values("Route")
    with pytest.raises(RemoteProtocolError):
        headers.pop_first_value("Route")


# --- property: split_list round-trips a joined list ------------------------------------------

_element = st.one_of(
    st.from_regex(r"<sip:[a-z]{1,5}@[a-z]{1,5}(;lr)?>(;[a-z]{1,3}=[a-z0-9]{1,3})?", fullmatch=True),
    st.from_regex(r'"[a-z ,;<>]{0,6}" <sip:[a-z]{1,5}@[a-z]{1,5}>', fullmatch=True),
    st.from_regex(r"SIP/2\.0/UDP [a-z]{1,6};branch=z9hG4bK[a-z0-9]{1,6}", fullmatch=True),
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(_element, min_size=1, max_size=5), st.sampled_from([",", ", ", " ,\t"]))
def test_split_list_round_trip(elements: list[str], separator: str) -> None:
    assert split_list_untrusted(separator.join(elements)) == elements
