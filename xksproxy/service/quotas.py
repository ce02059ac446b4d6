"""Per-key-store request quotas: a token bucket per store in each worker process.

Why per worker, divided: worker processes share nothing on the request path (a shared counter
would need a lock or IPC on every request). Each worker therefore enforces ``rate / workers``
requests per second with a burst of ``ceil(burst / workers)`` (at least 1), so the configured
``[keystore.quota] rate`` is the store's quota for the whole host, whatever the worker count.
The kernel spreads connections over workers roughly evenly; when it does not, a store may be
throttled slightly before reaching its host-wide rate, never allowed far beyond it. Across
several proxy hosts the fleet-wide quota is ``rate x hosts``.

``rate = 0`` means unlimited. ``burst = 0`` means "one second's worth" (``burst = rate``).
Throttled requests answer 429 ThrottlingException before any HSM work is done.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from xksproxy import environment
from xksproxy.config import Config


class TokenBucket:
    """Classic token bucket; ``take()`` is O(1) and never blocks."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available; return False (take nothing) otherwise."""
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


@dataclass(frozen=True)
class QuotaSpec:
    """A store's configured (host-wide) quota."""

    rate: float
    burst: int


def effective_workers(configured: int) -> int:
    """Worker processes on this host: ``$XKSPROXY_WORKERS`` (set by the launcher, which knows
    about ``serve --workers``), else ``[server] workers`` (0 = one per CPU core)."""
    env = environment.WORKERS.get("") or ""
    if env.isdigit() and int(env) > 0:
        return int(env)
    if configured and configured > 0:
        return configured
    return os.cpu_count() or 1


def per_worker(spec: QuotaSpec, workers: int) -> tuple[float, float]:
    """The share of a host-wide quota one worker enforces: ``(rate, burst)``."""
    workers = max(1, workers)
    burst = spec.burst if spec.burst > 0 else spec.rate
    return spec.rate / workers, max(1.0, math.ceil(burst / workers))


class Quotas:
    """Token buckets by key store name; stores without a quota are never throttled.

    ``update()`` swaps in new limits on configuration reload; a store whose limits did not change
    keeps its bucket (and its current fill level).
    """

    def __init__(self, workers: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.workers = max(1, workers)
        self._clock = clock
        self._specs: dict[str, QuotaSpec] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def update(self, specs: Iterable[tuple[str, QuotaSpec]]) -> None:
        new_specs = dict(specs)
        buckets: dict[str, TokenBucket] = {}
        for name, spec in new_specs.items():
            if spec.rate <= 0:
                continue
            old = self._buckets.get(name)
            if old is not None and self._specs.get(name) == spec:
                buckets[name] = old
            else:
                rate, burst = per_worker(spec, self.workers)
                buckets[name] = TokenBucket(rate, burst, clock=self._clock)
        self._specs, self._buckets = new_specs, buckets

    def allow(self, store: str) -> bool:
        """True if ``store`` may run one more request now."""
        bucket = self._buckets.get(store)
        return bucket is None or bucket.take()

    @classmethod
    def from_config(cls, config: Config) -> Quotas:
        """Build from a loaded configuration."""
        q = cls(effective_workers(config.server.workers))
        q.update(specs_from_config(config))
        return q


def specs_from_config(config: Config) -> list[tuple[str, QuotaSpec]]:
    return [
        (ks.name, QuotaSpec(float(ks.quota_rate), int(ks.quota_burst))) for ks in config.keystores
    ]
