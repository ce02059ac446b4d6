"""PKCS#11 layer of xksproxy: module initialisation, session pool, AES-256-GCM, key admin.

Public API (contract in ARCHITECTURE.md, section "hsm/")::

    from hsm import HsmConfig, HsmPool, CryptoPool, KeyInfo, GcmResult, ProbeResult, PoolStats
    from hsm import HsmError, KeyNotFound, KeyUsageNotPermitted, InvalidCiphertext, \
        SessionTimeout, HsmUnavailable, HsmFailure          # also in hsm.errors
    from hsm import admin            # create_key, list_keys, delete_key, ensure_health_key
    from hsm.softhsm import provision
    from hsm.limits import MAX_FRAMED_AAD_BYTES, IV_LENGTHS, TAG_BYTES

Importing ``hsm`` loads no PKCS#11 code (python-pkcs11 and the module itself are loaded by
``HsmPool.start()`` and the ``admin`` functions), so configuration and CLI code can use its
types cheaply.
"""

from .errors import (
    HsmError,
    HsmFailure,
    HsmUnavailable,
    InvalidCiphertext,
    KeyNotFound,
    KeyUsageNotPermitted,
    SessionTimeout,
)
from .interface import CryptoPool
from .pool import HsmPool
from .types import GcmResult, HsmConfig, KeyInfo, PoolStats, ProbeResult

__all__ = [
    "CryptoPool",
    "GcmResult",
    "HsmConfig",
    "HsmError",
    "HsmFailure",
    "HsmPool",
    "HsmUnavailable",
    "InvalidCiphertext",
    "KeyInfo",
    "KeyNotFound",
    "KeyUsageNotPermitted",
    "PoolStats",
    "ProbeResult",
    "SessionTimeout",
]
