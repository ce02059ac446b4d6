"""Worker side of the multi-process metrics: a periodic snapshot file per worker process.

How: the launcher's listener (:mod:`~xksproxy.observe.metrics.listener`) exports
``$XKSPROXY_METRICS_DIR`` before workers start. When it is set, a daemon thread in each worker
writes ``w-<pid>.json`` there every :data:`FLUSH_INTERVAL_S` (and at exit). Snapshots are
replaced atomically (temp file + rename), so the listener never reads half a file. Without the
variable (tests, single process) nothing is written and the listener serves the in-process
registry directly. Figures are therefore at most :data:`FLUSH_INTERVAL_S` old.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from pathlib import Path

import orjson

from xksproxy import environment
from xksproxy.observe.metrics.registry import REGISTRY

FLUSH_INTERVAL_S = 0.5


def snapshot_path(directory: Path, pid: int) -> Path:
    return directory / f"w-{pid}.json"


class Flusher:
    """Writes this process's snapshot; one thread per process, started on first use."""

    def __init__(self) -> None:
        self.running = False  # fast check on the hot path; reset in a forked child
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread is not here, and its locks may be held."""
        self.running = False
        self._flush_lock = threading.Lock()

    def flush_now(self) -> None:
        """Write this process's snapshot to ``$XKSPROXY_METRICS_DIR`` (no-op when unset)."""
        d = environment.METRICS_DIR.get()
        if not d:
            return
        directory = Path(d)
        if not directory.is_dir():
            return
        pid = os.getpid()
        tmp = directory / f".w-{pid}.tmp"
        # One flush at a time per process: the flusher thread and an explicit/atexit flush share
        # the temp file, and without the lock an older snapshot could be renamed over a newer one.
        with self._flush_lock, contextlib.suppress(OSError):
            tmp.write_bytes(orjson.dumps(REGISTRY.snapshot()))
            os.replace(tmp, snapshot_path(directory, pid))

    def ensure(self) -> None:
        """Start the snapshot thread once per process (after fork, in the worker)."""
        if self._pid == os.getpid() or not environment.METRICS_DIR.get():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.running = True

            def loop() -> None:
                while True:
                    self.flush_now()
                    time.sleep(FLUSH_INTERVAL_S)

            threading.Thread(target=loop, name="xksproxy-metrics-flush", daemon=True).start()
            atexit.register(self.flush_now)


#: The process's flusher.
FLUSHER = Flusher()
os.register_at_fork(after_in_child=FLUSHER.after_fork)


def flush_now() -> None:
    """Write this process's snapshot now (see :meth:`Flusher.flush_now`)."""
    FLUSHER.flush_now()


def start_worker() -> None:
    """Call in each worker at start-up so the worker appears even before its first request."""
    FLUSHER.ensure()
