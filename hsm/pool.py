"""HsmPool: sessions pinned to one operation at a time, two execution modes, self-healing.

* inline: the PKCS#11 call runs on the event-loop thread. For a local software token (~40 us per
  AES-GCM call) a thread hop costs more than the call itself.
* threaded (:mod:`hsm.threaded`): one worker thread per session, fed by a queue. A network HSM
  taking milliseconds then never blocks the event loop, and ``sessions`` calls run in parallel.

Each operation holds exactly one session from acquire to release; waiting for it honours the
caller's deadline (absolute ``time.monotonic()``) and ends in SessionTimeout. Every operation goes
through one submit path (:meth:`HsmPool._submit`); inline mode with a free session runs it without
suspending at all.

Recovery without restart: a session-level error (session closed, handle invalid, token logged out)
replaces that session and retries once; a module-level error (device error/removed, token not
present, not initialised, general error...) flips the pool to "recovering": requests fail fast with
HsmUnavailable while a background thread (:meth:`hsm.module.Module.request_recovery`) waits for
in-flight calls to drain, finalises and re-initialises the module, logs in and reopens every
session, with bounded exponential back-off. Start-up among sibling processes and fork detection
live in :mod:`hsm.startup`; sizes in :mod:`hsm.limits`.

Importing this module loads no PKCS#11 code: python-pkcs11 is loaded by ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from . import custody, module, startup
from .classify import AMBIGUOUS_DECRYPT_RVS, CkError, Fault
from .errors import (
    HsmError,
    HsmFailure,
    HsmUnavailable,
    InvalidCiphertext,
    KeyNotFound,
    KeyUsageNotPermitted,
    SessionTimeout,
)
from .gcm import Gcm
from .interface import CryptoPool
from .ivbuffer import IvBuffer
from .keys import KeyCache, ResolvedKey
from .limits import IV_BYTES, IV_LENGTHS, MAX_FRAMED_AAD_BYTES, PROBE_TIMEOUT_S, TAG_BYTES
from .threaded import WorkerThreads
from .types import GcmResult, HsmConfig, KeyInfo, PoolStats, ProbeResult

if TYPE_CHECKING:
    from pkcs11 import Token

log = logging.getLogger("hsm.pool")
T = TypeVar("T")

#: After this long draining, recovery logs that calls are still inside the module (and waits on).
DRAIN_WAIT_S: Final = 30.0
#: How long ``close`` waits for in-flight calls to leave the module.
CLOSE_DRAIN_S: Final = 10.0
_HEALTH_AAD: Final = b"xksproxy health probe"


class _Session:
    """One PKCS#11 session; ``generation`` is the module generation it was opened under.

    ``ivs`` holds IVs drawn on this session's handle (``iv_source = "rng"``); every place that
    opens or closes a handle wipes it (``_open``, ``_close_sessions``); a forgotten handle is
    always reopened through ``_open`` before an operation runs, so no IV outlives its session.
    """

    __slots__ = ("gcm", "generation", "handle", "index", "ivs")

    def __init__(self, index: int) -> None:
        self.index = index
        self.handle: int | None = None
        self.gcm: Gcm | None = None
        self.generation = 0
        self.ivs = IvBuffer()


class HsmPool:
    """Sessions on one token, in one process. Create it after fork and ``await start()``."""

    def __init__(self, config: HsmConfig) -> None:
        self.config = config
        self._module: module.Module | None = None
        self._token: Token | None = None
        self._sessions: list[_Session] = []
        self._free: deque[_Session] = deque()
        self._waiters: deque[asyncio.Future[_Session]] = deque()
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._state = "stopped"
        self._in_use = 0
        self._keys = KeyCache()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: WorkerThreads[_Session] = WorkerThreads(config.name, self._run_claimed)
        self._closed = threading.Event()
        self._pid = 0
        self._forks = -1
        self._mode = config.mode  # effective mode, fixed at start()
        self._recoveries = 0
        self._replacements = 0
        self._last_error: str | None = None
        self._wait_observer: Callable[[float], None] | None = None

    def __repr__(self) -> str:
        return f"<HsmPool {self.config.name!r} {self._mode} {self._state}>"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load and initialise the module (multi-thread safe), log in once, open the sessions."""
        if self._state != "stopped":
            raise RuntimeError("pool already started")
        self._loop = asyncio.get_running_loop()
        self._closed.clear()
        await asyncio.to_thread(startup.start_serialised, self.config, self._start_once)
        assert self._module is not None
        self._mode = self.config.mode
        if self._mode == "threaded" and self._module.serialize:
            # The module's calls run one at a time anyway (SoftHSMv2, see module.py): worker
            # threads would only add a hop (measured: slower than inline), and keeping every call
            # on the loop thread means a C_Finalize issued from this thread can never overlap one.
            self._mode = "inline"
            log.info(
                "hsm %s: module calls are serialised; mode 'threaded' runs inline", self.config.name
            )
        if self._mode == "threaded":
            self._threads.start((sess.index, sess) for sess in self._sessions)

    def _start_once(self) -> None:
        """One start attempt (under the start-up lock): module, token, every session."""
        self._pid = os.getpid()
        self._forks = startup.forks_seen()
        self._module = module.acquire(self.config.module, self.config.env)
        try:
            self._token = self._module.find_token(self.config.token_label)
            self._module.require_aes_gcm(self._token)
            self._sessions = [_Session(i) for i in range(self.config.sessions)]
            for sess in self._sessions:
                self._open(sess)
        except BaseException:
            self._close_sessions()
            module.release(self._module)
            self._module = None
            raise
        self._free = deque(self._sessions)
        self._state = "ready"
        self._module.register(self)

    async def close(self) -> None:
        """Stop workers and background recovery, close the sessions, release the module."""
        if self._state == "stopped" and self._module is None:
            return
        with self._lock:
            self._state = "stopped"
            self._drained.notify_all()
        self._closed.set()
        self._fail_waiters(HsmUnavailable(f"HSM pool {self.config.name!r} is closed"))
        threads = self._threads.stop()
        await asyncio.to_thread(self._finish_close, threads)

    def _finish_close(self, threads: list[threading.Thread]) -> None:
        self._threads.finish(threads, HsmUnavailable(f"HSM pool {self.config.name!r} is closed"))
        with self._lock:
            self._drained.wait_for(lambda: self._in_use == 0, timeout=CLOSE_DRAIN_S)
        if self._module is not None:
            self._module.unregister(self)
        self._close_sessions()
        if self._module is not None and self._pid == os.getpid():
            module.release(self._module)
        self._module = None

    def _close_sessions(self) -> None:
        mod = self._module
        for sess in self._sessions:
            if sess.handle is not None and mod is not None:
                mod.functions.C_CloseSession(sess.handle)
            sess.handle = None
            sess.ivs.wipe()

    # ------------------------------------------------------------------ public operations
    async def key_info(self, label: str, *, deadline: float) -> KeyInfo:
        return await self._submit(lambda s: self._key(s, label).info, deadline)

    async def encrypt(
        self, label: str, plaintext: bytes, aad: bytes, *, deadline: float
    ) -> GcmResult:
        if len(plaintext) > self.config.max_plaintext_bytes:
            raise ValueError(f"plaintext longer than {self.config.max_plaintext_bytes} bytes")
        if len(aad) > MAX_FRAMED_AAD_BYTES:
            raise ValueError(f"AAD longer than {MAX_FRAMED_AAD_BYTES} bytes")
        return await self._submit(lambda s: self._encrypt(s, label, plaintext, aad), deadline)

    async def decrypt(
        self, label: str, *, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes, deadline: float
    ) -> bytes:
        if len(iv) not in IV_LENGTHS:
            raise InvalidCiphertext(f"IV must be {' or '.join(map(str, IV_LENGTHS))} bytes")
        if len(tag) != TAG_BYTES:
            raise InvalidCiphertext(f"authentication tag must be {TAG_BYTES} bytes")
        if len(ciphertext) > self.config.max_plaintext_bytes:
            raise InvalidCiphertext(
                f"ciphertext longer than {self.config.max_plaintext_bytes} bytes"
            )
        if len(aad) > MAX_FRAMED_AAD_BYTES:
            raise InvalidCiphertext(f"AAD longer than {MAX_FRAMED_AAD_BYTES} bytes")
        return await self._submit(
            lambda s: self._decrypt(s, label, iv, ciphertext, tag, aad), deadline
        )

    async def custody(self, label: str, *, deadline: float) -> bytes | None:
        return await self._submit(lambda s: self._custody(s, label), deadline)

    async def probe(self) -> ProbeResult:
        """Encrypt+decrypt round trip with the health test key; never raises."""
        start = time.perf_counter()
        try:
            await self._submit(self._probe, time.monotonic() + PROBE_TIMEOUT_S)
        except HsmError as exc:
            return ProbeResult(False, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a health loop must survive our own bugs too
            log.exception("hsm %s: probe failed unexpectedly", self.config.name)
            return ProbeResult(False, time.perf_counter() - start, type(exc).__name__)
        return ProbeResult(True, time.perf_counter() - start, None)

    def stats(self) -> PoolStats:
        sessions, in_use, waiting = self.queue_state()
        return PoolStats(
            name=self.config.name,
            mode=self._mode,
            state=self._state,
            sessions=sessions,
            in_use=in_use,
            waiting=waiting,
            recoveries=self._recoveries,
            session_replacements=self._replacements,
            last_error=self._last_error,
        )

    def queue_state(self) -> tuple[int, int, int]:
        """``(sessions, in_use, waiting)`` as in :meth:`stats`, without building a PoolStats
        (admission control reads it before every operation)."""
        waiting = len(self._waiters) if self._mode == "inline" else self._threads.waiting()
        return len(self._sessions), self._in_use, waiting

    def set_session_wait_observer(self, observer: Callable[[float], None] | None) -> None:
        """Report how long each operation waited for a session, in seconds (``None``: stop).

        Why: a caller's latency splits into queueing (too few sessions, overload) and HSM call
        time (a slow HSM), and only the pool knows where one ends. ``observer`` runs on the
        event-loop thread inside the calling task (context variables work), once per operation
        that did not take a free session at once: inline mode, the wait for a released session;
        threaded mode, submission until a worker thread claimed the job (until the deadline if
        none did). It must be quick and must not raise.
        """
        self._wait_observer = observer

    # ------------------------------------------------------------------ dispatch
    async def _submit(self, op: Callable[[_Session], T], deadline: float) -> T:
        """The one way an operation reaches a session.

        Inline with a free session: run ``op`` now, without suspending (the fast path). Inline
        without one: wait for a released session. Threaded: hand ``op`` to a worker thread.
        """
        self._check_usable()
        if self._mode == "threaded":
            return await self._threads.submit(op, deadline, self._wait_observer)
        sess = self._acquire_nowait()
        if sess is None:
            sess = await self._wait_for_session(deadline)
        return self._run_inline(sess, op, deadline)

    def _check_usable(self) -> None:
        if self._state != "ready":
            if self._state == "stopped":
                raise HsmUnavailable(f"HSM pool {self.config.name!r} is not started")
            raise HsmUnavailable(f"HSM {self.config.name!r} is recovering; try again shortly")
        if self._forks != startup.forks_seen():
            raise HsmUnavailable("HSM pool was created in another process; create it after fork")

    def _run_inline(self, sess: _Session, op: Callable[[_Session], T], deadline: float) -> T:
        """Run ``op`` on the acquired ``sess`` on this thread and release it."""
        try:
            if time.monotonic() >= deadline:
                raise SessionTimeout("deadline passed before the HSM call")
            result = self._execute(sess, op)
        finally:
            self._release(sess)
        if time.monotonic() > deadline:
            # Same contract as threaded mode: an answer later than the deadline is a timeout.
            raise SessionTimeout("the HSM did not answer before the deadline")
        return result

    def _run_claimed(self, sess: _Session, op: Callable[[_Session], T]) -> T:
        """Threaded mode, on ``sess``'s worker thread: admit, execute, account for the drain."""
        with self._lock:
            if self._state != "ready":
                raise HsmUnavailable(f"HSM {self.config.name!r} is recovering; try again shortly")
            self._in_use += 1
        try:
            return self._execute(sess, op)
        finally:
            with self._lock:
                self._in_use -= 1
                if self._in_use == 0 and self._state != "ready":
                    self._drained.notify_all()

    def _acquire_nowait(self) -> _Session | None:
        with self._lock:
            if self._state != "ready":
                raise HsmUnavailable(f"HSM {self.config.name!r} is recovering; try again shortly")
            if not self._free:
                return None
            self._in_use += 1
            return self._free.pop()  # LIFO: the most recently used (cache-warm) session

    async def _wait_for_session(self, deadline: float) -> _Session:
        assert self._loop is not None
        fut: asyncio.Future[_Session] = self._loop.create_future()
        self._waiters.append(fut)
        start = time.monotonic()
        timeout = deadline - start
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())  # handed over just as we timed out
            fut.cancel()
            raise SessionTimeout("no HSM session became free before the deadline") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            if self._wait_observer is not None:
                self._wait_observer(time.monotonic() - start)

    def _release(self, sess: _Session) -> None:
        """Hand the session to the next waiter (inline mode runs this on the loop thread)."""
        with self._lock:
            while self._waiters and self._state == "ready":
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(sess)
                    return
            self._in_use -= 1
            self._free.append(sess)
            if self._in_use == 0 and self._state != "ready":
                self._drained.notify_all()  # recovery or close is waiting for the drain

    def _fail_waiters(self, exc: HsmError) -> None:
        loop = self._loop
        if loop is None:
            return

        def fail() -> None:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fail)

    # ------------------------------------------------------------------ execution + recovery
    def _execute(self, sess: _Session, op: Callable[[_Session], T]) -> T:
        """Run ``op`` on ``sess``; map errors.

        At most one session replacement and one key re-resolution per call: a token logged out
        behind our back (C_CloseAllSessions) first kills the session, then, once logged in again,
        invalidates the private objects' handles, so both retries can be needed in sequence.
        """
        mod = self._module
        assert mod is not None
        session_retry = key_retry = True
        while True:
            try:
                with mod.call_lock:
                    if sess.handle is None or sess.generation != mod.generation:
                        self._replace(sess)
                    return op(sess)
            except CkError as exc:
                if key_retry and exc.fault is Fault.STALE_KEY:
                    key_retry = False
                    self._keys.clear()
                    continue
                if session_retry and exc.fault is Fault.SESSION:
                    session_retry = False
                    self._forget(sess)
                    continue
                raise self._translate(exc) from None

    def _translate(self, exc: CkError) -> HsmError:
        if exc.fault is Fault.MODULE:
            self._trigger_recovery(str(exc))
            return HsmUnavailable(f"HSM {self.config.name!r} module fault ({exc}); recovering")
        if exc.fault is Fault.KEY_USAGE:
            return KeyUsageNotPermitted(f"the key does not permit this operation ({exc})")
        if exc.fault is Fault.CIPHERTEXT:
            return InvalidCiphertext("ciphertext, IV, tag or AAD failed authentication")
        if exc.fault is Fault.STALE_KEY:
            return KeyNotFound("the key changed in the HSM during the operation")
        return HsmFailure(f"HSM {self.config.name!r}: {exc}", exc.rv)

    def _open(self, sess: _Session) -> None:
        mod = self._module
        assert mod is not None
        assert self._token is not None  # found by start() before any session is opened
        generation = mod.generation
        sess.ivs.wipe()  # whatever the old handle drew (replacement, recovery) is dropped
        session = mod.open_session(self._token, self.config.pin)
        sess.handle = session.handle
        sess.gcm = Gcm(mod.functions, session.handle)
        sess.generation = generation

    def _forget(self, sess: _Session) -> None:
        """Forget a broken session (best-effort close); the next attempt opens a new one."""
        mod = self._module
        if sess.handle is not None and mod is not None:
            with mod.call_lock:
                mod.functions.C_CloseSession(sess.handle)
        sess.handle = None  # its IVs go with the next _open, before any operation runs on it

    def _replace(self, sess: _Session) -> None:
        """Close (best effort) and reopen one session; a failure means the module is down."""
        mod = self._module
        assert mod is not None
        if sess.handle is not None:
            mod.functions.C_CloseSession(sess.handle)
            sess.handle = None
        try:
            self._open(sess)  # wipes the session's IV buffer
        except HsmError as exc:
            self._trigger_recovery(f"reopening a session failed: {exc}")
            raise HsmUnavailable(
                f"HSM {self.config.name!r} is recovering; try again shortly"
            ) from None
        self._replacements += 1

    def _trigger_recovery(self, reason: str) -> None:
        """Ask the module to re-initialise; it flips every pool on it to "recovering"."""
        mod = self._module
        if mod is None or self._state != "ready":
            return
        mod.request_recovery(self, reason, mod.generation)

    # Called by Module._recover (its own thread), in this order, for every pool on the module.
    def _enter_recovery(self, reason: str) -> None:
        with self._lock:
            if self._state == "stopped":
                return
            first = self._state == "ready"
            self._state = "recovering"
            self._last_error = reason
        if first:
            log.warning("hsm %s: module fault, recovering: %s", self.config.name, reason)
        self._fail_waiters(HsmUnavailable(f"HSM {self.config.name!r} is recovering"))

    def _wait_drained(self) -> None:
        """Never re-initialise under a call still inside the module (undefined behaviour, and a
        crash with SoftHSMv2): wait for in-flight calls, however long a hung HSM takes."""
        waited = 0.0
        with self._lock:
            while self._in_use and not self._closed.is_set():
                self._drained.wait(timeout=1.0)
                waited += 1.0
                if waited == DRAIN_WAIT_S:
                    log.warning(
                        "hsm %s: %d call(s) still inside the module after %.0f s",
                        self.config.name,
                        self._in_use,
                        waited,
                    )

    def _reopen_sessions(self) -> None:
        """After re-initialisation: forget keys, find the token again, open every session."""
        mod = self._module
        if mod is None or self._closed.is_set():
            return
        self._keys.clear()
        self._token = mod.find_token(self.config.token_label)
        for sess in self._sessions:
            if mod.finalize_safe:
                sess.handle = None  # the old handles died with the old initialisation
            else:
                # Not finalised (openCryptoki): the old sessions are still open; close them or
                # every recovery leaks `sessions` of them towards CKR_SESSION_COUNT.
                self._forget(sess)
            if not self._closed.is_set():
                self._open(sess)

    def _recovery_failed(self, message: str) -> None:
        self._last_error = message

    def _leave_recovery(self) -> None:
        with self._lock:
            if self._state != "recovering":
                return
            self._state = "ready"
            self._recoveries += 1
            self._free = deque(self._sessions)
        log.warning("hsm %s: recovered", self.config.name)

    # ------------------------------------------------------------------ operations on a session
    def _key(self, sess: _Session, label: str) -> ResolvedKey:
        assert self._module is not None and sess.handle is not None
        return self._keys.get(self._module.functions, sess.handle, label)

    def _custody(self, sess: _Session, label: str) -> bytes | None:
        assert self._module is not None and sess.handle is not None
        return custody.read_companion(self._module.functions, sess.handle, label)

    def _encrypt(self, sess: _Session, label: str, plaintext: bytes, aad: bytes) -> GcmResult:
        key = self._key(sess, label)
        if "ENCRYPT" not in key.info.usage:
            raise KeyUsageNotPermitted(f"key {label!r} does not permit encryption")
        ctx = sess.gcm
        assert ctx is not None
        # "rng": the next unused IV of this session's batch (hsm/ivbuffer.py, hsm/README.md).
        iv = sess.ivs.take(ctx.random_into) if self.config.iv_source == "rng" else None
        return GcmResult(*ctx.encrypt(key.handle, iv, aad, plaintext))

    def _decrypt(
        self, sess: _Session, label: str, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes
    ) -> bytes:
        key = self._key(sess, label)
        if "DECRYPT" not in key.info.usage:
            raise KeyUsageNotPermitted(f"key {label!r} does not permit decryption")
        ctx = sess.gcm
        assert ctx is not None
        try:
            return ctx.decrypt(key.handle, iv, aad, ciphertext, tag)
        except CkError as exc:
            ambiguous = exc.call == "C_Decrypt" and exc.rv in AMBIGUOUS_DECRYPT_RVS
            if ambiguous and self._module_sane(sess):
                raise InvalidCiphertext(
                    "ciphertext, IV, tag or AAD failed authentication"
                ) from None
            raise

    def _module_sane(self, sess: _Session) -> bool:
        """After an ambiguous decrypt failure: does the module still work on this session?"""
        ctx = sess.gcm
        assert ctx is not None and self._module is not None
        try:
            ctx.random(1)
            key = self._keys.get(self._module.functions, ctx.handle, self.config.health_key_label)
        except KeyNotFound:
            return True  # RNG works and there is no health key to check more deeply with
        except CkError:
            return False
        try:
            iv, ct, tag = ctx.encrypt(key.handle, b"\x01" * IV_BYTES, b"", b"\x00")
            return ctx.decrypt(key.handle, iv, b"", ct, tag) == b"\x00"
        except CkError:
            return False

    def _probe(self, sess: _Session) -> None:
        label = self.config.health_key_label
        plaintext = os.urandom(32)
        result = self._encrypt(sess, label, plaintext, _HEALTH_AAD)
        back = self._decrypt(sess, label, result.iv, result.ciphertext, result.tag, _HEALTH_AAD)
        if back != plaintext:
            raise HsmFailure("health probe round trip returned different data")


# The seam the service codes against: mypy proves here that HsmPool offers every CryptoPool call.
_SATISFIES_CRYPTO_POOL: type[CryptoPool] = HsmPool

__all__ = ["HsmPool"]
