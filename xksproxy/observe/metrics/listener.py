"""The ``GET /metrics`` listener: a thread in the launcher's parent, apart from KMS traffic.

The launcher's parent calls :func:`start_listener` before it starts workers: that creates a
private directory (0700), exports it as ``$XKSPROXY_METRICS_DIR`` (inherited by the workers,
see :mod:`~xksproxy.observe.metrics.snapshots`) and serves the merged figures from a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from xksproxy import environment
from xksproxy.bind import parse_bind, url_host
from xksproxy.observe.metrics.exposition import CONTENT_TYPE, render
from xksproxy.observe.metrics.merge import collect_snapshots, merge
from xksproxy.observe.metrics.slo import SloTracker, add_slo_figures

#: How often the listener samples the SLO counters between scrapes (burn-rate history).
SLO_SAMPLE_S = 10.0


def exposition(directory: Path | None, tracker: SloTracker) -> str:
    """The text a scrape returns: every worker merged, SLO figures added."""
    merged = merge(collect_snapshots(directory))
    add_slo_figures(merged, tracker)
    return render(merged)


class MetricsListener:
    """The HTTP listener thread; ``close()`` stops it and removes the private directory."""

    def __init__(self, server: ThreadingHTTPServer, directory: Path | None, owns_dir: bool) -> None:
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
        while not self._stop.wait(SLO_SAMPLE_S):
            with contextlib.suppress(Exception):
                merged = merge(collect_snapshots(self.directory))
                add_slo_figures(merged, self.tracker)

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._owns_dir and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            if environment.METRICS_DIR.get() == str(self.directory):
                del os.environ[environment.METRICS_DIR.name]


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def start_listener(bind: str, *, multiprocess: bool = True) -> MetricsListener:
    """Start ``GET /metrics`` on ``bind`` in a background thread of *this* process.

    Call it in the launcher's parent before workers start: with ``multiprocess`` (default) it
    creates the shared snapshot directory and exports ``$XKSPROXY_METRICS_DIR`` so workers
    inherit it. ``multiprocess=False`` serves this process's own registry (single process/tests).
    """
    directory: Path | None = None
    owns = False
    if multiprocess:
        existing = environment.METRICS_DIR.get()
        if existing:
            directory = Path(existing)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            directory = Path(tempfile.mkdtemp(prefix="xksproxy-metrics-"))
            os.environ[environment.METRICS_DIR.name] = str(directory)
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
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet: no access log
            return

    server_cls = _V6Server if ":" in host else ThreadingHTTPServer
    try:
        server = server_cls((host, port), Handler)
    except BaseException:  # port taken: the directory made for this listener must not linger
        if owns and directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            os.environ.pop(environment.METRICS_DIR.name, None)
        raise
    server.daemon_threads = True
    listener = MetricsListener(server, directory, owns)
    holder["l"] = listener
    listener.start()
    return listener
