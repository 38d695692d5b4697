"""Message framing on stream transports (RFC 3261 §18.3), the h11 ``ReceiveBuffer`` way.

On TCP/TLS the only frame boundary is Content-Length, which is mandatory there. The framer
finds the empty line that ends a header section, reads Content-Length from the head, and waits
until the whole body is there. It remembers how far it has already searched for CRLFCRLF and the
size of the message once the head is known, so feeding a message one byte at a time costs O(n),
not O(n²).
"""

from __future__ import annotations

import re

from ._errors import LocalProtocolError, RemoteProtocolError
from ._message import error_for_head

__all__ = ["StreamFramer"]

# RFC 3261 §7.3.1, §20.14: Content-Length or its compact form "l", LWS before the colon, the
# value up to the end of the (unfolded) line. The start line is excluded by the leading CRLF.
_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_FOLD = re.compile(rb"[ \t]*\r\n[ \t]+")


class StreamFramer:
    """Splits a TCP byte stream into messages by Content-Length (RFC 3261 §18.3), O(n).

    Usage: ``receive_data(chunk)`` for each read (``b""`` at EOF), then call ``next_message()``
    until it returns None, handing each message to ``parse_message_untrusted(data,
    stream=True)``.

    Error handling: when framing cannot continue (missing, repeated or bad Content-Length, head
    or message larger than ``max_size``, EOF in the middle of a message) ``next_message`` raises
    ``RemoteProtocolError``; the status hint is 400 or 513 with the request's headers attached
    (see ``make_error_response``), or None when no answer is possible. The framer then stays in
    that error state: every later ``next_message`` raises again and received data is dropped.
    The connection must be closed.
    """

    def __init__(self, *, max_size: int = 65535) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        # How much of the buffer is known not to contain CRLFCRLF (minus a 3-byte overlap).
        self._searched = 0
        # The size of the message at the front of the buffer, once its head has been read.
        self._message_size: int | None = None
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def closed(self) -> bool:
        """EOF was received and no message bytes are left (keep-alive CRLFs do not count)."""
        return self._eof and not self._buffer.lstrip(b"\r\n")

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the stream; ``b""`` means EOF.

        Raises:
            LocalProtocolError: data after EOF.
        """
        if self._error is not None:
            return
        if not data:
            self._eof = True
        elif self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        else:
            self._buffer += data

    def _fail(self, error: RemoteProtocolError) -> RemoteProtocolError:
        self._error = error
        self._buffer.clear()
        return error

    def next_message(self) -> bytes | None:
        """The next complete message's bytes, or None if more data is needed.

        Raises:
            RemoteProtocolError: framing cannot continue (see the class docstring).
        """
        if self._error is not None:
            error = self._error
            raise RemoteProtocolError(
                error.reason, status_hint=error.status_hint, headers=error.headers
            )
        buffer = self._buffer
        size = self._message_size
        if size is None:
            if buffer and buffer[0] in b"\r\n":
                # RFC 5626 §4.4.1 keep-alives (and RFC 3261 §7.5 CRLFs before a start line).
                del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
                self._searched = 0
            end = buffer.find(b"\r\n\r\n", max(self._searched - 3, 0))
            if end < 0:
                self._searched = len(buffer)
                if len(buffer) > self._max_size:
                    head = bytes(buffer[: buffer.rfind(b"\r\n")])
                    raise self._fail(error_for_head("Message Too Large", 513, head))
                if self._eof and buffer:
                    raise self._fail(RemoteProtocolError("EOF inside a message", status_hint=None))
                return None
            head = bytes(buffer[:end])
            size = end + 4 + self._content_length(head)
            if size > self._max_size:
                raise self._fail(error_for_head("Message Too Large", 513, head))
            self._message_size = size
        if len(buffer) < size:
            if self._eof:
                raise self._fail(RemoteProtocolError("EOF inside a message", status_hint=None))
            return None
        message = bytes(buffer[:size])
        del buffer[:size]
        self._message_size = None
        self._searched = 0
        return message

    def _content_length(self, head: bytes) -> int:
        if b"\r\n " in head or b"\r\n\t" in head:
            head = _FOLD.sub(b" ", head)
        values = _CONTENT_LENGTH.findall(head)
        if not values:
            raise self._fail(error_for_head("Missing Content-Length", 400, head))
        if len(values) > 1:
            raise self._fail(error_for_head("Multiple Content-Length headers", 400, head))
        value = values[0].strip(b" \t")
        if not value.isdigit():
            raise self._fail(error_for_head("Bad Content-Length", 400, head))
        digits = value.lstrip(b"0")  # int() refuses more than 4300 digits, zeros included
        if len(digits) > 10:
            raise self._fail(error_for_head("Message Too Large", 513, head))
        return int(digits or b"0")
