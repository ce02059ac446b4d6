"""PKCS#11 layer of xksproxy: module initialisation, session pool, AES-256-GCM, key admin.

Public API (contract in ARCHITECTURE.md, section "hsm/")::

    from hsm import HsmConfig, HsmPool, KeyInfo, GcmResult, ProbeResult, PoolStats
    from hsm.errors import HsmError, KeyNotFound, KeyUsageNotPermitted, InvalidCiphertext, \
        SessionTimeout, HsmUnavailable, HsmFailure
    from hsm import admin            # create_key, list_keys, delete_key, ensure_health_key
    from hsm.softhsm import provision
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
from .pool import HsmPool
from .types import GcmResult, HsmConfig, KeyInfo, PoolStats, ProbeResult

__all__ = [
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
