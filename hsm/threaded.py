"""Threaded mode: one worker thread per session, fed by one queue, answered on the event loop.

Why: a network HSM takes milliseconds per call; run on the event-loop thread that would block every
other request. Here ``sessions`` calls run in parallel (ctypes releases the GIL) and the loop only
awaits a future. The race between a worker picking a job and the job's deadline is decided once,
by :meth:`Job.claim`: whoever claims first answers (a timeout, or the call's result).

The pool stays in charge of what a call means: :class:`WorkerThreads` is handed ``run(session,
op)``, which admits the call (or raises ``HsmUnavailable``), executes it with error mapping and
retries, and keeps the in-flight count that recovery and close wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from .errors import HsmError, SessionTimeout

S = TypeVar("S")
T = TypeVar("T")

#: How long ``finish`` waits for each worker thread to leave the module.
JOIN_TIMEOUT_S = 10.0


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Job(Generic[S]):
    """One request. ``claim`` decides once whether a worker or the deadline wins."""

    __slots__ = ("_claim", "future", "loop", "op", "picked")

    def __init__(
        self,
        op: Callable[[S], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.op = op
        self.future = future
        self.loop = loop
        self.picked = 0.0  # time.monotonic() when a worker claimed it (0.0: never)
        self._claim = threading.Lock()

    def claim(self) -> bool:
        return self._claim.acquire(blocking=False)

    def deliver(self, result: Any, exc: BaseException | None) -> None:
        """Settle the future from a worker thread (on its loop's thread)."""
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle, self.future, result, exc)

    def expire(self) -> None:
        """The deadline passed (loop thread): a timeout, unless the result is already there."""
        if self.future.done():
            return
        if self.claim():
            self.future.set_exception(
                SessionTimeout("no HSM session became free before the deadline")
            )
        else:
            self.future.set_exception(SessionTimeout("the HSM did not answer before the deadline"))


class WorkerThreads(Generic[S]):
    """The worker threads of one pool; each thread alone uses its session."""

    def __init__(self, name: str, run: Callable[[S, Callable[[S], Any]], Any]) -> None:
        self._name = name
        self._run = run
        self._jobs: queue.SimpleQueue[Job[S] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self, sessions: Iterable[tuple[int, S]]) -> None:
        """One daemon thread per ``(index, session)``, named after the pool and the index."""
        for index, sess in sessions:
            t = threading.Thread(
                target=self._work, args=(sess,), daemon=True, name=f"hsm-{self._name}-{index}"
            )
            t.start()
            self._threads.append(t)

    def waiting(self) -> int:
        """Jobs queued and not yet picked by a worker."""
        return self._jobs.qsize()

    async def submit(
        self, op: Callable[[S], T], deadline: float, observer: Callable[[float], None] | None
    ) -> T:
        """Queue ``op`` for the next free worker and await its result or the deadline.

        ``observer`` gets the seconds from submission until a worker claimed the job (until the
        deadline if none did), in the calling task.
        """
        loop = asyncio.get_running_loop()
        submitted = time.monotonic()
        remaining = deadline - submitted
        if remaining <= 0:
            raise SessionTimeout("deadline passed before an HSM session was requested")
        fut: asyncio.Future[T] = loop.create_future()
        job: Job[S] = Job(op, fut, loop)
        self._jobs.put(job)
        timer = loop.call_later(remaining, job.expire)
        try:
            return await fut
        finally:
            timer.cancel()
            if observer is not None:
                # Never claimed (picked 0.0): the job waited until its deadline.
                observer((job.picked or time.monotonic()) - submitted)

    def stop(self) -> list[threading.Thread]:
        """Tell every worker to exit after its current job; the threads go to :meth:`finish`."""
        for _ in self._threads:
            self._jobs.put(None)
        threads, self._threads = self._threads, []
        return threads

    def finish(self, threads: list[threading.Thread], closed: HsmError) -> None:
        """Blocking: join ``threads`` and answer jobs queued behind the stop sentinels."""
        for t in threads:
            t.join(timeout=JOIN_TIMEOUT_S)
        while True:  # answer them instead of letting them hang until their deadline
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.claim():
                job.deliver(None, closed)

    def _work(self, sess: S) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.claim():
                continue  # its deadline already answered the caller
            job.picked = time.monotonic()
            result: Any = None
            error: BaseException | None = None
            try:
                result = self._run(sess, job.op)
            except BaseException as exc:
                error = exc
            job.deliver(result, error)


__all__ = ["Job", "WorkerThreads"]
