"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966; RFC 5118 for IPv6).

A SIP URI is split with ``str.partition`` in the order that makes the grammar unambiguous: an
unescaped "@" can only end the userinfo (no other part of the URI may contain one), "?" then starts
the headers (parameters may not contain "?"), and ";" starts the parameters. Each piece is then
checked with one pattern from ``_abnf``. Any other scheme is kept as an opaque ``AbsoluteUri`` so
that the proxy can answer 416 rather than 400 (RFC 4475 §3.3.2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from . import _abnf
from ._errors import RemoteProtocolError

__all__ = [
    "AbsoluteUri",
    "Address",
    "SipUri",
    "TelUri",
    "host_bare",
    "host_reference",
    "parse_uri_untrusted",
]

Address = tuple[str, int]
"""(host, port); the host is an IP literal without brackets."""

Params = tuple[tuple[str, str | None], ...]


def find_param(params: Params, name: str) -> str | None:
    """A parameter's value; ``""`` for a flag such as ``;lr``, ``None`` if absent."""
    name = name.lower()
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


def find_lower_param(params: Params, name: str) -> str | None:
    """``find_param`` for a ``name`` already in lower case (the parser lower-cases keys)."""
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


class WithParams:
    """``param`` and ``has_param`` for values that carry a ``params`` tuple."""

    __slots__ = ()
    params: Params

    def param(self, name: str) -> str | None:
        """The value of a parameter; ``""`` for a flag such as ``;lr``, ``None`` if absent."""
        return find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return find_param(self.params, name) is not None


def _format_params(params: Params) -> str:
    return "".join(f";{key}" if value is None else f";{key}={value}" for key, value in params)


@dataclass(frozen=True, slots=True)
class SipUri(WithParams):
    """A ``sip:`` or ``sips:`` URI.

    ``user`` and ``password`` keep their %-escapes: RFC 3261 §19.1.4 compares URIs after
    unescaping, but a proxy forwards them as written, so unescaping is left to the comparison.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Params
    headers: str | None

    @property
    def transport(self) -> str | None:
        value = find_lower_param(self.params, "transport")
        return None if value is None else value.upper()

    @property
    def lr(self) -> bool:
        """Loose routing flag (RFC 3261 §16.12): decides how a Route entry is processed."""
        return find_lower_param(self.params, "lr") is not None

    @property
    def maddr(self) -> str | None:
        return find_lower_param(self.params, "maddr")

    def __str__(self) -> str:
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ":" + self.password
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        if self.params:
            out += _format_params(self.params)
        if self.headers is not None:
            out += "?" + self.headers
        return out


@dataclass(frozen=True, slots=True)
class TelUri(WithParams):
    """A ``tel:`` URI (RFC 3966); the number is kept as written, visual separators included."""

    number: str
    params: Params

    def __str__(self) -> str:
        return "tel:" + self.number + _format_params(self.params)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of any other scheme (RFC 3261 absoluteURI), kept opaque."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


def host_bare(host: str) -> str:
    """Strip the brackets of an IPv6 reference, as socket APIs want it: ``"[::1]"`` -> ``"::1"``."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def host_reference(host: str) -> str:
    """An IPv6 address in brackets, as URIs and ``host:port`` text want it (RFC 3986 §3.2.2,
    RFC 5118): ``"::1"`` -> ``"[::1]"``; other hosts unchanged. The inverse of ``host_bare``."""
    return f"[{host}]" if ":" in host else host


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason)


def parse_host_port_untrusted(text: str, what: str) -> tuple[str, int | None]:
    """Split and check ``host [":" port]`` (RFC 3261 §25.1 hostport, RFC 5118 §4.2-4.4).

    Returns the lower-cased host (an IPv6 reference keeps its brackets) and the port or None.
    ``what`` names the element in error reasons.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or len(text) > 120:
            raise _bad(f"Bad IPv6 reference in {what}")
        host = text[: close + 1]
        if not _abnf.IPV6_REFERENCE.fullmatch(host):
            raise _bad(f"Bad IPv6 reference in {what}")
        after = text[close + 1 :]
        if after and after[0] != ":":
            raise _bad(f"Bad host in {what}")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_raw = text.partition(":")
        if ":" in port_text_raw:
            # RFC 5118 §4.2: an IPv6 address must be written as a bracketed reference.
            raise _bad(f"IPv6 address without brackets in {what}")
        if not _abnf.HOSTNAME_OR_IPV4.fullmatch(host):
            raise _bad(f"Bad host in {what}")
        port_text = port_text_raw if colon else None
    if port_text is None:
        return host.lower(), None
    if not _abnf.PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise _bad(f"Bad port in {what}")
    return host.lower(), int(port_text)


def _parse_uri_params(text: str, what: str) -> Params:
    params: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not _abnf.PARAMCHARS.fullmatch(name):
            raise _bad(f"Bad parameter in {what}")
        if eq:
            if not _abnf.PARAMCHARS.fullmatch(value):
                raise _bad(f"Bad parameter value in {what}")
            params.append((name.lower(), value))
        else:
            params.append((name.lower(), None))
    return tuple(params)


def _parse_sip(scheme: str, rest: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        if "@" in rest:
            raise _bad("Unescaped @ in SIP URI")
        user_text, colon, password_text = userinfo.partition(":")
        if not _abnf.USER.fullmatch(user_text):
            raise _bad("Bad user part in SIP URI")
        user = user_text
        if colon:
            if not _abnf.PASSWORD.fullmatch(password_text):
                raise _bad("Bad password in SIP URI")
            password = password_text
    rest, question, headers = rest.partition("?")
    hostport, semi, param_text = rest.partition(";")
    host, port = parse_host_port_untrusted(hostport, "SIP URI")
    params = _parse_uri_params(param_text, "SIP URI") if semi else ()
    if question:
        if not _abnf.URI_HEADERS.fullmatch(headers):
            raise _bad("Bad headers in SIP URI")
        return SipUri(scheme, user, password, host, port, params, headers)
    return SipUri(scheme, user, password, host, port, params, None)


def _parse_tel(rest: str) -> TelUri:
    number, semi, param_text = rest.partition(";")
    if not _abnf.TEL_NUMBER.fullmatch(number):
        raise _bad("Bad tel URI number")
    return TelUri(number, _parse_uri_params(param_text, "tel URI") if semi else ())


def parse_uri_untrusted(text: str) -> SipUri | TelUri | AbsoluteUri:
    """Parse a URI as it appears in a Request-URI or inside ``<...>``.

    Args:
        text: the URI text, without angle brackets.

    Returns:
        a ``SipUri`` for sip/sips, a ``TelUri`` for tel, an ``AbsoluteUri`` for any other scheme.

    Raises:
        RemoteProtocolError: (status_hint 400) the text is not a URI; embedded whitespace is an
            error (RFC 4475 §3.1.2.8), and so is an IPv6 address without brackets (RFC 5118 §4.2).
    """
    return _parse_uri(text)


@functools.lru_cache(maxsize=8192)
def _parse_uri(text: str) -> SipUri | TelUri | AbsoluteUri:
    if " " in text or "\t" in text:
        raise _bad("URI contains whitespace")
    scheme, colon, rest = text.partition(":")
    if not colon:
        raise _bad("URI has no scheme")
    lowered = scheme.lower()
    if lowered == "sip" or lowered == "sips":
        return _parse_sip(lowered, rest)
    if not _abnf.SCHEME.fullmatch(scheme):
        raise _bad("Bad URI scheme")
    if lowered == "tel":
        return _parse_tel(rest)
    if not _abnf.ABSOLUTE_URI_REST.fullmatch(rest):
        raise _bad("Malformed URI")
    return AbsoluteUri(lowered, rest)
