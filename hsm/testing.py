"""An in-memory :class:`~hsm.interface.CryptoPool` for tests about HTTP, validation or admission.

Why: most service tests are not about the HSM, and driving them through SoftHSMv2 makes them
slow and ties them to a PKCS#11 module.  :class:`MemoryPool` is the test double on the pool
seam (the way httpx ships ``MockTransport`` on its transport interface): real AES-256-GCM (via
``cryptography``), keys by label with usage sets, a health test key, and switches to add delay
or make an operation fail with a given ``hsm.errors`` exception, with call counters to assert
on.  Integration, conformance and hsm/ tests stay on the real token.

It follows ``hsm.HsmPool``'s contract where a caller can observe it: ``HsmUnavailable`` before
:meth:`start` and after :meth:`close`; ``KeyNotFound`` / ``KeyUsageNotPermitted`` /
``InvalidCiphertext`` as the real pool raises them; ``ValueError`` for caller bugs (plaintext
over ``max_plaintext_bytes``, framed AAD over 65,793 bytes); ``SessionTimeout`` when the
deadline passes (while waiting for one of ``sessions`` slots, or during an added delay).
It imports no PKCS#11 code.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import (
    HsmError,
    HsmUnavailable,
    InvalidCiphertext,
    KeyNotFound,
    KeyUsageNotPermitted,
    SessionTimeout,
)
from .interface import CryptoPool
from .limits import (
    AES_KEY_BYTES,
    DEFAULT_MAX_PLAINTEXT_BYTES,
    IV_BYTES,
    IV_LENGTHS,
    MAX_FRAMED_AAD_BYTES,
    PROBE_TIMEOUT_S,
    TAG_BYTES,
)
from .types import GcmResult, KeyInfo, PoolStats, ProbeResult

Operation = Literal["start", "key_info", "encrypt", "decrypt", "custody", "probe"]
"""The operations a fault or a delay can be set for (and that :attr:`MemoryPool.calls` counts)."""

ENCRYPT_DECRYPT = frozenset({"ENCRYPT", "DECRYPT"})


@dataclass(frozen=True)
class _Key:
    aead: AESGCM
    info: KeyInfo


class MemoryPool:
    """A ``CryptoPool`` held in memory; build it, add keys, ``await start()``."""

    def __init__(
        self,
        name: str = "memory-0",
        *,
        sessions: int = 4,
        health_key_label: str = "xks-health-test",
        max_plaintext_bytes: int = DEFAULT_MAX_PLAINTEXT_BYTES,
    ) -> None:
        if sessions < 1:
            raise ValueError("sessions must be at least 1")
        self.name = name
        self.sessions = sessions
        self.health_key_label = health_key_label
        self.max_plaintext_bytes = max_plaintext_bytes
        self.calls: Counter[str] = Counter()
        """Calls per :data:`Operation`, counted on entry (also those that then fail)."""
        self.delay_s: dict[str, float] = {}
        """Added latency per :data:`Operation`, in seconds (inside a session slot)."""
        self.faults: dict[str, HsmError] = {}
        """An exception to raise per :data:`Operation` instead of doing it."""
        self._keys: dict[str, _Key] = {}
        self.documents: dict[str, bytes] = {}
        """Companion (lifecycle) documents by key label, as ``hsm.custody`` keeps them."""
        self._state = "stopped"
        self._slots = asyncio.Semaphore(sessions)
        self._in_use = 0
        self._waiting = 0
        self._wait_observer: Callable[[float], None] | None = None
        self.add_key(health_key_label)

    # -- set-up and switches -----------------------------------------------------------------
    def add_key(
        self,
        label: str,
        usage: Iterable[str] = ENCRYPT_DECRYPT,
        *,
        material: bytes | None = None,
    ) -> None:
        """Create an AES-256 key (random, or ``material``: 32 bytes) allowed ``usage``."""
        key = os.urandom(AES_KEY_BYTES) if material is None else material
        if len(key) != 32:
            raise ValueError("AES-256 key material must be 32 bytes")
        info = KeyInfo(label, frozenset(u.upper() for u in usage))
        self._keys[label] = _Key(AESGCM(key), info)

    def remove_key(self, label: str) -> None:
        self._keys.pop(label, None)

    def set_document(self, label: str, document: bytes | None) -> None:
        """Store (or with ``None`` remove) the companion document of ``label``."""
        if document is None:
            self.documents.pop(label, None)
        else:
            self.documents[label] = document

    def fail(self, operation: Operation, error: HsmError | None) -> None:
        """Make ``operation`` raise ``error`` from now on (``None``: work again)."""
        if error is None:
            self.faults.pop(operation, None)
        else:
            self.faults[operation] = error

    def delay(self, operation: Operation, seconds: float) -> None:
        """Add ``seconds`` to every ``operation`` (0: none)."""
        self.delay_s[operation] = seconds

    # -- CryptoPool ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.calls["start"] += 1
        fault = self.faults.get("start")
        if fault is not None:
            raise fault
        self._state = "ready"

    async def close(self) -> None:
        self._state = "stopped"

    async def key_info(self, label: str, *, deadline: float) -> KeyInfo:
        self.calls["key_info"] += 1
        await self._enter("key_info", deadline)
        try:
            return self._key(label).info
        finally:
            self._leave()

    async def encrypt(
        self, label: str, plaintext: bytes, aad: bytes, *, deadline: float
    ) -> GcmResult:
        self.calls["encrypt"] += 1
        if len(plaintext) > self.max_plaintext_bytes:
            raise ValueError(f"plaintext longer than {self.max_plaintext_bytes} bytes")
        if len(aad) > MAX_FRAMED_AAD_BYTES:
            raise ValueError(f"AAD longer than {MAX_FRAMED_AAD_BYTES} bytes")
        await self._enter("encrypt", deadline)
        try:
            return self._encrypt(label, plaintext, aad)
        finally:
            self._leave()

    async def decrypt(
        self, label: str, *, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes, deadline: float
    ) -> bytes:
        self.calls["decrypt"] += 1
        if len(iv) not in IV_LENGTHS:
            raise InvalidCiphertext("IV must be 12 or 16 bytes")
        if len(tag) != TAG_BYTES:
            raise InvalidCiphertext("authentication tag must be 16 bytes")
        if len(ciphertext) > self.max_plaintext_bytes or len(aad) > MAX_FRAMED_AAD_BYTES:
            raise InvalidCiphertext("ciphertext or AAD longer than supported")
        await self._enter("decrypt", deadline)
        try:
            return self._decrypt(label, iv, ciphertext, tag, aad)
        finally:
            self._leave()

    async def custody(self, label: str, *, deadline: float) -> bytes | None:
        self.calls["custody"] += 1
        await self._enter("custody", deadline)
        try:
            return self.documents.get(label)
        finally:
            self._leave()

    async def probe(self) -> ProbeResult:
        """Encrypt+decrypt with the health key; never raises (like ``HsmPool.probe``)."""
        started = time.perf_counter()
        try:
            self.calls["probe"] += 1
            await self._enter("probe", time.monotonic() + PROBE_TIMEOUT_S)
            try:
                result = self._encrypt(self.health_key_label, b"xks-health", b"")
                self._decrypt(self.health_key_label, result.iv, result.ciphertext, result.tag, b"")
            finally:
                self._leave()
        except HsmError as exc:
            return ProbeResult(False, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
        return ProbeResult(True, time.perf_counter() - started, None)

    def stats(self) -> PoolStats:
        return PoolStats(
            name=self.name,
            mode="memory",
            state=self._state,
            sessions=self.sessions,
            in_use=self._in_use,
            waiting=self._waiting,
        )

    # -- what hsm.HsmPool also offers (admission reads it) ------------------------------------
    def queue_state(self) -> tuple[int, int, int]:
        return self.sessions, self._in_use, self._waiting

    def set_session_wait_observer(self, observer: Callable[[float], None] | None) -> None:
        self._wait_observer = observer

    # -- internals -----------------------------------------------------------------------------
    async def _enter(self, operation: Operation, deadline: float) -> None:
        """Take a session slot before ``deadline``, then apply the operation's fault or delay."""
        if self._state != "ready":
            raise HsmUnavailable(f"HSM pool {self.name!r} is not started")
        if self._in_use >= self.sessions or self._waiting:
            queued = time.monotonic()
            self._waiting += 1
            try:
                async with asyncio.timeout(max(0.0, deadline - queued)):
                    await self._slots.acquire()
            except TimeoutError:
                raise SessionTimeout("no HSM session became free before the deadline") from None
            finally:
                self._waiting -= 1
            if self._wait_observer is not None:
                self._wait_observer(time.monotonic() - queued)
        else:
            await self._slots.acquire()
        self._in_use += 1
        try:
            fault = self.faults.get(operation)
            if fault is not None:
                raise fault
            delay = self.delay_s.get(operation, 0.0)
            if delay > 0:
                remaining = deadline - time.monotonic()
                await asyncio.sleep(max(0.0, min(delay, remaining)))
                if delay > remaining:
                    raise SessionTimeout("the HSM did not answer before the deadline")
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        self._in_use -= 1
        self._slots.release()

    def _key(self, label: str) -> _Key:
        key = self._keys.get(label)
        if key is None:
            raise KeyNotFound(f"no AES-256 key labelled {label!r}")
        return key

    def _encrypt(self, label: str, plaintext: bytes, aad: bytes) -> GcmResult:
        key = self._key(label)
        if "ENCRYPT" not in key.info.usage:
            raise KeyUsageNotPermitted(f"key {label!r} may not encrypt")
        iv = os.urandom(IV_BYTES)
        sealed = key.aead.encrypt(iv, plaintext, aad)
        return GcmResult(iv, sealed[:-TAG_BYTES], sealed[-TAG_BYTES:])

    def _decrypt(self, label: str, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
        key = self._key(label)
        if "DECRYPT" not in key.info.usage:
            raise KeyUsageNotPermitted(f"key {label!r} may not decrypt")
        try:
            return key.aead.decrypt(iv, ciphertext + tag, aad)
        except InvalidTag:
            raise InvalidCiphertext("authentication failed") from None


def _is_a_crypto_pool(pool: MemoryPool) -> CryptoPool:
    """Never called: mypy checks here that :class:`MemoryPool` implements ``CryptoPool``."""
    return pool
