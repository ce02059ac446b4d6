"""One process's counters, histograms and gauges (the in-memory half of the metrics).

Why our own small registry instead of ``prometheus_client``: we need exactly counters, gauges
and histograms, a multi-process merge and two SLO figures computed at scrape time; the
dependency's multiprocess mode needs its own mmap directory handling and still cannot compute a
burn rate. The package (:mod:`xksproxy.observe.metrics`) is a few pages and has no dependency.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Latency buckets (seconds) around KMS's 250 ms timeout.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.5,
    1.0,
)

#: A series' labels: sorted (name, value) pairs, so equal label sets make equal keys.
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]
#: What a collector yields: (series name, labels, value).
Sample = tuple[str, Mapping[str, object], float]
Collector = Callable[[], Iterable[Sample]]
#: A process's snapshot as plain data (what a worker writes, JSON-serialisable).
Snapshot = dict[str, Any]


def labels(values: Mapping[str, object]) -> Labels:
    """The canonical label tuple of ``values``."""
    return tuple(sorted((str(k), str(v)) for k, v in values.items()))


class Registry:
    """Counters, histograms and gauges of one process. Thread-safe (one short lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[SeriesKey, float] = {}
        self.hists: dict[SeriesKey, list[float]] = {}  # bucket counts..., sum, count
        self.gauges: dict[SeriesKey, float] = {}
        self._collectors: list[Collector] = []
        self.deadline_s = 0.15

    def reset(self) -> None:
        """Forget every series and collector (tests start from an empty registry)."""
        with self._lock:
            self.counters.clear()
            self.hists.clear()
            self.gauges.clear()
            self._collectors.clear()
            self.deadline_s = 0.15

    def inc(self, name: str, label_values: Mapping[str, object], value: float = 1.0) -> None:
        key = (name, labels(label_values))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def inc_key(self, key: SeriesKey, value: float = 1.0) -> None:
        """:meth:`inc` with a prepared key (hot path: no label sorting)."""
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, label_values: Mapping[str, object], seconds: float) -> None:
        self.observe_key((name, labels(label_values)), seconds)

    def observe_key(self, key: SeriesKey, seconds: float) -> None:
        idx = bisect.bisect_left(DURATION_BUCKETS, seconds)  # le semantics: seconds <= bound
        with self._lock:
            h = self.hists.get(key)
            if h is None:
                h = self.hists[key] = [0.0] * (len(DURATION_BUCKETS) + 3)
            h[idx] += 1
            h[-2] += seconds
            h[-1] += 1

    def set_gauge(self, name: str, label_values: Mapping[str, object], value: float) -> None:
        with self._lock:
            self.gauges[(name, labels(label_values))] = float(value)

    def add_collector(self, fn: Collector) -> None:
        """Register a callback read at snapshot time (e.g. an HSM pool's live stats)."""
        with self._lock:
            self._collectors.append(fn)

    def snapshot(self) -> Snapshot:
        """Plain-data copy of everything, gauges from collectors included."""
        with self._lock:
            gauges = dict(self.gauges)
            collectors = list(self._collectors)
        for fn in collectors:
            with contextlib.suppress(Exception):  # a collector must never break a scrape
                for name, label_values, value in fn():
                    gauges[(name, labels(label_values))] = float(value)
        with self._lock:
            return {
                "pid": os.getpid(),
                "time": time.time(),
                "counters": [[n, list(map(list, lb)), v] for (n, lb), v in self.counters.items()],
                "hists": [[n, list(map(list, lb)), list(h)] for (n, lb), h in self.hists.items()],
                "gauges": [[n, list(map(list, lb)), v] for (n, lb), v in gauges.items()],
            }


#: The process's registry (one per worker; the listener merges their snapshots).
REGISTRY = Registry()
