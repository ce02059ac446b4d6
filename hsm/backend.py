"""A backend of several HSM members holding the same keys, itself a ``CryptoPool``.

Why below the seam: the resolver, the handlers and admission code against one ``CryptoPool``
per backend (``KeyRef.backend``); which HSM of the backend answers is decided here, so high
availability adds no branch to the request path above it.

Rules (ARCHITECTURE.md, "HSM members"):

- a call goes to the in-service member with the fewest outstanding calls (ties rotate);
- a member failing a call with a device/session/connection error (``HsmUnavailable``, an
  ``HsmFailure`` whose CKR code is a session or module fault, a ``SessionTimeout`` because the
  HSM did not answer) is taken out of service at once and the call is retried **once** on
  another member if the deadline leaves time.  A result the HSM returned (``KeyNotFound``,
  ``KeyUsageNotPermitted``, ``InvalidCiphertext``) is never retried elsewhere: a member that
  answers wrongly must surface as an error, never as a silent switch;
- a failed member comes back only after its own deep probe passes (re-probed every
  ``reprobe_s`` in the background);
- ``drain(name)`` stops new calls to a member (calls already on it finish); ``undrain``
  probes it first.  The last member in service is never drained;
- with no member in service, calls still go to a failed (not drained) member: trying beats a
  certain failure, and a one-member backend behaves exactly like its pool.

No xksproxy import; metrics reach the service through :meth:`MemberSet.set_member_observer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

from .classify import Fault, classify
from .errors import HsmError, HsmFailure, HsmUnavailable, SessionTimeout
from .interface import CryptoPool
from .limits import PROBE_TIMEOUT_S
from .types import GcmResult, KeyInfo, PoolStats, ProbeResult

T = TypeVar("T")

MemberState = Literal["active", "failed", "drained"]
STATES: tuple[MemberState, ...] = ("active", "failed", "drained")

#: Seconds between background probes of a failed member (time to reinstate is at most this
#: plus one probe).
REPROBE_S = 1.0
#: A retry on another member needs at least this much of the deadline left.
RETRY_MARGIN_S = 0.005
#: How long one member probe may take before it counts as failed.
#: ``SessionTimeout`` says which of its two causes it was only in its message: waiting for a
#: free session (a busy member, not a broken one) or the HSM not answering (a device fault).
_NOT_ANSWERING = "did not answer"


@runtime_checkable
class MemberPool(CryptoPool, Protocol):
    """What a member offers besides ``CryptoPool`` (``HsmPool`` and ``MemoryPool`` do)."""

    def queue_state(self) -> tuple[int, int, int]: ...

    def set_session_wait_observer(self, observer: Callable[[float], None] | None) -> None: ...


class MemberObserver(Protocol):
    """Receives per-member measurements (the service turns them into metrics)."""

    def call(self, member: str, operation: str, seconds: float, ok: bool) -> None: ...

    def failover(self, member: str) -> None: ...


@dataclass(frozen=True)
class MemberView:
    """One member as this process sees it (health output, ``hsm status``)."""

    name: str
    state: MemberState
    outstanding: int
    calls: int
    errors: int
    failovers: int
    probe_ok: bool | None  # None: never probed
    probe_latency_s: float
    probed_at: float  # time.monotonic() of the last probe, 0.0 if none
    pool_state: str  # the member pool's own stats().state
    last_error: str | None


class _Member:
    __slots__ = (
        "calls",
        "errors",
        "failovers",
        "last_error",
        "metered",
        "name",
        "outstanding",
        "pool",
        "probe",
        "probed_at",
        "started",
        "state",
    )

    def __init__(self, name: str, pool: CryptoPool) -> None:
        self.name = name
        self.pool = pool
        # checked once here, not per call: the admission gate reads queue_state per operation
        self.metered: MemberPool | None = pool if isinstance(pool, MemberPool) else None
        self.state: MemberState = "active"
        self.outstanding = 0
        self.calls = 0
        self.errors = 0
        self.failovers = 0
        self.probe: ProbeResult | None = None
        self.probed_at = 0.0
        self.started = False
        self.last_error: str | None = None


def is_device_fault(exc: BaseException) -> bool:
    """True when ``exc`` says the member (device, session, connection) failed, not the input."""
    if isinstance(exc, HsmUnavailable):
        return True
    if isinstance(exc, SessionTimeout):
        return _NOT_ANSWERING in exc.message
    if isinstance(exc, HsmFailure):
        # Only a session or module CKR code says the member failed. An HsmFailure without one
        # is the HSM answering something we refuse (e.g. two lifecycle objects for one key for
        # a moment while `keys` replaces a document): no reason to take a healthy member out.
        return exc.rv is not None and classify(exc.rv) in (Fault.SESSION, Fault.MODULE)
    return False


class MemberSet:
    """Several member pools behind one backend name; see the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        members: Sequence[tuple[str, CryptoPool]],
        *,
        reprobe_s: float = REPROBE_S,
    ) -> None:
        if not members:
            raise ValueError(f"backend {name}: at least one member")
        names = [m for m, _ in members]
        if len(set(names)) != len(names):
            raise ValueError(f"backend {name}: duplicate member names {names}")
        self.name = name
        self._members = [_Member(n, p) for n, p in members]
        self._by_name = {m.name: m for m in self._members}
        self._rotor = itertools.count()
        self._reprobe_s = reprobe_s
        self._task: asyncio.Task[None] | None = None
        self._observer: MemberObserver | None = None
        self._closed = True

    def __repr__(self) -> str:
        return f"MemberSet({self.name!r}, {[m.name for m in self._members]})"

    # -- members and maintenance -----------------------------------------------------------
    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self._members]

    def views(self) -> list[MemberView]:
        return [
            MemberView(
                name=m.name,
                state=m.state,
                outstanding=m.outstanding,
                calls=m.calls,
                errors=m.errors,
                failovers=m.failovers,
                probe_ok=None if m.probe is None else m.probe.ok,
                probe_latency_s=0.0 if m.probe is None else m.probe.latency_s,
                probed_at=m.probed_at,
                pool_state=m.pool.stats().state if m.started else "stopped",
                last_error=m.last_error,
            )
            for m in self._members
        ]

    def set_member_observer(self, observer: MemberObserver | None) -> None:
        self._observer = observer

    def drain(self, name: str) -> None:
        """Stop sending new calls to ``name``; calls already on it finish (idempotent)."""
        member = self._member(name)
        if member.state == "drained":
            return
        others = [m for m in self._members if m is not member and m.state == "active"]
        if not others:
            raise ValueError(
                f"backend {self.name}: {name} is the last member in service; "
                "bring another member back first"
            )
        member.state = "drained"

    async def undrain(self, name: str) -> ProbeResult:
        """Probe ``name`` and put it back in service if the probe passes (it stays out if not)."""
        member = self._member(name)
        result = await self._probe_member(member)
        if result.ok:
            member.state = "active"
        return result

    def _member(self, name: str) -> _Member:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(
                f"backend {self.name} has no member {name!r} (members: {self.member_names})"
            ) from None

    # -- CryptoPool: lifecycle, health, statistics -----------------------------------------
    async def start(self) -> None:
        """Start every member; members that cannot start are out of service until a probe
        passes. Raises the first member's error only when no member starts."""
        first_error: HsmError | None = None
        for m in self._members:
            try:
                await m.pool.start()
                m.started = True
                m.state = "active"
            except HsmError as exc:
                first_error = first_error or exc
                self._take_out(m, exc)
        if not any(m.started for m in self._members):
            assert first_error is not None
            raise first_error
        self._closed = False
        if any(m.state == "failed" for m in self._members):
            self._ensure_reprober()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for m in self._members:
            if m.started:
                await m.pool.close()
                m.started = False

    async def probe(self) -> ProbeResult:
        """Probe every member (the health task calls this); fold the results into one.

        A member in service whose probe fails is taken out; a failed member whose probe passes
        comes back. ``ok`` while some member in service passed."""
        started = time.perf_counter()
        results = [await self._probe_member(m) for m in self._members]
        for m, r in zip(self._members, results, strict=True):
            if r.ok and m.state == "failed":
                m.state = "active"
            elif not r.ok and m.state == "active" and len(self._members) > 1:
                self._take_out(m, r.error or "probe failed")
        good = [
            r for m, r in zip(self._members, results, strict=True) if r.ok and m.state == "active"
        ]
        if good:
            return ProbeResult(True, min(r.latency_s for r in good), None)
        errors = "; ".join(
            f"{m.name}: {r.error or m.state}" for m, r in zip(self._members, results, strict=True)
        )
        return ProbeResult(False, time.perf_counter() - started, errors[:300])

    def stats(self) -> PoolStats:
        serving = [m for m in self._in_service() if m.started]
        parts = [m.pool.stats() for m in serving]
        state = "ready" if any(p.state == "ready" for p in parts) else "stopped"
        if not self._closed and serving and state != "ready":
            state = "recovering"
        return PoolStats(
            name=self.name,
            mode=parts[0].mode if parts else "members",
            state=state,
            sessions=sum(p.sessions for p in parts),
            in_use=sum(p.in_use for p in parts),
            waiting=sum(p.waiting for p in parts),
            recoveries=sum(p.recoveries for p in parts),
            session_replacements=sum(p.session_replacements for p in parts),
            last_error=next((m.last_error for m in self._members if m.last_error), None),
        )

    def queue_state(self) -> tuple[int, int, int]:
        sessions = in_use = waiting = 0
        for m in self._in_service():
            if m.metered is None:
                st = m.pool.stats()
                s, u, w = st.sessions, st.in_use, st.waiting
            else:
                s, u, w = m.metered.queue_state()
            sessions, in_use, waiting = sessions + s, in_use + u, waiting + w
        return sessions, in_use, waiting

    def set_session_wait_observer(self, observer: Callable[[float], None] | None) -> None:
        for m in self._members:
            if m.metered is not None:
                m.metered.set_session_wait_observer(observer)

    # -- CryptoPool: the request's HSM work ------------------------------------------------
    async def key_info(self, label: str, *, deadline: float) -> KeyInfo:
        return await self._run("key_info", lambda p: p.key_info(label, deadline=deadline), deadline)

    async def custody(self, label: str, *, deadline: float) -> bytes | None:
        """The key's lifecycle document from any member in service (members hold the same
        objects: the replication ceremony copies them; ``doctor`` reports drift)."""
        return await self._run("custody", lambda p: p.custody(label, deadline=deadline), deadline)

    async def encrypt(
        self, label: str, plaintext: bytes, aad: bytes, *, deadline: float
    ) -> GcmResult:
        return await self._run(
            "encrypt", lambda p: p.encrypt(label, plaintext, aad, deadline=deadline), deadline
        )

    async def decrypt(
        self, label: str, *, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes, deadline: float
    ) -> bytes:
        return await self._run(
            "decrypt",
            lambda p: p.decrypt(
                label, iv=iv, ciphertext=ciphertext, tag=tag, aad=aad, deadline=deadline
            ),
            deadline,
        )

    # -- internals -------------------------------------------------------------------------
    def _in_service(self) -> list[_Member]:
        return [m for m in self._members if m.state == "active"]

    def _pick(self, exclude: _Member | None = None) -> _Member | None:
        members = self._members
        if len(members) == 1:
            only = members[0]
            return None if only is exclude or only.state == "drained" else only
        candidates = [m for m in members if m.state == "active" and m is not exclude]
        if not candidates:  # nothing in service: a failed member may still answer
            candidates = [m for m in members if m.state == "failed" and m is not exclude]
        if not candidates:
            return None
        low = min(m.outstanding for m in candidates)
        best = [m for m in candidates if m.outstanding == low]
        return best[next(self._rotor) % len(best)] if len(best) > 1 else best[0]

    async def _run(self, op: str, call: Callable[[CryptoPool], Awaitable[T]], deadline: float) -> T:
        member = self._pick()
        if member is None:
            raise HsmUnavailable(f"backend {self.name}: no member in service")
        try:
            return await self._on(member, op, call)
        except HsmError as exc:
            if not is_device_fault(exc) or len(self._members) == 1:
                raise
            self._take_out(member, exc)
            other = self._pick(exclude=member)
            if other is None or time.monotonic() > deadline - RETRY_MARGIN_S:
                raise
            member.failovers += 1
            if self._observer is not None:
                self._observer.failover(member.name)
            return await self._on(other, op, call)

    async def _on(self, member: _Member, op: str, call: Callable[[CryptoPool], Awaitable[T]]) -> T:
        member.outstanding += 1
        member.calls += 1
        t0 = time.perf_counter()
        ok = False
        try:
            result = await call(member.pool)
            ok = True
            return result
        except HsmError as exc:
            if is_device_fault(exc):
                member.errors += 1
                member.last_error = f"{type(exc).__name__}: {exc.message}"[:200]
            else:
                ok = True  # the HSM answered (bad ciphertext, unknown key): not a member fault
            raise
        finally:
            member.outstanding -= 1
            if self._observer is not None:
                self._observer.call(member.name, op, time.perf_counter() - t0, ok)

    def _take_out(self, member: _Member, why: HsmError | str) -> None:
        if isinstance(why, HsmError):
            why = f"{type(why).__name__}: {why.message}"
        member.last_error = why[:200]
        if member.state == "active":
            member.state = "failed"
        self._ensure_reprober()

    def _ensure_reprober(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop (start outside a loop)
                self._task = asyncio.get_running_loop().create_task(
                    self._reprobe(), name=f"xksproxy-members-{self.name}"
                )

    async def _reprobe(self) -> None:
        """Probe failed members until each passes; then stop (restarted by the next fault)."""
        while not self._closed:
            failed = [m for m in self._members if m.state == "failed"]
            if not failed:
                return
            await asyncio.sleep(self._reprobe_s)
            for m in failed:
                if m.state == "failed" and (await self._probe_member(m)).ok:
                    m.state = "active"

    async def _probe_member(self, member: _Member) -> ProbeResult:
        """The member's own deep probe (starting it first if it never started)."""
        t0 = time.perf_counter()
        try:
            if not member.started:
                await member.pool.start()
                member.started = True
            result = await asyncio.wait_for(member.pool.probe(), PROBE_TIMEOUT_S)
        except (HsmError, TimeoutError) as exc:
            result = ProbeResult(False, time.perf_counter() - t0, type(exc).__name__)
        member.probe = result
        member.probed_at = time.monotonic()
        if not result.ok:
            member.last_error = (result.error or "probe failed")[:200]
        return result


def _is_a_crypto_pool(pool: MemberSet) -> MemberPool:
    """Never called: mypy checks here that :class:`MemberSet` is a ``CryptoPool``."""
    return pool
