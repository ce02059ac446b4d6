"""Per-request context (the one event of a request), the JSON-lines request log and the JSON
service log.

:class:`RequestContext` is the one object that travels with a request from the moment the app
accepts it to the moment the answer is sent, and it *is* the request's event: operations code
(metrics, audit, quotas) hooks in by registering observers on the app, and each observer
receives the finished context. The context never holds plaintext, AAD, secrets or headers, so
every observer is safe by construction. :meth:`RequestContext.finish` stamps the wall-clock time
once, so the request log and the audit record of one request carry the same instant.

The request log is one JSON line per request. On the event loop it costs one append of the
finished context to a bounded in-memory queue: no dict, no serialisation. A writer thread
(:class:`LineWriter`, on the shared :class:`~xksproxy.observe.batchwriter.BatchWriter`) turns
each queued context into its line (:func:`request_line`, one ``orjson.dumps``) and writes the
batch to stdout with one ``write`` + ``flush``, then pauses :data:`FLUSH_INTERVAL_S` so the next
batch can accumulate (the first line after a quiet spell is written at once). Lines are whole
``bytes`` objects joined before the write, so they never interleave. Why off the loop: a
blocking write per request on stdout is a syscall per request, and a log consumer that stops
reading (a full pipe) used to block the whole worker (measured: 3 req/s). Now the loop never
blocks on stdout: when the queue is full (:data:`MAX_QUEUED_LINES`) lines are dropped and
counted (``xksproxy_request_log_dropped_total``), and the next batch written starts with a
service-log line saying how many were lost. In normal operation every request still gets its
line, within ~``FLUSH_INTERVAL_S``; lines still queued at a crash are lost (at exit they are
flushed). A queued context is never changed again (the app finishes it before any observer
runs), so the writer thread reads it without a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from xksproxy.observe.batchwriter import BatchWriter
from xksproxy.xks.operations import OperationSpec


@dataclass(slots=True, eq=False)
class RequestContext:
    """What is known about one request; filled in as the request progresses."""

    started: float  # time.monotonic() at arrival
    deadline: float  # absolute time.monotonic() deadline for HSM work
    operation: str = ""  # health / metadata / encrypt / decrypt
    spec: OperationSpec | None = None  # the operation's row (xksproxy.xks.operations), once routed
    store: str | None = None  # key store name
    key_id: str | None = None  # external key id (from the path)
    client: str | None = None  # the peer's address (host), keys the unauthenticated budget
    access_key_id: str | None = None  # authenticated SigV4 access key id
    region: str | None = None  # SigV4 scope region
    kms_request_id: str | None = None
    kms_operation: str | None = None
    principal: str | None = None  # awsPrincipalArn
    status: int = 0
    error_name: str | None = None  # None on success
    deny_rule: str | None = None  # id of the Cedar policy that denied (xksproxy.keys.policy)
    latency_ms: float = 0.0
    wall: float = 0.0  # time.time() when finished: the one timestamp of every record of it
    extra: dict[str, Any] = field(default_factory=dict)  # free slot for hooks (never secrets)

    @property
    def outcome(self) -> str:
        return "ok" if self.error_name is None else self.error_name

    def finish(self, status: int, error_name: str | None) -> None:
        self.status = status
        self.error_name = error_name
        self.latency_ms = round((time.monotonic() - self.started) * 1000.0, 3)
        self.wall = time.time()


RequestObserver = Callable[[RequestContext], None]


FLUSH_INTERVAL_S = 0.01
MAX_QUEUED_LINES = 20000


def _stdout_write(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def request_line(ctx: RequestContext) -> bytes:
    """The request log's JSON line for a finished request (the format operators parse; built on
    the writer thread, or at once for a test sink)."""
    record: dict[str, Any] = {
        "time": ctx.wall,
        "log": "request",
        "kmsRequestId": ctx.kms_request_id,
        "kmsOperation": ctx.kms_operation,
        "operation": ctx.operation,
        "principal": ctx.principal,
        "keyStore": ctx.store,
        "keyId": ctx.key_id,
        "accessKeyId": ctx.access_key_id,
        "outcome": ctx.outcome,
        "status": ctx.status,
        "latency_ms": ctx.latency_ms,
    }
    if ctx.deny_rule is not None:
        record["denyRule"] = ctx.deny_rule
    auth_failure = ctx.extra.get("authFailure")
    if auth_failure is not None:  # why a 401 was answered (the answer does not say)
        record["authFailure"] = auth_failure
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class LineWriter:
    """Finished requests queued on the event loop, written to stdout as request-log lines in
    batches by a :class:`~xksproxy.observe.batchwriter.BatchWriter` (see the module docstring).

    :meth:`put` is called on the event loop and never blocks; one writer per process, started
    on first use (after fork, in the worker).
    """

    def __init__(
        self, write: Callable[[bytes], None] = _stdout_write, max_lines: int = MAX_QUEUED_LINES
    ) -> None:
        self._write = write
        self._queue: BatchWriter[RequestContext] = BatchWriter(
            self._write_batch,
            name="xksproxy-request-log",
            max_queued=max_lines,
            pause_s=FLUSH_INTERVAL_S,
            autostart=True,
        )

    @property
    def on_drop(self) -> Callable[[int], None] | None:
        """Called with 1 per dropped line (the metrics count them)."""
        return self._queue.on_drop

    @on_drop.setter
    def on_drop(self, fn: Callable[[int], None] | None) -> None:
        self._queue.on_drop = fn

    @property
    def dropped_total(self) -> int:
        return self._queue.dropped_total

    def put(self, ctx: RequestContext) -> None:
        """Queue a finished request's line (dropped and counted when the queue is full)."""
        self._queue.put(ctx)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown, exit)."""
        self._queue.flush(timeout)

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here; start afresh."""
        self._queue.after_fork()

    def _write_batch(self, events: list[RequestContext], dropped: int) -> None:
        lines = []
        if dropped:  # make the loss visible where the lines are missing
            note = {
                "time": time.time(),
                "log": "service",
                "level": "warning",
                "logger": "xksproxy.observe.requestlog",
                "message": f"request log: {dropped} line(s) dropped (stdout not draining)",
            }
            lines.append(orjson.dumps(note, option=orjson.OPT_APPEND_NEWLINE))
        for ctx in events:
            with contextlib.suppress(TypeError, ValueError):  # one odd value costs one line
                lines.append(request_line(ctx))
        with contextlib.suppress(Exception):  # a closed/replaced stdout must not kill the thread
            self._write(b"".join(lines))


#: The process's stdout request-log writer (its thread starts with the first line).
STDOUT = LineWriter()
os.register_at_fork(after_in_child=STDOUT._after_fork)


class RequestLog:
    """Writes one JSON line per finished request (register :meth:`observe` as an observer).

    ``sink`` (tests) is called synchronously with each line; by default the finished context is
    queued on :data:`STDOUT`, whose thread makes the line.
    """

    def __init__(self, sink: Callable[[bytes], None] | None = None) -> None:
        self._put: Callable[[RequestContext], None] = (
            STDOUT.put if sink is None else self._line_to(sink)
        )

    @staticmethod
    def _line_to(sink: Callable[[bytes], None]) -> Callable[[RequestContext], None]:
        def put(ctx: RequestContext) -> None:
            with contextlib.suppress(OSError, ValueError):  # a closed sink must not fail a request
                sink(request_line(ctx))

        return put

    def observe(self, ctx: RequestContext) -> None:
        self._put(ctx)


class JsonFormatter(logging.Formatter):
    """Service log lines as JSON; tracebacks are kept but request data never reaches here."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": record.created,
            "log": "service",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode("utf-8")


def configure_logging(level: str = "info") -> None:
    """Route the ``xksproxy``/``hsm`` loggers to stdout as JSON lines (idempotent)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.set_name("xksproxy-json")
    for name in ("xksproxy", "hsm", "sigv4"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != "xksproxy-json"]
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
