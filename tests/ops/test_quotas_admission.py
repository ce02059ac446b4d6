"""Token-bucket quotas per key store and admission gates (pure logic, fake clock)."""

from __future__ import annotations

from xksproxy.service.admission import Admission
from xksproxy.service.quotas import Quotas, QuotaSpec, TokenBucket, per_worker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_burst_then_rate():
    c = Clock()
    b = TokenBucket(10, 5, clock=c)
    assert [b.take() for _ in range(6)] == [True] * 5 + [False]
    c.t += 0.1  # one token per 100 ms
    assert b.take() and not b.take()
    c.t += 100  # never more than the burst
    assert sum(b.take() for _ in range(20)) == 5


def test_quota_throttles_only_the_store_over_its_rate():
    c = Clock()
    q = Quotas(workers=1, clock=c)
    q.update([("busy", QuotaSpec(5, 5)), ("calm", QuotaSpec(5, 5)), ("free", QuotaSpec(0, 0))])
    assert sum(q.allow("busy") for _ in range(50)) == 5
    assert all(q.allow("calm") for _ in range(5))
    assert all(q.allow("free") for _ in range(1000))
    assert q.allow("unknown-store")


def test_host_wide_quota_is_divided_between_workers():
    assert per_worker(QuotaSpec(100, 40), 4) == (25.0, 10)
    assert per_worker(QuotaSpec(10, 0), 4) == (2.5, 3)  # burst 0 = one second's worth
    assert per_worker(QuotaSpec(1, 1), 8) == (0.125, 1)  # at least one token


def test_reload_keeps_unchanged_buckets_and_applies_new_limits():
    c = Clock()
    q = Quotas(workers=1, clock=c)
    q.update([("a", QuotaSpec(1, 2)), ("b", QuotaSpec(1, 1))])
    assert q.allow("a") and q.allow("a") and not q.allow("a")
    q.update([("a", QuotaSpec(1, 2)), ("b", QuotaSpec(0, 0))])
    assert not q.allow("a")  # same spec: same (empty) bucket
    assert all(q.allow("b") for _ in range(10))  # quota removed


def test_in_flight_gate():
    a = Admission(2)
    assert a.enter().ok and a.enter().ok
    d = a.enter()
    assert not d.ok and d.reason == "in_flight"
    a.leave()
    assert a.enter().ok


def test_session_queue_gate_uses_observed_latency():
    c = Clock()
    a = Admission(100, clock=c)
    deadline = c.t + 0.150
    # fast HSM: a long queue is fine
    assert a.check_session_queue(sessions=4, waiting=20, in_use=4, deadline=deadline).ok
    for _ in range(30):
        a.observe_call(0.05)  # slowed HSM: 50 ms per call
    assert a.check_session_queue(sessions=4, waiting=0, in_use=2, deadline=deadline).ok
    d = a.check_session_queue(sessions=4, waiting=8, in_use=4, deadline=deadline)
    assert not d.ok and d.reason == "session_queue"
    for _ in range(40):
        a.observe_call(0.0001)  # recovered
    assert a.check_session_queue(sessions=4, waiting=8, in_use=4, deadline=deadline).ok
