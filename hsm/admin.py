"""Key administration (synchronous; used by the CLI, ``xksproxy init`` and tests).

Keys are generated *inside* the HSM as token objects that are sensitive and not extractable, so
their material never exists outside it. ``import_test_key`` is the one exception and exists only
so tests can build reference ciphertext (e.g. 16-byte IVs) with the ``cryptography`` package.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import PKCS11Error

from . import keys, module
from .classify import CkError
from .errors import HsmFailure, KeyNotFound
from .limits import AES_KEY_BYTES, MAX_KEY_LABEL_BYTES
from .types import USAGE_NAMES, USAGE_PRESETS, HsmConfig, KeyInfo

_USAGE_ATTRIBUTES = {
    "ENCRYPT": Attribute.ENCRYPT,
    "DECRYPT": Attribute.DECRYPT,
    "WRAP": Attribute.WRAP,
    "UNWRAP": Attribute.UNWRAP,
    "SIGN": Attribute.SIGN,
    "VERIFY": Attribute.VERIFY,
    "DERIVE": Attribute.DERIVE,
}


_ALIASES = {
    "decrypt-encrypt": "encrypt-decrypt",
    "both": "encrypt-decrypt",
    "encrypt-only": "encrypt",
    "decrypt-only": "decrypt",
    "": "none",
}


def _usage(usage: str | Collection[str]) -> frozenset[str]:
    if isinstance(usage, str):
        name = "-".join(
            usage.lower()
            .replace("+", " ")
            .replace("_", " ")
            .replace(",", " ")
            .replace("-", " ")
            .split()
        )
        name = _ALIASES.get(name, name)
        try:
            return USAGE_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"usage must be one of {', '.join(USAGE_PRESETS)}, not {usage!r}"
            ) from None
    wanted = frozenset(u.upper() for u in usage)
    unknown = wanted - set(USAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown key usage {sorted(unknown)}")
    return wanted


@contextmanager
def _session(cfg: HsmConfig) -> Iterator[tuple[module.Module, Any]]:
    """A read-write, logged-in session on the token, sharing the process's module instance."""
    mod = module.acquire(cfg.module, cfg.env)
    try:
        token = mod.find_token(cfg.token_label)
        session = mod.open_session(token, cfg.pin, rw=True)
        try:
            yield mod, session
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)


def sealed_template(label: str) -> dict[Attribute, Any]:
    """What every key we generate shares: a private token object, sensitive, non-extractable,
    not modifiable, with a random CKA_ID. Callers add the usage attributes."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.LABEL: label,
        Attribute.ID: os.urandom(16),
    }


def _template(label: str, usage: frozenset[str], replicable: bool = False) -> dict[Attribute, Any]:
    template = sealed_template(label)
    if replicable:  # leaves the HSM only wrapped under an SO-trusted key (hsm/replicate.py)
        template[Attribute.EXTRACTABLE] = True
        template[Attribute.WRAP_WITH_TRUSTED] = True
    for name, attr in _USAGE_ATTRIBUTES.items():
        template[attr] = name in usage
    return template


def _exists(mod: module.Module, session: Any, label: str) -> bool:
    try:
        return bool(keys.find_handles(mod.functions, session.handle, label))
    except CkError as exc:
        raise HsmFailure(str(exc), exc.rv) from None


def create_key(
    cfg: HsmConfig,
    label: str,
    usage: str | Collection[str] = "encrypt-decrypt",
    *,
    replicable: bool = False,
) -> KeyInfo:
    """Generate an AES-256 key inside the HSM. ``usage``: a preset name (encrypt-decrypt,
    encrypt, decrypt, none) or a set of usage names. Refuses a label that is already taken.
    ``replicable``: sensitive but wrappable under a trusted key only (CKA_WRAP_WITH_TRUSTED),
    for the members of a multi-member backend (:mod:`hsm.replicate`)."""
    wanted = _usage(usage)
    if not label or len(label.encode()) > MAX_KEY_LABEL_BYTES:
        raise ValueError(f"key label must be 1..{MAX_KEY_LABEL_BYTES} bytes")
    with _session(cfg) as (mod, session):
        if _exists(mod, session, label):
            raise ValueError(f"a key labelled {label!r} already exists")
        try:
            session.generate_key(
                KeyType.AES,
                AES_KEY_BYTES * 8,
                store=True,
                template=_template(label, wanted, replicable),
            )
        except PKCS11Error as exc:
            raise HsmFailure(f"key generation failed: {type(exc).__name__}") from None
        return KeyInfo(label, wanted)


def import_test_key(
    cfg: HsmConfig, label: str, material: bytes, usage: str | Collection[str] = "encrypt-decrypt"
) -> KeyInfo:
    """TESTS ONLY: store known AES-256 key material so reference ciphertext can be computed
    outside the HSM. Never use for real keys (the material has existed in process memory)."""
    if len(material) != AES_KEY_BYTES:
        raise ValueError(f"AES-256 key material must be {AES_KEY_BYTES} bytes")
    wanted = _usage(usage)
    with _session(cfg) as (mod, session):
        if _exists(mod, session, label):
            raise ValueError(f"a key labelled {label!r} already exists")
        template = _template(label, wanted)
        template.update(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: material,
            }
        )
        try:
            key = session.create_object(template)
            try:
                key[Attribute.VALUE_LEN]
            except PKCS11Error:
                # openCryptoki 3.8 does not derive CKA_VALUE_LEN for a created AES key (it is
                # then "not a 32-byte AES key" to hsm.keys) but accepts it in the template, which
                # the spec says to leave out and SoftHSMv2 derives: see hsm/README.md.
                key.destroy()
                session.create_object({**template, Attribute.VALUE_LEN: AES_KEY_BYTES})
        except PKCS11Error as exc:
            raise HsmFailure(f"key import failed: {type(exc).__name__}") from None
        return KeyInfo(label, wanted)


def list_keys(cfg: HsmConfig) -> list[KeyInfo]:
    """Every 32-byte AES secret key on the token with its usage, sorted by label."""
    result: list[KeyInfo] = []
    with _session(cfg) as (mod, session):
        labels = set()
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            try:
                labels.add(obj[Attribute.LABEL])
            except PKCS11Error:
                continue
        for label in sorted(labels):
            try:
                result.append(keys.resolve(mod.functions, session.handle, label).info)
            except KeyNotFound:
                continue  # not an AES-256 key, or a duplicated label
            except CkError as exc:
                raise HsmFailure(str(exc), exc.rv) from None
    return result


def delete_key(cfg: HsmConfig, label: str) -> None:
    """Destroy the secret key(s) labelled ``label``; KeyNotFound if there is none."""
    with _session(cfg) as (mod, session):
        try:
            handles = keys.find_handles(mod.functions, session.handle, label)
        except CkError as exc:
            raise HsmFailure(str(exc), exc.rv) from None
        if not handles:
            raise KeyNotFound(f"no secret key labelled {label!r} on the token")
        for obj in session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        ):
            try:
                obj.destroy()
            except PKCS11Error as exc:
                raise HsmFailure(f"deleting {label!r} failed: {type(exc).__name__}") from None


def ensure_health_key(cfg: HsmConfig) -> KeyInfo:
    """Create the dedicated health test key (encrypt+decrypt) unless it already exists."""
    label = cfg.health_key_label
    with _session(cfg) as (mod, session):
        if _exists(mod, session, label):
            try:
                return keys.resolve(mod.functions, session.handle, label).info
            except CkError as exc:
                raise HsmFailure(str(exc), exc.rv) from None
    return create_key(cfg, label, "encrypt-decrypt")


__all__ = [
    "USAGE_PRESETS",
    "create_key",
    "delete_key",
    "ensure_health_key",
    "import_test_key",
    "list_keys",
]
