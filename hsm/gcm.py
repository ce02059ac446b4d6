"""AES-GCM and RNG calls on one session, straight through the function list.

python-pkcs11's ``GCMParams`` refuses IVs longer than 12 bytes, yet XKS Decrypt must accept the
16-byte IVs other proxies produce; and its key objects are bound to the session that found them.
Building ``CK_GCM_PARAMS`` here avoids both limits and costs three foreign calls per operation.
A :class:`Gcm` belongs to one session (used by one thread at a time), so its parameter structs
are allocated once and reused: on a local token the Python work around the call is a large part
of the cost. Functions raise :class:`CkError` with the raw code; the pool decides what it means.
"""

from __future__ import annotations

import ctypes
from ctypes import addressof, byref, c_char_p, c_ulong, create_string_buffer, sizeof, string_at

from . import _ck
from .classify import CkError
from .limits import IV_BYTES, TAG_BYTES

_ZERO_IV = b"\0" * IV_BYTES


class Gcm:
    """AES-GCM on one session handle, with reusable mechanism/parameter structs."""

    __slots__ = ("_addr", "_cap", "_fl", "_len", "_mech", "_out", "_params", "handle")

    def __init__(self, fl: _ck.FunctionList, handle: int) -> None:
        self._fl = fl
        self.handle = handle
        self._params = _ck.CK_GCM_PARAMS()
        self._params.ulTagBits = TAG_BYTES * 8
        self._mech = _ck.CK_MECHANISM(
            _ck.CKM_AES_GCM, addressof(self._params), sizeof(self._params)
        )
        self._len = c_ulong(0)
        self._cap = 0
        self._out: ctypes.Array[ctypes.c_char] | None = None
        self._addr = 0

    def _buffer(self, size: int) -> int:
        """Address of a reusable output buffer of at least ``size`` bytes (never shrinks)."""
        if size > self._cap:
            self._cap = max(size, 1024)
            self._out = create_string_buffer(self._cap)
            self._addr = addressof(self._out)
        return self._addr

    def _set(self, iv: bytes | c_char_p, iv_len: int, aad: bytes) -> None:
        p = self._params
        p.pIv = iv
        p.ulIvLen = iv_len
        p.ulIvBits = iv_len * 8
        p.pAAD = aad or None
        p.ulAADLen = len(aad)

    def random(self, n: int) -> bytes:
        addr = self._buffer(n)
        self.random_into(addr, n)
        return string_at(addr, n)

    def random_into(self, addr: int, n: int) -> None:
        """Fill ``n`` bytes at ``addr`` from the HSM's RNG (an :class:`hsm.ivbuffer.IvBuffer`
        draws its batches straight into its own memory: no copy of future IVs stays here)."""
        rv = self._fl.C_GenerateRandom(self.handle, addr, n)
        if rv != _ck.CKR_OK:
            raise CkError(rv, "C_GenerateRandom")

    def encrypt(
        self, key: int, iv: bytes | None, aad: bytes, plaintext: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """Encrypt; returns (iv, ciphertext, tag).

        ``iv=None`` asks the module to generate a 12-byte IV into the params buffer. A module
        that silently ignores that request would encrypt under the zeroed buffer; that output is
        discarded (never returned) and reported as an error, so a fixed IV never leaves here.
        """
        iv_buf = None
        if iv is None:
            iv_buf = create_string_buffer(_ZERO_IV, IV_BYTES)
            self._set(ctypes.cast(iv_buf, c_char_p), IV_BYTES, aad)
        else:
            self._set(iv, len(iv), aad)
        fl, handle = self._fl, self.handle
        rv = fl.C_EncryptInit(handle, byref(self._mech), key)
        if rv != _ck.CKR_OK:
            raise CkError(rv, "C_EncryptInit")
        n = len(plaintext)
        out = self._buffer(n + TAG_BYTES)
        self._len.value = n + TAG_BYTES
        rv = fl.C_Encrypt(handle, plaintext, n, out, byref(self._len))
        if rv != _ck.CKR_OK:
            raise CkError(rv, "C_Encrypt")
        if self._len.value != n + TAG_BYTES:
            raise CkError(_ck.CKR_FUNCTION_FAILED, "C_Encrypt (unexpected output length)")
        if iv_buf is not None:
            iv = iv_buf.raw[:IV_BYTES]
            if iv == _ZERO_IV:
                raise CkError(_ck.CKR_MECHANISM_PARAM_INVALID, "C_Encrypt (module made no IV)")
        assert iv is not None
        return iv, string_at(out, n), string_at(out + n, TAG_BYTES)

    def decrypt(self, key: int, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        """Decrypt and verify; a failed tag check raises CkError (code depends on the module)."""
        self._set(iv, len(iv), aad)
        fl, handle = self._fl, self.handle
        rv = fl.C_DecryptInit(handle, byref(self._mech), key)
        if rv != _ck.CKR_OK:
            raise CkError(rv, "C_DecryptInit")
        data = ciphertext + tag
        out = self._buffer(len(data))
        self._len.value = len(data)
        rv = fl.C_Decrypt(handle, data, len(data), out, byref(self._len))
        if rv != _ck.CKR_OK:
            raise CkError(rv, "C_Decrypt")
        return string_at(out, self._len.value)
