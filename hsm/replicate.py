"""Key replication between two members of a backend, and key check values to compare them.

The ceremony (``replicate``), for keys created *replicable* (``hsm.admin.create_key(...,
replicable=True)``: sensitive, ``CKA_EXTRACTABLE`` true but ``CKA_WRAP_WITH_TRUSTED`` true, so
the only way out of the HSM is wrapped under a key the Security Officer marked trusted):

1. the **target** generates an RSA-3072 transport key pair as *session* objects (the private
   half sensitive, non-extractable, gone when the session closes whatever happens);
2. the source's **Security Officer** imports the public half as a token object with
   ``CKA_TRUSTED`` (only an SO may set it: SoftHSMv2 answers ``CKR_ATTRIBUTE_READ_ONLY`` to a
   user, and refuses to wrap a wrap-with-trusted key under an untrusted key,
   ``CKR_KEY_NOT_WRAPPABLE``; both checked in tests/ha);
3. the source wraps each key with ``CKM_RSA_PKCS_OAEP`` (SHA-1/MGF1-SHA-1: the only OAEP
   parameters SoftHSMv2 2.6 implements; OAEP's security does not rest on SHA-1's collision
   resistance), the target unwraps it with the same label, id and usage flags, still sensitive
   and wrap-with-trusted;
4. lifecycle objects (``CKO_DATA`` with ``CKA_APPLICATION`` "xksproxy") are copied by value
   (state, not key material);
5. the trusted public key is destroyed on the source, the pair on the target, also on failure;
   each copied key's check value is compared in both HSMs before the ceremony reports success.

Key check value: the first 3 bytes of AES-ECB of a zero block, computed *inside* each HSM
(``C_Encrypt``, or ``C_Decrypt`` for a decrypt-only key), the usual KCV convention.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import module
from .custody import APPLICATION
from .errors import HsmFailure
from .keys import UNWRAPPED_VALUE_LEN
from .limits import AES_KEY_BYTES
from .types import HsmConfig

TRANSPORT_BITS = 3072
_FLAG_ATTRS = ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE")


@dataclass
class ReplicationReport:
    copied: list[str] = field(default_factory=list)  # labels of keys copied
    present: list[str] = field(default_factory=list)  # already on the target, same check value
    data_copied: list[str] = field(default_factory=list)  # lifecycle objects (by CKA_LABEL)
    problems: list[str] = field(default_factory=list)  # one safe sentence each

    @property
    def ok(self) -> bool:
        return not self.problems


def _p11() -> Any:
    import pkcs11

    return pkcs11


@contextmanager
def user_session(cfg: HsmConfig) -> Iterator[Any]:
    """A read-write user session on ``cfg``'s token (python-pkcs11 object)."""
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.open_session(mod.find_token(cfg.token_label), cfg.pin, rw=True)
        try:
            yield session
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)


def _wanted(label: str, ids: Collection[str] | None) -> bool:
    if ids is None:
        return True
    base = label.split("#v", 1)[0]
    return base in ids


def secret_keys(session: Any, health_label: str) -> dict[str, Any]:
    """label -> AES secret key object (the member's own health key excluded)."""
    p = _p11()
    out = {}
    for obj in session.get_objects({p.Attribute.CLASS: p.ObjectClass.SECRET_KEY}):
        label = obj[p.Attribute.LABEL]
        if label and label != health_label:
            out[label] = obj
    return out


def lifecycle_objects(session: Any) -> dict[str, Any]:
    """CKA_LABEL -> CKO_DATA object with CKA_APPLICATION "xksproxy"."""
    p = _p11()
    out = {}
    for obj in session.get_objects(
        {p.Attribute.CLASS: p.ObjectClass.DATA, p.Attribute.APPLICATION: APPLICATION}
    ):
        out[obj[p.Attribute.LABEL]] = obj
    return out


def check_value(key: Any) -> str | None:
    """KCV (hex, 3 bytes) computed inside the HSM; None if the key may neither way."""
    p = _p11()
    zero = bytes(16)
    try:
        if key[p.Attribute.ENCRYPT]:
            return bytes(key.encrypt(zero, mechanism=p.Mechanism.AES_ECB))[:3].hex()
        if key[p.Attribute.DECRYPT]:
            return bytes(key.decrypt(zero, mechanism=p.Mechanism.AES_ECB))[:3].hex()
    except p.exceptions.PKCS11Error:
        return None
    return None


def check_values(cfg: HsmConfig) -> dict[str, str | None]:
    """label -> KCV for every secret key on ``cfg``'s token, plus ``data:<label>`` -> value
    digest for lifecycle objects (doctor compares members with this)."""
    import hashlib

    p = _p11()
    with user_session(cfg) as session:
        out: dict[str, str | None] = {
            label: check_value(key)
            for label, key in secret_keys(session, cfg.health_key_label).items()
        }
        for label, obj in lifecycle_objects(session).items():
            value = bytes(obj[p.Attribute.VALUE])
            out[f"data:{label}"] = hashlib.sha256(value).hexdigest()[:12]
    return out


def replicate(
    source: HsmConfig,
    target: HsmConfig,
    *,
    source_so_pin: str,
    ids: Collection[str] | None = None,
) -> ReplicationReport:
    """Copy keys (every version) and lifecycle objects named by ``ids`` (None: all) from
    ``source`` to ``target``; see the module docstring for the ceremony."""
    p = _p11()
    A, OC = p.Attribute, p.ObjectClass
    oaep = (p.Mechanism.SHA_1, p.MGF.SHA1, None)
    report = ReplicationReport()
    transport_label = f"xksproxy-transport-{secrets.token_hex(6)}"
    with user_session(target) as tsession:
        pub, priv = tsession.generate_keypair(
            p.KeyType.RSA,
            TRANSPORT_BITS,
            store=False,
            public_template={A.WRAP: True, A.ENCRYPT: False, A.VERIFY: False},
            private_template={
                A.UNWRAP: True,
                A.DECRYPT: False,
                A.SIGN: False,
                A.SENSITIVE: True,
                A.EXTRACTABLE: False,
            },
        )
        try:
            modulus, exponent = pub[A.MODULUS], pub[A.PUBLIC_EXPONENT]
            _import_trusted(source, source_so_pin, transport_label, modulus, exponent)
            try:
                with user_session(source) as ssession:
                    wrapper = ssession.get_key(object_class=OC.PUBLIC_KEY, label=transport_label)
                    existing = secret_keys(tsession, target.health_key_label)
                    for label, key in sorted(
                        secret_keys(ssession, source.health_key_label).items()
                    ):
                        if not _wanted(label, ids):
                            continue
                        kcv = check_value(key)
                        if label in existing:
                            if check_value(existing[label]) == kcv:
                                report.present.append(label)
                            else:
                                report.problems.append(
                                    f"{label}: a different key with this label already exists "
                                    f"on {target.name}; delete one of them first"
                                )
                            continue
                        try:
                            wrapped = wrapper.wrap_key(
                                key, mechanism=p.Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep
                            )
                        except (p.exceptions.KeyNotWrappable, p.exceptions.KeyUnextractable):
                            report.problems.append(
                                f"{label}: not replicable (created non-extractable); create "
                                "keys for a multi-member backend with `xksproxy keys create "
                                "--hsm BACKEND`"
                            )
                            continue
                        if key[A.KEY_TYPE] != p.KeyType.AES or key[A.VALUE_LEN] not in (
                            AES_KEY_BYTES,
                            UNWRAPPED_VALUE_LEN,
                        ):
                            report.problems.append(f"{label}: not an AES-256 key, not copied")
                            continue
                        template = {a: key[getattr(A, a)] for a in _FLAG_ATTRS}
                        copy = priv.unwrap_key(
                            OC.SECRET_KEY,
                            p.KeyType.AES,
                            wrapped,
                            label=label,
                            id=key[A.ID],
                            store=True,
                            mechanism=p.Mechanism.RSA_PKCS_OAEP,
                            mechanism_param=oaep,
                            template={
                                **{getattr(A, a): v for a, v in template.items()},
                                A.TOKEN: True,
                                A.PRIVATE: True,
                                A.SENSITIVE: True,
                                A.EXTRACTABLE: True,
                                A.WRAP_WITH_TRUSTED: True,
                                A.MODIFIABLE: False,
                            },
                        )
                        if check_value(copy) != kcv:
                            copy.destroy()
                            report.problems.append(f"{label}: check values differ after copy")
                            continue
                        report.copied.append(label)
                    _copy_lifecycle(ssession, tsession, ids, report)
                    wrapper.destroy()
            except BaseException:
                _destroy_transport(source, transport_label)
                raise
        finally:
            priv.destroy()
            pub.destroy()
    return report


def _copy_lifecycle(
    ssession: Any, tsession: Any, ids: Collection[str] | None, report: ReplicationReport
) -> None:
    p = _p11()
    A = p.Attribute
    theirs = lifecycle_objects(tsession)
    for label, obj in sorted(lifecycle_objects(ssession).items()):
        if not _wanted(label, ids):
            continue
        value = bytes(obj[A.VALUE])
        old = theirs.get(label)
        if old is not None and bytes(old[A.VALUE]) == value:
            continue
        # New first, then the old one gone (as hsm.custody.write_document does): a reader of the
        # target never finds no object, which would read as "version 0, active".
        tsession.create_object(
            {
                A.CLASS: p.ObjectClass.DATA,
                A.APPLICATION: APPLICATION,
                A.LABEL: label,
                A.VALUE: value,
                A.TOKEN: True,
                A.PRIVATE: True,
            }
        )
        if old is not None:
            old.destroy()
        report.data_copied.append(label)


def _import_trusted(cfg: HsmConfig, so_pin: str, label: str, modulus: Any, exponent: Any) -> None:
    """Create the transport public key on ``cfg``'s token as its Security Officer."""
    p = _p11()
    A = p.Attribute
    mod = module.acquire(cfg.module, cfg.env)
    try:
        token = mod.find_token(cfg.token_label)
        try:
            with token.open(rw=True, so_pin=so_pin) as so:
                so.create_object(
                    {
                        A.CLASS: p.ObjectClass.PUBLIC_KEY,
                        A.KEY_TYPE: p.KeyType.RSA,
                        A.MODULUS: modulus,
                        A.PUBLIC_EXPONENT: exponent,
                        A.WRAP: True,
                        A.ENCRYPT: False,
                        A.TRUSTED: True,
                        A.TOKEN: True,
                        A.PRIVATE: False,
                        A.LABEL: label,
                    }
                )
        except p.exceptions.PinIncorrect:
            raise HsmFailure(f"{cfg.name}: the Security Officer PIN was refused") from None
        except p.exceptions.UserAlreadyLoggedIn:
            raise HsmFailure(
                f"{cfg.name}: a user session is open in this process; the SO step must run first"
            ) from None
    finally:
        module.release(mod)


def _destroy_transport(cfg: HsmConfig, label: str) -> None:
    """Best effort: remove the trusted transport public key after a failed ceremony."""
    p = _p11()
    try:
        with user_session(cfg) as session:
            for obj in session.get_objects(
                {p.Attribute.CLASS: p.ObjectClass.PUBLIC_KEY, p.Attribute.LABEL: label}
            ):
                obj.destroy()
    except Exception:  # noqa: S110 - the original error matters more; doctor reports leftovers
        pass
