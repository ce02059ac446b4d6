"""The SLO figures computed at scrape time: share of good requests and error-budget burn rates.

Only authenticated requests count (an unsigned flood or a slow body is not KMS's traffic). One
is *good* when it was answered before its deadline (``[server] request_deadline_ms``)
with a status below 500 and was not shed by admission control (counted by
:func:`~xksproxy.observe.metrics.record.observe_request`). The listener exposes the cumulative
share of good requests and the burn rate over sliding windows for :data:`SLO_OBJECTIVE`;
``deploy/prometheus/xksproxy-slo-alerts.yml`` shows multi-window burn-rate alerts computed by
Prometheus itself from the counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from xksproxy.observe.metrics.merge import Merged

SLO_OBJECTIVE = 0.999
BURN_WINDOWS_S = {"5m": 300.0, "30m": 1800.0, "1h": 3600.0, "6h": 21600.0}


class SloTracker:
    """Keeps (time, total, good) samples to compute burn rates over sliding windows."""

    def __init__(
        self, objective: float = SLO_OBJECTIVE, clock: Callable[[], float] = time.time
    ) -> None:
        self.objective = objective
        self._clock = clock
        self._samples: list[tuple[float, float, float]] = []
        self._lock = threading.Lock()

    def add(self, total: float, good: float) -> None:
        now = self._clock()
        horizon = now - max(BURN_WINDOWS_S.values()) - 60
        with self._lock:
            self._samples.append((now, total, good))
            while len(self._samples) > 2 and self._samples[1][0] < horizon:
                self._samples.pop(0)

    def burn_rates(self) -> dict[str, float]:
        with self._lock:
            if not self._samples:
                return dict.fromkeys(BURN_WINDOWS_S, 0.0)
            now, total, good = self._samples[-1]
            rates = {}
            for name, window in BURN_WINDOWS_S.items():
                base = self._samples[0]
                for s in self._samples:
                    if s[0] >= now - window:
                        break
                    base = s
                d_total, d_good = total - base[1], good - base[2]
                if base is self._samples[-1] or d_total <= 0:
                    # no history yet: use everything since start
                    d_total, d_good = total, good
                bad_share = (d_total - d_good) / d_total if d_total > 0 else 0.0
                rates[name] = bad_share / (1.0 - self.objective)
            return rates


def add_slo_figures(merged: Merged, tracker: SloTracker) -> None:
    """Sample the SLO counters into ``tracker`` and add the SLO gauges to ``merged``."""
    total = sum(v for (n, _), v in merged.counters.items() if n == "xksproxy_slo_requests_total")
    good = sum(
        v for (n, _), v in merged.counters.items() if n == "xksproxy_slo_good_requests_total"
    )
    tracker.add(total, good)
    g = merged.gauges
    g[("xksproxy_slo_within_budget_ratio", ())] = good / total if total else 1.0
    g[("xksproxy_slo_objective", ())] = tracker.objective
    for window, rate in tracker.burn_rates().items():
        g[("xksproxy_slo_error_budget_burn_rate", (("window", window),))] = rate
