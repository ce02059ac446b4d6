"""The recording API the service, the HSM pools and the operations features call.

Everything here writes to this process's :data:`~xksproxy.observe.metrics.registry.REGISTRY`.
The request and HSM paths are per-request hot paths: they fetch the calling thread's children
(:mod:`.children`) once per (thread, label set) from an ``lru_cache`` keyed by the thread's
ident, so an update is one cache hit and attribute increments (no label sorting, no registry
lock). The thread ident in the key is what keeps each child single-writer; a new thread that
reuses a finished thread's ident takes over its children, which nobody else writes any more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from threading import get_ident
from typing import TYPE_CHECKING

from xksproxy.observe.metrics.children import CounterChild, HistogramChild
from xksproxy.observe.metrics.registry import REGISTRY, Sample, SeriesKey, labels
from xksproxy.observe.metrics.series import HEALTH_STATES
from xksproxy.observe.metrics.snapshots import FLUSHER

if TYPE_CHECKING:
    from xksproxy.observe.requestlog import RequestContext


def configure(*, deadline_s: float) -> None:
    """Set the SLO latency target (the request deadline)."""
    REGISTRY.deadline_s = deadline_s
    REGISTRY.set_gauge("xksproxy_slo_latency_target_seconds", {}, deadline_s)
    FLUSHER.ensure()


def observe_request(
    *,
    operation: str,
    keystore: str,
    status: int,
    error_name: str | None,
    seconds: float,
    shed: bool = False,
    slo: bool = True,
) -> None:
    """One answered XKS request (any outcome); it counts for the SLO only when ``slo`` (the
    request was authenticated)."""
    c = _request_children(get_ident(), operation, keystore, error_name)
    c.requests.inc()
    c.duration.observe(seconds)
    if c.errors is not None:
        c.errors.inc()
    if slo:
        (c.slo or c.bind_slo()).inc()
        if status < 500 and not shed and seconds <= REGISTRY.deadline_s:
            (c.slo_good or c.bind_slo_good()).inc()
    if not FLUSHER.running:
        FLUSHER.ensure()


class RequestChildren:
    """The children one answered request updates, for one thread and one label set.

    A series appears in the exposition once it was first updated, so the children a request
    updates only sometimes are bound on first use: ``errors`` exists when the label set has an
    error, the SLO ones when a request of it first counts for the SLO (or is good).
    """

    __slots__ = ("_store", "duration", "errors", "requests", "slo", "slo_good")

    def __init__(self, operation: str, keystore: str, error_name: str | None) -> None:
        lb = labels({"operation": operation, "keystore": keystore, "outcome": error_name or "ok"})
        self.requests = REGISTRY.counter(("xksproxy_requests_total", lb))
        self.duration = REGISTRY.histogram(("xksproxy_request_duration_seconds", lb))
        self.errors: CounterChild | None = None
        if error_name:
            errors = labels({"errorName": error_name, "operation": operation})
            self.errors = REGISTRY.counter(("xksproxy_errors_total", errors))
        self._store = labels({"keystore": keystore})
        self.slo: CounterChild | None = None
        self.slo_good: CounterChild | None = None

    def bind_slo(self) -> CounterChild:
        self.slo = REGISTRY.counter(("xksproxy_slo_requests_total", self._store))
        return self.slo

    def bind_slo_good(self) -> CounterChild:
        self.slo_good = REGISTRY.counter(("xksproxy_slo_good_requests_total", self._store))
        return self.slo_good


@functools.lru_cache(maxsize=4096)
def _request_children(
    ident: int, operation: str, keystore: str, error_name: str | None
) -> RequestChildren:
    """The calling thread's (``ident``) children for one (operation, store, outcome)."""
    return RequestChildren(operation, keystore, error_name)


#: The ``RequestContext.extra`` key that says why a request was refused with 429 (the metrics
#: observer tells load shedding from a quota by it).
THROTTLED = "throttled"


def observe_throttled(ctx: RequestContext | None, reason: str) -> None:
    """``ctx`` is being refused with 429 ThrottlingException for ``reason`` (the caller raises):
    mark the request and count ``xksproxy_throttled_total{reason, keystore}``. The one place
    every refusal (pre-auth budget, in-flight gate, quota, session queue, audit backlog) goes
    through, so the mark and the counter cannot disagree."""
    if ctx is not None:
        ctx.extra[THROTTLED] = reason
    store = (ctx.store if ctx is not None else None) or ""
    REGISTRY.inc("xksproxy_throttled_total", {"reason": reason, "keystore": store})


class HsmSeries:
    """The (call duration, session wait) series of one (token, operation): a handle a pool
    keeps for its lifetime and may use from any thread; hashed by identity, so looking up the
    calling thread's children for it costs no label hashing."""

    __slots__ = ("call", "wait")

    def __init__(self, token: str, operation: str) -> None:
        token_op = labels({"token": token, "operation": operation})
        self.call: SeriesKey = ("xksproxy_hsm_call_duration_seconds", token_op)
        self.wait: SeriesKey = ("xksproxy_hsm_session_wait_seconds", labels({"token": token}))


@functools.lru_cache(maxsize=256)
def hsm_keys(token: str, operation: str) -> HsmSeries:
    """The series handle for :func:`observe_hsm_op` (label sorting done once)."""
    return HsmSeries(token, operation)


def observe_hsm_op(keys: HsmSeries, wait_s: float, call_s: float) -> None:
    """One HSM operation: its call time and its session wait (hot path: pre-bound children)."""
    call, wait = _hsm_children(get_ident(), keys)
    call.observe(call_s)
    wait.observe(wait_s)


@functools.lru_cache(maxsize=1024)
def _hsm_children(ident: int, keys: HsmSeries) -> tuple[HistogramChild, HistogramChild]:
    """The calling thread's (``ident``) children for ``keys`` (today always the event loop's:
    the admission guard times each pool call there); sized for threads x tokens x operations."""
    return REGISTRY.histogram(keys.call), REGISTRY.histogram(keys.wait)


# After a registry reset the cached children are no longer the registry's: drop them.
REGISTRY.on_reset(_request_children.cache_clear)
REGISTRY.on_reset(_hsm_children.cache_clear)


def set_token_health(token: str, status: str) -> None:
    for s in HEALTH_STATES:
        REGISTRY.set_gauge(
            "xksproxy_token_health", {"token": token, "status": s}, 1.0 if s == status else 0.0
        )


def audit_dropped(n: int = 1) -> None:
    REGISTRY.inc("xksproxy_audit_dropped_total", {}, n)


def audit_gap(reason: str) -> None:
    REGISTRY.inc("xksproxy_audit_gaps_total", {"reason": reason})


def audit_lost(n: int) -> None:
    REGISTRY.inc("xksproxy_audit_lost_total", {}, n)


def request_log_dropped(n: int = 1) -> None:
    REGISTRY.inc("xksproxy_request_log_dropped_total", {}, n)


def config_reloaded(result: str) -> None:
    REGISTRY.inc("xksproxy_config_reloads_total", {"result": result})


def register_pool(token: str, stats: Callable[[], object]) -> None:
    """Expose an HSM pool's live ``stats()`` (sessions, in_use, waiting, state) as gauges."""

    def collect() -> Iterable[Sample]:
        s = stats()
        yield "xksproxy_hsm_sessions", {"token": token}, float(getattr(s, "sessions", 0))
        yield "xksproxy_hsm_sessions_in_use", {"token": token}, float(getattr(s, "in_use", 0))
        yield "xksproxy_hsm_sessions_waiting", {"token": token}, float(getattr(s, "waiting", 0))

    REGISTRY.add_collector(collect)


def register_in_flight(read: Callable[[], int]) -> None:
    REGISTRY.add_collector(lambda: [("xksproxy_in_flight_requests", {}, float(read()))])
