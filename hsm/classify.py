"""What a CKR code means for the pool: retry on a new session, re-initialise the module, or report.

Kept in one table so the recovery policy can be read (and reviewed) at a glance.
"""

from __future__ import annotations

from enum import Enum

from . import _ck


class Fault(Enum):
    SESSION = "session"  # replace this session (and log in again if the token logged out)
    MODULE = "module"  # finalise + re-initialise the module in the background
    STALE_KEY = "stale_key"  # cached object handle no longer valid: resolve the label again
    KEY_USAGE = "key_usage"  # key attributes forbid the operation
    CIPHERTEXT = "ciphertext"  # authentication failed / malformed input
    OTHER = "other"


SESSION_RVS = frozenset(
    {
        _ck.CKR_SESSION_CLOSED,
        _ck.CKR_SESSION_HANDLE_INVALID,
        _ck.CKR_USER_NOT_LOGGED_IN,
        _ck.CKR_OPERATION_ACTIVE,
        _ck.CKR_OPERATION_NOT_INITIALIZED,
    }
)
MODULE_RVS = frozenset(
    {
        _ck.CKR_DEVICE_ERROR,
        _ck.CKR_DEVICE_MEMORY,
        _ck.CKR_DEVICE_REMOVED,
        _ck.CKR_TOKEN_NOT_PRESENT,
        _ck.CKR_TOKEN_NOT_RECOGNIZED,
        _ck.CKR_SLOT_ID_INVALID,
        _ck.CKR_CRYPTOKI_NOT_INITIALIZED,
        _ck.CKR_GENERAL_ERROR,
        _ck.CKR_HOST_MEMORY,
        _ck.CKR_SESSION_COUNT,
    }
)
STALE_KEY_RVS = frozenset({_ck.CKR_KEY_HANDLE_INVALID, _ck.CKR_OBJECT_HANDLE_INVALID})
CIPHERTEXT_RVS = frozenset(
    {
        _ck.CKR_ENCRYPTED_DATA_INVALID,
        _ck.CKR_ENCRYPTED_DATA_LEN_RANGE,
        _ck.CKR_AEAD_DECRYPT_FAILED,
        _ck.CKR_DATA_LEN_RANGE,
        _ck.CKR_DATA_INVALID,
    }
)
# Some modules (SoftHSMv2 among them) answer a failed GCM tag check with GENERAL_ERROR or
# FUNCTION_FAILED. From C_Decrypt those are ambiguous: the pool checks the module's health on the
# same session before deciding between "invalid ciphertext" and "module fault".
AMBIGUOUS_DECRYPT_RVS = frozenset({_ck.CKR_GENERAL_ERROR, _ck.CKR_FUNCTION_FAILED})


def classify(rv: int) -> Fault:
    if rv in SESSION_RVS:
        return Fault.SESSION
    if rv in MODULE_RVS:
        return Fault.MODULE
    if rv in STALE_KEY_RVS:
        return Fault.STALE_KEY
    if rv == _ck.CKR_KEY_FUNCTION_NOT_PERMITTED:
        return Fault.KEY_USAGE
    if rv in CIPHERTEXT_RVS:
        return Fault.CIPHERTEXT
    return Fault.OTHER


class CkError(Exception):
    """Internal: a PKCS#11 call returned ``rv``; ``call`` names the function (no data)."""

    def __init__(self, rv: int, call: str) -> None:
        super().__init__(f"{call} failed: {_ck.rv_name(rv)}")
        self.rv = rv
        self.call = call
        self.fault = classify(rv)
