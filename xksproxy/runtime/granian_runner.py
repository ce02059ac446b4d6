"""Run the app under granian: Rust HTTP/TLS, N worker processes, our RSGI adapter by default.

granian's private details this relies on (its stop handler, its exit flags) are patched or read
only through :mod:`xksproxy.runtime.patches`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xksproxy.runtime import patches
from xksproxy.runtime.plan import Plan
from xksproxy.runtime.stoplatch import StopLatch
from xksproxy.service.httpio import MAX_HEADER_BYTES

if TYPE_CHECKING:
    from granian.log import LogLevels

# granian logs to stdout by default; stdout carries our start-up lines and the JSON request log,
# so the server's own (plain-text) messages go to stderr with the other diagnostics.
_LOG_TO_STDERR: dict[str, Any] = {
    "handlers": {
        name: {"formatter": fmt, "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
        for name, fmt in (("console", "generic"), ("access", "access"))
    }
}


def run_granian(
    p: Plan,
    target: str,
    interface: str,
    before_stop: Callable[[StopLatch], None] | None = None,
) -> int:
    """Serve ``target`` (an app factory, ``interface`` "rsgi" or "asgi") until stopped; the exit
    status of ``serve``. ``before_stop`` runs once a stop was requested, before granian is told
    to stop (the drain, :mod:`xksproxy.runtime.drain`)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings, HTTP2Settings

    # Workers start from a fresh interpreter ("spawn"), never a fork of this process: it runs
    # threads (start-up watcher, metrics listener) whose locks a fork could copy mid-use, and
    # no PKCS#11 or other state should ever be inherited. granian uses the default start method.
    multiprocessing.set_start_method("spawn", force=True)
    server = Granian(
        target,
        address=p.host,
        port=p.port,
        interface=Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGI,
        factory=True,
        workers=p.workers,
        http=HTTPModes.auto,
        # Header caps (issue 17 item 6): hyper's read buffer bounds the HTTP/1.1 header section
        # (8 KiB is its floor), the HTTP/2 header list is advertised and enforced.
        http1_settings=HTTP1Settings(max_buffer_size=MAX_HEADER_BYTES),
        http2_settings=HTTP2Settings(max_headers_size=MAX_HEADER_BYTES),
        loop=Loops.uvloop,
        websockets=False,
        log_level=_level(p.log_level),
        log_dictconfig=_LOG_TO_STDERR,
        workers_kill_timeout=10,
        # A worker that dies (e.g. a PKCS#11 module abort) is replaced; granian still exits on
        # a crash loop, so a persistent start-up failure does not spin.
        respawn_failed_workers=True,
        ssl_cert=None if p.plain_http else Path(p.cert_file),
        ssl_key=None if p.plain_http else Path(p.key_file),
        # granian defaults to TLS 1.3 only; XKS requires 1.2 to be allowed. rustls offers only
        # forward-secret AEAD suites, so no suite list is needed. (Unused with plain HTTP.)
        ssl_protocol_min=SSLProtocols.tls12,
    )
    latch = patches.install_granian_stop(server, before_stop)
    try:
        server.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        latch.close()
    # granian returns normally after a worker died (no respawn): report it as a failure.
    return 1 if patches.granian_worker_died(server) else 0


def _level(level: str) -> LogLevels:
    from granian.log import LogLevels

    return LogLevels.debug if level == "debug" else LogLevels.warning
