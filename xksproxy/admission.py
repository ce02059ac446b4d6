"""Admission control: refuse work that cannot finish inside the request's deadline.

Why: KMS gives up after 250 ms. A request queued behind work that will take longer than its
deadline is doomed; letting it queue only adds load and turns into a 503 later. Answering 429
ThrottlingException *at once* tells KMS to back off while the requests already admitted still
finish in time, and the proxy recovers as soon as load drops (nothing is left queued).

Two gates, both O(1):

1. **In flight** (``[server] max_in_flight``, per worker): at most that many requests are being
   processed; the next one is refused immediately.
2. **Session queue vs budget**: before waiting for an HSM session the handler asks whether the
   expected wait fits in the time left. The expected wait is estimated from the pool's queue
   (``waiting`` requests ahead of us, ``sessions`` serving them) and a moving average of recent
   HSM call latencies (timeouts count as the full budget, so a hanging HSM closes the gate fast).

Neither gate looks at the clock of the request beyond its own deadline; there is no global lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str = ""  # "in_flight" or "session_queue" when refused (metrics label)


ADMIT = Decision(True)


class Admission:
    """Per-worker admission state. Not thread-safe by design: it lives on one event loop."""

    def __init__(
        self,
        max_in_flight: int,
        *,
        alpha: float = 0.2,
        initial_call_s: float = 0.001,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max(1, int(max_in_flight))
        self.in_flight = 0
        self._alpha = alpha
        self.call_ewma_s = initial_call_s
        self._clock = clock
        self.refused: dict[str, int] = {"in_flight": 0, "session_queue": 0}

    # -- gate 1 ----------------------------------------------------------------------------------
    def enter(self) -> Decision:
        """Count a new request in, or refuse it (then do not call :meth:`leave`)."""
        if self.in_flight >= self.max_in_flight:
            self.refused["in_flight"] += 1
            return Decision(False, "in_flight")
        self.in_flight += 1
        return ADMIT

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    # -- gate 2 ----------------------------------------------------------------------------------
    def expected_wait_s(self, sessions: int, waiting: int, in_use: int) -> float:
        """Rough time until a session frees up for a newcomer behind ``waiting`` others."""
        if sessions <= 0:
            return float("inf")
        if in_use < sessions and waiting == 0:
            return 0.0
        return (waiting + 1) / sessions * self.call_ewma_s

    def check_session_queue(
        self, *, sessions: int, waiting: int, in_use: int, deadline: float
    ) -> Decision:
        """Refuse if waiting for a session plus one call would overrun ``deadline`` (monotonic)."""
        remaining = deadline - self._clock()
        needed = self.expected_wait_s(sessions, waiting, in_use) + self.call_ewma_s
        if needed > remaining:
            self.refused["session_queue"] += 1
            return Decision(False, "session_queue")
        return ADMIT

    def check_pool(self, stats: object, deadline: float) -> Decision:
        """:meth:`check_session_queue` from an ``hsm`` ``PoolStats``."""
        return self.check_session_queue(
            sessions=int(getattr(stats, "sessions", 1)),
            waiting=int(getattr(stats, "waiting", 0)),
            in_use=int(getattr(stats, "in_use", 0)),
            deadline=deadline,
        )

    def observe_call(self, seconds: float) -> None:
        """Feed the latency of one HSM call (or the time burnt by one that timed out)."""
        self.call_ewma_s += self._alpha * (max(0.0, seconds) - self.call_ewma_s)


def deadline_from_ms(request_deadline_ms: int, start: float | None = None) -> float:
    """Absolute ``time.monotonic()`` deadline for a request that started at ``start``."""
    base = time.monotonic() if start is None else start
    return base + request_deadline_ms / 1000.0
