"""Metrics children (issue 16): updates from several threads are all counted, and the
Prometheus text is what it was before the children (a golden file written by the old registry)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xksproxy import environment
from xksproxy.observe import metrics
from xksproxy.observe.metrics import members
from xksproxy.observe.requestlog import RequestContext

GOLDEN = Path(__file__).parent / "data" / "metrics_exposition.txt"
THREADS, UPDATES = 8, 5000


@pytest.fixture
def registry(monkeypatch) -> Iterator[metrics.Registry]:
    monkeypatch.delenv(environment.METRICS_DIR.name, raising=False)
    metrics.REGISTRY.reset()
    yield metrics.REGISTRY
    metrics.REGISTRY.reset()


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter can: a read-add-write shared between threads
    would lose updates here."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(saved)


def _run_in_threads(work: Callable[[], None]) -> None:
    start = threading.Barrier(THREADS)

    def body() -> None:
        start.wait()
        for _ in range(UPDATES):
            work()

    threads = [threading.Thread(target=body) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _counters(snap: dict) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(n, tuple(map(tuple, lb))): v for n, lb, v in snap["counters"]}


def _hists(snap: dict) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
    return {(n, tuple(map(tuple, lb))): h for n, lb, h in snap["hists"]}


def test_requests_from_many_threads_are_all_counted(registry, frequent_switches):
    def request() -> None:
        metrics.observe_request(
            operation="Encrypt", keystore="demo", status=200, error_name=None, seconds=0.002
        )

    _run_in_threads(request)
    snap = registry.snapshot()
    total = THREADS * UPDATES
    lb = (("keystore", "demo"), ("operation", "Encrypt"), ("outcome", "ok"))
    assert _counters(snap)[("xksproxy_requests_total", lb)] == total
    assert _counters(snap)[("xksproxy_slo_good_requests_total", (("keystore", "demo"),))] == total
    hist = _hists(snap)[("xksproxy_request_duration_seconds", lb)]
    assert hist[-1] == total  # _count
    assert hist[2] == total  # 0.002 s falls in the le="0.0025" bucket
    assert hist[-2] == pytest.approx(total * 0.002)


def test_hsm_ops_and_rare_counters_from_many_threads_are_all_counted(registry, frequent_switches):
    series = metrics.hsm_keys("softhsm-0", "encrypt")  # one handle shared by every thread
    member = members.MemberMetrics("main")

    def hsm_op() -> None:
        metrics.observe_hsm_op(series, 0.0001, 0.001)
        member.call("a", "encrypt", 0.001, False)
        metrics.observe_throttled(RequestContext(0.0, 0.0, store="demo"), "quota")

    _run_in_threads(hsm_op)
    snap = registry.snapshot()
    total = THREADS * UPDATES
    call = (
        "xksproxy_hsm_call_duration_seconds",
        (("operation", "encrypt"), ("token", "softhsm-0")),
    )
    assert _hists(snap)[call][-1] == total
    assert (
        _hists(snap)[("xksproxy_hsm_session_wait_seconds", (("token", "softhsm-0"),))][-1] == total
    )
    who = (("backend", "main"), ("member", "a"))
    assert _counters(snap)[("xksproxy_hsm_member_errors_total", who)] == total
    throttled = ("xksproxy_throttled_total", (("keystore", "demo"), ("reason", "quota")))
    assert _counters(snap)[throttled] == total


def test_scrapes_during_updates_never_see_a_counter_go_backwards(registry, frequent_switches):
    lb = (("keystore", "demo"), ("operation", "Decrypt"), ("outcome", "ok"))
    seen: list[float] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            counters = registry.counters
            seen.append(counters.get(("xksproxy_requests_total", lb), 0.0))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        _run_in_threads(
            lambda: metrics.observe_request(
                operation="Decrypt", keystore="demo", status=200, error_name=None, seconds=0.01
            )
        )
    finally:
        done.set()
        scraper.join()
    assert seen == sorted(seen)
    assert registry.counters[("xksproxy_requests_total", lb)] == THREADS * UPDATES


def test_exposition_is_unchanged(registry):
    """The same updates as the golden file's: names, labels, values and order identical."""
    metrics.configure(deadline_s=0.15)
    for s in (0.0004, 0.002, 0.002, 0.3, 2.0):
        metrics.observe_request(
            operation="Encrypt", keystore="demo", status=200, error_name=None, seconds=s
        )
    outcomes = [
        (400, "InvalidCiphertextException", 0.003, "Decrypt", {}),
        (503, "DependencyTimeoutException", 0.16, "Encrypt", {}),
        (401, "AuthenticationFailedException", 0.001, "Encrypt", {"slo": False}),
        (429, "ThrottlingException", 0.001, "Encrypt", {"shed": True}),
    ]
    for status, error, seconds, operation, flags in outcomes:
        metrics.observe_request(
            operation=operation,
            keystore="demo",
            status=status,
            error_name=error,
            seconds=seconds,
            **flags,
        )
    metrics.observe_hsm_op(metrics.hsm_keys("softhsm-0", "encrypt"), 0.0002, 0.001)
    metrics.observe_hsm_op(metrics.hsm_keys("softhsm-0", "decrypt"), 0.05, 0.01)
    refused = RequestContext(0.0, 0.0, store="demo")
    metrics.observe_throttled(refused, "quota")
    assert refused.extra[metrics.THROTTLED] == "quota"  # the mark the metrics observer reads
    metrics.audit_dropped(2)
    member = members.MemberMetrics("main")
    member.call("a", "encrypt", 0.004, True)
    member.call("a", "encrypt", 0.004, False)
    member.failover("a")
    text = metrics.render(metrics.merge([registry.snapshot()]))
    assert text == GOLDEN.read_text()


def test_after_a_reset_updates_count_from_zero(registry):
    series = metrics.hsm_keys("softhsm-0", "decrypt")
    metrics.observe_hsm_op(series, 0.0, 0.001)
    registry.reset()
    metrics.observe_hsm_op(series, 0.0, 0.001)
    call = (
        "xksproxy_hsm_call_duration_seconds",
        (("operation", "decrypt"), ("token", "softhsm-0")),
    )
    assert registry.hists[call][-1] == 1
