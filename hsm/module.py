"""Loading and (re-)initialising a PKCS#11 module, once per process.

Why not ``pkcs11.lib(path)``: it calls ``C_Initialize(NULL)``, which lets the module assume a single
thread (SoftHSMv2 then corrupts its heap as soon as two threads call it), and it caches and
re-initialises instances behind our back. Here a subclass of python-pkcs11's ``lib`` replaces
``initialize()`` with ``C_Initialize`` + ``CKF_OS_LOCKING_OK``, and this module keeps the only
instance per path in a registry that knows the pid it was created in: after ``fork()`` the child
must initialise again (PKCS#11 state is never inherited), so a pid change means "start over".

python-pkcs11's ``lib.initialized`` is a read-only C attribute that our ``initialize()`` cannot set;
it therefore stays False, which conveniently stops python-pkcs11 from ever calling ``C_Finalize``
itself (its ``unload``/dealloc only finalise when that flag is set). Finalising is ours alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _ck
from .errors import HsmError, HsmFailure, HsmUnavailable

if TYPE_CHECKING:
    from pkcs11 import Token
    from pkcs11._pkcs11 import lib as Pkcs11Lib

log = logging.getLogger("hsm.module")
BACKOFF_START_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0


class RecoveringPool(Protocol):
    """What a module's recovery thread calls on every pool using it (``HsmPool`` implements it)."""

    def _enter_recovery(self, reason: str) -> None: ...
    def _wait_drained(self) -> None: ...
    def _reopen_sessions(self) -> None: ...
    def _recovery_failed(self, message: str) -> None: ...
    def _leave_recovery(self) -> None: ...


def _needs_serialising(manufacturer_id: str) -> bool:
    """SoftHSMv2 is thread-safe under OS locking *until someone calls C_Finalize*: its singleton
    is then deleted under running calls and lazily re-created without a lock, so concurrent
    calls at that moment crash the process (seen: SIGSEGV in C_EncryptInit with 4 worker threads
    and an external C_Finalize). A local software token is CPU-bound, so running its calls one at
    a time costs little and turns that crash into an ordinary, recoverable CKR error. Override
    with XKSPROXY_PKCS11_SERIALIZE=0/1."""
    forced = os.environ.get("XKSPROXY_PKCS11_SERIALIZE")
    if forced in ("0", "1"):
        return forced == "1"
    return manufacturer_id.strip().startswith("SoftHSM")


def _finalize_is_safe(manufacturer_id: str) -> bool:
    """openCryptoki 3.8 (Debian 12) must never be finalised while the process lives: its
    ``C_Finalize`` closes file descriptors recorded by an *earlier* initialisation, which by then
    belong to someone else (seen under strace: it closed the asyncio event loop's epoll
    descriptor; pinned by tests/hsm/test_hsm_impls.py). Such a module stays initialised and
    registered when its last user releases it, and recovery reopens sessions without
    re-initialising (hsm/README.md, "Second implementation")."""
    return manufacturer_id.strip() != "IBM"


def _make_lib(path: str, functions: _ck.FunctionList) -> Pkcs11Lib:
    """python-pkcs11's ``lib`` for ``path``, initialised for multi-threaded use.

    python-pkcs11 (and its C extension) is imported here, not at module level: importing ``hsm``
    (e.g. for its config types) must not load PKCS#11 code that only a started pool needs.
    """
    import pkcs11
    from pkcs11 import _pkcs11

    class _OsLockingLib(_pkcs11.lib):
        """python-pkcs11 ``lib`` whose initialisation tells the module to use OS locking.

        Defined per module: Cython's ``__cinit__`` accepts exactly the library path, so the
        function table reaches ``initialize`` through this closure instead of the constructor.
        """

        _constructed = False

        def initialize(self) -> None:
            """Called by ``lib.__init__``; initialise for multi-threaded use instead of NULL args.

            Later calls (``pkcs11.lib(path)`` re-initialises cached instances whose read-only
            ``initialized`` flag is False, which ours always is) are no-ops: re-initialising is
            the pool's job, done only when no call is in flight.
            """
            if self._constructed:
                return
            rv = functions.initialize_os_locking()
            if rv == _ck.CKR_CRYPTOKI_ALREADY_INITIALIZED:
                # Inherited across fork, or initialised by someone else in this process with NULL
                # args: start over so that *our* flags are in force.
                functions.finalize()
                rv = functions.initialize_os_locking()
            if rv != _ck.CKR_OK:
                raise HsmUnavailable(f"C_Initialize failed: {_ck.rv_name(rv)}")

    lib = _OsLockingLib(path)
    lib._constructed = True
    # Anyone in this process calling pkcs11.lib(path) now gets this instance instead of a second
    # one that would call C_Initialize(NULL) (ALREADY_INITIALIZED) on the same module.
    pkcs11._loaded[path] = lib
    return lib


class Module:
    """One PKCS#11 module initialised in this process (shared by pools and admin calls)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.functions = _ck.FunctionList(path)
        self.lib = _make_lib(path, self.functions)
        self.generation = 1  # bumped by every re-initialisation
        self.refs = 0
        self._lock = threading.Lock()
        self.serialize = _needs_serialising(self.lib.manufacturer_id)
        self.finalize_safe = _finalize_is_safe(self.lib.manufacturer_id)
        # Held around every pool operation when ``serialize`` is set (see _needs_serialising).
        self.call_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.serialize else contextlib.nullcontext()
        )
        self._pools: set[RecoveringPool] = set()  # pools using this module (recovery: all of them)
        self._recovery_lock = threading.Lock()
        self._recovery: threading.Thread | None = None

    # ------------------------------------------------------------------ recovery
    def register(self, pool: RecoveringPool) -> None:
        with self._recovery_lock:
            self._pools.add(pool)

    def unregister(self, pool: RecoveringPool) -> None:
        with self._recovery_lock:
            self._pools.discard(pool)

    def request_recovery(self, pool: RecoveringPool, reason: str, seen_generation: int) -> None:
        """A pool saw a module-level fault. One background recovery serves every pool on the
        module: re-initialising under another pool's in-flight call would be undefined (and
        crashes SoftHSMv2). A fault seen before the latest re-initialisation is stale: the
        pool's next call replaces its sessions by itself. The reporting pool fails fast from
        now on (state "recovering"); the recovery flips it back together with the others."""
        with self._recovery_lock:
            if self._recovery is None and seen_generation != self.generation:
                return
            pool._enter_recovery(reason)
            if self._recovery is None:
                self._recovery = threading.Thread(
                    target=self._recover, args=(reason,), daemon=True, name="hsm-module-recovery"
                )
                self._recovery.start()

    def _recover(self, reason: str) -> None:
        """Flip all pools to "recovering" (fail fast), wait until none has a call in flight,
        finalise + initialise, reopen every pool's sessions; bounded exponential back-off."""
        delay, attempts = BACKOFF_START_S, 0
        try:
            while True:
                with self._recovery_lock:
                    pools = list(self._pools)
                    if not pools:
                        self._recovery = None
                        return  # everyone closed; the next acquire/start initialises afresh
                for pool in pools:
                    pool._enter_recovery(reason)
                for pool in pools:
                    pool._wait_drained()
                try:
                    with self.call_lock:
                        self.reinitialize()
                        for pool in pools:
                            pool._reopen_sessions()
                except HsmError as exc:
                    if attempts % 60 == 0:  # first failure, then about once a minute
                        log.warning(
                            "hsm module %s: recovery attempt %d failed: %s",
                            self.path,
                            attempts + 1,
                            exc,
                        )
                    attempts += 1
                    for pool in pools:
                        pool._recovery_failed(f"recovery attempt failed: {exc}")
                    time.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                with self._recovery_lock:  # atomically with request_recovery()
                    for pool in pools:
                        pool._leave_recovery()
                    self._recovery = None
                return
        finally:
            with self._recovery_lock:
                self._recovery = None

    def reinitialize(self) -> None:
        """Finalise (ignoring errors: the module may already be gone) and initialise again.

        On a module that must not be finalised (``_finalize_is_safe``) only the generation
        moves on: the pools then replace their sessions on the running module."""
        with self._lock:
            if not self.finalize_safe:
                self.generation += 1
                return
            self.functions.finalize()
            rv = self.functions.initialize_os_locking()
            if rv == _ck.CKR_CRYPTOKI_ALREADY_INITIALIZED:
                self.functions.finalize()
                rv = self.functions.initialize_os_locking()
            self.generation += 1
            if rv != _ck.CKR_OK:
                raise HsmUnavailable(f"C_Initialize failed: {_ck.rv_name(rv)}")

    def finalize(self) -> None:
        import pkcs11

        with self._lock:
            self.functions.finalize()
            self.generation += 1
            if pkcs11._loaded.get(self.path) is self.lib:
                del pkcs11._loaded[self.path]

    def find_token(self, label: str) -> Token:
        """The python-pkcs11 ``Token`` with this label (one match required)."""
        from pkcs11.exceptions import NoSuchToken, PKCS11Error

        try:
            return self.lib.get_token(token_label=label)
        except NoSuchToken:
            raise HsmUnavailable(f"no token labelled {label!r} in {self.path}") from None
        except PKCS11Error as exc:
            raise HsmUnavailable(f"token lookup failed: {type(exc).__name__}") from None

    def require_aes_gcm(self, token: Token) -> None:
        """Refuse, at start, a token that cannot run AES-GCM encrypt and decrypt.

        Without this the pool starts, health probes fail and every request answers a 500 naming
        ``C_EncryptInit``. Seen with openCryptoki 3.8's soft token (Debian 12), whose mechanism
        list has AES ECB/CBC/CBC-PAD but no CKM_AES_GCM; see hsm/README.md.
        """
        info = _ck.CK_MECHANISM_INFO()
        rv = self.functions.C_GetMechanismInfo(
            token.slot.slot_id, _ck.CKM_AES_GCM, ctypes.byref(info)
        )
        wanted = _ck.CKF_ENCRYPT | _ck.CKF_DECRYPT
        if rv == _ck.CKR_OK and info.flags & wanted == wanted:
            return
        found = _ck.rv_name(rv) if rv != _ck.CKR_OK else f"flags 0x{info.flags:X}"
        raise HsmFailure(
            f"token {token.label!r} in {self.path} does not implement CKM_AES_GCM encrypt and "
            f"decrypt (C_GetMechanismInfo: {found}); xksproxy needs AES-256-GCM inside the HSM: "
            "use another token or module",
            _ck.CKR_MECHANISM_INVALID,
        )

    def open_session(self, token: Token, pin: str, *, rw: bool = False) -> Any:
        """Open a session and make sure the token is logged in (login is per token, once).

        A second ``C_Login`` on an already logged-in token answers USER_ALREADY_LOGGED_IN, which
        is success for us; any other code is surfaced with its symbol (never the PIN). Returns
        python-pkcs11's session object, typed ``Any``: its stubs omit ``handle``, which we need.
        """
        from pkcs11.exceptions import PKCS11Error

        try:
            session: Any = token.open(rw=rw)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"C_OpenSession failed: {type(exc).__name__}") from None
        try:
            self.login(session.handle, pin)
        except BaseException:
            self.functions.C_CloseSession(session.handle)
            raise
        return session

    def login(self, handle: int, pin: str) -> None:
        """Log the token in through ``handle`` unless it already is (login state is per token)."""
        info = _ck.CK_SESSION_INFO()
        rv = self.functions.C_GetSessionInfo(handle, ctypes.byref(info))
        if rv == _ck.CKR_OK and info.state in (
            _ck.CKS_RO_USER_FUNCTIONS,
            _ck.CKS_RW_USER_FUNCTIONS,
        ):
            return
        raw = pin.encode()
        rv = self.functions.C_Login(handle, _ck.CKU_USER, raw, len(raw))
        if rv not in (_ck.CKR_OK, _ck.CKR_USER_ALREADY_LOGGED_IN):
            hint = (
                " (PIN locked or expired: reset it with the HSM's admin tool)"
                if rv in (_ck.CKR_PIN_LOCKED, _ck.CKR_PIN_EXPIRED)
                else " (wrong user PIN: check the [hsm] pin reference)"
                if rv in _ck.PIN_REFUSED_RVS
                else ""
            )
            raise HsmFailure(f"C_Login failed: {_ck.rv_name(rv)}{hint}", rv)


_registry: dict[str, Module] = {}
_registry_lock = threading.Lock()


def apply_env(env: Mapping[str, str]) -> None:
    """Set the module's environment (e.g. SOFTHSM2_CONF) before it is loaded/initialised."""
    for key, value in env.items():
        os.environ[key] = value


def acquire(path: str, env: Mapping[str, str]) -> Module:
    """The process's module for ``path``, loading and initialising it on first use.

    A module created before ``fork()`` is discarded (never finalised from the child, which would
    touch the parent's state) and a fresh one is initialised.
    """
    with _registry_lock:
        apply_env(env)
        mod = _registry.get(path)
        if mod is not None and mod.pid != os.getpid():
            mod = None
        if mod is None:
            mod = Module(path)
            _registry[path] = mod
        mod.refs += 1
        return mod


def release(mod: Module) -> None:
    """Drop one reference; the last one finalises the module (so tests can start over),
    except a module whose ``C_Finalize`` is unsafe (openCryptoki), which stays initialised."""
    with _registry_lock:
        mod.refs -= 1
        if mod.refs > 0 or _registry.get(mod.path) is not mod:
            return
        if not mod.finalize_safe and mod.pid == os.getpid():
            return  # stays initialised for the next acquire(): see _finalize_is_safe
        del _registry[mod.path]
        if mod.pid == os.getpid():
            mod.finalize()
