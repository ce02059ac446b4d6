"""Prometheus metrics, aggregated across worker processes, on a listener separate from KMS traffic.

Why our own small exposition instead of ``prometheus_client``: we need exactly counters, gauges
and histograms, a multi-process merge and two SLO figures computed at scrape time; the
dependency's multiprocess mode needs its own mmap directory handling and still cannot compute a
burn rate. This module is ~one page and has no dependency.

How multi-process works:

- The launcher's parent process calls :func:`start_listener` before it starts workers. That
  creates a private directory (0700), exports it as ``$XKSPROXY_METRICS_DIR`` (inherited by the
  workers) and serves ``GET /metrics`` from a thread.
- Each worker records into its in-process :data:`REGISTRY`; when ``$XKSPROXY_METRICS_DIR`` is set
  a daemon thread writes a snapshot ``w-<pid>.json`` there every :data:`FLUSH_INTERVAL_S` (and at
  exit). Snapshots are replaced atomically, so the listener never reads half a file.
- The listener sums counters and histograms over every snapshot (a worker that died keeps its
  counts, so counters never go backwards) and merges gauges of *live* workers only.
- Without ``$XKSPROXY_METRICS_DIR`` (tests, single process) the listener serves the in-process
  registry directly.

Figures are at most :data:`FLUSH_INTERVAL_S` old.

SLO: a request is *good* when it was answered before its deadline (``[server]
request_deadline_ms``) with a status below 500 and was not shed by admission control. The listener
exposes the cumulative share of good requests and the error-budget burn rate over sliding windows
for the objective :data:`SLO_OBJECTIVE`; ``deploy/prometheus/xksproxy-slo-alerts.yml`` shows
multi-window burn-rate alerts computed by Prometheus itself from the counters.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import functools
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from xksproxy.bind import parse_bind, url_host

FLUSH_INTERVAL_S = 0.5
SLO_OBJECTIVE = 0.999
#: Latency buckets (seconds) around KMS's 250 ms timeout.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.5,
    1.0,
)
BURN_WINDOWS_S = {"5m": 300.0, "30m": 1800.0, "1h": 3600.0, "6h": 21600.0}
ENV_DIR = "XKSPROXY_METRICS_DIR"

Labels = tuple[tuple[str, str], ...]

HELP: dict[str, tuple[str, str]] = {
    "xksproxy_requests_total": ("counter", "XKS requests by operation, key store and outcome."),
    "xksproxy_request_duration_seconds": (
        "histogram",
        "Time from request start to response, by operation, key store and outcome.",
    ),
    "xksproxy_errors_total": ("counter", "Error responses by errorName and operation."),
    "xksproxy_throttled_total": (
        "counter",
        "Requests answered 429 by reason (quota, in_flight, session_queue).",
    ),
    "xksproxy_hsm_call_duration_seconds": ("histogram", "PKCS#11 operation latency by token."),
    "xksproxy_hsm_session_wait_seconds": ("histogram", "Time spent waiting for an HSM session."),
    "xksproxy_hsm_sessions": ("gauge", "HSM sessions open (summed over workers)."),
    "xksproxy_hsm_sessions_in_use": ("gauge", "HSM sessions busy right now (summed over workers)."),
    "xksproxy_hsm_sessions_waiting": ("gauge", "Requests waiting for an HSM session."),
    "xksproxy_token_health": (
        "gauge",
        "1 for the health status each token reports (ACTIVE/DEGRADED/UNAVAILABLE).",
    ),
    "xksproxy_in_flight_requests": ("gauge", "Requests being processed (summed over workers)."),
    "xksproxy_slo_requests_total": ("counter", "Requests counted for the SLO."),
    "xksproxy_slo_good_requests_total": (
        "counter",
        "Requests answered within the deadline with status < 500, not shed.",
    ),
    "xksproxy_slo_within_budget_ratio": (
        "gauge",
        "Share of SLO requests that were good since the listener started.",
    ),
    "xksproxy_slo_objective": ("gauge", "SLO objective (share of good requests)."),
    "xksproxy_slo_latency_target_seconds": ("gauge", "Deadline a good request must meet."),
    "xksproxy_slo_error_budget_burn_rate": (
        "gauge",
        "Error-budget burn rate over a sliding window (1 = exactly on budget).",
    ),
    "xksproxy_audit_dropped_total": ("counter", "Audit records dropped (queue full)."),
    "xksproxy_request_log_dropped_total": (
        "counter",
        "Request-log lines dropped (stdout not draining, queue full).",
    ),
    "xksproxy_config_reloads_total": ("counter", "Configuration reloads by result."),
    "xksproxy_audit_last_seq": (
        "gauge",
        "Sequence number of the newest audit record (an off-host truncation anchor).",
    ),
    "xksproxy_workers": ("gauge", "Worker processes reporting metrics."),
}
#: Gauges merged with max instead of sum across workers.
_MAX_GAUGES = {
    "xksproxy_token_health",
    "xksproxy_slo_latency_target_seconds",
    "xksproxy_audit_last_seq",
}


def _labels(labels: Mapping[str, object]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


class Registry:
    """Counters, histograms and gauges of one process. Thread-safe (one short lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, Labels], float] = {}
        self.hists: dict[tuple[str, Labels], list[float]] = {}  # bucket counts..., sum, count
        self.gauges: dict[tuple[str, Labels], float] = {}
        self._collectors: list[Callable[[], Iterable[tuple[str, Mapping[str, object], float]]]] = []
        self.deadline_s = 0.15

    def inc(self, name: str, labels: Mapping[str, object], value: float = 1.0) -> None:
        key = (name, _labels(labels))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def inc_key(self, key: tuple[str, Labels], value: float = 1.0) -> None:
        """:meth:`inc` with a prepared key (hot path: no label sorting)."""
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, labels: Mapping[str, object], seconds: float) -> None:
        self.observe_key((name, _labels(labels)), seconds)

    def observe_key(self, key: tuple[str, Labels], seconds: float) -> None:
        idx = bisect.bisect_left(DURATION_BUCKETS, seconds)  # le semantics: seconds <= bound
        with self._lock:
            h = self.hists.get(key)
            if h is None:
                h = self.hists[key] = [0.0] * (len(DURATION_BUCKETS) + 3)
            h[idx] += 1
            h[-2] += seconds
            h[-1] += 1

    def set_gauge(self, name: str, labels: Mapping[str, object], value: float) -> None:
        with self._lock:
            self.gauges[(name, _labels(labels))] = float(value)

    def add_collector(
        self, fn: Callable[[], Iterable[tuple[str, Mapping[str, object], float]]]
    ) -> None:
        """Register a callback read at snapshot time (e.g. an HSM pool's live stats)."""
        with self._lock:
            self._collectors.append(fn)

    def snapshot(self) -> dict:
        """Plain-data copy of everything, gauges from collectors included."""
        with self._lock:
            gauges = dict(self.gauges)
            collectors = list(self._collectors)
        for fn in collectors:
            with contextlib.suppress(Exception):  # a collector must never break a scrape
                for name, labels, value in fn():
                    gauges[(name, _labels(labels))] = float(value)
        with self._lock:
            return {
                "pid": os.getpid(),
                "time": time.time(),
                "counters": [[n, list(map(list, lb)), v] for (n, lb), v in self.counters.items()],
                "hists": [[n, list(map(list, lb)), list(h)] for (n, lb), h in self.hists.items()],
                "gauges": [[n, list(map(list, lb)), v] for (n, lb), v in gauges.items()],
            }


REGISTRY = Registry()


# -- recording API used by the service ------------------------------------------------------------
def configure(*, deadline_s: float) -> None:
    """Set the SLO latency target (the request deadline)."""
    REGISTRY.deadline_s = deadline_s
    REGISTRY.set_gauge("xksproxy_slo_latency_target_seconds", {}, deadline_s)
    _ensure_flusher()


def observe_request(
    *,
    operation: str,
    keystore: str,
    status: int,
    error_name: str | None,
    seconds: float,
    shed: bool = False,
) -> None:
    """One answered XKS request (any outcome)."""
    keys = _request_keys(operation, keystore, error_name)
    reg = REGISTRY
    reg.inc_key(keys[0])
    reg.observe_key(keys[1], seconds)
    if error_name:
        reg.inc_key(keys[2])
    reg.inc_key(keys[3])
    if status < 500 and not shed and seconds <= reg.deadline_s:
        reg.inc_key(keys[4])
    if not _flusher_running:
        _ensure_flusher()


@functools.lru_cache(maxsize=4096)
def _request_keys(
    operation: str, keystore: str, error_name: str | None
) -> tuple[tuple[str, Labels], ...]:
    """Prepared series keys for one (operation, store, outcome): label sorting done once."""
    labels = _labels({"operation": operation, "keystore": keystore, "outcome": error_name or "ok"})
    store = _labels({"keystore": keystore})
    return (
        ("xksproxy_requests_total", labels),
        ("xksproxy_request_duration_seconds", labels),
        ("xksproxy_errors_total", _labels({"errorName": error_name or "", "operation": operation})),
        ("xksproxy_slo_requests_total", store),
        ("xksproxy_slo_good_requests_total", store),
    )


def observe_throttled(reason: str, keystore: str) -> None:
    REGISTRY.inc("xksproxy_throttled_total", {"reason": reason, "keystore": keystore})


def observe_hsm_call(token: str, operation: str, seconds: float) -> None:
    REGISTRY.observe_key(_hsm_call_key(token, operation), seconds)


def observe_session_wait(token: str, seconds: float) -> None:
    REGISTRY.observe_key(_session_wait_key(token), seconds)


def hsm_keys(token: str, operation: str) -> tuple[tuple[str, Labels], tuple[str, Labels]]:
    """Prepared (call duration, session wait) series keys for :func:`observe_hsm_op`."""
    return _hsm_call_key(token, operation), _session_wait_key(token)


def observe_hsm_op(
    keys: tuple[tuple[str, Labels], tuple[str, Labels]], wait_s: float, call_s: float
) -> None:
    """One HSM operation: its call time and its session wait (hot path: prepared keys)."""
    REGISTRY.observe_key(keys[0], call_s)
    REGISTRY.observe_key(keys[1], wait_s)


@functools.lru_cache(maxsize=256)
def _hsm_call_key(token: str, operation: str) -> tuple[str, Labels]:
    """Prepared series key (one per HSM call on the hot path: label sorting done once)."""
    return ("xksproxy_hsm_call_duration_seconds", _labels({"token": token, "operation": operation}))


@functools.lru_cache(maxsize=64)
def _session_wait_key(token: str) -> tuple[str, Labels]:
    return ("xksproxy_hsm_session_wait_seconds", _labels({"token": token}))


HEALTH_STATES = ("ACTIVE", "DEGRADED", "UNAVAILABLE")


def set_token_health(token: str, status: str) -> None:
    for s in HEALTH_STATES:
        REGISTRY.set_gauge(
            "xksproxy_token_health", {"token": token, "status": s}, 1.0 if s == status else 0.0
        )


def audit_dropped(n: int = 1) -> None:
    REGISTRY.inc("xksproxy_audit_dropped_total", {}, n)


def request_log_dropped(n: int = 1) -> None:
    REGISTRY.inc("xksproxy_request_log_dropped_total", {}, n)


def config_reloaded(result: str) -> None:
    REGISTRY.inc("xksproxy_config_reloads_total", {"result": result})


def register_pool(token: str, stats: Callable[[], object]) -> None:
    """Expose an HSM pool's live ``stats()`` (sessions, in_use, waiting, state) as gauges."""

    def collect() -> Iterable[tuple[str, Mapping[str, object], float]]:
        s = stats()
        yield "xksproxy_hsm_sessions", {"token": token}, float(getattr(s, "sessions", 0))
        yield "xksproxy_hsm_sessions_in_use", {"token": token}, float(getattr(s, "in_use", 0))
        yield "xksproxy_hsm_sessions_waiting", {"token": token}, float(getattr(s, "waiting", 0))

    REGISTRY.add_collector(collect)


def register_in_flight(read: Callable[[], int]) -> None:
    REGISTRY.add_collector(lambda: [("xksproxy_in_flight_requests", {}, float(read()))])


# -- worker side: periodic snapshot into the shared directory -------------------------------------
_flusher_pid: int | None = None
_flusher_running = False  # fast check on the hot path; reset in a forked child
_flusher_lock = threading.Lock()


def _after_fork() -> None:
    global _flusher_running, _flush_lock
    _flusher_running = False
    _flush_lock = threading.Lock()  # a parent thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork)


_flush_lock = threading.Lock()


def _snapshot_path(directory: Path, pid: int) -> Path:
    return directory / f"w-{pid}.json"


def flush_now() -> None:
    """Write this process's snapshot to ``$XKSPROXY_METRICS_DIR`` (no-op when unset)."""
    d = os.environ.get(ENV_DIR)
    if not d:
        return
    directory = Path(d)
    if not directory.is_dir():
        return
    pid = os.getpid()
    tmp = directory / f".w-{pid}.tmp"
    # One flush at a time per process: the flusher thread and an explicit/atexit flush share the
    # temp file, and without the lock an older snapshot could be renamed over a newer one.
    with _flush_lock, contextlib.suppress(OSError):
        tmp.write_bytes(orjson.dumps(REGISTRY.snapshot()))
        os.replace(tmp, _snapshot_path(directory, pid))


def _ensure_flusher() -> None:
    """Start the snapshot thread once per process (after fork, in the worker)."""
    global _flusher_pid, _flusher_running
    if _flusher_pid == os.getpid() or not os.environ.get(ENV_DIR):
        return
    with _flusher_lock:
        if _flusher_pid == os.getpid():
            return
        _flusher_pid = os.getpid()
        _flusher_running = True

        def loop() -> None:
            while True:
                flush_now()
                time.sleep(FLUSH_INTERVAL_S)

        threading.Thread(target=loop, name="xksproxy-metrics-flush", daemon=True).start()
        atexit.register(flush_now)


def start_worker() -> None:
    """Call in each worker at start-up so the worker appears even before its first request."""
    _ensure_flusher()


# -- listener side: merge and expose --------------------------------------------------------------
def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_snapshots(directory: Path | None) -> list[dict]:
    if directory is None:
        return [REGISTRY.snapshot()]
    snaps = []
    for p in directory.glob("w-*.json"):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            snaps.append(orjson.loads(p.read_bytes()))
    return snaps


def merge(snaps: list[dict]) -> dict:
    """Sum counters/histograms of all snapshots; gauges of live processes (sum or max)."""
    counters: dict[tuple[str, Labels], float] = {}
    hists: dict[tuple[str, Labels], list[float]] = {}
    gauges: dict[tuple[str, Labels], float] = {}
    live = 0
    for s in snaps:
        for n, lb, v in s.get("counters", []):
            k = (n, tuple(tuple(x) for x in lb))
            counters[k] = counters.get(k, 0.0) + v
        for n, lb, h in s.get("hists", []):
            k = (n, tuple(tuple(x) for x in lb))
            acc = hists.get(k)
            if acc is None:
                hists[k] = list(h)
            else:
                for i, v in enumerate(h):
                    acc[i] += v
        if not _alive(int(s.get("pid", 0))):
            continue
        live += 1
        for n, lb, v in s.get("gauges", []):
            k = (n, tuple(tuple(x) for x in lb))
            if n in _MAX_GAUGES:
                gauges[k] = max(gauges.get(k, v), v)
            else:
                gauges[k] = gauges.get(k, 0.0) + v
    gauges[("xksproxy_workers", ())] = float(live)
    return {"counters": counters, "hists": hists, "gauges": gauges}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(lb: Iterable[tuple[str, str]]) -> str:
    items = list(lb)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def render(merged: dict) -> str:
    """Prometheus text exposition format 0.0.4."""
    by_name: dict[str, list[str]] = {}

    def emit(name: str, line: str) -> None:
        by_name.setdefault(name, []).append(line)

    for (n, lb), v in sorted(merged["counters"].items()):
        emit(n, f"{n}{_fmt_labels(lb)} {_fmt_value(v)}")
    for (n, lb), v in sorted(merged["gauges"].items()):
        emit(n, f"{n}{_fmt_labels(lb)} {_fmt_value(v)}")
    for (n, lb), h in sorted(merged["hists"].items()):
        cum = 0.0
        for i, bound in enumerate(DURATION_BUCKETS):
            cum += h[i]
            emit(n, f"{n}_bucket{_fmt_labels((*lb, ('le', repr(bound))))} {_fmt_value(cum)}")
        cum += h[len(DURATION_BUCKETS)]
        emit(n, f"{n}_bucket{_fmt_labels((*lb, ('le', '+Inf')))} {_fmt_value(cum)}")
        emit(n, f"{n}_sum{_fmt_labels(lb)} {_fmt_value(h[-2])}")
        emit(n, f"{n}_count{_fmt_labels(lb)} {_fmt_value(h[-1])}")
    out: list[str] = []
    for name in sorted(by_name):
        kind, help_text = HELP.get(name, ("untyped", name))
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(by_name[name])
    return "\n".join(out) + "\n"


class SloTracker:
    """Keeps (time, total, good) samples to compute burn rates over sliding windows."""

    def __init__(self, objective: float = SLO_OBJECTIVE, clock: Callable[[], float] = time.time):
        self.objective = objective
        self._clock = clock
        self._samples: list[tuple[float, float, float]] = []
        self._lock = threading.Lock()

    def add(self, total: float, good: float) -> None:
        now = self._clock()
        horizon = now - max(BURN_WINDOWS_S.values()) - 60
        with self._lock:
            self._samples.append((now, total, good))
            while len(self._samples) > 2 and self._samples[1][0] < horizon:
                self._samples.pop(0)

    def burn_rates(self) -> dict[str, float]:
        with self._lock:
            if not self._samples:
                return dict.fromkeys(BURN_WINDOWS_S, 0.0)
            now, total, good = self._samples[-1]
            rates = {}
            for name, window in BURN_WINDOWS_S.items():
                base = self._samples[0]
                for s in self._samples:
                    if s[0] >= now - window:
                        break
                    base = s
                d_total, d_good = total - base[1], good - base[2]
                if base is self._samples[-1] or d_total <= 0:
                    # no history yet: use everything since start
                    d_total, d_good = total, good
                bad_share = (d_total - d_good) / d_total if d_total > 0 else 0.0
                rates[name] = bad_share / (1.0 - self.objective)
            return rates


def add_slo_figures(merged: dict, tracker: SloTracker) -> None:
    total = sum(v for (n, _), v in merged["counters"].items() if n == "xksproxy_slo_requests_total")
    good = sum(
        v for (n, _), v in merged["counters"].items() if n == "xksproxy_slo_good_requests_total"
    )
    tracker.add(total, good)
    g = merged["gauges"]
    g[("xksproxy_slo_within_budget_ratio", ())] = good / total if total else 1.0
    g[("xksproxy_slo_objective", ())] = tracker.objective
    for window, rate in tracker.burn_rates().items():
        g[("xksproxy_slo_error_budget_burn_rate", (("window", window),))] = rate


def exposition(directory: Path | None, tracker: SloTracker) -> str:
    merged = merge(collect_snapshots(directory))
    add_slo_figures(merged, tracker)
    return render(merged)


class MetricsListener:
    """The HTTP listener thread; ``close()`` stops it and removes the private directory."""

    def __init__(self, server: ThreadingHTTPServer, directory: Path | None, owns_dir: bool):
        self._server = server
        self.directory = directory
        self._owns_dir = owns_dir
        self.tracker = SloTracker()
        host, port = server.server_address[:2]
        self.url = f"http://{url_host(str(host))}:{port}/metrics"
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(
            target=self._server.serve_forever, name="xksproxy-metrics", daemon=True
        ).start()
        threading.Thread(target=self._sample, name="xksproxy-slo-sampler", daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(10.0):
            with contextlib.suppress(Exception):
                merged = merge(collect_snapshots(self.directory))
                add_slo_figures(merged, self.tracker)

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._owns_dir and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            if os.environ.get(ENV_DIR) == str(self.directory):
                del os.environ[ENV_DIR]


def start_listener(bind: str, *, multiprocess: bool = True) -> MetricsListener:
    """Start ``GET /metrics`` on ``bind`` in a background thread of *this* process.

    Call it in the launcher's parent before workers start: with ``multiprocess`` (default) it
    creates the shared snapshot directory and exports ``$XKSPROXY_METRICS_DIR`` so workers
    inherit it. ``multiprocess=False`` serves this process's own registry (single process/tests).
    """
    directory: Path | None = None
    owns = False
    if multiprocess:
        existing = os.environ.get(ENV_DIR)
        if existing:
            directory = Path(existing)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            directory = Path(tempfile.mkdtemp(prefix="xksproxy-metrics-"))
            os.environ[ENV_DIR] = str(directory)
            owns = True
    host, port = parse_bind(bind)
    holder: dict[str, MetricsListener] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = exposition(holder["l"].directory, holder["l"].tracker).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet: no access log
            return

    server_cls = ThreadingHTTPServer
    if ":" in host:
        import socket

        class V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_cls = V6Server
    server = server_cls((host, port), Handler)
    server.daemon_threads = True
    listener = MetricsListener(server, directory, owns)
    holder["l"] = listener
    listener.start()
    return listener


# -- wiring into the app -----------------------------------------------------------------------
def install(app: Any) -> None:
    """Record every finished request (app observer) and expose live pool/health gauges."""
    configure(deadline_s=app.config.server.request_deadline_ms / 1000.0)

    def observer(ctx: Any) -> None:
        throttled = ctx.extra.get("throttled")
        observe_request(
            operation=ctx.operation or "unknown",
            keystore=ctx.store or "",
            status=ctx.status,
            error_name=ctx.error_name,
            seconds=ctx.latency_ms / 1000.0,
            shed=throttled is not None and throttled != "quota",
        )

    def health_gauges() -> Iterable[tuple[str, Mapping[str, object], float]]:
        monitor = getattr(app, "health", None)
        if monitor is None:
            return
        for name in list(getattr(app, "pools", {}) or {}):
            status = monitor.status(name)
            for s in HEALTH_STATES:
                yield "xksproxy_token_health", {"token": name, "status": s}, float(s == status)

    async def start() -> None:
        start_worker()

    from xksproxy.observe import requestlog

    requestlog.STDOUT.on_drop = request_log_dropped
    app.observers.append(observer)
    REGISTRY.add_collector(health_gauges)
    app.on_startup.append(start)
