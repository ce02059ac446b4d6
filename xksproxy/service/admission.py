"""Admission control: refuse work that cannot finish inside the request's deadline.

Why: KMS gives up after 250 ms. A request queued behind work that will take longer than its
deadline is doomed; letting it queue only adds load and turns into a 503 later. Answering 429
ThrottlingException *at once* tells KMS to back off while the requests already admitted still
finish in time, and the proxy recovers as soon as load drops (nothing is left queued).

Two gates, both O(1):

1. **In flight** (``[server] max_in_flight``, per worker): at most that many authenticated
   requests are being processed; the next one is refused immediately. It is charged after SigV4
   (as are the per-store quotas): work before that has its own budget, :mod:`.preauth`.
2. **Session queue vs budget**: before waiting for an HSM session the handler asks whether the
   expected wait fits in the time left. The expected wait is estimated from the pool's queue
   (``waiting`` requests ahead of us, ``sessions`` serving them) and a moving average of recent
   HSM call latencies (timeouts count as the full budget, so a hanging HSM closes the gate fast).
   A request passes this gate once, at its first HSM call: the CDIV's verifying decrypt of an
   admitted Encrypt is never refused (that would throw away the encrypt already done; the
   request's deadline still bounds it, as 503 DependencyTimeoutException).

Neither gate looks at the clock of the request beyond its own deadline; there is no global lock.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from hsm.interface import CryptoPool
from hsm.types import GcmResult, KeyInfo, PoolStats, ProbeResult
from xksproxy.observe import metrics
from xksproxy.observe.requestlog import RequestContext
from xksproxy.service import preauth
from xksproxy.xks.errors import ThrottlingException
from xksproxy.xks.operations import HEALTH

if TYPE_CHECKING:
    from xksproxy.service.app import XksApp
    from xksproxy.service.quotas import Quotas

T = TypeVar("T")


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

    # -- gate 1 ----------------------------------------------------------------------------------
    def enter(self) -> Decision:
        """Count a new request in, or refuse it (then do not call :meth:`leave`)."""
        if self.in_flight >= self.max_in_flight:
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
        """Refuse if waiting for a session plus one call would overrun ``deadline`` (monotonic).

        A free session is always taken: that keeps latency samples flowing, so the estimate
        recovers by itself after the HSM was slow (no request would ever be admitted otherwise).
        """
        if in_use < sessions and waiting == 0:
            return ADMIT
        remaining = deadline - self._clock()
        needed = self.expected_wait_s(sessions, waiting, in_use) + self.call_ewma_s
        if needed > remaining:
            return Decision(False, "session_queue")
        return ADMIT

    def observe_call(self, seconds: float) -> None:
        """Feed the latency of one HSM call (or the time burnt by one that timed out)."""
        self.call_ewma_s += self._alpha * (max(0.0, seconds) - self.call_ewma_s)


# -- wiring into the app --------------------------------------------------------------------------
_SESSION_WAIT: contextvars.ContextVar[float] = contextvars.ContextVar(
    "xks_session_wait", default=0.0
)
#: ``ctx.extra`` key: this request has passed the session-queue gate (it is charged once).
_ADMITTED = "hsmAdmitted"
#: The current request's context (set by the admission hook; same task as the handler).
_REQUEST: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "xks_request", default=None
)


def _note_session_wait(seconds: float) -> None:
    """``HsmPool`` session-wait observer: runs in the request's task, adds to its wait."""
    _SESSION_WAIT.set(_SESSION_WAIT.get() + seconds)


@runtime_checkable
class MeteredPool(CryptoPool, Protocol):
    """A :class:`~hsm.interface.CryptoPool` that also reports its queue (what ``hsm.HsmPool``
    offers and :class:`GuardedPool` needs from the pool it wraps)."""

    def queue_state(self) -> tuple[int, int, int]:
        """(sessions, in_use, waiting) as in ``stats()``, without building a ``PoolStats``."""
        ...

    def set_session_wait_observer(self, observer: Callable[[float], None] | None) -> None:
        """Report the seconds each operation queued for a session (in the calling task)."""
        ...


class GuardedPool:
    """A pool seen through admission control and metrics; itself a ``CryptoPool``.

    Before each HSM operation: refuse with 429 if the session queue is too deep for the time
    left. After it: feed the latency to the admission estimate and to the metrics, split into
    session wait and call time. The pool reports the wait through its public
    ``set_session_wait_observer`` hook (in the calling task, so a context variable collects it);
    the call time is the rest.

    Every ``CryptoPool`` method is written out here (no attribute forwarding), so a method added
    to the Protocol fails type checking until it is decided whether it goes through admission.
    """

    def __init__(self, pool: MeteredPool, token: str, admission: Admission) -> None:
        self._pool = pool
        self._token = token
        self._admission = admission
        pool.set_session_wait_observer(_note_session_wait)
        self._keys = {op: metrics.hsm_keys(token, op) for op in ("key_info", "encrypt", "decrypt")}

    def __repr__(self) -> str:
        return f"GuardedPool({self._token!r})"

    # -- not admitted: lifecycle, health and statistics ------------------------------------------
    async def start(self) -> None:
        await self._pool.start()

    async def close(self) -> None:
        await self._pool.close()

    async def probe(self) -> ProbeResult:
        return await self._pool.probe()  # the health task's own round trip, never a request's

    def stats(self) -> PoolStats:
        return self._pool.stats()

    def queue_state(self) -> tuple[int, int, int]:
        return self._pool.queue_state()

    async def custody(self, label: str, *, deadline: float) -> bytes | None:
        # Not admitted: the resolver reads it at most once per key per cache period, and refusing
        # it would turn a short session queue into errors for every key whose cache expired.
        return await self._pool.custody(label, deadline=deadline)

    # -- admitted and measured: the request's HSM work -------------------------------------------
    async def key_info(self, label: str, *, deadline: float) -> KeyInfo:
        return await self._guard(
            "key_info", self._pool.key_info(label, deadline=deadline), deadline
        )

    async def encrypt(
        self, label: str, plaintext: bytes, aad: bytes, *, deadline: float
    ) -> GcmResult:
        return await self._guard(
            "encrypt", self._pool.encrypt(label, plaintext, aad, deadline=deadline), deadline
        )

    async def decrypt(
        self, label: str, *, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes, deadline: float
    ) -> bytes:
        return await self._guard(
            "decrypt",
            self._pool.decrypt(
                label, iv=iv, ciphertext=ciphertext, tag=tag, aad=aad, deadline=deadline
            ),
            deadline,
        )

    def _admit(self, deadline: float) -> None:
        ctx = _REQUEST.get()
        if ctx is not None:
            if _ADMITTED in ctx.extra:
                return  # a later HSM call of an admitted request (module docstring, gate 2)
            ctx.extra[_ADMITTED] = True
        sessions, in_use, waiting = self._pool.queue_state()
        if in_use < sessions and waiting == 0:
            return  # a free session: always taken (same rule as check_session_queue)
        decision = self._admission.check_session_queue(
            sessions=sessions, waiting=waiting, in_use=in_use, deadline=deadline
        )
        if not decision.ok:
            metrics.observe_throttled(ctx, decision.reason)
            raise ThrottlingException("the HSM session queue is too long for the request deadline")

    async def _guard(self, op: str, call: Awaitable[T], deadline: float) -> T:
        """Admit, then await ``call`` (the pool's coroutine, created but not started yet)."""
        try:
            self._admit(deadline)
        except BaseException:
            close = getattr(call, "close", None)
            if close is not None:
                close()  # the coroutine never started: no "never awaited" warning
            raise
        _SESSION_WAIT.set(0.0)
        t0 = time.monotonic()
        try:
            return await call
        finally:
            elapsed = time.monotonic() - t0
            wait = min(_SESSION_WAIT.get(), elapsed)
            self._admission.observe_call(elapsed - wait)
            metrics.observe_hsm_op(self._keys[op], wait, elapsed - wait)


def _is_a_crypto_pool(pool: GuardedPool) -> CryptoPool:
    """Never called: mypy checks here that :class:`GuardedPool` implements ``CryptoPool``."""
    return pool


def _noop() -> None:
    return None


def install(app: XksApp, *, quotas: Quotas | None = None) -> Admission:
    """Add the in-flight gate and per-store quotas as an app admission hook (run after SigV4:
    only authenticated requests are charged), the unauthenticated budget as the pre-auth hook
    (:mod:`xksproxy.service.preauth`), and guard the HSM pools (session-queue gate, latency
    metrics) once they are started."""
    admission = Admission(app.config.server.max_in_flight)

    def hook(ctx: RequestContext) -> Callable[[], None]:
        store = ctx.store or ""
        _REQUEST.set(ctx)
        if ctx.operation == HEALTH.name:
            return _noop  # cached answer, no HSM work: KMS must see health even under overload
        decision = admission.enter()
        if not decision.ok:
            metrics.observe_throttled(ctx, "in_flight")
            raise ThrottlingException("too many requests in flight; retry shortly")
        if quotas is not None and not quotas.allow(store):
            admission.leave()
            metrics.observe_throttled(ctx, "quota")
            raise ThrottlingException(f"key store {store} is over its request quota")
        return admission.leave

    async def guard_pools() -> None:
        guarded: dict[str, CryptoPool] = {}
        for name, pool in app.pools.items():
            if isinstance(pool, GuardedPool):
                guarded[name] = pool
            elif isinstance(pool, MeteredPool):
                guarded[name] = GuardedPool(pool, name, admission)
            else:  # a pool that cannot report its queue is served unguarded, and said so
                raise TypeError(f"HSM pool {name} has no queue_state/set_session_wait_observer")
            metrics.register_pool(name, pool.stats)
        app.pools = guarded

    app.admission.append(hook)
    preauth.install(app)
    app.on_startup.append(guard_pools)
    metrics.register_in_flight(lambda: admission.in_flight)
    return admission
