"""An anchor for the audit chain inside the HSM: an HMAC key and signed checkpoints.

Why: a chain kept only in files can be rolled back — log *and* head file restored from an older
copy verify as intact. Two token objects anchor it outside the files:

- the **anchor key**: a ``CKK_GENERIC_SECRET`` key (256 bits) for ``CKM_SHA256_HMAC``, generated
  inside the HSM, sensitive, not extractable, not modifiable, usable only to sign/verify;
- **checkpoints**: ``CKO_DATA`` objects with ``CKA_APPLICATION`` = :data:`APPLICATION`, whose
  value is a checkpoint payload (chosen by the caller: sequence number, tip MAC, time) followed
  by its HMAC under the anchor key. The token keeps the newest :data:`KEEP_CHECKPOINTS`.

Only someone logged in to the token (the user PIN) can MAC a payload or replace a checkpoint,
so with the files alone a rollback beyond the newest checkpoint is visible. SoftHSMv2 supports
``CKM_SHA256_HMAC`` with a generic secret key (``tests/hsm/test_hsm_audit_anchor.py``).

One HSM call per checkpoint, never per record: the record MACs stay in software.
Synchronous; used by ``xksproxy audit`` commands (their own process), never by a server worker.
"""

from __future__ import annotations

import hmac
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error

from .admin import _session, sealed_template
from .errors import HsmFailure
from .types import HsmConfig

#: ``CKA_APPLICATION`` of every checkpoint object.
APPLICATION = "xksproxy-audit"
#: Default label of the anchor key.
KEY_LABEL = "xksproxy-audit-anchor"
#: Checkpoints kept on the token (older ones are destroyed when a new one is written).
KEEP_CHECKPOINTS = 4
MAC_BYTES = 32


def _key_template(label: str) -> dict[Attribute, Any]:
    return {
        **sealed_template(label),
        Attribute.SIGN: True,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }


def _find_key(session: Any, label: str) -> Any | None:
    found = list(
        session.get_objects(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.LABEL: label,
            }
        )
    )
    return found[0] if found else None


def ensure_key(cfg: HsmConfig, label: str = KEY_LABEL) -> bool:
    """Generate the anchor key inside the HSM unless it exists; True if it was created."""
    with _session(cfg) as (_mod, session):
        if _find_key(session, label) is not None:
            return False
        try:
            session.generate_key(
                KeyType.GENERIC_SECRET, MAC_BYTES * 8, store=True, template=_key_template(label)
            )
        except PKCS11Error as exc:
            raise HsmFailure(f"audit anchor key generation failed: {type(exc).__name__}") from None
        return True


def key_exists(cfg: HsmConfig, label: str = KEY_LABEL) -> bool:
    with _session(cfg) as (_mod, session):
        return _find_key(session, label) is not None


def _mac(session: Any, label: str, payload: bytes) -> bytes:
    key = _find_key(session, label)
    if key is None:
        raise HsmFailure(
            f"no audit anchor key {label!r} on the token: generate it with "
            "`xksproxy audit checkpoint --create-key`"
        )
    try:
        return bytes(key.sign(payload, mechanism=Mechanism.SHA256_HMAC))
    except PKCS11Error as exc:
        raise HsmFailure(f"HMAC in the HSM failed: {type(exc).__name__}") from None


def hmac_sha256(cfg: HsmConfig, payload: bytes, label: str = KEY_LABEL) -> bytes:
    """HMAC-SHA256 of ``payload`` computed inside the HSM with the anchor key."""
    with _session(cfg) as (_mod, session):
        return _mac(session, label, payload)


def write_checkpoint(cfg: HsmConfig, payload: bytes, label: str = KEY_LABEL) -> None:
    """Store ``payload`` + its HSM MAC as a new checkpoint; keep the newest few."""
    with _session(cfg) as (_mod, session):
        value = payload + _mac(session, label, payload)
        old = _checkpoint_objects(session)
        try:
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.APPLICATION: APPLICATION,
                    Attribute.LABEL: APPLICATION,
                    Attribute.VALUE: value,
                }
            )
        except PKCS11Error as exc:
            raise HsmFailure(f"writing the checkpoint failed: {type(exc).__name__}") from None
        for obj in old[: max(0, len(old) + 1 - KEEP_CHECKPOINTS)]:
            obj.destroy()


def _checkpoint_objects(session: Any) -> list[Any]:
    """Checkpoint objects, oldest first (payloads start with a sortable sequence number)."""
    objs = list(
        session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: APPLICATION})
    )
    return sorted(objs, key=lambda o: bytes(o[Attribute.VALUE]))


def read_checkpoints(cfg: HsmConfig, label: str = KEY_LABEL) -> list[tuple[bytes, bool]]:
    """Every checkpoint payload with whether its HSM MAC is valid, oldest first."""
    out: list[tuple[bytes, bool]] = []
    with _session(cfg) as (_mod, session):
        for obj in _checkpoint_objects(session):
            value = bytes(obj[Attribute.VALUE])
            payload, mac = value[:-MAC_BYTES], value[-MAC_BYTES:]
            good = len(value) > MAC_BYTES and hmac.compare_digest(
                _mac(session, label, payload), mac
            )
            out.append((payload, good))
    return out
