"""The seam between the service and an HSM: what a pool of sessions on one backend can do.

Why a Protocol: the service, the admission wrapper (metrics + admission around a real pool), the
in-memory test double (:mod:`hsm.testing`) and later a multi-member backend (several HSMs behind
one key store) must all offer exactly these calls.  Code that takes a pool names this type, never
``HsmPool``; mypy then proves that each implementation forwards every method (no ``__getattr__``).

``deadline`` is an absolute ``time.monotonic()`` value.  Errors are the ``hsm.errors`` tree.
Importing this module loads no PKCS#11 code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .types import GcmResult, KeyInfo, PoolStats, ProbeResult


@runtime_checkable
class CryptoPool(Protocol):
    """AES-256-GCM and key lookups on one HSM backend, for one worker process."""

    async def start(self) -> None:
        """Open sessions (log in once); raise an ``HsmError`` when the backend cannot serve."""

    async def close(self) -> None:
        """Close every session; later calls fail with ``HsmUnavailable``."""

    async def key_info(self, label: str, *, deadline: float) -> KeyInfo:
        """What the key with this label may do (``KeyNotFound`` if there is none)."""

    async def encrypt(
        self, label: str, plaintext: bytes, aad: bytes, *, deadline: float
    ) -> GcmResult:
        """AES-GCM encrypt inside the HSM with a fresh 12-byte IV; ``aad`` is already framed."""

    async def decrypt(
        self, label: str, *, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes, deadline: float
    ) -> bytes:
        """AES-GCM decrypt inside the HSM (``InvalidCiphertext`` on any authentication failure)."""

    async def custody(self, label: str, *, deadline: float) -> bytes | None:
        """The key's lifecycle companion document (``hsm.custody``), None when it has none.

        One read of a ``CKO_DATA`` object on a session of the pool; the key resolver caches the
        answer for a few seconds, so this is not called per request.
        """

    async def probe(self) -> ProbeResult:
        """One encrypt+decrypt round trip with the backend's health test key (never raises)."""

    def stats(self) -> PoolStats:
        """Sessions, their use and the backend's state, for metrics and health."""
