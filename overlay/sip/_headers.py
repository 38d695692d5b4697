"""Header field names and the structured header values the proxy needs (RFC 3261 §7.3, §20).

Only Via, the name-addr headers (From, To, Contact, Route, Record-Route) and CSeq get classes:
those are the values a proxy reads or rewrites. Everything else stays a raw string in
``Headers``. Each ``parse_untrusted`` takes ONE element of a header field; split a field into
elements first with ``split_list_untrusted``.

Parameters (RFC 3261 §25.1 generic-param) are kept in order as ``(name, value)`` pairs, names
lower-cased (parameter names are case-insensitive) and values as written, quotes included, so
that re-serialising a value does not change what the peer sent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from . import _abnf
from ._errors import RemoteProtocolError
from ._uri import Params, WithParams, find_lower_param, parse_host_port_untrusted

#: Parsed header values are memoised: within one call the same Via, From and To strings are read
#: by every step of the proxy. Results are immutable, so sharing them is safe.
PARSE_CACHE_SIZE = 8192

__all__ = [
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "split_list_untrusted",
]

# RFC 3261 §7.3.3 and the IANA SIP header registry: compact form -> full name.
_COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_KNOWN_NAMES = (
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Accept-Resource-Priority",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "History-Info",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Join",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "Overlay-Path",  # this project's own, between overlay nodes only (overlay.sip._proxy)
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Resource-Priority",
    "Retry-After",
    "Route",
    "RSeq",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "Server",
    "Service-Route",
    "Session-Expires",
    "SIP-ETag",
    "SIP-If-Match",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
)

# Lower-case spelling -> canonical name, for every known name and compact form.
_BY_LOWER: dict[str, str] = {name.lower(): name for name in _KNOWN_NAMES} | _COMPACT

# Exact spelling -> canonical name: the spellings seen on the wire almost always (canonical,
# lower, upper, compact in both cases), so the parser's hot path is one dict lookup per field.
CANONICAL: dict[str, str] = (
    {name: name for name in _KNOWN_NAMES}
    | {name.upper(): name for name in _KNOWN_NAMES}
    | _BY_LOWER
    | {short.upper(): name for short, name in _COMPACT.items()}
)

KNOWN_NAMES = frozenset(_KNOWN_NAMES)


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name: compact forms expanded, known names in their
    registered case ("call-id" -> "Call-ID"); unknown names are returned unchanged."""
    found = CANONICAL.get(name)
    if found is not None:
        return found
    return _BY_LOWER.get(name.lower(), name)


# Parameter names that need no token check (they are tokens); saves a regex on the hot path.
_COMMON_PARAM_NAMES = frozenset(
    ("branch", "tag", "rport", "received", "lr", "transport", "maddr", "ttl", "user", "q")
)


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason)


def _quoted_error(text: str, what: str) -> RemoteProtocolError:
    """Name the problem with a quoted string that QUOTED_STRING refused."""
    start = text.find('"')
    rest = text[start + 1 :].replace("\\\\", "").replace('\\"', "")
    if '"' not in rest:
        return _bad(f"Unterminated quoted string in {what}")
    return _bad(f"Bad quoted string in {what}")


def _split_outside_quotes(text: str, sep: str, what: str) -> list[str]:
    """Split at ``sep`` where it is not inside a quoted string (RFC 3261 §25.1 quoted-string);
    the slow path of parameter parsing, for text that contains a DQUOTE."""
    items: list[str] = []
    start = 0
    pos = 0
    end = len(text)
    while pos < end:
        char = text[pos]
        if char == '"':
            match = _abnf.QUOTED_STRING.match(text, pos)
            if match is None:
                raise _quoted_error(text[pos:], what)
            pos = match.end()
            continue
        if char == sep:
            items.append(text[start:pos])
            start = pos + 1
        pos += 1
    items.append(text[start:])
    return items


def parse_params_untrusted(text: str, what: str) -> Params:
    """Parse ``param *( SEMI param )`` (the text after the first ";"), LWS allowed around ";"
    and "=" (RFC 3261 §25.1 SEMI, EQUAL)."""
    params: list[tuple[str, str | None]] = []
    items = text.split(";") if '"' not in text else _split_outside_quotes(text, ";", what)
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip(" \t")
        if name not in _COMMON_PARAM_NAMES and not _abnf.TOKEN.fullmatch(name):
            raise _bad(f"Bad parameter in {what}")
        if eq:
            value = value.strip(" \t")
            if not _abnf.GEN_VALUE.fullmatch(value):
                raise _bad(f"Bad parameter value in {what}")
            params.append((name.lower(), value))
        else:
            params.append((name.lower(), None))
    return tuple(params)


def _with_param(params: Params, name: str, value: str | None) -> Params:
    name = name.lower()
    for index, (key, _) in enumerate(params):
        if key == name:
            return (*params[:index], (name, value), *params[index + 1 :])
    return (*params, (name, value))


def _format_params(params: Params) -> str:
    return "".join(f";{key}" if value is None else f";{key}={value}" for key, value in params)


@dataclass(frozen=True, slots=True)
class Via(WithParams):
    """One via-parm (RFC 3261 §20.42). Only SIP/2.0 is accepted as the protocol."""

    transport: str
    host: str
    port: int | None
    params: Params

    @classmethod
    def parse_untrusted(cls, value: str) -> Via:
        """Parse ONE via-parm (no commas), LWS allowed where RFC 3261 allows it.

        Raises:
            RemoteProtocolError: status_hint 400, reason naming the problem.
        """
        return _parse_via(value)

    @property
    def branch(self) -> str | None:
        return find_lower_param(self.params, "branch")

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with the parameter set (replaced in place, or appended); ``None`` is a flag."""
        return Via(self.transport, self.host, self.port, _with_param(self.params, name, value))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_via(value: str) -> Via:
    match = _abnf.VIA_SENT_PROTOCOL.match(value)
    if match is None:
        raise _bad("Malformed Via")
    sent_by, semi, param_text = value[match.end() :].partition(";")
    sent_by = sent_by.rstrip(" \t")
    if " " in sent_by or "\t" in sent_by:
        sent_by = _abnf.SWS_COLON.sub(":", sent_by)
    host, port = parse_host_port_untrusted(sent_by, "Via")
    params = parse_params_untrusted(param_text, "Via") if semi else ()
    return Via(match.group(1).upper(), host, port, params)


def _check_uri_text(uri: str, what: str) -> None:
    if not _abnf.URI_TEXT.fullmatch(uri):
        raise _bad(f"Malformed URI in {what}")


@dataclass(frozen=True, slots=True)
class NameAddr(WithParams):
    """A From, To, Contact, Route or Record-Route value (RFC 3261 §20.10, §20.20, §20.39).

    The URI is checked only shallowly (a scheme, no whitespace): the proxy parses the URIs it
    routes on with ``parse_uri_untrusted``, and leaves the others alone.
    """

    display_name: str | None
    uri: str
    params: Params

    @classmethod
    def parse_untrusted(cls, value: str, *, field: str = "name-addr") -> NameAddr:
        """Parse ONE value (no commas) in name-addr or addr-spec form.

        Args:
            value: the element text.
            field: the header name, used in error reasons ("Unterminated quoted string in To").

        Raises:
            RemoteProtocolError: status_hint 400, reason naming the problem and ``field``.
        """
        return _parse_name_addr(value, field)

    @property
    def tag(self) -> str | None:
        return find_lower_param(self.params, "tag")

    def with_param(self, name: str, value: str | None) -> NameAddr:
        """A copy with the parameter set (replaced in place, or appended); ``None`` is a flag."""
        return NameAddr(self.display_name, self.uri, _with_param(self.params, name, value))

    def __str__(self) -> str:
        display = "" if self.display_name is None else self.display_name + " "
        return f"{display}<{self.uri}>{_format_params(self.params)}"


_MAX_CSEQ = 2**32 - 1

# The methods this implementation knows (RFC 3261 plus the common extensions): they need no
# token check on the hot path, and a request for another method addressed to the node itself
# gets 501 Not Implemented.
KNOWN_METHODS = frozenset(
    (
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    )
)


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_name_addr(value: str, field: str) -> NameAddr:
    text = value.strip(" \t")
    if not text:
        raise _bad(f"Empty {field}")
    display: str | None
    if text[0] == '"':
        match = _abnf.QUOTED_STRING.match(text)
        if match is None:
            raise _quoted_error(text, field)
        display = match.group()
        rest = text[match.end() :].lstrip(" \t")
        if not rest.startswith("<"):
            raise _bad(f"Missing <URI> after display name in {field}")
    else:
        angle = text.find("<")
        if angle < 0:
            # addr-spec form: RFC 3261 §20.10, every ";" here starts a header parameter.
            uri, semi, param_text = text.partition(";")
            uri = uri.rstrip(" \t")
            if "?" in uri or "," in uri:
                raise _bad(f"URI with ? or , must be enclosed in <> in {field}")
            _check_uri_text(uri, field)
            params = parse_params_untrusted(param_text, field) if semi else ()
            return NameAddr(None, uri, params)
        display = text[:angle].rstrip(" \t") or None
        if display is not None and not _abnf.DISPLAY_TOKENS.fullmatch(display):
            raise _bad(f"Bad display name in {field}")
        rest = text[angle:]
    close = rest.find(">")
    if close < 0:
        raise _bad(f"Unterminated <URI> in {field}")
    uri = rest[1:close]
    _check_uri_text(uri, field)
    after = rest[close + 1 :].lstrip(" \t")
    if not after:
        return NameAddr(display, uri, ())
    if after[0] != ";":
        raise _bad(f"Unexpected text after <URI> in {field}")
    return NameAddr(display, uri, parse_params_untrusted(after[1:], field))


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq (RFC 3261 §20.16): a 32-bit sequence number and the request method."""

    number: int
    method: str

    @classmethod
    def parse_untrusted(cls, value: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; leading zeros are fine (RFC 4475 §3.1.1.1).

        Raises:
            RemoteProtocolError: status_hint 400, "Bad CSeq" or "CSeq number too large".
        """
        return _parse_cseq(value)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def split_list_untrusted(value: str, *, field: str = "header") -> list[str]:
    """Split a header field value at top-level commas (RFC 3261 §7.3.1).

    Commas inside a quoted string or inside ``<...>`` do not split. Elements are stripped of
    LWS.

    Args:
        value: the field value.
        field: the header name, used in error reasons.

    Raises:
        RemoteProtocolError: status_hint 400, on an empty element, an unterminated quoted string
            or unbalanced angle brackets.
    """
    if '"' not in value and "<" not in value:
        if ">" in value:
            raise _bad(f"Unbalanced <> in {field}")
        items = [item.strip(" \t") for item in value.split(",")]
    else:
        items = []
        start = 0
        pos = 0
        end = len(value)
        in_angle = False
        while pos < end:
            char = value[pos]
            if in_angle:
                if char == ">":
                    in_angle = False
                elif char == "<":
                    raise _bad(f"Unbalanced <> in {field}")
            elif char == '"':
                match = _abnf.QUOTED_STRING.match(value, pos)
                if match is None:
                    raise _quoted_error(value[pos:], field)
                pos = match.end()
                continue
            elif char == "<":
                in_angle = True
            elif char == ">":
                raise _bad(f"Unbalanced <> in {field}")
            elif char == ",":
                items.append(value[start:pos].strip(" \t"))
                start = pos + 1
            pos += 1
        if in_angle:
            raise _bad(f"Unbalanced <> in {field}")
        items.append(value[start:].strip(" \t"))
    if "" in items:
        raise _bad(f"Empty element in {field}")
    return items


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_cseq(value: str) -> CSeq:
    if "\t" in value:
        value = value.replace("\t", " ")
    number, _, method = value.strip(" ").partition(" ")
    method = method.lstrip(" ")
    if not (number.isascii() and number.isdigit()):
        raise _bad("Bad CSeq")
    if method not in KNOWN_METHODS and not _abnf.METHOD.fullmatch(method):
        raise _bad("Bad CSeq")
    # Leading zeros are legal (RFC 4475 §3.1.1.1); strip them before int(), which refuses
    # strings of more than 4300 digits.
    digits = number.lstrip("0")
    if len(digits) > 10:
        raise _bad("CSeq number too large")
    seq = int(digits or "0")
    if seq > _MAX_CSEQ:
        raise _bad("CSeq number too large")
    return CSeq(seq, method)
