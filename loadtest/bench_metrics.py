"""Benchmark: the cost of one request's metric updates, old path vs children vs prometheus_client.

One "request-update-set" is what :func:`xksproxy.observe.metrics.observe_request` does for a
request that updates all five of its series (a 400 answered in time: requests, duration, errors,
SLO requests, SLO good), the label-set lookup included. Rows, each measured in this run:

- ``old``: the registry before issue 16 (a prepared key per series; a dict lookup and a
  ``threading.Lock`` per update), kept here as a copy (:class:`OldRegistry`);
- ``children``: today's ``observe_request`` (per-thread pre-bound children, attribute adds);
- ``children+lock``: the same children with a lock taken per update: what the per-thread
  children save over "one shared child behind a lock";
- ``prometheus_client``: ``Counter(...).labels(...)`` / ``Histogram(...).labels(...)`` children,
  cached per label set the same way, ``inc()`` x4 + ``observe()``;
- ``prometheus_client mp``: the same in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` in a
  temporary directory removed at the end), what several workers would need.

Figures are ns per request-update-set and the ratio to ``children``; compare ratios across
machines. The prometheus rows are skipped (with a note) when prometheus_client is not installed:
it is not a dependency (``.venv/bin/pip install prometheus-client`` to measure it).

Usage: .venv/bin/python loadtest/bench_metrics.py [--seconds 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xksproxy.observe import metrics
from xksproxy.observe.metrics.registry import SeriesKey, labels
from xksproxy.observe.metrics.snapshots import FLUSHER

#: The request measured: every one of its five series is updated.
OPERATION, KEYSTORE, STATUS, ERROR = "Decrypt", "demo", 400, "InvalidCiphertextException"
#: Latencies cycled through, so the histogram bisect lands in different buckets.
SECONDS = (0.0004, 0.002, 0.003, 0.007, 0.02, 0.06, 0.12, 0.3)
BATCH = 1000


class OldRegistry:
    """Copy of the hot path of ``Registry`` before issue 16 (``inc_key``/``observe_key``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[SeriesKey, float] = {}
        self.hists: dict[SeriesKey, list[float]] = {}
        self.deadline_s = 0.15

    def inc_key(self, key: SeriesKey, value: float = 1.0) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe_key(self, key: SeriesKey, seconds: float) -> None:
        idx = bisect.bisect_left(metrics.DURATION_BUCKETS, seconds)
        with self._lock:
            h = self.hists.get(key)
            if h is None:
                h = self.hists[key] = [0.0] * (len(metrics.DURATION_BUCKETS) + 3)
            h[idx] += 1
            h[-2] += seconds
            h[-1] += 1


OLD = OldRegistry()


@functools.lru_cache(maxsize=4096)
def _old_request_keys(
    operation: str, keystore: str, error_name: str | None
) -> tuple[SeriesKey, ...]:
    lb = labels({"operation": operation, "keystore": keystore, "outcome": error_name or "ok"})
    store = labels({"keystore": keystore})
    return (
        ("xksproxy_requests_total", lb),
        ("xksproxy_request_duration_seconds", lb),
        ("xksproxy_errors_total", labels({"errorName": error_name or "", "operation": operation})),
        ("xksproxy_slo_requests_total", store),
        ("xksproxy_slo_good_requests_total", store),
    )


def old_observe_request(
    *, operation: str, keystore: str, status: int, error_name: str | None, seconds: float
) -> None:
    """``observe_request`` as it was before issue 16 (``slo=True``, ``shed=False``)."""
    keys = _old_request_keys(operation, keystore, error_name)
    reg = OLD
    reg.inc_key(keys[0])
    reg.observe_key(keys[1], seconds)
    if error_name:
        reg.inc_key(keys[2])
    reg.inc_key(keys[3])
    if status < 500 and seconds <= reg.deadline_s:
        reg.inc_key(keys[4])
    if not FLUSHER.running:
        FLUSHER.ensure()


class LockedChildren:
    """The five children behind one shared lock per update (the alternative to per-thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters = [metrics.CounterChild() for _ in range(4)]
        self.duration = metrics.HistogramChild()


LOCKED = LockedChildren()


def locked_observe_request(*, status: int, error_name: str | None, seconds: float) -> None:
    c, lock = LOCKED, LOCKED.lock
    with lock:
        c.counters[0].inc()
    with lock:
        c.duration.observe(seconds)
    if error_name:
        with lock:
            c.counters[1].inc()
    with lock:
        c.counters[2].inc()
    if status < 500 and seconds <= 0.15:
        with lock:
            c.counters[3].inc()


def prometheus_observer(prom: Any, registry: Any) -> Callable[..., None]:
    """An ``observe_request`` equivalent on prometheus_client children, cached per label set."""
    requests = prom.Counter(
        "xksproxy_requests", "h", ["operation", "keystore", "outcome"], registry=registry
    )
    duration = prom.Histogram(
        "xksproxy_request_duration_seconds",
        "h",
        ["operation", "keystore", "outcome"],
        buckets=metrics.DURATION_BUCKETS,
        registry=registry,
    )
    errors = prom.Counter("xksproxy_errors", "h", ["errorName", "operation"], registry=registry)
    slo = prom.Counter("xksproxy_slo_requests", "h", ["keystore"], registry=registry)
    good = prom.Counter("xksproxy_slo_good_requests", "h", ["keystore"], registry=registry)

    @functools.lru_cache(maxsize=4096)
    def children(operation: str, keystore: str, error_name: str | None) -> tuple[Any, ...]:
        outcome = error_name or "ok"
        return (
            requests.labels(operation, keystore, outcome),
            duration.labels(operation, keystore, outcome),
            errors.labels(error_name or "", operation),
            slo.labels(keystore),
            good.labels(keystore),
        )

    def observe(
        *, operation: str, keystore: str, status: int, error_name: str | None, seconds: float
    ) -> None:
        c = children(operation, keystore, error_name)
        c[0].inc()
        c[1].observe(seconds)
        if error_name:
            c[2].inc()
        c[3].inc()
        if status < 500 and seconds <= 0.15:
            c[4].inc()

    observe(operation=OPERATION, keystore=KEYSTORE, status=STATUS, error_name=ERROR, seconds=0.0)
    return observe  # children bound: the multiprocess row's mmap values exist from here on


@contextlib.contextmanager
def multiprocess_mode() -> Iterator[None]:
    """prometheus_client's multiprocess value class over a temporary directory, undone after."""
    from prometheus_client import values

    directory = tempfile.mkdtemp(prefix="bench-metrics-prom-")
    saved_class, saved_env = values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    try:
        yield
    finally:
        values.ValueClass.close_all_files()
        values.ValueClass = saved_class
        if saved_env is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved_env
        shutil.rmtree(directory, ignore_errors=True)


def _batch(observe: Callable[..., None], *, labelled: bool) -> Callable[[], None]:
    seconds = [SECONDS[i % len(SECONDS)] for i in range(BATCH)]
    if labelled:

        def run() -> None:
            for s in seconds:
                observe(
                    operation=OPERATION,
                    keystore=KEYSTORE,
                    status=STATUS,
                    error_name=ERROR,
                    seconds=s,
                )

    else:

        def run() -> None:
            for s in seconds:
                observe(status=STATUS, error_name=ERROR, seconds=s)

    return run


def _time_loop(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per request-update-set: call ``fn`` (one batch) until ``seconds`` elapse."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / (calls * BATCH)


def measure(seconds: float, rounds: int) -> tuple[dict[str, float], list[str]]:
    """ns per request-update-set for each row (best of interleaved rounds), and notes."""
    notes: list[str] = []
    rows: dict[str, Callable[[], None]] = {
        "old (lock + dict per update)": _batch(old_observe_request, labelled=True),
        "children (this code)": _batch(metrics.observe_request, labelled=True),
        "children+lock per update": _batch(locked_observe_request, labelled=False),
    }
    with contextlib.ExitStack() as stack:
        try:
            import prometheus_client as prom
        except ImportError:
            notes.append(
                "prometheus_client rows skipped: not installed (pip install it to measure)"
            )
        else:
            plain = prometheus_observer(prom, prom.CollectorRegistry())
            rows["prometheus_client"] = _batch(plain, labelled=True)
            stack.enter_context(multiprocess_mode())
            mp = prometheus_observer(prom, prom.CollectorRegistry())
            rows["prometheus_client mp"] = _batch(mp, labelled=True)
        best = dict.fromkeys(rows, float("inf"))
        for run in rows.values():
            run()  # warm caches, bind every child
        for _ in range(rounds):
            for name, run in rows.items():
                best[name] = min(best[name], _time_loop(run, seconds))
    return {name: s * 1e9 for name, s in best.items()}, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best is shown)")
    args = ap.parse_args()

    metrics.REGISTRY.reset()  # deadline 0.15 s, the figure the other rows hard-code
    # as in a worker whose snapshot thread runs: both paths then pay one attribute check for it
    FLUSHER.running = True
    try:
        ns, notes = measure(args.seconds, args.rounds)
    finally:
        FLUSHER.running = False
        metrics.REGISTRY.reset()
    base = ns["children (this code)"]
    print(
        f"python {sys.version.split()[0]}, one request = 5 series updates "
        f"(4 counters + 1 histogram), best of {args.rounds} rounds x {args.seconds:g} s"
    )
    for name, v in ns.items():
        print(f"{name:30s} {v:8.0f} ns/request  {v / base:5.2f}x children")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
