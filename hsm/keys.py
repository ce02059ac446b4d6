"""Key lookup by CKA_LABEL, with a handle cache that cannot go stale silently.

Object handles of token objects are valid for every session of the process, so one cache serves
the whole pool. But another process (``xksproxy keys delete``, an HSM admin tool) may delete or
replace a key at any time. So every entry remembers the key's CKA_ID and is re-validated by a fresh
lookup when older than ``ttl_s``; and a handle the module rejects (OBJECT/KEY_HANDLE_INVALID) is
dropped and resolved once more by the pool. The result is KeyNotFound or the new key, never a
crash or an old key used after its replacement was noticed.
"""

from __future__ import annotations

import ctypes
import time
from ctypes import byref, c_ubyte, c_ulong, create_string_buffer, sizeof
from dataclasses import dataclass

from . import _ck
from .classify import CkError
from .errors import KeyNotFound
from .limits import AES_KEY_BYTES
from .types import KeyInfo

_USAGE_ATTRS = (
    ("ENCRYPT", _ck.CKA_ENCRYPT),
    ("DECRYPT", _ck.CKA_DECRYPT),
    ("WRAP", _ck.CKA_WRAP),
    ("UNWRAP", _ck.CKA_UNWRAP),
    ("SIGN", _ck.CKA_SIGN),
    ("VERIFY", _ck.CKA_VERIFY),
    ("DERIVE", _ck.CKA_DERIVE),
)


@dataclass(frozen=True)
class ResolvedKey:
    handle: int
    key_id: bytes
    info: KeyInfo
    checked_at: float


def find_handles(fl: _ck.FunctionList, session: int, label: str) -> list[int]:
    """Handles of secret-key objects whose CKA_LABEL is exactly ``label``."""
    raw_label = label.encode()
    cls = c_ulong(_ck.CKO_SECRET_KEY)
    label_buf = create_string_buffer(raw_label, len(raw_label))
    template = (_ck.CK_ATTRIBUTE * 2)(
        _ck.CK_ATTRIBUTE(_ck.CKA_CLASS, ctypes.addressof(cls), sizeof(cls)),
        _ck.CK_ATTRIBUTE(_ck.CKA_LABEL, ctypes.addressof(label_buf), len(raw_label)),
    )
    return find_objects(fl, session, template)


def find_objects(
    fl: _ck.FunctionList, session: int, template: ctypes.Array[_ck.CK_ATTRIBUTE]
) -> list[int]:
    """Every handle ``C_FindObjects`` returns for ``template``; ``C_FindObjectsFinal`` always runs
    (a search left open blocks the next one on that session). The caller keeps the buffers the
    template points into alive for the call."""
    rv = fl.C_FindObjectsInit(session, template, len(template))
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_FindObjectsInit")
    found: list[int] = []
    try:
        batch = (c_ulong * 8)()
        count = c_ulong(0)
        while True:
            rv = fl.C_FindObjects(session, batch, len(batch), byref(count))
            if rv != _ck.CKR_OK:
                raise CkError(rv, "C_FindObjects")
            found.extend(batch[i] for i in range(count.value))
            if count.value < len(batch):
                break
    finally:
        rv_final = fl.C_FindObjectsFinal(session)
    if rv_final != _ck.CKR_OK:
        raise CkError(rv_final, "C_FindObjectsFinal")
    return found


def _read_attributes(fl: _ck.FunctionList, session: int, handle: int) -> dict[int, int | bool]:
    """CKA_KEY_TYPE, CKA_VALUE_LEN and the usage flags (absent ones read as False)."""
    key_type = c_ulong(_ck.CK_UNAVAILABLE_INFORMATION)
    value_len = c_ulong(0)
    flags = [c_ubyte(0) for _ in _USAGE_ATTRS]
    attrs = [
        _ck.CK_ATTRIBUTE(_ck.CKA_KEY_TYPE, ctypes.addressof(key_type), sizeof(key_type)),
        _ck.CK_ATTRIBUTE(_ck.CKA_VALUE_LEN, ctypes.addressof(value_len), sizeof(value_len)),
    ] + [
        _ck.CK_ATTRIBUTE(cka, ctypes.addressof(flag), 1)
        for (_, cka), flag in zip(_USAGE_ATTRS, flags, strict=True)
    ]
    template = (_ck.CK_ATTRIBUTE * len(attrs))(*attrs)
    rv = fl.C_GetAttributeValue(session, handle, template, len(attrs))
    # TYPE_INVALID / SENSITIVE: the other attributes are still filled in; the missing ones carry
    # CK_UNAVAILABLE_INFORMATION as length and are treated as "not allowed".
    if rv not in (_ck.CKR_OK, _ck.CKR_ATTRIBUTE_TYPE_INVALID, _ck.CKR_ATTRIBUTE_SENSITIVE):
        raise CkError(rv, "C_GetAttributeValue")
    result: dict[int, int | bool] = {}
    if template[0].ulValueLen != _ck.CK_UNAVAILABLE_INFORMATION:
        result[_ck.CKA_KEY_TYPE] = key_type.value
    if template[1].ulValueLen != _ck.CK_UNAVAILABLE_INFORMATION:
        result[_ck.CKA_VALUE_LEN] = value_len.value
    for i, (_, cka) in enumerate(_USAGE_ATTRS):
        ok = template[i + 2].ulValueLen != _ck.CK_UNAVAILABLE_INFORMATION
        result[cka] = ok and bool(flags[i].value)
    return result


def ensure_logged_in(fl: _ck.FunctionList, session: int) -> None:
    """Raise a session-level CkError unless ``session`` is open and in a user state."""
    info = _ck.CK_SESSION_INFO()
    rv = fl.C_GetSessionInfo(session, byref(info))
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_GetSessionInfo")
    if info.state not in (_ck.CKS_RO_USER_FUNCTIONS, _ck.CKS_RW_USER_FUNCTIONS):
        raise CkError(_ck.CKR_USER_NOT_LOGGED_IN, "C_GetSessionInfo (session not logged in)")


def read_id(fl: _ck.FunctionList, session: int, handle: int) -> bytes:
    """CKA_ID (empty if the key has none): tells a replaced key from the one we cached."""
    attr = (_ck.CK_ATTRIBUTE * 1)(_ck.CK_ATTRIBUTE(_ck.CKA_ID, None, 0))
    rv = fl.C_GetAttributeValue(session, handle, attr, 1)
    if rv != _ck.CKR_OK or attr[0].ulValueLen in (0, _ck.CK_UNAVAILABLE_INFORMATION):
        if rv not in (_ck.CKR_OK, _ck.CKR_ATTRIBUTE_TYPE_INVALID):
            raise CkError(rv, "C_GetAttributeValue")
        return b""
    buf = create_string_buffer(attr[0].ulValueLen)
    attr[0].pValue = ctypes.addressof(buf)
    rv = fl.C_GetAttributeValue(session, handle, attr, 1)
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_GetAttributeValue")
    return buf.raw[: attr[0].ulValueLen]


#: What SoftHSMv2 2.6 reports as CKA_VALUE_LEN of an unwrapped secret key (see resolve).
UNWRAPPED_VALUE_LEN = 0


def resolve(fl: _ck.FunctionList, session: int, label: str) -> ResolvedKey:
    """Find the one 32-byte AES secret key labelled ``label`` or raise KeyNotFound."""
    handles = find_handles(fl, session, label)
    if not handles:
        # Private keys are invisible to a session that is not logged in (e.g. the token was
        # logged out by C_CloseAllSessions a moment ago): only a logged-in "not found" is real.
        ensure_logged_in(fl, session)
        raise KeyNotFound(f"no secret key labelled {label!r} on the token")
    if len(handles) > 1:
        raise KeyNotFound(
            f"{len(handles)} secret keys are labelled {label!r}; labels must be unique"
        )
    handle = handles[0]
    attrs = _read_attributes(fl, session, handle)
    # CKA_VALUE_LEN 0: SoftHSMv2 2.6 stores 0 on every key made by C_UnwrapKey (and refuses the
    # attribute in the unwrap template), so a member's replicated key says 0; the replication
    # ceremony (hsm/replicate.py) compared its check value with the 32-byte source key.
    if attrs.get(_ck.CKA_KEY_TYPE) != _ck.CKK_AES or attrs.get(_ck.CKA_VALUE_LEN) not in (
        AES_KEY_BYTES,
        UNWRAPPED_VALUE_LEN,
    ):
        raise KeyNotFound(f"key {label!r} is not a 32-byte AES secret key")
    usage = frozenset(name for name, cka in _USAGE_ATTRS if attrs[cka])
    key_id = read_id(fl, session, handle)
    return ResolvedKey(handle, key_id, KeyInfo(label, usage), time.monotonic())


class KeyCache:
    """label -> ResolvedKey, shared by the pool's sessions (dict ops are atomic under the GIL)."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, ResolvedKey] = {}

    def get(self, fl: _ck.FunctionList, session: int, label: str) -> ResolvedKey:
        entry = self._entries.get(label)
        now = time.monotonic()
        if entry is not None and now - entry.checked_at < self.ttl_s:
            return entry
        try:
            fresh = resolve(fl, session, label)
        except KeyNotFound:
            self._entries.pop(label, None)
            raise
        self._entries[label] = fresh
        return fresh

    def drop(self, label: str) -> None:
        self._entries.pop(label, None)

    def clear(self) -> None:
        self._entries.clear()
