"""One process's counters, histograms and gauges (the in-memory half of the metrics).

Why our own small registry instead of ``prometheus_client`` (issue 16, measured): one request's
five metric updates (4 counters + 1 histogram, label-set lookup included) cost, on Python 3.11
on the shared 2-core dev machine (``loadtest/bench_metrics.py --seconds 1 --rounds 5``, ratios
from one run; a second run gave the ranges in brackets):

======================================  ===========  =====================
path                                    ns/request   ratio to the children
======================================  ===========  =====================
per-thread children (this registry)       1013        1.00
the same children, a lock per update      2447        2.42 (2.4-2.7)
the registry before issue 16              3720        3.67 (3.2-3.7)
prometheus_client 0.26 children           4704        4.64 (4.6-5.5)
prometheus_client, multiprocess mode      9846        9.72 (9.3-9.7)
======================================  ===========  =====================

We run several worker processes, so adopting it would mean its multiprocess mode: ten times
the cost of the children on every request (a lock and an mmap write per update), its own mmap
directory to create, clean up and merge, and the SLO burn rates would still have to be
computed by us at scrape time. So not adopted; the package (:mod:`xksproxy.observe.metrics`) is
a few pages and has no dependency. The per-request work is attribute adds on pre-bound,
per-thread children (:mod:`.children`); the snapshot and the exposition do the summing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from xksproxy.observe.metrics.children import CounterChild, HistogramChild, hist_row

#: A child type (:class:`CounterChild` or :class:`HistogramChild`).
C = TypeVar("C", CounterChild, HistogramChild)

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
    """Counters, histograms and gauges of one process.

    Counters and histograms live in per-thread children (:mod:`.children`: one writer each, no
    lock on the update); the lock guards only the tables of children, the gauges and the
    collectors, taken when a thread meets a series for the first time and at snapshot time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # series key -> thread ident -> that thread's child
        self._counters: dict[SeriesKey, dict[int, CounterChild]] = {}
        self._hists: dict[SeriesKey, dict[int, HistogramChild]] = {}
        self.gauges: dict[SeriesKey, float] = {}
        self._collectors: list[Collector] = []
        self._reset_hooks: list[Callable[[], None]] = []
        self.deadline_s = 0.15

    def after_fork(self) -> None:
        """In a forked child: another thread of the parent may have held the lock."""
        self._lock = threading.Lock()

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on :meth:`reset`: whoever caches children must drop them then, or its
        updates would go to children the registry no longer reads."""
        self._reset_hooks.append(hook)

    def reset(self) -> None:
        """Forget every series and collector (tests start from an empty registry)."""
        with self._lock:
            self._counters.clear()
            self._hists.clear()
            self.gauges.clear()
            self._collectors.clear()
            self.deadline_s = 0.15
        for hook in self._reset_hooks:
            hook()

    def counter(self, key: SeriesKey) -> CounterChild:
        """The calling thread's child of counter ``key`` (the same one on every call from this
        thread). Hand it to no other thread: it must have one writer."""
        return self._child(self._counters, key, CounterChild)

    def histogram(self, key: SeriesKey) -> HistogramChild:
        """The calling thread's child of histogram ``key`` (see :meth:`counter`)."""
        return self._child(self._hists, key, HistogramChild)

    def _child(
        self, table: dict[SeriesKey, dict[int, C]], key: SeriesKey, make: Callable[[], C]
    ) -> C:
        ident = threading.get_ident()
        with self._lock:
            by_thread = table.setdefault(key, {})
            child = by_thread.get(ident)
            if child is None:
                child = by_thread[ident] = make()
            return child

    def inc(self, name: str, label_values: Mapping[str, object], value: float = 1.0) -> None:
        """Add ``value`` to a counter by name and labels (rare events; hot paths keep children)."""
        self.counter((name, labels(label_values))).inc(value)

    def observe(self, name: str, label_values: Mapping[str, object], seconds: float) -> None:
        """Observe ``seconds`` in a histogram by name and labels (see :meth:`inc`)."""
        self.histogram((name, labels(label_values))).observe(seconds)

    def set_gauge(self, name: str, label_values: Mapping[str, object], value: float) -> None:
        with self._lock:
            self.gauges[(name, labels(label_values))] = float(value)

    def add_collector(self, fn: Collector) -> None:
        """Register a callback read at snapshot time (e.g. an HSM pool's live stats)."""
        with self._lock:
            self._collectors.append(fn)

    @property
    def counters(self) -> dict[SeriesKey, float]:
        """Every counter summed over its threads' children (a copy)."""
        with self._lock:
            tables = [(k, list(by_thread.values())) for k, by_thread in self._counters.items()]
        return {k: sum(c.value for c in children) for k, children in tables}

    @property
    def hists(self) -> dict[SeriesKey, list[float]]:
        """Every histogram over its threads' children: bucket counts..., sum, count (a copy)."""
        with self._lock:
            tables = [(k, list(by_thread.values())) for k, by_thread in self._hists.items()]
        return {k: hist_row(children) for k, children in tables}

    def snapshot(self) -> Snapshot:
        """Plain-data copy of everything, gauges from collectors included."""
        with self._lock:
            gauges = dict(self.gauges)
            collectors = list(self._collectors)
        for fn in collectors:
            with contextlib.suppress(Exception):  # a collector must never break a scrape
                for name, label_values, value in fn():
                    gauges[(name, labels(label_values))] = float(value)
        return {
            "pid": os.getpid(),
            "time": time.time(),
            "counters": [[n, list(map(list, lb)), v] for (n, lb), v in self.counters.items()],
            "hists": [[n, list(map(list, lb)), h] for (n, lb), h in self.hists.items()],
            "gauges": [[n, list(map(list, lb)), v] for (n, lb), v in gauges.items()],
        }


#: The process's registry (one per worker; the listener merges their snapshots).
REGISTRY = Registry()
os.register_at_fork(after_in_child=REGISTRY.after_fork)
