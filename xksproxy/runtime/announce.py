"""What the launcher tells the operator: diagnostics on stderr, the start-up lines on stdout.

Why the start-up lines wait for a real answer: a bound socket alone does not mean a worker has
built its app and opened its HSM pools; tests and operators wait for ``xksproxy: listening on``
and must be able to send a request the moment it appears.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
import time

from xksproxy.runtime import sdnotify
from xksproxy.runtime.plan import Plan

_READY_TIMEOUT_S = 120.0


def say(message: str) -> None:
    """One ``xksproxy: ...`` diagnostic line on stderr."""
    print(f"xksproxy: {message}", file=sys.stderr, flush=True)


def warn_plain_http() -> None:
    bar = "!" * 78
    for line in (
        bar,
        "WARNING: plain HTTP, NO TLS. KMS traffic (plaintext data keys) crosses this socket in",
        "the clear. Only acceptable behind a load balancer that terminates TLS INSIDE your",
        "trust boundary. Remove --plain-http / [server] plain_http for direct KMS traffic.",
        bar,
    ):
        say(line)


def announce_when_ready(p: Plan, stop: threading.Event, metrics_url: str | None) -> None:
    """Print the start-up lines once a worker answers (a bound socket alone is not enough)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        if probe(p):
            if stop.is_set():
                return
            print(f"xksproxy: listening on {p.url}", flush=True)
            for name, path in p.stores:
                print(f"xksproxy: key store {name}: {path}", flush=True)
            if metrics_url:
                print(f"xksproxy: metrics on {metrics_url}", flush=True)
            sdnotify.ready(f"listening on {p.url}")  # systemd Type=notify: started now
            return
        stop.wait(0.05)


def probe(p: Plan) -> bool:
    """True when a worker process reacts on the socket.

    TLS: send a ClientHello and wait for the first server byte (never finish the handshake, so an
    mTLS listener does not log a refused client). Plain: send ``GET /ping`` and wait for a byte.
    """
    try:
        with socket.create_connection((p.host, p.port), timeout=1.0) as sock:
            if p.plain_http:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                sock.sendall(outgoing.read())
            return bool(sock.recv(1))
    except OSError:
        return False
