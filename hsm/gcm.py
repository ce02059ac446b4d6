"""AES-GCM and RNG calls on one session, straight through the function list.

python-pkcs11's ``GCMParams`` refuses IVs longer than 12 bytes, yet XKS Decrypt must accept the
16-byte IVs other proxies produce; and its key objects are bound to the session that found them.
Building ``CK_GCM_PARAMS`` here avoids both limits and costs three foreign calls per operation.
Functions raise :class:`CkError` with the raw code; the pool decides what it means.
"""

from __future__ import annotations

import ctypes
from ctypes import addressof, byref, c_char_p, c_ulong, c_void_p, create_string_buffer, sizeof

from . import _ck
from .classify import CkError

TAG_BYTES = 16


def _mechanism(
    iv_buf: ctypes.Array[ctypes.c_char], iv_len: int, aad: bytes
) -> tuple[_ck.CK_MECHANISM, _ck.CK_GCM_PARAMS, c_char_p | None]:
    """Mechanism + params; the caller keeps all three alive across the C calls."""
    aad_ref = c_char_p(aad) if aad else None  # points into the bytes object, no copy
    params = _ck.CK_GCM_PARAMS(
        addressof(iv_buf),
        iv_len,
        iv_len * 8,
        ctypes.cast(aad_ref, c_void_p) if aad_ref is not None else None,
        len(aad),
        TAG_BYTES * 8,
    )
    mech = _ck.CK_MECHANISM(_ck.CKM_AES_GCM, addressof(params), sizeof(params))
    return mech, params, aad_ref


def generate_random(fl: _ck.FunctionList, session: int, n: int) -> bytes:
    buf = create_string_buffer(n)
    rv = fl.C_GenerateRandom(session, buf, n)
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_GenerateRandom")
    return buf.raw


def encrypt(
    fl: _ck.FunctionList, session: int, key: int, iv: bytes | None, aad: bytes, plaintext: bytes
) -> tuple[bytes, bytes, bytes]:
    """Encrypt; returns (iv, ciphertext, tag).

    ``iv=None`` asks the module to generate a 12-byte IV into the params buffer. A module that
    silently ignores that request would encrypt under the zeroed buffer; that output is discarded
    (never returned) and reported as an error, so a fixed IV can never leave this function.
    """
    iv_len = 12 if iv is None else len(iv)
    iv_buf = create_string_buffer(iv if iv is not None else b"\0" * iv_len, iv_len)
    mech, _params, _aad_ref = _mechanism(iv_buf, iv_len, aad)
    rv = fl.C_EncryptInit(session, byref(mech), key)
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_EncryptInit")
    out_len = len(plaintext) + TAG_BYTES
    out = create_string_buffer(out_len)
    n = c_ulong(out_len)
    rv = fl.C_Encrypt(session, plaintext, len(plaintext), out, byref(n))
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_Encrypt")
    if n.value != out_len:
        raise CkError(_ck.CKR_FUNCTION_FAILED, "C_Encrypt (unexpected output length)")
    used_iv = iv_buf.raw[:iv_len]
    if iv is None and used_iv == b"\0" * iv_len:
        raise CkError(_ck.CKR_MECHANISM_PARAM_INVALID, "C_Encrypt (module generated no IV)")
    raw = out.raw
    return used_iv, raw[: len(plaintext)], raw[len(plaintext) :]


def decrypt(
    fl: _ck.FunctionList, session: int, key: int, iv: bytes, aad: bytes, ciphertext: bytes,
    tag: bytes,
) -> bytes:
    """Decrypt and verify; a failed tag check raises CkError (code depends on the module)."""
    iv_buf = create_string_buffer(iv, len(iv))
    mech, _params, _aad_ref = _mechanism(iv_buf, len(iv), aad)
    rv = fl.C_DecryptInit(session, byref(mech), key)
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_DecryptInit")
    data = ciphertext + tag
    out = create_string_buffer(len(data))
    n = c_ulong(len(data))
    rv = fl.C_Decrypt(session, data, len(data), out, byref(n))
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_Decrypt")
    return out.raw[: n.value]
