"""Run the app under hypercorn (Python ``ssl``, so mTLS subjects can be pinned), supervised here.

Why our own supervisor: hypercorn's ``run()`` loses a failed worker's exit status (it returns 0
when a worker's lifespan start-up failed) and never replaces a dead worker. Here a dead worker is
replaced; a crash loop stops the server with status 1. The private hypercorn entry points the
workers need are reached only through :mod:`xksproxy.runtime.patches`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection as mp_connection
import multiprocessing.synchronize
import signal
import ssl
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path

from hypercorn.config import Config as _HypercornBase
from hypercorn.config import Sockets

from xksproxy.runtime import patches, reload, tls
from xksproxy.runtime.announce import say
from xksproxy.runtime.plan import Plan
from xksproxy.runtime.stoplatch import StopLatch
from xksproxy.service.httpio import MAX_HEADER_BYTES

# A worker that dies is replaced (like granian's respawn); more than this many deaths within the
# window is a crash loop (e.g. the HSM is unreachable at start) and stops the server with status 1.
_CRASH_LOOP_DEATHS = 4
_CRASH_LOOP_WINDOW_S = 30.0
_RESPAWN_DELAY_S = 1.0


class HypercornConfig(_HypercornBase):
    """hypercorn ``Config`` carrying our TLS settings into each worker (module level so spawned
    workers can unpickle it) and building *our* context there: suites, ALPN, mTLS pinning."""

    xks_client_ca: str | None = None
    xks_allowed_subjects: tuple[str, ...] = ()

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if not self.ssl_enabled or self.certfile is None or self.keyfile is None:
            return None
        return tls.server_context(
            Path(self.certfile),
            Path(self.keyfile),
            client_ca_file=Path(self.xks_client_ca) if self.xks_client_ca else None,
            allowed_subjects=self.xks_allowed_subjects,
            alpn=self.alpn_protocols,
        )


def run_hypercorn(
    p: Plan, app_factory: str, before_stop: Callable[[StopLatch], None] | None = None
) -> int:
    """Serve the ASGI app ``app_factory`` (``module:function``) with ``p.workers`` workers;
    ``before_stop`` runs once a stop was requested, before the workers are told to stop."""
    cfg = HypercornConfig()
    host = f"[{p.host}]" if ":" in p.host else p.host
    cfg.bind = [f"{host}:{p.port}"]
    cfg.application_path = f"{app_factory}()"
    cfg.workers = p.workers
    cfg.worker_class = "uvloop"
    cfg.keep_alive_timeout = 75.0
    # Header caps (issue 17 item 6): h11 refuses a header section over this (431); h2 advertises
    # and enforces the header list size.
    cfg.h11_max_incomplete_size = MAX_HEADER_BYTES
    cfg.h2_max_header_list_size = MAX_HEADER_BYTES
    cfg.loglevel = "DEBUG" if p.log_level == "debug" else "WARNING"
    if not p.plain_http:
        cfg.certfile = str(p.cert_file)
        cfg.keyfile = str(p.key_file)
        cfg.xks_client_ca = str(p.client_ca_file) if p.client_ca_file else None
        cfg.xks_allowed_subjects = tuple(p.allowed_subjects)
    return supervise(cfg, before_stop)


def supervise(cfg: HypercornConfig, before_stop: Callable[[StopLatch], None] | None = None) -> int:
    """Start ``cfg.workers`` workers on shared sockets; replace dead ones; 1 on a crash loop.
    On a stop request ``before_stop(latch)`` runs first (the drain), workers still serving."""
    sockets = cfg.create_sockets()
    ctx = multiprocessing.get_context("spawn")
    shutdown = ctx.Event()
    latch = StopLatch()

    def spawn() -> BaseProcess:
        # Workers inherit "ignore SIGINT" (a terminal's Ctrl-C reaches the whole process group);
        # this process turns SIGINT/SIGTERM into one orderly shutdown through the shared event.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = ctx.Process(
                target=_worker,
                kwargs={"config": cfg, "sockets": sockets, "shutdown_event": shutdown},
            )
            proc.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        return proc

    signal.signal(signal.SIGINT, latch.handler)
    signal.signal(signal.SIGTERM, latch.handler)
    signal.signal(signal.SIGHUP, reload.request_reload)
    procs = [spawn() for _ in range(cfg.workers)]
    deaths: list[float] = []
    failed = False
    try:
        while not latch.requested:
            mp_connection.wait([*(proc.sentinel for proc in procs), latch.fileno()], timeout=0.5)
            for i, proc in enumerate(procs):
                if proc.exitcode is None or latch.requested:
                    continue
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < _CRASH_LOOP_WINDOW_S] + [now]
                if len(deaths) > _CRASH_LOOP_DEATHS:
                    failed = True
                    say("hypercorn workers keep exiting (crash loop); stopping")
                    latch.handler()
                    break
                say(f"hypercorn worker {proc.pid} exited ({proc.exitcode}); starting another")
                if not latch.wait(_RESPAWN_DELAY_S):
                    procs[i] = spawn()
        if before_stop is not None and not failed:
            before_stop(latch)
    finally:
        shutdown.set()
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()  # a graceful stop of its own (see _worker)
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
        latch.close()
        latch.release()
    return 1 if failed else 0


def _worker(
    config: HypercornConfig, sockets: Sockets, shutdown_event: multiprocessing.synchronize.Event
) -> None:
    """hypercorn's uvloop worker, also stopping gracefully on a SIGTERM sent to it alone.

    Given a shared shutdown event, hypercorn installs no signal handler in its workers, so a
    SIGTERM to one worker (an operator, or :mod:`xksproxy.runtime.lifeline` when the launcher is
    gone) killed it outright: requests cut, HSM sessions and the audit log not closed. Here SIGTERM
    goes to a :class:`StopLatch` whose flag the shutdown trigger polls with the shared event.
    """
    import asyncio

    import uvloop
    from hypercorn.utils import load_application

    latch = StopLatch()
    signal.signal(signal.SIGTERM, latch.handler)

    async def trigger() -> None:
        while not latch.requested and not shutdown_event.is_set():
            await asyncio.sleep(0.1)

    app = load_application(config.application_path, config.wsgi_max_body_size)
    patches.hypercorn_serve(app, config, sockets, trigger, uvloop.new_event_loop)
