"""What the two server interfaces (ASGI for hypercorn, RSGI for granian) share around
:meth:`xksproxy.service.app.XksApp.handle`: the request-body rules and the response headers.

Why one place: each interface reads bodies and writes responses through its own API, but the
rules must not drift apart between them — the same cap, the same time bound, the same error
messages, the same headers on every answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from xksproxy.xks.errors import ValidationException

#: The most header bytes a request may carry, on both servers and both protocols: the HTTP/1.1
#: header section (request line and header lines) and the HTTP/2 header list (what SETTINGS
#: advertises as MAX_HEADER_LIST_SIZE). KMS sends well under 8 KiB; the servers' defaults
#: (granian: 16 MiB on HTTP/2, ~400 KiB on HTTP/1.1) let one small compressed stream cost
#: megabytes of decoding. Over it: 431 (HTTP/1.1) or the stream/connection is refused (HTTP/2).
MAX_HEADER_BYTES = 16384

Headers = list[tuple[str, str]]
#: ``respond(status, body, extra_headers)``: send one JSON answer.
Respond = Callable[[int, bytes, "Headers | None"], Awaitable[None]]


class Disconnected(Exception):
    """The client went away while we were reading its body."""


class BodyLimit:
    """Size cap and time bound for reading one request body.

    The time bound matters: a request holds an unauthenticated slot (:mod:`.preauth`) while its
    body is read, so a client trickling its body (slowloris) would otherwise hold it forever and
    a few hundred of them lock every other caller out with 429. It is counted from the start of
    the read, not from arrival: when a worker is starved of CPU the request deadline can pass
    before the read even starts, and a body already sitting in the buffer must not then be
    blamed on the client (the handler answers 503 past the deadline).
    """

    __slots__ = ("cap", "timeout_s")

    def __init__(self, cap: int, timeout_s: float) -> None:
        self.cap = cap
        self.timeout_s = timeout_s

    def check_declared(self, content_length: bytes | str) -> None:
        """Refuse before reading when Content-Length already says the body is over the cap."""
        if content_length.isdigit() and int(content_length) > self.cap:
            raise self.too_large()

    def too_large(self) -> ValidationException:
        return ValidationException(f"request body exceeds max_body_bytes ({self.cap})")

    def timed_out(self) -> ValidationException:
        return ValidationException(f"request body not received in full within {self.timeout_s:g} s")


_CONTENT_TYPE = ("content-type", "application/json")
#: The header an HTTP/1.1 answer carries when the connection must not be reused.
CLOSE: Headers = [("connection", "close")]


def body_left_unread(content_length: str | bytes | None, transfer_encoding: object) -> bool:
    """Whether a request answered before its body was read carried a body at all.

    Why it matters: an answer sent without reading the body (refused early: over the size cap,
    unknown path, wrong method, 429 before authentication) leaves that body on the connection.
    The HTTP/1.1 server then closes the connection rather than read what it refused, and a
    client that reuses it in the meantime sees its *next* request fail with no answer. So such
    an answer says ``Connection: close`` (RFC 9112 section 9.6) and the client reconnects.
    """
    if transfer_encoding is not None:
        return True
    return content_length is not None and content_length not in ("0", b"0")


def response_headers(body: bytes, extra: Headers | None) -> Headers:
    """JSON content type and length, then ``extra`` (which may replace either)."""
    headers = [_CONTENT_TYPE, ("content-length", str(len(body)))]
    if extra:
        names = {k for k, _ in extra}
        headers = [h for h in headers if h[0] not in names] + extra
    return headers
