"""Pre-bound series children: what one metric update touches (issue 16, "an integer add").

A child is one thread's cell of one series (name + label set). The recording API obtains it
once per label set and thread (cached in :mod:`.record` and :mod:`.members`), so an update is
attribute increments on a slotted object: no label sorting, no dict lookup, no lock.

The thread story (why no lock): requests and HSM operations are observed on the event-loop
thread, while other threads record too: the audit writer (gaps, lost records), the request-log
writer (dropped lines), the metrics flusher and any code run with ``asyncio.to_thread``. ``x += 1``
on a shared object is
a read, an add and a write; two threads doing it at once can lose an update (and do, on a
free-threaded build or whenever a thread switch falls between the read and the write). So no
child is ever shared between threads: :meth:`~.registry.Registry.counter` and
:meth:`~.registry.Registry.histogram` hand each thread its own child, and each child has
exactly one writer. The snapshot (another thread) only *reads* the children and sums them per
series, so it may be one update behind a writer but never loses one. The alternative, one
shared child behind an (uncontended) lock, measured 2.4 times the cost per request
(``loadtest/bench_metrics.py``, figures in :mod:`.registry`). Nothing records a metric
from a signal handler or a finalizer, the only ways one thread could interrupt its own update.

A histogram child keeps no separate count: the count is the sum of its buckets, computed at
snapshot time, so a scrape in the middle of an update can never show ``_count`` different from
the ``le="+Inf"`` bucket.
"""

from __future__ import annotations

from bisect import bisect_left

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


class CounterChild:
    """One thread's cell of one counter series; only that thread writes it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, value: float = 1.0) -> None:
        self.value += value


class HistogramChild:
    """One thread's cell of one histogram series: per-bucket counts (the last one is +Inf) and
    the sum of the observed values; only that thread writes it."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0.0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left gives Prometheus' "le" semantics: a value equal to a bound is counted in it
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1.0
        self.sum += seconds


def hist_row(children: list[HistogramChild]) -> list[float]:
    """The snapshot row of one histogram series over its threads' children: bucket counts...,
    sum, count (the format :mod:`.merge` and :mod:`.exposition` read)."""
    counts = [0.0] * (len(DURATION_BUCKETS) + 1)
    total = 0.0
    for child in children:
        for i, n in enumerate(list(child.counts)):  # copy: the writer may be adding right now
            counts[i] += n
        total += child.sum
    return [*counts, total, sum(counts)]
