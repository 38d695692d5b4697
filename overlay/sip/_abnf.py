"""Pieces of the SIP grammar as compiled regular expressions.

The hot path of the parser splits with ``str.partition`` and dict lookups; these patterns only
validate the few pieces it must check (and everything on the slow paths). Each pattern cites the
rule it implements. Patterns are written without nested ambiguous repetition so that hostile
input cannot make them backtrack badly, and every one is used with ``fullmatch``.

LWS: after the message parser has unfolded header lines, RFC 3261 §25.1 ``LWS`` and ``SWS``
reduce to runs of SP / HTAB, written ``[ \\t]`` below.
"""

from __future__ import annotations

import re

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_CHAR = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = re.compile(rf"[{_TOKEN_CHAR}]+")

# RFC 3261 §25.1: Method = INVITEm / ACKm / ... / extension-method; extension-method = token
METHOD = TOKEN

# RFC 3261 §25.1: header-name = token (§7.3.1 names are case-insensitive)
HEADER_NAME = TOKEN

# RFC 3261 §25.1: quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
#   qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
#   quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED_STRING = re.compile(r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"')

# RFC 3261 §25.1 (display-name = *(token LWS) / quoted-string): the unquoted form.
DISPLAY_TOKENS = re.compile(rf"[{_TOKEN_CHAR}]+(?:[ \t]+[{_TOKEN_CHAR}]+)*")

# RFC 3261 §25.1: word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" /
#   "~" / "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}")
#   callid = word [ "@" word ]
_WORD_CHAR = _TOKEN_CHAR + r'()<>:\\"/\[\]?{}'
CALL_ID = re.compile(rf"[{_WORD_CHAR}]+(?:@[{_WORD_CHAR}]+)?")

# RFC 3261 §25.1: generic-param = token [ EQUAL gen-value ]; gen-value = token / host /
# quoted-string. A host may be an IPv6 reference; RFC 5118 §4.5 also asks us to accept an IPv6
# address without brackets (e.g. received=2001:db8::9:255), so ":" "[" "]" are allowed too.
GEN_VALUE = re.compile(rf'[{_TOKEN_CHAR}:\[\]]+|"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"')

# RFC 3261 §25.1: IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
_IPV4 = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"

# RFC 3261 §25.1: hostname = *( domainlabel "." ) toplabel [ "." ]
#   domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum
#   toplabel = ALPHA / ALPHA *( alphanum / "-" ) alphanum
# Relaxed: "_" is accepted (seen in the wild) and a label may end in "-".
_HOSTNAME = r"(?:[A-Za-z0-9_][A-Za-z0-9_\-]*\.)*[A-Za-z_][A-Za-z0-9_\-]*\.?"

# RFC 3261 §25.1: hex4 = 1*4HEXDIG; hexseq = hex4 *( ":" hex4 )
#   hexpart = hexseq / hexseq "::" [ hexseq ] / "::" [ hexseq ]
#   IPv6address = hexpart [ ":" IPv4address ]; IPv6reference = "[" IPv6address "]"
# RFC 5118 §4.10: that grammar wrongly asks for three colons before an embedded IPv4 address
# after "::" ("2001:db8:::192.0.2.1") and rejects the correct RFC 4291 form
# ("2001:db8::192.0.2.1"). Implementations must tolerate both, hence the second alternative.
_HEXSEQ = r"[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*"
_IPV6 = (
    rf"(?:{_HEXSEQ}(?:::(?:{_HEXSEQ})?)?|::(?:{_HEXSEQ})?)(?::{_IPV4})?"
    rf"|(?:{_HEXSEQ})?::(?:{_HEXSEQ}:)?{_IPV4}"
)
IPV6_REFERENCE = re.compile(rf"\[(?:{_IPV6})\]")

# RFC 3261 §25.1: host = hostname / IPv4address / IPv6reference (the first two here; callers
# check IPv6reference separately because it must keep its brackets).
HOSTNAME_OR_IPV4 = re.compile(rf"{_IPV4}|{_HOSTNAME}")

# RFC 3261 §25.1: port = 1*DIGIT (range checked by the caller)
PORT = re.compile(r"[0-9]{1,5}")

# RFC 3261 §25.1: escaped = "%" HEXDIG HEXDIG
_ESCAPED = r"%[0-9A-Fa-f]{2}"
# RFC 3261 §25.1: unreserved = alphanum / mark; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" /
#   "(" / ")"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"

# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved )
#   user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
# (telephone-subscriber, the other choice of userinfo, uses a subset of these characters.)
USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+")

# RFC 3261 §25.1: password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")

# RFC 3261 §25.1: pname = 1*paramchar; pvalue = 1*paramchar
#   paramchar = param-unreserved / unreserved / escaped
#   param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
PARAMCHARS = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+")

# RFC 3261 §25.1: headers = "?" header *( "&" header ); header = hname "=" hvalue
#   hname = 1*( hnv-unreserved / unreserved / escaped ); hvalue = *( same )
#   hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HNV = rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})"
URI_HEADERS = re.compile(rf"{_HNV}+={_HNV}*(?:&{_HNV}+={_HNV}*)*")

# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3261 §25.1 likewise)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")

# RFC 3261 §25.1 / RFC 2396: absoluteURI = scheme ":" ( hier-part / opaque-part ), here reduced
# to "one or more uric characters": uric = reserved / unreserved / escaped, with "#" tolerated.
ABSOLUTE_URI_REST = re.compile(rf"(?:[{_UNRESERVED};/?:@&=+$,#\[\]]|{_ESCAPED})+")

# RFC 3966 §3: telephone-subscriber = global-number / local-number, the number part only:
# global digits with visual separators, or local hex digits with "*" and "#". The leading
# separator run excludes digits so that the pattern cannot backtrack quadratically.
TEL_NUMBER = re.compile(r"\+?[().\-]*[0-9A-Fa-f*#][0-9A-Fa-f*#().\-]*")

# RFC 3261 §25.1: SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT (case-insensitive, §7.1)
SIP_VERSION = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")

# RFC 3261 §25.1: via-parm = sent-protocol LWS sent-by *( SEMI via-params )
#   sent-protocol = protocol-name SLASH protocol-version SLASH transport, SLASH = SWS "/" SWS
# Only SIP/2.0 is accepted; the transport is a token (RFC 4475 §3.1.1.10: unknown ones are fine).
VIA_SENT_PROTOCOL = re.compile(
    rf"[ \t]*[Ss][Ii][Pp][ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([{_TOKEN_CHAR}]+)[ \t]+"
)

# RFC 3261 §25.1: COLON = SWS ":" SWS, inside sent-by.
SWS_COLON = re.compile(r"[ \t]*:[ \t]*")

# RFC 3261 §25.1: addr-spec = SIP-URI / SIPS-URI / absoluteURI, checked only shallowly inside
# name-addr values (scheme, colon, then no whitespace, control characters, DQUOTE or brackets);
# callers that route on the URI parse it fully with parse_uri_untrusted.
URI_TEXT = re.compile(r'[A-Za-z][A-Za-z0-9+\-.]*:[^\x00-\x20<>"\x7f]+')
