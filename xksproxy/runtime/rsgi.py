"""granian's RSGI interface for :class:`~xksproxy.service.app.XksApp` (what `serve` runs).

Why RSGI and not ASGI under granian: the ASGI bridge builds a message dict per ``receive``/``send``
and holds the GIL while it hands the response back to Rust; RSGI reads the body and writes the
response in one call each. In runs alternated with the ASGI app it cost 8-15 % less server CPU
per Encrypt (BENCHMARKS.md, "Latest"). The request itself is served by the same
transport-neutral :meth:`XksApp.handle` as under ASGI (hypercorn), with the same body rules and
response headers (:mod:`xksproxy.service.httpio`), so routing, limits, SigV4 and every error body
are identical — except for what RSGI itself imposes (README "Known limits"):

* RSGI gives only the percent-*decoded* path. :func:`wire_path` re-encodes it, which restores the
  wire form of every path KMS can send (its paths never contain ``%``) and of any path whose
  encoded characters are not URI-unreserved. A path that percent-encodes an *unreserved*
  character (``k%65ys``, RFC 3986 says it is the same URI as ``keys``) or a ``/`` (``%2F``)
  arrives decoded: it is routed as the decoded path and its signature, computed by the client
  over the encoded form, fails (401) where ASGI answers 404/400.
* Header values are str (granian decodes them); SigV4 treats str and latin-1 bytes alike.
  granian drops a value that is not valid UTF-8, so a request that signed such a header
  fails with 401 (KMS signs only ``host``, ``x-amz-date`` and ASCII headers).
* A chunked body whose connection drops mid-way ends like a complete one (granian reports
  neither an error nor the disconnect). The truncated body then fails SigV4 (the signature
  covers the body's hash) and the request is logged 401 rather than 499; the answer goes nowhere.
  With Content-Length (what KMS sends) a short body is detected and logged 499.
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

from xksproxy.service.app import XksApp
from xksproxy.service.httpio import (
    CLOSE,
    Disconnected,
    Headers,
    body_left_unread,
    response_headers,
)

if TYPE_CHECKING:  # granian's own types (it ships py.typed); not loaded at run time for them
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

_UNRESERVED_PATH = re.compile(r"[A-Za-z0-9/._~-]*").fullmatch


def wire_path(decoded: str) -> str:
    """The request path as a client would have put it on the wire, from RSGI's decoded path."""
    if _UNRESERVED_PATH(decoded):
        return decoded
    return quote(decoded, safe="/")


async def read_body(app: XksApp, scope: Scope, protocol: HTTPProtocol) -> bytes:
    """The whole body within ``app.body_limit`` (size cap and time bound).

    With a Content-Length within the cap the body is read in one call (the HTTP layer never reads
    past the declared length); without one (chunked), it is streamed and refused as soon as it
    passes the cap, so an oversized body is never buffered in full.
    """
    limit = app.body_limit
    declared: str | None = scope.headers.get("content-length")
    expected = None
    if declared is not None:
        limit.check_declared(declared)
        expected = int(declared) if declared.isdigit() else None
    try:
        async with asyncio.timeout(limit.timeout_s):
            if expected is not None:
                body = await protocol()
            else:
                chunks: list[bytes] = []
                total = 0
                async for chunk in protocol:
                    total += len(chunk)
                    if total > limit.cap:
                        raise limit.too_large()
                    chunks.append(chunk)
                body = b"".join(chunks)
    except TimeoutError:
        raise limit.timed_out() from None
    except RuntimeError as exc:  # granian's RSGIProtocolClosed / RSGIProtocolError
        raise Disconnected from exc
    if expected is not None and len(body) < expected:
        raise Disconnected  # the connection ended before the declared length arrived
    return body


class RsgiApp:
    """The RSGI application object granian serves: one per worker, wrapping that worker's
    :class:`XksApp` (built after the fork by :func:`create_app`)."""

    def __init__(self, app: XksApp) -> None:
        self.app = app

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        await handle(self.app, scope, protocol)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        init(self.app, loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        close(self.app, loop)


def create_app() -> RsgiApp:
    """RSGI app factory for granian: ``xksproxy.runtime.rsgi:create_app``.

    The config path comes from ``XKSPROXY_CONFIG``.
    """
    from xksproxy.runtime.factory import create_app as create_asgi_app

    return RsgiApp(create_asgi_app())


async def handle(app: XksApp, scope: Scope, protocol: HTTPProtocol) -> None:
    """Serve one RSGI request with ``app``."""
    if scope.proto != "http":  # websockets are off; nothing else is served
        return
    headers: list[tuple[str, str]] = scope.headers.items()
    if scope.authority is not None:  # HTTP/2: the SigV4 ``host`` is ``:authority``
        headers.append((":authority", scope.authority))

    read_in_full = False

    async def read() -> bytes:
        nonlocal read_in_full
        body = await read_body(app, scope, protocol)
        read_in_full = True
        return body

    http1 = scope.http_version != "2"

    async def respond(status: int, body: bytes, extra: Headers | None) -> None:
        # draining: clients reconnect elsewhere; a refused body left unread: see httpio
        if http1 and (
            app.drain.close_connections
            or (
                not read_in_full
                and body_left_unread(
                    scope.headers.get("content-length"), scope.headers.get("transfer-encoding")
                )
            )
        ):
            extra = [*(extra or ()), *CLOSE]
        protocol.response_bytes(status, response_headers(body, extra), body)

    await app.handle(
        scope.method,
        wire_path(scope.path),
        scope.query_string,
        headers,
        read,
        respond,
        client=client_host(scope.client),
    )


def client_host(peer: str) -> str | None:
    """The host part of RSGI's ``scope.client`` (``"host:port"``, IPv6 maybe bracketed)."""
    if not peer:
        return None
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host.strip("[]")


def init(app: XksApp, loop: asyncio.AbstractEventLoop) -> None:
    """``__rsgi_init__``: open the HSM pools before the worker accepts connections.

    A failure ends the worker with status 1, as a failed ASGI lifespan start-up does, so
    granian's crash-loop handling stops a proxy that cannot reach its HSM.
    """
    try:
        loop.run_until_complete(app.startup())
    except Exception as exc:
        app.report_startup_failure(exc)
        sys.exit(1)


def close(app: XksApp, loop: asyncio.AbstractEventLoop) -> None:
    """``__rsgi_del__``: flush logs and close the HSM pools after the last request."""
    loop.run_until_complete(app.shutdown())
