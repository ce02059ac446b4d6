"""One bounded queue drained in batches by one daemon thread: what the audit log and the request
log both need.

Why this shape: the event loop must never block on a disk or a pipe. :meth:`BatchWriter.put`
only appends to a deque (atomic under the GIL, no lock on the request path unless it has to
wake the thread) or, when the queue holds ``max_queued`` items, drops the item and counts it;
:meth:`BatchWriter.offer` instead tells its caller that the queue is full, for an item that
must not be lost silently.
The thread drains everything queued (at most ``batch_max`` items per ``write_batch`` call),
then pauses ``pause_s`` so the next batch can accumulate: under load one write per batch
instead of per item, and the thread wakes ~100 times a second instead of once per request
(each wake-up takes the GIL from the event loop). The first item after an idle spell is written
at once. What a crash can lose is what is still queued.

The owner decides what a batch becomes on disk: ``write_batch(items, dropped)`` receives the
items and how many were dropped since the previous batch (so it can record the gap where the
items are missing).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchWriter(Generic[T]):
    """A bounded queue of ``T`` written by a daemon thread in batches (see the module docstring).

    ``start()`` starts the thread explicitly; with ``autostart`` the first :meth:`put` does (and
    an ``atexit`` flush is registered). ``close()`` writes what is queued and stops the thread;
    ``start()`` may be called again afterwards.
    """

    def __init__(
        self,
        write_batch: Callable[[list[T], int], None],
        *,
        name: str,
        max_queued: int,
        pause_s: float,
        batch_max: int | None = None,
        autostart: bool = False,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[int], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._write_batch = write_batch
        self._name = name
        self._max = max_queued
        self._pause_s = pause_s
        self._batch_max = batch_max
        self._autostart = autostart
        self.on_drop = on_drop
        self._on_error = on_error
        self._on_close = on_close
        self.dropped_total = 0
        self._init_state()

    def _init_state(self) -> None:
        self._buf: collections.deque[T] = collections.deque()
        self._wake = threading.Event()
        self._pause = threading.Event()  # set to cut the pause short (flush/close)
        self._closing = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._dropped_pending = 0
        self._atexit = False

    # -- producer side (event loop) -------------------------------------------------------------
    def put(self, item: T) -> None:
        """Queue ``item``; drop it (counted, ``on_drop(1)``) when the queue is full."""
        if self.offer(item):
            return
        with self._drop_lock:
            self._dropped_pending += 1
            self.dropped_total += 1
        if self.on_drop is not None:
            with contextlib.suppress(Exception):  # metrics must never fail a request
                self.on_drop(1)

    def offer(self, item: T) -> bool:
        """Queue ``item`` if the queue has room and say so; a full queue returns False and
        counts nothing: for a caller that must refuse its request rather than lose the item
        (the audit record of an Encrypt/Decrypt)."""
        if len(self._buf) >= self._max:
            return False
        self._buf.append(item)
        if self._thread is None and self._autostart:
            self.start()
        if not self._wake.is_set():
            self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._buf)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (no-op when it runs)."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            if self._autostart and not self._atexit:
                atexit.register(self.flush, 1.0)
                self._atexit = True

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown, exit)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        self._pause.set()
        self._wake.set()
        try:
            while (self._buf or self._busy) and time.monotonic() < deadline:
                time.sleep(0.002)
        finally:
            self._pause.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued and stop the writer thread."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._pause.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        self._closing = False
        self._pause.clear()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here; start afresh."""
        atexit_registered = self._atexit
        self._init_state()
        self._atexit = atexit_registered

    # -- writer thread -----------------------------------------------------------------------------
    def _take_dropped(self) -> int:
        with self._drop_lock:
            dropped, self._dropped_pending = self._dropped_pending, 0
        return dropped

    def _run(self) -> None:
        buf = self._buf
        while True:
            self._wake.wait()
            self._wake.clear()  # before draining: an item appended later sets it again
            wrote = False
            while buf:
                self._busy = True
                n = len(buf) if self._batch_max is None else min(len(buf), self._batch_max)
                batch = [buf.popleft() for _ in range(n)]
                try:
                    self._write_batch(batch, self._take_dropped())
                except Exception:  # keep the thread alive; the owner says what went wrong
                    if self._on_error is not None:
                        with contextlib.suppress(Exception):
                            self._on_error(len(batch))
                finally:
                    self._busy = False
                wrote = True
            if self._closing and not buf:
                if self._on_close is not None:
                    with contextlib.suppress(Exception):
                        self._on_close()
                return
            if wrote:
                # Let the next batch accumulate; the request path only appends meanwhile.
                self._pause.wait(self._pause_s)
