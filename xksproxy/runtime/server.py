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
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypercorn.config import Config as _HypercornBase

from xksproxy.bind import parse_bind
from xksproxy.config import Config, ConfigError, load_config
from xksproxy.observe import metrics
from xksproxy.runtime import lifeline, operations, reload, tls

APP_FACTORY = "xksproxy.runtime.factory:create_app"
RSGI_APP_FACTORY = "xksproxy.runtime.rsgi:create_app"
SERVERS = ("granian", "hypercorn")
_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Plan:
    """Everything the launchers need, resolved from config + overrides (no secrets inside)."""

    config_path: Path
    host: str
    port: int
    server: str
    workers: int
    plain_http: bool
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    allowed_subjects: tuple[str, ...]
    log_level: str
    stores: tuple[tuple[str, str], ...]  # (name, URI path)
    metrics_bind: str | None = None
    notes: tuple[str, ...] = ()  # decisions the operator must see at start

    @property
    def scheme(self) -> str:
        return "http" if self.plain_http else "https"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def plan(
    config: Config,
    *,
    bind: str | None = None,
    plain_http: bool | None = None,
    server: str | None = None,
    workers: int | None = None,
) -> Plan:
    """Resolve the effective serving plan; raises ConfigError for impossible combinations."""
    try:
        host, port = parse_bind(bind or config.server.bind)
    except ValueError as exc:
        raise ConfigError(f"[server] bind: {exc}") from None
    if port == 0:
        port = _free_port(host)
    plain = config.server.plain_http if plain_http is None else plain_http
    chosen = server or config.server.server
    if chosen not in SERVERS:
        raise ConfigError(f"[server] server must be one of {', '.join(SERVERS)}, got {chosen!r}")
    n = config.server.workers if workers is None else workers
    if n < 0:
        raise ConfigError(f"[server] workers must be >= 0, got {n}")
    n = n or os.cpu_count() or 1
    ca = config.tls.client_ca_file
    notes: list[str] = []
    if ca is not None and plain:
        notes.append(
            "[tls] client_ca_file is ignored with plain HTTP: the load balancer that "
            "terminates TLS must authenticate KMS"
        )
    elif ca is not None and chosen == "granian":
        if server == "granian":
            raise ConfigError(
                "--server granian cannot enforce [tls] allowed_client_subjects (granian does not "
                "expose the client certificate); use --server hypercorn for mTLS"
            )
        notes.append(
            "mTLS is configured: serving with hypercorn, which can pin the client "
            "subject (granian cannot)"
        )
        chosen = "hypercorn"
    patterns = tls.allowed_subject_patterns(
        config.tls.allowed_client_subjects, [ks.regions for ks in config.keystores]
    )
    stores = tuple((ks.name, ks.uri_path) for ks in config.keystores)
    return Plan(
        config_path=Path(config.path).resolve(),
        host=host,
        port=port,
        server=chosen,
        workers=n,
        plain_http=plain,
        cert_file=config.tls.cert_file,
        key_file=config.tls.key_file,
        client_ca_file=None if plain else ca,
        allowed_subjects=patterns if ca is not None and not plain else (),
        log_level=config.logging.level,
        stores=stores,
        metrics_bind=config.metrics.bind or None,
        notes=tuple(notes),
    )


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
            _check_tls_files(p)
        if p.server == "granian":
            _granian_target()  # refuses a bad XKSPROXY_GRANIAN_INTERFACE before any worker
        _check_bind_available(p)
    except ConfigError as exc:
        print(f"xksproxy: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    if p.plain_http:
        _warn_plain_http()
    for note in p.notes:
        _say(note)
    if p.allowed_subjects:
        _say(
            f"mTLS: client CA {p.client_ca_file}, allowed subjects {', '.join(p.allowed_subjects)}"
        )
    # Each worker process builds its own app (and HSM pools) from this path after the fork.
    os.environ["XKSPROXY_CONFIG"] = str(p.config_path)
    lifeline.mark_launcher()  # workers get SIGTERM if this process dies, even by SIGKILL
    # Before any worker starts: the metrics listener (unless a wrapping launcher already runs
    # one), XKSPROXY_WORKERS for the quotas, and SIGHUP = reload every worker's config without
    # respawning it (see xksproxy.runtime.operations / xksproxy.runtime.reload).
    launched_by_wrapper = bool(os.environ.get(metrics.ENV_DIR))
    hooks = operations.prepare_launcher(None if launched_by_wrapper else p.metrics_bind, p.workers)
    stop = threading.Event()
    watcher = threading.Thread(
        target=_announce_when_ready, args=(p, stop, hooks.metrics_url), daemon=True
    )
    watcher.start()
    runner: Callable[[Plan], int] = _run_granian if p.server == "granian" else _run_hypercorn
    try:
        return runner(p)
    finally:
        stop.set()
        hooks.close()


def _check_tls_files(p: Plan) -> None:
    for what, path in (("cert_file", p.cert_file), ("key_file", p.key_file)):
        if not Path(path).is_file():
            raise ConfigError(
                f"[tls] {what}: {path} does not exist (run `xksproxy init`, "
                "configure a certificate, or use --plain-http behind a TLS proxy)"
            )
    if p.client_ca_file is not None and not Path(p.client_ca_file).is_file():
        raise ConfigError(f"[tls] client_ca_file: {p.client_ca_file} does not exist")
    if p.server == "granian" and b"BEGIN PRIVATE KEY" not in Path(p.key_file).read_bytes():
        raise ConfigError(
            f"[tls] key_file: granian reads only unencrypted PKCS#8 keys "
            f"('BEGIN PRIVATE KEY'); convert with `openssl pkcs8 -topk8 -nocrypt "
            f"-in {p.key_file}` or use --server hypercorn"
        )


def _check_bind_available(p: Plan) -> None:
    """Refuse to start when something already listens on the address.

    granian binds with SO_REUSEPORT, so without this check a second proxy (perhaps with another
    config) starts "successfully" on a busy port and the kernel silently splits KMS traffic
    between the two. A plain bind (no SO_REUSEPORT) fails against any listener.
    """
    family = socket.AF_INET6 if ":" in p.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind((p.host, p.port))
        except OSError as exc:
            raise ConfigError(
                f"[server] bind: cannot listen on {p.host}:{p.port}: {exc.strerror or exc} "
                "(stop the process using it or choose another --bind)"
            ) from None


def _say(message: str) -> None:
    print(f"xksproxy: {message}", file=sys.stderr, flush=True)


def _warn_plain_http() -> None:
    bar = "!" * 78
    for line in (
        bar,
        "WARNING: plain HTTP, NO TLS. KMS traffic (plaintext data keys) crosses this socket in",
        "the clear. Only acceptable behind a load balancer that terminates TLS INSIDE your",
        "trust boundary. Remove --plain-http / [server] plain_http for direct KMS traffic.",
        bar,
    ):
        _say(line)


def _free_port(host: str) -> int:
    """Pick a free port for ``:0`` binds (tests); both servers need the number before binding."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _announce_when_ready(p: Plan, stop: threading.Event, metrics_url: str | None) -> None:
    """Print the start-up lines once a worker answers (a bound socket alone is not enough)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        if _probe(p):
            if stop.is_set():
                return
            print(f"xksproxy: listening on {p.url}", flush=True)
            for name, path in p.stores:
                print(f"xksproxy: key store {name}: {path}", flush=True)
            if metrics_url:
                print(f"xksproxy: metrics on {metrics_url}", flush=True)
            return
        stop.wait(0.05)


def _probe(p: Plan) -> bool:
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


def _run_granian(p: Plan) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols

    kwargs: dict[str, object] = {}
    if not p.plain_http:
        kwargs.update(
            ssl_cert=Path(p.cert_file),
            ssl_key=Path(p.key_file),
            # granian defaults to TLS 1.3 only; XKS requires 1.2 to be allowed. rustls offers only
            # forward-secret AEAD suites, so no suite list is needed.
            ssl_protocol_min=SSLProtocols.tls12,
        )
    # Workers start from a fresh interpreter ("spawn"), never a fork of this process: it runs
    # threads (start-up watcher, metrics listener) whose locks a fork could copy mid-use, and
    # no PKCS#11 or other state should ever be inherited. granian uses the default start method.
    multiprocessing.set_start_method("spawn", force=True)
    target, interface = _granian_target()
    server = Granian(
        target,
        address=p.host,
        port=p.port,
        interface=Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGI,
        factory=True,
        workers=p.workers,
        http=HTTPModes.auto,
        loop=Loops.uvloop,
        websockets=False,
        log_level=_granian_level(p.log_level),
        log_dictconfig=_GRANIAN_LOG_TO_STDERR,
        workers_kill_timeout=10,
        # A worker that dies (e.g. a PKCS#11 module abort) is replaced; granian still exits on
        # a crash loop, so a persistent start-up failure does not spin.
        respawn_failed_workers=True,
        **kwargs,  # type: ignore[arg-type]
    )
    handler, latch = _lock_free_interrupt(server)
    server.signal_handler_interrupt = handler  # type: ignore[method-assign]
    try:
        server.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        latch.close()
    # granian returns normally after a worker died (no respawn): report it as a failure.
    return 1 if server.interrupt_children and not server.interrupt_signal else 0


class StopLatch:
    """A SIGINT/SIGTERM handler that takes no lock, for both launchers' parent process.

    A signal handler runs in the main thread between bytecodes, and a newly arrived signal's
    handler runs inside the running one, even in the middle of a lock acquire. A handler that
    sets a ``threading.Event`` (granian's does; our hypercorn supervisor's did) can therefore wait
    for the Event lock that the code it interrupted holds: after a burst of signals (Ctrl-C
    pressed twice, a supervisor and a ``timeout`` wrapper both sending TERM) ``serve`` hung for
    ever (seen here, 4 of 20 tries). :meth:`handler` only records the request and writes a byte
    to a pipe; whoever waits on :meth:`fileno` acts on it in an ordinary context.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.requested = False
        self.closed = threading.Event()  # set by close(), never from a signal handler

    def handler(self, *_args: object, **_kwargs: object) -> None:
        if self.closed.is_set():  # is_set() takes no lock; the pipe may be gone
            return
        self.requested = True
        with contextlib.suppress(OSError):  # pipe full: a byte is already waiting
            os.write(self._write_fd, b"x")

    def close(self) -> None:
        """Serving is over: wake whoever waits; later signals are ignored. (Call
        :meth:`release` once nobody waits any more.)"""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"x")
        self.closed.set()

    def release(self) -> None:
        """Close the pipe (after :meth:`close`, when no thread waits on it)."""
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def fileno(self) -> int:
        return self._read_fd

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (True) or ``timeout`` passes (False)."""
        mp_connection.wait([self._read_fd], timeout=timeout)
        return self.requested


def _lock_free_interrupt(server: object) -> tuple[Callable[..., None], StopLatch]:
    """granian's interrupt handler, through a :class:`StopLatch`, and that latch (close it when
    ``serve()`` returns).

    A relay thread sets granian's ``main_loop_interrupt`` Event once a stop is requested (and
    simply waits if the main thread holds its lock), then keeps setting it every 0.2 s until
    serving ends: granian clears that Event in some branches of its loop (e.g. after replacing a
    crashed worker) after it has looked at the stop flag, which would otherwise swallow the stop.
    """
    latch = StopLatch()

    def relay() -> None:
        latch.wait()
        while not latch.closed.is_set():
            server.main_loop_interrupt.set()  # type: ignore[attr-defined]
            latch.closed.wait(0.2)
        latch.release()

    threading.Thread(target=relay, name="xksproxy-stop", daemon=True).start()

    def handler(*args: object, **kwargs: object) -> None:
        server.interrupt_signal = True  # type: ignore[attr-defined]
        latch.handler(*args, **kwargs)

    return handler, latch


def _granian_target() -> tuple[str, str]:
    """(factory, interface) for granian: our RSGI adapter (:mod:`xksproxy.runtime.rsgi`, faster than
    granian's ASGI bridge) unless ``XKSPROXY_GRANIAN_INTERFACE=asgi`` asks for the ASGI app (to
    compare the two in one benchmark run) or a probe app replaces ours (it is ASGI)."""
    if os.environ.get("XKSPROXY_APP_FACTORY"):
        return _app_factory(), "asgi"
    choice = os.environ.get("XKSPROXY_GRANIAN_INTERFACE", "rsgi").lower()
    if choice not in ("rsgi", "asgi"):
        raise ConfigError(f"XKSPROXY_GRANIAN_INTERFACE must be rsgi or asgi, got {choice!r}")
    return (RSGI_APP_FACTORY, "rsgi") if choice == "rsgi" else (APP_FACTORY, "asgi")


def _app_factory() -> str:
    """The ASGI app factory; ``XKSPROXY_APP_FACTORY`` exists only so transport tests can serve
    a probe app (e.g. one echoing the ASGI scope) through exactly this launcher."""
    return os.environ.get("XKSPROXY_APP_FACTORY") or APP_FACTORY


# granian logs to stdout by default; stdout carries our start-up lines and the JSON request log,
# so the server's own (plain-text) messages go to stderr with the other diagnostics.
_GRANIAN_LOG_TO_STDERR = {
    "handlers": {
        name: {"formatter": fmt, "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
        for name, fmt in (("console", "generic"), ("access", "access"))
    }
}


def _granian_level(level: str) -> object:
    from granian.log import LogLevels

    return LogLevels.debug if level == "debug" else LogLevels.warning


def _run_hypercorn(p: Plan) -> int:
    """Run hypercorn workers under our own supervisor.

    hypercorn's ``run()`` loses a failed worker's exit status (it returns 0 when a worker's
    lifespan start-up failed) and never replaces a dead worker, so the worker processes are
    supervised here: a dead worker is replaced; a crash loop stops the server with status 1.
    """
    cfg = HypercornConfig()
    host = f"[{p.host}]" if ":" in p.host else p.host
    cfg.bind = [f"{host}:{p.port}"]
    cfg.application_path = f"{_app_factory()}()"
    cfg.workers = p.workers
    cfg.worker_class = "uvloop"
    cfg.keep_alive_timeout = 75.0
    cfg.loglevel = "DEBUG" if p.log_level == "debug" else "WARNING"
    if not p.plain_http:
        cfg.certfile = str(p.cert_file)
        cfg.keyfile = str(p.key_file)
        cfg.xks_client_ca = str(p.client_ca_file) if p.client_ca_file else None
        cfg.xks_allowed_subjects = tuple(p.allowed_subjects)
    return _supervise_hypercorn(cfg)


# A worker that dies is replaced (like granian's respawn); more than this many deaths within the
# window is a crash loop (e.g. the HSM is unreachable at start) and stops the server with status 1.
_CRASH_LOOP_DEATHS = 4
_CRASH_LOOP_WINDOW_S = 30.0
_RESPAWN_DELAY_S = 1.0


def _supervise_hypercorn(cfg: HypercornConfig) -> int:
    sockets = cfg.create_sockets()
    ctx = multiprocessing.get_context("spawn")
    shutdown = ctx.Event()
    latch = StopLatch()

    def spawn() -> multiprocessing.process.BaseProcess:
        # Workers inherit "ignore SIGINT" (a terminal's Ctrl-C reaches the whole process group);
        # this process turns SIGINT/SIGTERM into one orderly shutdown through the shared event.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = ctx.Process(
                target=_hypercorn_worker,
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
            mp_connection.wait([*(proc.sentinel for proc in procs), latch], timeout=0.5)
            for i, proc in enumerate(procs):
                if proc.exitcode is None or latch.requested:
                    continue
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < _CRASH_LOOP_WINDOW_S] + [now]
                if len(deaths) > _CRASH_LOOP_DEATHS:
                    failed = True
                    _say("hypercorn workers keep exiting (crash loop); stopping")
                    latch.handler()
                    break
                _say(f"hypercorn worker {proc.pid} exited ({proc.exitcode}); starting another")
                if not latch.wait(_RESPAWN_DELAY_S):
                    procs[i] = spawn()
    finally:
        shutdown.set()
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()  # a graceful stop of its own (see _hypercorn_worker)
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
        latch.close()
        latch.release()
    return 1 if failed else 0


def _hypercorn_worker(config: HypercornConfig, sockets: object, shutdown_event: object) -> None:
    """hypercorn's uvloop worker, also stopping gracefully on a SIGTERM sent to it alone.

    Given a shared shutdown event, hypercorn installs no signal handler in its workers, so a
    SIGTERM to one worker (an operator, or :mod:`xksproxy.runtime.lifeline` when the launcher is
    gone) killed it outright: requests cut, HSM sessions and the audit log not closed. Here SIGTERM
    goes to a :class:`StopLatch` whose flag the shutdown trigger polls with the shared event.
    Uses hypercorn's ``worker_serve``/``_run`` (pinned in constraints.txt) because its public
    ``serve()`` cannot take the listening sockets the supervisor created.
    """
    import asyncio
    from functools import partial

    import uvloop
    from hypercorn.asyncio.run import _run, worker_serve
    from hypercorn.utils import load_application

    latch = StopLatch()
    signal.signal(signal.SIGTERM, latch.handler)

    async def trigger() -> None:
        while not latch.requested and not shutdown_event.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.1)

    app = load_application(config.application_path, config.wsgi_max_body_size)
    _run(
        partial(worker_serve, app, config, sockets=sockets),
        debug=config.debug,
        shutdown_trigger=trigger,
        loop_factory=uvloop.new_event_loop,
    )


class HypercornConfig(_HypercornBase):
    """hypercorn ``Config`` carrying our TLS settings into each worker (module level so spawned
    workers can unpickle it) and building *our* context there: suites, ALPN, mTLS pinning."""

    xks_client_ca: str | None = None
    xks_allowed_subjects: tuple[str, ...] = ()

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if not self.ssl_enabled:
            return None
        return tls.server_context(
            Path(self.certfile),
            Path(self.keyfile),
            client_ca_file=Path(self.xks_client_ca) if self.xks_client_ca else None,
            allowed_subjects=self.xks_allowed_subjects,
            alpn=self.alpn_protocols,
        )
