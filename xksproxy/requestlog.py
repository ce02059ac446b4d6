"""Per-request context, the JSON-lines request log and the JSON service log.

:class:`RequestContext` is the one object that travels with a request from the moment the app
accepts it to the moment the answer is sent.  Operations code (metrics, audit, quotas) hooks in
by registering observers on the app: each observer receives the finished context.  The context
never holds plaintext, AAD, secrets or headers, so every observer is safe by construction.

The request log writes one JSON line per request with a single ``write`` call, so lines from
concurrent requests never interleave and the cost is one ``orjson.dumps`` plus one syscall.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True, eq=False)
class RequestContext:
    """What is known about one request; filled in as the request progresses."""

    started: float                       # time.monotonic() at arrival
    deadline: float                      # absolute time.monotonic() deadline for HSM work
    operation: str = ""                  # health / metadata / encrypt / decrypt
    store: str | None = None             # key store name
    key_id: str | None = None            # external key id (from the path)
    access_key_id: str | None = None     # authenticated SigV4 access key id
    region: str | None = None            # SigV4 scope region
    kms_request_id: str | None = None
    kms_operation: str | None = None
    principal: str | None = None         # awsPrincipalArn
    status: int = 0
    error_name: str | None = None        # None on success
    deny_rule: str | None = None         # name of the policy rule that denied, if any
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # free slot for hooks (never secrets)

    @property
    def outcome(self) -> str:
        return "ok" if self.error_name is None else self.error_name

    def finish(self, status: int, error_name: str | None) -> None:
        self.status = status
        self.error_name = error_name
        self.latency_ms = round((time.monotonic() - self.started) * 1000.0, 3)


RequestObserver = Callable[[RequestContext], None]


def _default_sink(line: bytes) -> None:
    out = sys.stdout
    out.buffer.write(line)
    out.flush()


class RequestLog:
    """Writes one JSON line per finished request (register :meth:`observe` as an observer)."""

    def __init__(self, sink: Callable[[bytes], None] | None = None) -> None:
        self._sink = sink or _default_sink

    def observe(self, ctx: RequestContext) -> None:
        record: dict[str, Any] = {
            "time": time.time(),
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
        with contextlib.suppress(OSError, ValueError):  # a closed stdout must not fail a request
            self._sink(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))


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
