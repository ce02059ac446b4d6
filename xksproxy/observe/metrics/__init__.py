"""Prometheus metrics, aggregated across worker processes, on a listener apart from KMS traffic.

This package's modules, one job each:

- :mod:`.children` — the per-thread series cells an update touches (and the thread story);
- :mod:`.registry` — one process's counters, histograms and gauges (:data:`REGISTRY`);
- :mod:`.series` — the catalogue of series names, types and help texts;
- :mod:`.record` — the recording API the service and the HSM pools call;
- :mod:`.snapshots` — worker side: a snapshot file per worker in ``$XKSPROXY_METRICS_DIR``;
- :mod:`.merge` — listener side: read and merge the workers' snapshots;
- :mod:`.slo` — the SLO share and error-budget burn rates computed at scrape time;
- :mod:`.exposition` — the Prometheus text format;
- :mod:`.listener` — the ``GET /metrics`` thread in the launcher's parent;
- :mod:`.wiring` — :func:`install`, hooking the metrics into one worker's app.

This module only re-exports the names callers use (``metrics.observe_request``,
``metrics.install``, ``metrics.start_listener``, ...), so they need not know the layout.
"""

from __future__ import annotations

from xksproxy.observe.metrics.children import DURATION_BUCKETS, CounterChild, HistogramChild
from xksproxy.observe.metrics.exposition import render
from xksproxy.observe.metrics.listener import MetricsListener, exposition, start_listener
from xksproxy.observe.metrics.merge import Merged, collect_snapshots, merge
from xksproxy.observe.metrics.record import (
    THROTTLED,
    audit_dropped,
    audit_gap,
    audit_lost,
    config_reloaded,
    configure,
    hsm_keys,
    observe_hsm_op,
    observe_request,
    observe_throttled,
    register_in_flight,
    register_pool,
    request_log_dropped,
    set_token_health,
)
from xksproxy.observe.metrics.registry import REGISTRY, Labels, Registry
from xksproxy.observe.metrics.series import HEALTH_STATES, HELP
from xksproxy.observe.metrics.slo import BURN_WINDOWS_S, SLO_OBJECTIVE, SloTracker
from xksproxy.observe.metrics.snapshots import FLUSH_INTERVAL_S, flush_now, start_worker
from xksproxy.observe.metrics.wiring import install

__all__ = [
    "BURN_WINDOWS_S",
    "DURATION_BUCKETS",
    "FLUSH_INTERVAL_S",
    "HEALTH_STATES",
    "HELP",
    "REGISTRY",
    "SLO_OBJECTIVE",
    "THROTTLED",
    "CounterChild",
    "HistogramChild",
    "Labels",
    "Merged",
    "MetricsListener",
    "Registry",
    "SloTracker",
    "audit_dropped",
    "audit_gap",
    "audit_lost",
    "collect_snapshots",
    "config_reloaded",
    "configure",
    "exposition",
    "flush_now",
    "hsm_keys",
    "install",
    "merge",
    "observe_hsm_op",
    "observe_request",
    "observe_throttled",
    "register_in_flight",
    "register_pool",
    "render",
    "request_log_dropped",
    "set_token_health",
    "start_listener",
    "start_worker",
]
