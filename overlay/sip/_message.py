"""SIP messages: the header container, parsing, serialising and building responses.

Theory of operation
-------------------
This is the hot path of the proxy: every message is parsed once and serialised once per hop, so
the parser is lazy (DESIGN.md, "Performance notes"). ``parse_message_untrusted`` does only this:

1. skip leading CRLFs (RFC 3261 §7.5), find the empty line, decode the header section as UTF-8
   (RFC 3261 §7.3.1: values are TEXT-UTF8, so anything else is malformed);
2. unfold continuation lines (§7.3.1) with one regex, and only when the section contains any;
3. split each field line with ``str.partition(":")`` and canonicalise its name with one dict
   lookup; values stay raw strings, stripped of surrounding whitespace;
4. validate the start line and the headers every later layer relies on: the top Via, From, To,
   Call-ID, CSeq (and its method against the request's), Max-Forwards and Content-Length.

Every other header is never looked at, and ``serialize`` writes it back exactly as received
(names in canonical case). Structured values (``Via``, ``NameAddr``, ``CSeq``) are built only when
a property such as ``Request.top_via`` is read.

Error handling
--------------
Every problem raises ``RemoteProtocolError`` with a reason that names it and is safe to use as a
reason phrase. Its ``status_hint`` is the response to send, except that it is ``None`` whenever no
response is possible: for a response message, an ACK, or a request without any Via. For a request
the error also carries the header fields that were split, so ``make_error_response`` can build the
answer (RFC 3261 §8.2.6) without a parsed message.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from . import _abnf
from ._errors import LocalProtocolError, RemoteProtocolError
from ._headers import (
    CANONICAL,
    KNOWN_METHODS,
    KNOWN_NAMES,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    split_list_untrusted,
)
from ._uri import SipUri, parse_uri_untrusted

__all__ = [
    "REASON_PHRASES",
    "Headers",
    "Message",
    "Request",
    "Response",
    "make_error_response",
    "make_response",
    "parse_message_untrusted",
    "serialize",
]


def _checked_name(name: str) -> str:
    canonical = canonical_name(name)
    if not _abnf.HEADER_NAME.fullmatch(canonical):
        raise LocalProtocolError(f"Bad header name {canonical!r}")
    return canonical


def _checked_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise LocalProtocolError("Header value contains CR or LF")
    return value.strip(" \t")


class Headers:
    """Ordered header fields: list of [canonical name, raw value] pairs (folding unfolded,
    surrounding whitespace stripped).

    Lookups go by ``canonical_name()``, so they are case-insensitive and accept compact forms,
    for unknown names too. A field line with several comma-separated values stays one field until
    a method needs its elements (``values``, ``first_value``, ``pop_first_value``,
    ``replace_first_value``); those split with ``split_list_untrusted`` and so raise
    ``RemoteProtocolError`` on a malformed value. Splitting is only meaningful for headers whose
    grammar is a comma-separated list (Via, Route, Record-Route, Contact, ...), not for Date or
    WWW-Authenticate.

    Values added by this side are checked: a CR or LF raises ``LocalProtocolError``, because it
    would let text be injected into the message.

    The structured values the message accessors build (top Via, From, To, Call-ID, CSeq,
    Max-Forwards) are remembered in ``_memo``, by canonical header name, until a field of that
    name changes: every method that changes fields forgets the name it changed. A copy gets a
    copy of the memo, as its fields are the same.
    """

    __slots__ = ("_fields", "_memo")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = [
            (_checked_name(name), _checked_value(value)) for name, value in fields
        ]
        self._memo: dict[str, object] | None = None

    @classmethod
    def _trusted(
        cls, fields: list[tuple[str, str]], memo: dict[str, object] | None = None
    ) -> Headers:
        """Wrap fields that are already canonical and clean (from the parser): no copy."""
        headers = cls.__new__(cls)
        headers._fields = fields
        headers._memo = memo
        return headers

    def _remember(self, key: str, value: object) -> None:
        memo = self._memo
        if memo is None:
            self._memo = {key: value}
        else:
            memo[key] = value

    def _forget(self, key: str) -> None:
        """A field named ``key`` (canonical) changed: what was built from it is stale."""
        memo = self._memo
        if memo is not None:
            memo.pop(key, None)

    def _positions(self, name: str) -> list[int]:
        key = canonical_name(name)
        if key in KNOWN_NAMES:
            return [index for index, (field, _) in enumerate(self._fields) if field == key]
        # An unknown name never lower-cases to a known one (canonical_name would have mapped it).
        key = key.lower()
        return [index for index, (field, _) in enumerate(self._fields) if field.lower() == key]

    def _first_index(self, name: str) -> int:
        """Index of the first field of that name, or -1; stops at the first match."""
        key = CANONICAL.get(name)
        if key is not None:
            for index, (field, _) in enumerate(self._fields):
                if field == key:
                    return index
            return -1
        positions = self._positions(name)
        return positions[0] if positions else -1

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._first_index(name) >= 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._fields == other._fields

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def copy(self) -> Headers:
        memo = self._memo
        return Headers._trusted(list(self._fields), None if memo is None else memo.copy())

    def get(self, name: str) -> str | None:
        """The first field's raw value, or None."""
        key = CANONICAL.get(name)
        if key is not None:
            for field, value in self._fields:
                if field == key:
                    return value
            return None
        positions = self._positions(name)
        return self._fields[positions[0]][1] if positions else None

    def get_all(self, name: str) -> list[str]:
        """Every field's raw value, in order."""
        return [self._fields[index][1] for index in self._positions(name)]

    def values(self, name: str) -> list[str]:
        """Every element of every field of that name, in order.

        Raises:
            RemoteProtocolError: a field value is not a well-formed list.
        """
        field = canonical_name(name)
        return [
            item
            for index in self._positions(name)
            for item in split_list_untrusted(self._fields[index][1], field=field)
        ]

    def first_value(self, name: str) -> str | None:
        """The first element of the first field of that name, or None.

        Raises:
            RemoteProtocolError: that field's value is not a well-formed list.
        """
        value = self.get(name)
        if value is None:
            return None
        if '"' not in value and "<" not in value:
            return value.partition(",")[0].rstrip(" \t")
        return split_list_untrusted(value, field=canonical_name(name))[0]

    def add(self, name: str, value: str) -> None:
        """Append a field at the end."""
        key = _checked_name(name)
        self._forget(key)
        self._fields.append((key, _checked_value(value)))

    def insert_first(self, name: str, value: str) -> None:
        """Put a new field before the first field of that name, or at the very top if none
        (RFC 3261 §16.6 step 8: a proxy's Via goes above the others)."""
        index = self._first_index(name)
        key = _checked_name(name)
        self._forget(key)
        self._fields.insert(max(index, 0), (key, _checked_value(value)))

    def insert_top_via(self, value: str, via: Via) -> None:
        """Put this side's own Via on top; ``via`` is ``value`` parsed, remembered for
        ``top_via`` (a Via built here need not be parsed back)."""
        self.insert_first("Via", value)
        self._remember("Via", via)

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first element; a comma-joined field keeps its other elements.

        Raises:
            RemoteProtocolError: that field's value is not a well-formed list.
        """
        index = self._first_index(name)
        if index < 0:
            return None
        field, value = self._fields[index]
        items = split_list_untrusted(value, field=field)
        self._forget(field)
        if len(items) == 1:
            del self._fields[index]
        else:
            self._fields[index] = (field, ", ".join(items[1:]))
        return items[0]

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first element, keeping the other elements of its field.

        Raises:
            LocalProtocolError: there is no field of that name.
            RemoteProtocolError: that field's value is not a well-formed list.
        """
        value = _checked_value(value)
        index = self._first_index(name)
        if index < 0:
            raise LocalProtocolError(f"No {canonical_name(name)} header to replace")
        field, old = self._fields[index]
        self._forget(field)
        if "," not in old and '"' not in old:
            self._fields[index] = (field, value)
            return
        items = split_list_untrusted(old, field=field)
        items[0] = value
        self._fields[index] = (field, ", ".join(items))

    def set(self, name: str, value: str) -> None:
        """Replace all fields of the name with one, at the place of the first (or the end)."""
        new = (_checked_name(name), _checked_value(value))
        positions = self._positions(name)
        self._forget(new[0])
        if not positions:
            self._fields.append(new)
            return
        self._fields[positions[0]] = new
        for index in reversed(positions[1:]):
            del self._fields[index]

    def remove(self, name: str) -> int:
        """Remove all fields of the name; returns how many were removed."""
        positions = self._positions(name)
        if positions:
            self._forget(canonical_name(name))
        for index in reversed(positions):
            del self._fields[index]
        return len(positions)


def _require(headers: Headers, name: str, hint: int | None) -> str:
    value = headers.get(name)
    if value is None:
        raise RemoteProtocolError(f"Missing {name} header", status_hint=hint)
    return value


class _MessageMixin:
    """The header accessors shared by Request and Response.

    They parse on first access and remember the result in the headers' memo until the headers
    change; they raise ``RemoteProtocolError`` with the class's status hint: 400 for a request,
    None for a response (a failure is not remembered).
    """

    __slots__ = ()
    _HINT: ClassVar[int | None]
    headers: Headers

    @property
    def call_id(self) -> str:
        headers = self.headers
        memo = headers._memo
        if memo is not None and (found := memo.get("Call-ID")) is not None:
            return found  # type: ignore[return-value]
        value = _require(headers, "Call-ID", self._HINT)
        headers._remember("Call-ID", value)
        return value

    @property
    def cseq(self) -> CSeq:
        headers = self.headers
        memo = headers._memo
        if memo is not None and (found := memo.get("CSeq")) is not None:
            return found  # type: ignore[return-value]
        value = _require(headers, "CSeq", self._HINT)
        try:
            cseq = CSeq.parse_untrusted(value)
        except RemoteProtocolError as exc:
            exc.status_hint = self._HINT
            raise
        headers._remember("CSeq", cseq)
        return cseq

    @property
    def top_via(self) -> Via:
        headers = self.headers
        memo = headers._memo
        if memo is not None and (found := memo.get("Via")) is not None:
            return found  # type: ignore[return-value]
        try:
            value = headers.first_value("Via")
            if value is None:
                raise RemoteProtocolError("Missing Via header")
            via = Via.parse_untrusted(value)
        except RemoteProtocolError as exc:
            exc.status_hint = self._HINT
            raise
        headers._remember("Via", via)
        return via

    @property
    def vias(self) -> list[Via]:
        try:
            return [Via.parse_untrusted(value) for value in self.headers.values("Via")]
        except RemoteProtocolError as exc:
            exc.status_hint = self._HINT
            raise

    def _name_addr(self, name: str) -> NameAddr:
        headers = self.headers
        memo = headers._memo
        if memo is not None and (found := memo.get(name)) is not None:
            return found  # type: ignore[return-value]
        value = _require(headers, name, self._HINT)
        try:
            parsed = NameAddr.parse_untrusted(value, field=name)
        except RemoteProtocolError as exc:
            exc.status_hint = self._HINT
            raise
        headers._remember(name, parsed)
        return parsed

    @property
    def from_tag(self) -> str | None:
        return self._name_addr("From").tag

    @property
    def to_tag(self) -> str | None:
        return self._name_addr("To").tag


@dataclass(slots=True, eq=False)
class Request(_MessageMixin):
    """A SIP request. ``uri`` is the Request-URI text exactly as received."""

    _HINT: ClassVar[int | None] = 400

    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 §20.22), None when absent."""
        headers = self.headers
        memo = headers._memo
        if memo is not None and "Max-Forwards" in memo:
            return memo["Max-Forwards"]  # type: ignore[return-value]
        value = headers.get("Max-Forwards")
        number = None if value is None else _parse_max_forwards(value)
        headers._remember("Max-Forwards", number)
        return number

    def copy(self) -> Request:
        return Request(self.method, self.uri, self.headers.copy(), self.body)


@dataclass(slots=True, eq=False)
class Response(_MessageMixin):
    """A SIP response. ``reason`` may be empty (RFC 4475 §3.1.1.13)."""

    _HINT: ClassVar[int | None] = None

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)


Message = Request | Response

# RFC 3261 §21, plus the codes of later RFCs that a proxy may see or send.
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

# RFC 3261 §7.3.1: a continuation line starts with SP or HTAB; it and the CRLF before it are
# equivalent to one SP.
_FOLD = re.compile(r"[ \t]*\r\n[ \t]+")

# Headers that must appear at most once (RFC 4475 §3.3.8, §3.3.9).
_SINGLE = frozenset(("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length"))
# RFC 3261 §8.1.1: besides Via, every message carries these (checked in this order).
_MANDATORY = ("From", "To", "Call-ID", "CSeq")

_BARE_CR_LF = re.compile(r"\r(?!\n)|(?<!\r)\n")

_REASON_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _parse_max_forwards(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise RemoteProtocolError("Bad Max-Forwards")
    # Leading zeros are legal (RFC 4475 §3.1.1.1); strip them before int(), which refuses
    # strings of more than 4300 digits.
    digits = value.lstrip("0")
    if len(digits) > 3:
        raise RemoteProtocolError("Max-Forwards out of range")
    number = int(digits or "0")
    if number > 255:
        raise RemoteProtocolError("Max-Forwards out of range")
    return number


def _canonical_untrusted(name: str) -> str | None:
    """The slow path of header-name lookup: LWS before the colon, odd case, unknown names."""
    name = name.rstrip(" \t")
    known = canonical_name(name)
    if known in KNOWN_NAMES:
        return known
    return name if _abnf.HEADER_NAME.fullmatch(name) else None


def _good_line(line: str) -> bool:
    name, colon, _ = line.partition(":")
    return bool(colon) and _canonical_untrusted(name) is not None


def _bad_line_reason(section: str) -> str:
    """Name the first malformed field line, numbered as on the wire (the start line is 1)."""
    current: str | None = None
    current_number = 0
    for number, line in enumerate(section.split("\r\n"), start=2):
        if current is not None and line[:1] in (" ", "\t"):
            current += " " + line.strip(" \t")
            continue
        if current is not None and not _good_line(current):
            break
        current, current_number = line, number
    else:
        if current is None or _good_line(current):
            return "Malformed header section"
    return f"Malformed header line {current_number}"


def _decode_head(head: bytes) -> tuple[str, str | None]:
    """Decode the start line and header fields; returns the text and the first problem found.

    The text is always usable for splitting (so that an error response can still be built):
    undecodable bytes are replaced and bare CRs / LFs become SPs, so they can never reach a
    header value and be written back out.
    """
    problem = None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("utf-8", "replace")
        problem = "Header section is not valid UTF-8"
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:
        text = _BARE_CR_LF.sub(" ", text)
        problem = problem or "Bare CR or LF in header section"
    return text, problem


def _split_fields(section: str) -> tuple[list[tuple[str, str]], bool]:
    """Split the field lines after the start line; returns (fields, all lines were good)."""
    if not section:
        return [], True
    if "\r\n " in section or "\r\n\t" in section:
        section = _FOLD.sub(" ", section)
    fields: list[tuple[str, str]] = []
    append = fields.append
    good = True
    for line in section.split("\r\n"):
        name, colon, value = line.partition(":")
        key = CANONICAL.get(name)
        if key is None or not colon:
            key = _canonical_untrusted(name) if colon else None
            if key is None:
                good = False
                continue
        append((key, value.strip(" \t")))
    return fields, good


class _Progress:
    """What the parser knew when it failed, to choose the status hint and attach headers."""

    __slots__ = ("headers", "method", "request")

    def __init__(self) -> None:
        self.request = False
        self.method = ""
        self.headers: Headers | None = None


def _finish_error(exc: RemoteProtocolError, progress: _Progress) -> None:
    """Apply the rule: a response is possible only to a request (not ACK) that has a Via."""
    if not progress.request:
        exc.status_hint = None
        exc.headers = None
        return
    headers = progress.headers
    exc.headers = headers
    if headers is None or progress.method == "ACK" or "Via" not in headers:
        exc.status_hint = None


def error_for_head(reason: str, status_hint: int | None, head: bytes) -> RemoteProtocolError:
    """A framing error about ``head`` (start line and field lines), with the split headers
    attached and the status hint chosen as ``parse_message_untrusted`` would."""
    exc = RemoteProtocolError(reason, status_hint=status_hint)
    progress = _Progress()
    text = _decode_head(head.lstrip(b"\r\n"))[0]
    first, _, section = text.partition("\r\n")
    progress.request = bool(first) and not first.startswith("SIP/")
    progress.method = first.partition(" ")[0]
    progress.headers = Headers._trusted(_split_fields(section)[0])
    _finish_error(exc, progress)
    return exc


def parse_message_untrusted(data: bytes, *, stream: bool = False, max_size: int = 65535) -> Message:
    """Parse one SIP message (RFC 3261 §7, §18.3; RFC 4475).

    Args:
        data: a whole UDP datagram, or (``stream=True``) exactly one message framed by
            ``StreamFramer``.
        stream: whether ``data`` came from a stream transport. Then Content-Length is mandatory
            and must match the body exactly; in a datagram it may be absent (the body is the
            rest) and bytes after the body are ignored (RFC 4475 §3.1.1.8).
        max_size: larger messages are refused with 513.

    Returns:
        a ``Request`` or a ``Response``; only the mandatory headers have been validated.

    Raises:
        RemoteProtocolError: the only exception. ``status_hint`` is the status to answer with
            (400, 505 or 513), or None when no answer is possible; for a request, ``headers``
            holds the fields that could be split (see ``make_error_response``).
    """
    progress = _Progress()
    try:
        return _parse(data, stream, max_size, progress)
    except RemoteProtocolError as exc:
        _finish_error(exc, progress)
        raise


def _parse(data: bytes, stream: bool, max_size: int, progress: _Progress) -> Message:
    start = 0
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 §7.5: CRLFs before the start line are ignored.
        start = len(data) - len(data.lstrip(b"\r\n"))
    end = data.find(b"\r\n\r\n", start)
    head = data[start:end] if end >= 0 else data[start:].removesuffix(b"\r\n")
    text, problem = _decode_head(head)
    first, _, section = text.partition("\r\n")
    progress.request = request = not first.startswith("SIP/")
    progress.method = method = first.partition(" ")[0]
    fields, good = _split_fields(section)
    headers = Headers._trusted(fields)
    progress.headers = headers

    if not first:
        raise RemoteProtocolError("Empty message")
    if problem is not None:
        raise RemoteProtocolError(problem)
    if end < 0:
        raise RemoteProtocolError("Header section not terminated by an empty line")
    if not good:
        raise RemoteProtocolError(_bad_line_reason(section))
    if len(data) > max_size:
        raise RemoteProtocolError("Message Too Large", status_hint=513)

    if request:
        uri = _check_request_line(first)
    else:
        status, reason = _parse_status_line(first)

    # The headers every later layer relies on; singletons must not repeat (RFC 4475 §3.3.8).
    top_via: str | None = None
    seen: dict[str, str] = {}
    for name, value in fields:
        if name in _SINGLE:
            if name in seen:
                raise RemoteProtocolError(f"Multiple {name} headers")
            seen[name] = value
        elif name == "Via" and top_via is None:
            top_via = value
    if top_via is None:
        raise RemoteProtocolError("Missing Via header")
    for name in _MANDATORY:
        if name not in seen:
            raise RemoteProtocolError(f"Missing {name} header")
    call_id = seen["Call-ID"]
    # What the accessors would compute, remembered for them (``Headers._memo``).
    memo: dict[str, object] = {"Call-ID": call_id}
    if '"' in top_via:
        Via.parse_untrusted(split_list_untrusted(top_via, field="Via")[0])
    elif "<" in top_via:
        Via.parse_untrusted(top_via.partition(",")[0].rstrip(" \t"))
    else:
        # Exactly what ``first_value("Via")`` yields for such a value.
        memo["Via"] = Via.parse_untrusted(top_via.partition(",")[0].rstrip(" \t"))
    memo["From"] = NameAddr.parse_untrusted(seen["From"], field="From")
    memo["To"] = NameAddr.parse_untrusted(seen["To"], field="To")
    if not _abnf.CALL_ID.fullmatch(call_id):
        raise RemoteProtocolError("Bad Call-ID")
    memo["CSeq"] = cseq = CSeq.parse_untrusted(seen["CSeq"])
    if request:
        if cseq.method != method:
            raise RemoteProtocolError("CSeq method does not match request method")
        max_forwards = seen.get("Max-Forwards")
        memo["Max-Forwards"] = None if max_forwards is None else _parse_max_forwards(max_forwards)

    body_start = end + 4
    length_text = seen.get("Content-Length")
    if length_text is None:
        if stream:
            raise RemoteProtocolError("Missing Content-Length")
        body = data[body_start:]
    else:
        if not (length_text.isascii() and length_text.isdigit()):
            raise RemoteProtocolError("Bad Content-Length")
        available = len(data) - body_start
        digits = length_text.lstrip("0")
        if len(digits) > 10 or int(digits or "0") > available:
            raise RemoteProtocolError("Content-Length larger than message")
        length = int(digits or "0")
        if stream and length != available:
            raise RemoteProtocolError("Content-Length does not match the framed message")
        body = data[body_start : body_start + length]

    headers._memo = memo
    if request:
        return Request(method, uri, headers, body)
    return Response(status, reason, headers, body)


def _check_request_line(line: str) -> str:
    """RFC 3261 §7.1: Method SP Request-URI SP SIP-Version, single SPs (RFC 4475 §3.1.2.9/10)."""
    parts = line.split(" ")
    if len(parts) != 3:
        if "" in parts:
            raise RemoteProtocolError("Extra SP in Request-Line")
        if len(parts) > 3:
            raise RemoteProtocolError("Request-URI contains whitespace")
        raise RemoteProtocolError("Malformed Request-Line")
    method, uri, version = parts
    if version != "SIP/2.0":
        if not _abnf.SIP_VERSION.fullmatch(version):
            raise RemoteProtocolError("Malformed Request-Line")
        if version.upper() != "SIP/2.0":
            raise RemoteProtocolError("Version Not Supported", status_hint=505)
    if method not in KNOWN_METHODS and not _abnf.METHOD.fullmatch(method):
        raise RemoteProtocolError("Bad method")
    if uri.startswith("<"):
        # RFC 4475 §3.1.2.7
        raise RemoteProtocolError("Request-URI enclosed in <>")
    try:
        parsed = parse_uri_untrusted(uri)
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"Bad Request-URI: {exc.reason}") from None
    if isinstance(parsed, SipUri) and parsed.headers is not None:
        # RFC 3261 §19.1.1 (table): headers are not allowed in a Request-URI; RFC 4475 §3.1.2.11.
        raise RemoteProtocolError("Request-URI contains headers")
    return uri


def _parse_status_line(line: str) -> tuple[int, str]:
    """RFC 3261 §7.2: SIP-Version SP Status-Code SP Reason-Phrase (phrase may be empty)."""
    version, _, rest = line.partition(" ")
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        raise RemoteProtocolError("Version Not Supported", status_hint=505)
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not "1" <= code[0] <= "6":
        raise RemoteProtocolError("Bad status code")
    if _REASON_FORBIDDEN.search(reason):
        raise RemoteProtocolError("Control character in Reason-Phrase")
    return int(code), reason


def serialize(message: Message) -> bytes:
    """The wire form of a message, with a Content-Length that matches the body.

    The Content-Length field is rewritten where it was (or appended at the end); every other
    field is written back as stored.

    Raises:
        LocalProtocolError: the start line would be malformed (SP, CR or LF in the method or
            Request-URI, CR or LF in the reason phrase).
    """
    if isinstance(message, Request):
        if " " in message.uri or " " in message.method:
            raise LocalProtocolError("SP in method or Request-URI")
        start = f"{message.method} {message.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {message.status} {message.reason}"
    if "\r" in start or "\n" in start:
        raise LocalProtocolError("CR or LF in start line")
    lines = [start]
    body = message.body
    length = str(len(body))
    append = lines.append
    wrote_length = False
    for name, value in message.headers._fields:
        if name == "Content-Length":
            if wrote_length:
                continue
            wrote_length = True
            value = length
        append(f"{name}: {value}")
    if not wrote_length:
        append("Content-Length: " + length)
    append("\r\n")
    head = "\r\n".join(lines).encode()
    return head + body if body else head


def _first_fields(headers: Headers, status: int, to_tag: str | None) -> list[tuple[str, str]]:
    """RFC 3261 §8.2.6.2: Via (all, in order), From, To, Call-ID and CSeq of the request, and
    Timestamp for a 100 (§8.2.6.1). Singletons are copied once."""
    fields: list[tuple[str, str]] = []
    copied: set[str] = set()
    for name, value in headers:
        if name == "Via":
            fields.append((name, value))
        elif name in ("From", "Call-ID", "CSeq") or (name == "Timestamp" and status == 100):
            if name not in copied:
                copied.add(name)
                fields.append((name, value))
        elif name == "To" and name not in copied:
            copied.add(name)
            if to_tag is not None and status > 100:
                try:
                    has_tag = NameAddr.parse_untrusted(value, field="To").tag is not None
                except RemoteProtocolError:
                    has_tag = True  # leave a malformed To alone
                if not has_tag:
                    value = f"{value};tag={to_tag}"
            fields.append((name, value))
    return fields


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """Build a response to ``request`` as RFC 3261 §8.2.6 says.

    Args:
        request: the request answered.
        status: 100-699.
        reason: the reason phrase; defaults to the standard one for the code.
        to_tag: added to To when the status is above 100 and To has no tag yet (§8.2.6.2).

    Raises:
        LocalProtocolError: bad status, reason phrase with CR/LF, or a to_tag that is not a
            token.
    """
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"Bad status code {status}")
    if reason is None:
        reason = REASON_PHRASES.get(status) or REASON_PHRASES[status // 100 * 100]
    elif "\r" in reason or "\n" in reason:
        raise LocalProtocolError("CR or LF in reason phrase")
    if to_tag is not None and not _abnf.TOKEN.fullmatch(to_tag):
        raise LocalProtocolError("to_tag is not a token")
    return Response(
        status, reason, Headers._trusted(_first_fields(request.headers, status, to_tag))
    )


def _stateless_tag(headers: Headers) -> str:
    """A To tag that is the same for every retransmission of a request (RFC 3261 §8.2.7 asks a
    stateless UAS to answer a retransmission identically), and needs no state or randomness."""
    digest = hashlib.blake2s(digest_size=8)
    for name in ("Call-ID", "From", "CSeq", "Via"):
        digest.update((headers.get(name) or "").encode())
        digest.update(b"\0")
    return digest.hexdigest()


def make_error_response(error: RemoteProtocolError) -> Response | None:
    """The response to a request that ``parse_message_untrusted`` rejected.

    Returns:
        a response with ``error.status_hint`` as status (400, 505, 513) and ``error.reason`` as
        the reason phrase, carrying the request's Via, From, To (with a To tag derived from the
        request if it had none), Call-ID and CSeq; or None when no response is possible
        (no hint, no headers, or no Via to send it along).
    """
    headers = error.headers
    status = error.status_hint
    if status is None or headers is None or "Via" not in headers:
        return None
    reason = _REASON_FORBIDDEN.sub(" ", error.reason)
    tag = _stateless_tag(headers) if status > 100 else None
    return Response(status, reason, Headers._trusted(_first_fields(headers, status, tag)))
