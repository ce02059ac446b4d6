"""Background deep health probe and the cached GetHealthStatus answer.

Why cached: a deep check (a real encrypt+decrypt with each token's dedicated health test key) can
take longer than KMS's 250 ms budget on a network HSM, and KMS polls health every few seconds.
So a background task probes every token each ``health.interval_s`` (<= 30 s) and the endpoint
answers from the cache at once, never blocking on the HSM.

Status rules for one token (``ekmFleetDetails`` entry, ``id`` = ``[[hsm]].name``, ``model`` =
``[[hsm]].model``):

- UNAVAILABLE: no probe result yet, the last probe failed, or the last result is older than
  60 s (the spec's cache limit: rather than serve a stale answer or block, we say so);
- DEGRADED: the probe succeeded but took longer than ``health.degraded_ms``, or the pool
  reports it is recovering;
- ACTIVE: the probe succeeded within ``degraded_ms`` and the pool is ready.

A key store's answer lists the token its keys live on.

HSM members (a backend of several ``[[hsm]]``, ``hsm.backend.MemberSet``): the answer lists every
member of the store's backend, each with the status of its *own* deep probe (the member set
probes each member when the health task probes the backend). A member out of service is never
ACTIVE: taken out after a fault -> UNAVAILABLE; drained by the operator -> DEGRADED while its
probe passes (it works, but serves nothing), UNAVAILABLE otherwise. The proxy is healthy while
each key store's backend has at least one ACTIVE member (:meth:`HealthMonitor.healthy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hsm.backend import MemberSet
from xksproxy.config import HealthConfig

if TYPE_CHECKING:
    from hsm.interface import CryptoPool

log = logging.getLogger("xksproxy.health")

MAX_AGE_S = 60.0
ACTIVE, DEGRADED, UNAVAILABLE = "ACTIVE", "DEGRADED", "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    ok: bool
    latency_s: float
    at: float  # time.monotonic() when the probe finished


class HealthMonitor:
    """Owns the probe task and the per-token cache."""

    def __init__(
        self, config: HealthConfig, pools: Mapping[str, CryptoPool], models: Mapping[str, str]
    ) -> None:
        self._config = config
        self._pools = pools
        self._models = models
        self._records: dict[str, ProbeRecord] = {}
        self._task: asyncio.Task[None] | None = None

    async def probe_all(self) -> None:
        """Probe every token once (also used at start so the first answer is real)."""
        for name, pool in self._pools.items():
            started = time.monotonic()
            try:
                result = await asyncio.wait_for(pool.probe(), timeout=self._config.interval_s)
                ok, latency = bool(result.ok), float(result.latency_s)
                if not ok:
                    log.warning(
                        "health probe failed",
                        extra={"fields": {"hsm": name, "error": str(result.error or "")[:200]}},
                    )
            except Exception as exc:  # a probe must never kill the loop
                ok, latency = False, time.monotonic() - started
                log.warning(
                    "health probe raised",
                    extra={"fields": {"hsm": name, "error": type(exc).__name__}},
                )
            self._records[name] = ProbeRecord(ok, latency, time.monotonic())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval_s)
            await self.probe_all()

    async def start(self) -> None:
        await self.probe_all()
        self._task = asyncio.create_task(self._run(), name="xksproxy-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _member_set(self, name: str) -> MemberSet | None:
        pool = self._pools.get(name)
        return pool if isinstance(pool, MemberSet) else None

    def members(self, backend: str) -> list[str]:
        """The names GetHealthStatus lists for ``backend``: its members, or itself."""
        member_set = self._member_set(backend)
        return [backend] if member_set is None else member_set.member_names

    def member_status(self, backend: str, member: str, now: float | None = None) -> str:
        """ACTIVE / DEGRADED / UNAVAILABLE for one member, from its own last probe."""
        member_set = self._member_set(backend)
        if member_set is None or len(member_set.member_names) == 1:
            return self.status(backend, now)  # one member: the backend's probe is its probe
        now = time.monotonic() if now is None else now
        view = next(v for v in member_set.views() if v.name == member)
        if not view.probe_ok or now - view.probed_at > MAX_AGE_S or view.state == "failed":
            return UNAVAILABLE
        slow = view.probe_latency_s * 1000.0 > self._config.degraded_ms
        if view.state == "drained" or view.pool_state != "ready" or slow:
            return DEGRADED
        return ACTIVE

    def healthy(self, backend: str) -> bool:
        """At least one member of ``backend`` is ACTIVE."""
        return any(self.member_status(backend, m) == ACTIVE for m in self.members(backend))

    def status(self, hsm_name: str, now: float | None = None) -> str:
        record = self._records.get(hsm_name)
        now = time.monotonic() if now is None else now
        if record is None or not record.ok or now - record.at > MAX_AGE_S:
            return UNAVAILABLE
        pool = self._pools.get(hsm_name)
        recovering = False
        if pool is not None:
            try:
                recovering = pool.stats().state != "ready"
            except Exception:
                recovering = True
        if recovering or record.latency_s * 1000.0 > self._config.degraded_ms:
            return DEGRADED
        return ACTIVE

    def answer(self, hsm_names: list[str]) -> dict[str, Any]:
        """The GetHealthStatus response body for a key store using ``hsm_names``."""
        cfg = self._config
        return {
            "xksProxyFleetSize": cfg.fleet_size,
            "xksProxyVendor": cfg.xks_proxy_vendor,
            "xksProxyModel": cfg.xks_proxy_model,
            "ekmVendor": cfg.ekm_vendor,
            "ekmFleetDetails": [
                {
                    "id": member,
                    "model": self._models.get(member, cfg.ekm_vendor),
                    "healthStatus": self.member_status(name, member),
                }
                for name in hsm_names
                for member in self.members(name)
            ][:10],
        }
