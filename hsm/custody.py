"""Key custody objects in the HSM: the lifecycle companion object and the version key objects.

Why in the HSM: a key's lifecycle state (versions, active/suspended/..., dates, history) must be
the same for every proxy in front of the token and must travel with an HSM backup, so no local
file may decide it.  This module stores it as one ``CKO_DATA`` object per external key, next to
the key:

=================  ============================================================================
CKA_CLASS          ``CKO_DATA``
CKA_APPLICATION    ``"xksproxy"`` (:data:`APPLICATION`)
CKA_LABEL          the key's label (the version-0 key object's label)
CKA_TOKEN          true (persistent)
CKA_PRIVATE        true (visible only to a logged-in session)
CKA_VALUE          the document (opaque bytes here; xksproxy.keys.custody_doc owns its JSON)
=================  ============================================================================

A key without a companion object has never been touched by ``xksproxy keys`` lifecycle commands;
the service treats it as version 0, active.

Replacing the document never shows a reader a half-written value: ``C_SetAttributeValue`` on
``CKA_VALUE`` where the module allows it, else create-new-then-destroy-old.  SoftHSMv2 makes a
data object's ``CKA_VALUE`` read-only after creation (measured: ``tests/custody/
test_custody_hsm.py``), so there the second path runs, and for the moment between the create and
the destroy a reader sees two objects: :func:`read_companion` then raises ``HsmFailure`` rather
than pick one (the key resolver keeps its previous document for that read).  There is never a
moment with *no* object, which would read as "version 0, active".

Version key objects (version n >= 1) are new AES-256 keys generated inside the HSM with the same
template as version 0 (sensitive, non-extractable, same usage); their labels are chosen by the
caller (xksproxy's key resolver is the only code that knows how labels are made).

Two sides: :func:`read_companion` runs on one of the pool's sessions through the ctypes function
list (hot-path style, releases the GIL); the rest are synchronous administration calls for the
CLI, on a session of their own (python-pkcs11, like :mod:`hsm.admin`, imported by those calls
only: the pool imports this module, and importing the pool loads no PKCS#11 code).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from ctypes import c_ubyte, c_ulong, create_string_buffer, sizeof
from typing import Any, Final

from . import _ck, keys
from .classify import CkError
from .errors import HsmFailure, KeyNotFound
from .types import HsmConfig, KeyInfo

#: CKA_APPLICATION of every companion object.
APPLICATION: Final = "xksproxy"
#: Largest document accepted (a key's versions and a bounded history fit in a few KiB).
MAX_DOCUMENT_BYTES: Final = 65536


# --------------------------------------------------------------------------- pool side (ctypes)


def find_companions(fl: _ck.FunctionList, session: int, label: str) -> list[int]:
    """Handles of the companion objects of ``label`` (normally none or one)."""
    raw_label = label.encode()
    raw_app = APPLICATION.encode()
    cls = c_ulong(_ck.CKO_DATA)
    label_buf = create_string_buffer(raw_label, len(raw_label))
    app_buf = create_string_buffer(raw_app, len(raw_app))
    template = (_ck.CK_ATTRIBUTE * 3)(
        _ck.CK_ATTRIBUTE(_ck.CKA_CLASS, ctypes.addressof(cls), sizeof(cls)),
        _ck.CK_ATTRIBUTE(_ck.CKA_LABEL, ctypes.addressof(label_buf), len(raw_label)),
        _ck.CK_ATTRIBUTE(_ck.CKA_APPLICATION, ctypes.addressof(app_buf), len(raw_app)),
    )
    return keys.find_objects(fl, session, template)


def _read_value(fl: _ck.FunctionList, session: int, handle: int) -> bytes:
    attr = (_ck.CK_ATTRIBUTE * 1)(_ck.CK_ATTRIBUTE(_ck.CKA_VALUE, None, 0))
    rv = fl.C_GetAttributeValue(session, handle, attr, 1)
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_GetAttributeValue")
    size = attr[0].ulValueLen
    if size == _ck.CK_UNAVAILABLE_INFORMATION or size > MAX_DOCUMENT_BYTES:
        raise HsmFailure("the key's custody object has no readable value of a sane size")
    if size == 0:
        return b""
    buf = (c_ubyte * size)()
    attr[0].pValue = ctypes.addressof(buf)
    rv = fl.C_GetAttributeValue(session, handle, attr, 1)
    if rv != _ck.CKR_OK:
        raise CkError(rv, "C_GetAttributeValue")
    return bytes(buf[: attr[0].ulValueLen])


def read_companion(fl: _ck.FunctionList, session: int, label: str) -> bytes | None:
    """The companion document of ``label``, or None when the key has none.

    "None" is only trusted on a logged-in session (private objects are invisible otherwise, e.g.
    right after ``C_CloseAllSessions`` logged the token out): a logged-out session raises a
    session-level ``CkError`` so the pool replaces the session and retries.
    """
    handles = find_companions(fl, session, label)
    if not handles:
        keys.ensure_logged_in(fl, session)
        return None
    if len(handles) > 1:
        raise HsmFailure(
            f"{len(handles)} custody objects for key {label!r}: a state change is in progress "
            "or was interrupted; run the `xksproxy keys` command again"
        )
    return _read_value(fl, session, handles[0])


# --------------------------------------------------------------------------- admin side (CLI)


def _companions(session: Any, label: str) -> list[Any]:
    from pkcs11 import Attribute, ObjectClass

    return list(
        session.get_objects(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.LABEL: label,
                Attribute.APPLICATION: APPLICATION,
            }
        )
    )


def read_document(cfg: HsmConfig, label: str) -> bytes | None:
    """The companion document of ``label`` (None: the key has none)."""
    from pkcs11 import Attribute
    from pkcs11.exceptions import PKCS11Error

    from . import admin

    with admin._session(cfg) as (_mod, session):
        try:
            found = _companions(session, label)
            if not found:
                return None
            if len(found) > 1:
                raise HsmFailure(f"{len(found)} custody objects for key {label!r}")
            return bytes(found[0][Attribute.VALUE])
        except PKCS11Error as exc:
            raise HsmFailure(f"reading the custody object failed: {type(exc).__name__}") from None


def list_documents(cfg: HsmConfig) -> dict[str, bytes]:
    """Every companion document on the token, by label (for ``keys rotate-due``/``destroy-due``)."""
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import PKCS11Error

    from . import admin

    found: dict[str, bytes] = {}
    with admin._session(cfg) as (_mod, session):
        try:
            for obj in session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: APPLICATION}
            ):
                found[str(obj[Attribute.LABEL])] = bytes(obj[Attribute.VALUE])
        except PKCS11Error as exc:
            raise HsmFailure(f"listing custody objects failed: {type(exc).__name__}") from None
    return found


def write_document(cfg: HsmConfig, label: str, document: bytes) -> str:
    """Create or replace the companion document of ``label``; returns how ("created",
    "updated" in place, "replaced" by create-new-then-destroy-old)."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"custody document larger than {MAX_DOCUMENT_BYTES} bytes")
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import AttributeReadOnly, PKCS11Error

    from . import admin

    with admin._session(cfg) as (_mod, session):
        try:
            found = _companions(session, label)
            if len(found) == 1:
                try:
                    found[0][Attribute.VALUE] = document
                    return "updated"
                except AttributeReadOnly:
                    pass  # this module cannot modify the value: create the new one first
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.LABEL: label,
                    Attribute.APPLICATION: APPLICATION,
                    Attribute.VALUE: document,
                }
            )
            for old in found:
                old.destroy()
            return "replaced" if found else "created"
        except PKCS11Error as exc:
            raise HsmFailure(f"writing the custody object failed: {type(exc).__name__}") from None


def delete_document(cfg: HsmConfig, label: str) -> bool:
    """Destroy the companion object(s) of ``label``; False when there was none."""
    from pkcs11.exceptions import PKCS11Error

    from . import admin

    with admin._session(cfg) as (_mod, session):
        try:
            found = _companions(session, label)
            for obj in found:
                obj.destroy()
            return bool(found)
        except PKCS11Error as exc:
            raise HsmFailure(f"deleting the custody object failed: {type(exc).__name__}") from None


def create_version_key(
    cfg: HsmConfig, label: str, *, like: str, replicable: bool = False
) -> KeyInfo:
    """Generate a new AES-256 key ``label`` inside the HSM with the usage of key ``like``
    (same template: sensitive, token, private; non-extractable unless ``replicable``, which a
    multi-member backend needs for the wrap-with-trusted replication ceremony)."""
    from . import admin

    model = key_info(cfg, like)
    return admin.create_key(cfg, label, model.usage, replicable=replicable)


def key_info(cfg: HsmConfig, label: str) -> KeyInfo:
    """Usage of the AES-256 key ``label`` (KeyNotFound if there is none)."""
    from . import admin

    with admin._session(cfg) as (mod, session):
        try:
            return keys.resolve(mod.functions, session.handle, label).info
        except CkError as exc:
            raise HsmFailure(str(exc), exc.rv) from None


def destroy_keys(cfg: HsmConfig, labels: Iterable[str]) -> list[str]:
    """Destroy the secret keys with these labels; returns the labels that existed.

    Missing ones are skipped, so an interrupted destruction can simply be run again.
    """
    from . import admin

    destroyed: list[str] = []
    for label in labels:
        try:
            admin.delete_key(cfg, label)
        except KeyNotFound:
            continue
        destroyed.append(label)
    return destroyed


__all__ = [
    "APPLICATION",
    "MAX_DOCUMENT_BYTES",
    "create_version_key",
    "delete_document",
    "destroy_keys",
    "find_companions",
    "key_info",
    "list_documents",
    "read_companion",
    "read_document",
    "write_document",
]
