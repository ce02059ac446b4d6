"""A SIGINT/SIGTERM handler that takes no lock, shared by both launchers and the hypercorn workers.

Why: a signal handler runs in the main thread between bytecodes, and a newly arrived signal's
handler runs inside the running one, even in the middle of a lock acquire. A handler that sets a
``threading.Event`` (granian's does; our hypercorn supervisor's did) can therefore wait for the
Event lock that the code it interrupted holds: after a burst of signals (Ctrl-C pressed twice, a
supervisor and a ``timeout`` wrapper both sending TERM) ``serve`` hung for ever (seen here, 4 of
20 tries). :meth:`StopLatch.handler` only records the request and writes a byte to a pipe;
whoever waits on :meth:`StopLatch.fileno` acts on it in an ordinary context.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection as mp_connection
import os
import threading


class StopLatch:
    """A stop request recorded without a lock: a flag plus one byte in a pipe."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.requested = False
        self.signum: int | None = None  # the first stop signal (SIGTERM drains, SIGINT does not)
        self.count = 0  # stop requests so far (a second one ends a drain early)
        self.closed = threading.Event()  # set by close(), never from a signal handler

    def handler(self, *args: object, **_kwargs: object) -> None:
        if self.closed.is_set():  # is_set() takes no lock; the pipe may be gone
            return
        if self.signum is None and args and isinstance(args[0], int):
            self.signum = args[0]
        self.count += 1
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
