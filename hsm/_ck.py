"""Thin ctypes view of a PKCS#11 module's function list.

python-pkcs11 loads the module, finds tokens and opens sessions, but it cannot (a) call
``C_Initialize`` with ``CKF_OS_LOCKING_OK`` (it passes NULL, which entitles the module to assume a
single thread), (b) pass a 16-byte GCM IV, or (c) hand an object handle from one session to
another without re-reading ten attributes. So the few calls on the hot path and the lifecycle
calls go through this table instead. ``dlopen`` of the same path returns the same handle, so both
views share one module instance and one function list.

Every wrapper returns the raw ``CK_RV``: classifying errors (session-level, module-level,
invalid ciphertext) needs the exact code, which python-pkcs11 partly folds into generic messages.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_ubyte,
    c_ulong,
    c_void_p,
    sizeof,
)

CK_ULONG = c_ulong
CK_RV = c_ulong

# --- return values we act on -------------------------------------------------------------
CKR_OK = 0x000
CKR_HOST_MEMORY = 0x002
CKR_SLOT_ID_INVALID = 0x003
CKR_GENERAL_ERROR = 0x005
CKR_FUNCTION_FAILED = 0x006
CKR_ARGUMENTS_BAD = 0x007
CKR_ATTRIBUTE_SENSITIVE = 0x011
CKR_ATTRIBUTE_TYPE_INVALID = 0x012
CKR_DATA_INVALID = 0x020
CKR_DATA_LEN_RANGE = 0x021
CKR_DEVICE_ERROR = 0x030
CKR_DEVICE_MEMORY = 0x031
CKR_DEVICE_REMOVED = 0x032
CKR_ENCRYPTED_DATA_INVALID = 0x040
CKR_ENCRYPTED_DATA_LEN_RANGE = 0x041
CKR_FUNCTION_CANCELED = 0x050
CKR_KEY_HANDLE_INVALID = 0x060
CKR_KEY_SIZE_RANGE = 0x062
CKR_KEY_TYPE_INCONSISTENT = 0x063
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x068
CKR_MECHANISM_INVALID = 0x070
CKR_MECHANISM_PARAM_INVALID = 0x071
CKR_OBJECT_HANDLE_INVALID = 0x082
CKR_OPERATION_ACTIVE = 0x090
CKR_OPERATION_NOT_INITIALIZED = 0x091
CKR_PIN_INCORRECT = 0x0A0
CKR_PIN_INVALID = 0x0A1
CKR_PIN_LEN_RANGE = 0x0A2
CKR_PIN_EXPIRED = 0x0A3
CKR_PIN_LOCKED = 0x0A4
CKR_SESSION_CLOSED = 0x0B0
CKR_SESSION_COUNT = 0x0B1
CKR_SESSION_HANDLE_INVALID = 0x0B3
CKR_TOKEN_NOT_PRESENT = 0x0E0
CKR_TOKEN_NOT_RECOGNIZED = 0x0E1
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_USER_NOT_LOGGED_IN = 0x101
CKR_USER_PIN_NOT_INITIALIZED = 0x102
CKR_USER_TYPE_INVALID = 0x103
CKR_BUFFER_TOO_SMALL = 0x150
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_AEAD_DECRYPT_FAILED = 0x1B3  # PKCS#11 3.0

# --- other constants ---------------------------------------------------------------------
CKF_OS_LOCKING_OK = 0x2
CKF_ENCRYPT = 0x100  # CK_MECHANISM_INFO.flags
CKF_DECRYPT = 0x200
CKU_USER = 1
CKS_RO_USER_FUNCTIONS = 1
CKS_RW_USER_FUNCTIONS = 3
CKO_DATA = 0
CKO_SECRET_KEY = 4
CKK_AES = 0x1F
CKM_AES_GCM = 0x1087

CKA_CLASS = 0x000
CKA_TOKEN = 0x001
CKA_PRIVATE = 0x002
CKA_LABEL = 0x003
CKA_APPLICATION = 0x010
CKA_VALUE = 0x011
CKA_KEY_TYPE = 0x100
CKA_ID = 0x102
CKA_ENCRYPT = 0x104
CKA_DECRYPT = 0x105
CKA_WRAP = 0x106
CKA_UNWRAP = 0x107
CKA_SIGN = 0x108
CKA_VERIFY = 0x10A
CKA_DERIVE = 0x10C
CKA_VALUE_LEN = 0x161
CK_UNAVAILABLE_INFORMATION = (1 << (8 * sizeof(c_ulong))) - 1

#: Return values that mean "the PIN was refused": never retried (a retry could lock the PIN).
PIN_REFUSED_RVS = frozenset(
    {CKR_PIN_INCORRECT, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_EXPIRED, CKR_PIN_LOCKED}
)

#: Start-up failures a retry cannot cure: a refused PIN (a retry could lock it) and a token
#: that lacks a mechanism the proxy needs (openCryptoki 3.8's soft token has no CKM_AES_GCM).
START_FATAL_RVS = PIN_REFUSED_RVS | frozenset({CKR_MECHANISM_INVALID})

RV_NAMES = {v: k for k, v in globals().items() if k.startswith("CKR_") and isinstance(v, int)}


def rv_name(rv: int) -> str:
    """Symbolic name of a return value, for error messages (never contains data)."""
    return RV_NAMES.get(rv, f"CKR_0x{rv:08X}")


class CK_VERSION(Structure):
    _fields_ = [("major", c_ubyte), ("minor", c_ubyte)]


class CK_C_INITIALIZE_ARGS(Structure):
    _fields_ = [
        ("CreateMutex", c_void_p),
        ("DestroyMutex", c_void_p),
        ("LockMutex", c_void_p),
        ("UnlockMutex", c_void_p),
        ("flags", CK_ULONG),
        ("pReserved", c_void_p),
    ]


class CK_MECHANISM_INFO(Structure):
    _fields_ = [("ulMinKeySize", CK_ULONG), ("ulMaxKeySize", CK_ULONG), ("flags", CK_ULONG)]


class CK_MECHANISM(Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", c_void_p), ("ulParameterLen", CK_ULONG)]


class CK_GCM_PARAMS(Structure):
    # c_char_p fields take a bytes object directly (pointer to its buffer, no copy, reference kept
    # by ctypes); a writable buffer can be assigned with ctypes.cast(buf, c_char_p).
    _fields_ = [
        ("pIv", c_char_p),
        ("ulIvLen", CK_ULONG),
        ("ulIvBits", CK_ULONG),
        ("pAAD", c_char_p),
        ("ulAADLen", CK_ULONG),
        ("ulTagBits", CK_ULONG),
    ]


class CK_ATTRIBUTE(Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", c_void_p), ("ulValueLen", CK_ULONG)]


class CK_SESSION_INFO(Structure):
    _fields_ = [
        ("slotID", CK_ULONG),
        ("state", CK_ULONG),
        ("flags", CK_ULONG),
        ("ulDeviceError", CK_ULONG),
    ]


# PKCS#11 v2.40 function list order (the v3 list starts with the same 68 entries).
_FUNCTION_NAMES = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
)


class CK_FUNCTION_LIST(Structure):
    _fields_ = [("version", CK_VERSION)] + [(n, c_void_p) for n in _FUNCTION_NAMES]


_P = c_void_p
_U = CK_ULONG
_PU = POINTER(CK_ULONG)
# name -> argument types (every function returns CK_RV)
_SIGNATURES: dict[str, tuple[type, ...]] = {
    "C_Initialize": (_P,),
    "C_Finalize": (_P,),
    "C_GetMechanismInfo": (_U, _U, POINTER(CK_MECHANISM_INFO)),
    "C_CloseSession": (_U,),
    "C_CloseAllSessions": (_U,),
    "C_GetSessionInfo": (_U, POINTER(CK_SESSION_INFO)),
    "C_Login": (_U, _U, c_char_p, _U),
    "C_GetAttributeValue": (_U, _U, POINTER(CK_ATTRIBUTE), _U),
    "C_FindObjectsInit": (_U, POINTER(CK_ATTRIBUTE), _U),
    "C_FindObjects": (_U, _PU, _U, _PU),
    "C_FindObjectsFinal": (_U,),
    "C_EncryptInit": (_U, POINTER(CK_MECHANISM), _U),
    "C_Encrypt": (_U, c_char_p, _U, _P, _PU),
    "C_DecryptInit": (_U, POINTER(CK_MECHANISM), _U),
    "C_Decrypt": (_U, c_char_p, _U, _P, _PU),
    "C_GenerateRandom": (_U, _P, _U),
}


#: A bound PKCS#11 entry point: arguments as in ``_SIGNATURES``, returns the raw ``CK_RV``.
CkFunction = Callable[..., int]


class FunctionList:
    """Callable entries of one module's ``CK_FUNCTION_LIST`` (only the ones we use).

    ctypes releases the GIL around each foreign call, so worker threads really run in parallel
    inside the module (which is why it must be initialised with OS locking).
    """

    def __init__(self, so_path: str) -> None:
        self.so_path = so_path
        # RTLD_GLOBAL is not needed; dlopen of an already-loaded path returns the same handle.
        self._dll = ctypes.CDLL(so_path)
        get_list = self._dll.C_GetFunctionList
        get_list.argtypes = [POINTER(POINTER(CK_FUNCTION_LIST))]
        get_list.restype = CK_RV
        table = POINTER(CK_FUNCTION_LIST)()
        rv = get_list(byref(table))
        if rv != CKR_OK:
            raise OSError(f"C_GetFunctionList failed: {rv_name(rv)}")
        self._table = table.contents
        for name, argtypes in _SIGNATURES.items():
            address = getattr(self._table, name)
            if not address:
                raise OSError(f"PKCS#11 module lacks {name}")
            proto = ctypes.CFUNCTYPE(CK_RV, *argtypes)
            setattr(self, name, proto(address))

    # The dynamically bound entries: ctypes checks the arguments against ``_SIGNATURES`` at
    # call time and converts the CK_RV result to int.
    C_Initialize: CkFunction
    C_Finalize: CkFunction
    C_GetMechanismInfo: CkFunction
    C_CloseSession: CkFunction
    C_CloseAllSessions: CkFunction
    C_GetSessionInfo: CkFunction
    C_Login: CkFunction
    C_GetAttributeValue: CkFunction
    C_FindObjectsInit: CkFunction
    C_FindObjects: CkFunction
    C_FindObjectsFinal: CkFunction
    C_EncryptInit: CkFunction
    C_Encrypt: CkFunction
    C_DecryptInit: CkFunction
    C_Decrypt: CkFunction
    C_GenerateRandom: CkFunction

    def initialize_os_locking(self) -> int:
        """``C_Initialize`` telling the module that threads exist and OS locks may be used."""
        args = CK_C_INITIALIZE_ARGS(None, None, None, None, CKF_OS_LOCKING_OK, None)
        return int(self.C_Initialize(byref(args)))

    def finalize(self) -> int:
        return int(self.C_Finalize(None))
