"""The recording API the service, the HSM pools and the operations features call.

Everything here writes to this process's :data:`~xksproxy.observe.metrics.registry.REGISTRY`;
the request and HSM paths use prepared series keys (label sorting done once per label set).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from xksproxy.observe.metrics.registry import REGISTRY, Sample, SeriesKey, labels
from xksproxy.observe.metrics.series import HEALTH_STATES
from xksproxy.observe.metrics.snapshots import FLUSHER


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
    keys = _request_keys(operation, keystore, error_name)
    reg = REGISTRY
    reg.inc_key(keys[0])
    reg.observe_key(keys[1], seconds)
    if error_name:
        reg.inc_key(keys[2])
    if slo:
        reg.inc_key(keys[3])
        if status < 500 and not shed and seconds <= reg.deadline_s:
            reg.inc_key(keys[4])
    if not FLUSHER.running:
        FLUSHER.ensure()


@functools.lru_cache(maxsize=4096)
def _request_keys(operation: str, keystore: str, error_name: str | None) -> tuple[SeriesKey, ...]:
    """Prepared series keys for one (operation, store, outcome): label sorting done once."""
    lb = labels({"operation": operation, "keystore": keystore, "outcome": error_name or "ok"})
    store = labels({"keystore": keystore})
    return (
        ("xksproxy_requests_total", lb),
        ("xksproxy_request_duration_seconds", lb),
        ("xksproxy_errors_total", labels({"errorName": error_name or "", "operation": operation})),
        ("xksproxy_slo_requests_total", store),
        ("xksproxy_slo_good_requests_total", store),
    )


def observe_throttled(reason: str, keystore: str) -> None:
    REGISTRY.inc("xksproxy_throttled_total", {"reason": reason, "keystore": keystore})


def observe_hsm_call(token: str, operation: str, seconds: float) -> None:
    REGISTRY.observe_key(_hsm_call_key(token, operation), seconds)


def observe_session_wait(token: str, seconds: float) -> None:
    REGISTRY.observe_key(_session_wait_key(token), seconds)


def hsm_keys(token: str, operation: str) -> tuple[SeriesKey, SeriesKey]:
    """Prepared (call duration, session wait) series keys for :func:`observe_hsm_op`."""
    return _hsm_call_key(token, operation), _session_wait_key(token)


def observe_hsm_op(keys: tuple[SeriesKey, SeriesKey], wait_s: float, call_s: float) -> None:
    """One HSM operation: its call time and its session wait (hot path: prepared keys)."""
    REGISTRY.observe_key(keys[0], call_s)
    REGISTRY.observe_key(keys[1], wait_s)


@functools.lru_cache(maxsize=256)
def _hsm_call_key(token: str, operation: str) -> SeriesKey:
    """Prepared series key (one per HSM call on the hot path: label sorting done once)."""
    return ("xksproxy_hsm_call_duration_seconds", labels({"token": token, "operation": operation}))


@functools.lru_cache(maxsize=64)
def _session_wait_key(token: str) -> SeriesKey:
    return ("xksproxy_hsm_session_wait_seconds", labels({"token": token}))


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
