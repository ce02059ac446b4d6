"""`xksproxy serve`: run the ASGI app under granian or hypercorn with N worker processes.

Why a launcher of our own rather than the servers' CLIs: the TLS policy (TLS 1.2/1.3, forward-secret
AEAD suites, mTLS with subject pinning), the worker model (the app and its HSM pools are built in
each worker after the fork, via the factory ``xksproxy.runtime.factory:create_app`` and
``XKSPROXY_CONFIG``) and the start-up contract (one ``listening`` line once a worker really
answers) must be the same whichever server runs.

Server choice: granian (Rust HTTP/TLS, serving our RSGI adapter :mod:`xksproxy.runtime.rsgi`) is
several times faster than hypercorn here, but it cannot
show the client certificate to Python, so it cannot pin the mTLS subject. When mTLS is configured
the launcher therefore serves with hypercorn, whose Python ``ssl`` handshake we hook
(:mod:`xksproxy.runtime.tls`); asking explicitly for granian with mTLS is refused.

This module only wires the steps together, each in its own module: the plan
(:mod:`~xksproxy.runtime.plan`), the preflight checks (:mod:`~xksproxy.runtime.preflight`), the
start-up lines (:mod:`~xksproxy.runtime.announce`), the two runners
(:mod:`~xksproxy.runtime.granian_runner`, :mod:`~xksproxy.runtime.hypercorn_runner`) and every
reach into the servers' internals (:mod:`~xksproxy.runtime.patches`).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from xksproxy import environment
from xksproxy.config import ConfigError, load_config
from xksproxy.runtime import control, drain, lifeline, operations, sdnotify
from xksproxy.runtime.announce import announce_when_ready, say, warn_plain_http
from xksproxy.runtime.granian_runner import run_granian
from xksproxy.runtime.hypercorn_runner import run_hypercorn
from xksproxy.runtime.plan import plan
from xksproxy.runtime.preflight import check_bind_available, check_tls_files

APP_FACTORY = "xksproxy.runtime.factory:create_app"
RSGI_APP_FACTORY = "xksproxy.runtime.rsgi:create_app"


def serve(
    config_path: Path | str,
    *,
    bind: str | None = None,
    plain_http: bool | None = None,
    server: str | None = None,
    workers: int | None = None,
) -> int:
    """Run the proxy until SIGINT/SIGTERM; returns the process exit code.

    Prints ``xksproxy: listening on URL`` and one ``xksproxy: key store NAME: PATH`` line per
    store once a worker has answered on the socket (tests and operators wait for that line).
    """
    try:
        p = plan(
            load_config(Path(config_path)),
            bind=bind,
            plain_http=plain_http,
            server=server,
            workers=workers,
        )
        if not p.plain_http:
            check_tls_files(p)
        if p.server == "granian":
            _granian_target()  # refuses a bad XKSPROXY_GRANIAN_INTERFACE before any worker
        check_bind_available(p)
    except ConfigError as exc:
        print(f"xksproxy: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    if p.plain_http:
        warn_plain_http()
    for note in p.notes:
        say(note)
    if p.allowed_subjects:
        say(f"mTLS: client CA {p.client_ca_file}, allowed subjects {', '.join(p.allowed_subjects)}")
    # Each worker process builds its own app (and HSM pools) from this path after the fork.
    os.environ[environment.CONFIG.name] = str(p.config_path)
    sdnotify.claim()  # only this process tells systemd READY/STOPPING/RELOADING, never a worker
    draining = drain.LauncherDrain(p.drain_grace_s)  # SIGTERM: /ready 503, serve the grace out
    lifeline.mark_launcher()  # workers get SIGTERM if this process dies, even by SIGKILL
    # Before any worker starts: the metrics listener (unless a wrapping launcher already runs
    # one), XKSPROXY_WORKERS for the quotas, and SIGHUP = reload every worker's config without
    # respawning it (see xksproxy.runtime.operations / xksproxy.runtime.reload).
    launched_by_wrapper = bool(environment.METRICS_DIR.get())
    hooks = operations.prepare_launcher(None if launched_by_wrapper else p.metrics_bind, p.workers)
    control_server = control.start_launcher(p.config_path)  # `xksproxy hsm ...` (OPERATIONS.md)
    stop = threading.Event()
    watcher = threading.Thread(
        target=announce_when_ready, args=(p, stop, hooks.metrics_url), daemon=True
    )
    watcher.start()
    try:
        if p.server == "granian":
            return run_granian(p, *_granian_target(), before_stop=draining.before_stop)
        return run_hypercorn(p, _app_factory(), before_stop=draining.before_stop)
    finally:
        stop.set()
        hooks.close()
        if control_server is not None:
            control_server.close()


def _granian_target() -> tuple[str, str]:
    """(factory, interface) for granian: our RSGI adapter (:mod:`xksproxy.runtime.rsgi`, faster than
    granian's ASGI bridge) unless ``XKSPROXY_GRANIAN_INTERFACE=asgi`` asks for the ASGI app (to
    compare the two in one benchmark run) or a probe app replaces ours (it is ASGI)."""
    if environment.APP_FACTORY.get():
        return _app_factory(), "asgi"
    choice = (environment.GRANIAN_INTERFACE.get("rsgi") or "").lower()
    if choice not in ("rsgi", "asgi"):
        raise ConfigError(
            f"{environment.GRANIAN_INTERFACE.name} must be rsgi or asgi, got {choice!r}"
        )
    return (RSGI_APP_FACTORY, "rsgi") if choice == "rsgi" else (APP_FACTORY, "asgi")


def _app_factory() -> str:
    """The ASGI app factory; ``XKSPROXY_APP_FACTORY`` exists only so transport tests can serve
    a probe app (e.g. one echoing the ASGI scope) through exactly this launcher."""
    return environment.APP_FACTORY.get() or APP_FACTORY
