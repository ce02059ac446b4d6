"""The three key operations on top of a :class:`hsm.interface.CryptoPool`.

Each handler receives an already authenticated, validated and authorized request, the
:class:`~xksproxy.keys.resolver.KeyRef` the resolver made of the URI's key id (a disabled key
never reaches Encrypt/Decrypt), and the pool of the key's backend; it returns the response
document.  Handlers know no labels beyond ``key.label`` and no key store rules.  HSM domain
errors propagate and are mapped in ``xksproxy.xks.errors``.  GetHealthStatus needs no key and no
pool: it is answered from :class:`xksproxy.keys.health.HealthMonitor` (see
:mod:`xksproxy.service.dispatch`).

Key versions: Encrypt writes ``key.version`` into ``ciphertextMetadata``
(:func:`xksproxy.xks.framing.metadata_for`); Decrypt gets the version its metadata names already
resolved into ``key.label``.  A deactivated or compromised key reports ``keyUsage`` DECRYPT only.

Key usage rules (spec "Keys that may do only part of the work"):
- Encrypt needs ENCRYPT (the HSM refuses otherwise -> InvalidKeyUsageException);
- Encrypt *with* a CDIV also needs DECRYPT, because the result is verified by one HSM decrypt
  before it is returned; for an encrypt-only key the HSM refuses that decrypt, and the answer
  is InvalidKeyUsageException (its ciphertext is never returned);
- Decrypt needs DECRYPT.
"""

from __future__ import annotations

import hmac
from typing import Any

from hsm.errors import KeyUsageNotPermitted
from hsm.interface import CryptoPool
from xksproxy.keys.resolver import KeyRef
from xksproxy.xks.errors import InternalException, InvalidKeyUsageException, to_xks_error
from xksproxy.xks.framing import cdiv, hsm_aad, metadata_for, parse_metadata
from xksproxy.xks.protocol import (
    DecryptRequest,
    EncryptRequest,
    MetadataRequest,
    b64encode,
    ordered_key_usage,
)

_METADATA_B64 = [b64encode(metadata_for(v)) for v in range(256)]  # versions 0..255, built once


def _metadata_b64(version: int, meta: bytes) -> str:
    return _METADATA_B64[version] if version < 256 else b64encode(meta)


async def get_key_metadata(
    pool: CryptoPool, key: KeyRef, req: MetadataRequest, *, deadline: float
) -> dict[str, Any]:
    info = await pool.key_info(key.label, deadline=deadline)
    usage = info.usage & {"DECRYPT"} if key.decrypt_only else info.usage
    return {
        "keySpec": "AES_256",
        "keyUsage": ordered_key_usage(usage),
        "keyStatus": key.status,
    }


async def encrypt(
    pool: CryptoPool, key: KeyRef, req: EncryptRequest, *, deadline: float
) -> dict[str, Any]:
    label = key.label
    meta = metadata_for(key.version)
    framed = hsm_aad(req.aad, meta)
    result = await pool.encrypt(label, req.plaintext, framed, deadline=deadline)
    body: dict[str, Any] = {
        "authenticationTag": b64encode(result.tag),
        "ciphertext": b64encode(result.ciphertext),
        "initializationVector": b64encode(result.iv),
        "ciphertextMetadata": _metadata_b64(key.version, meta),
    }
    if req.want_cdiv:
        # Spec order: encrypt, compute the CDIV, then prove the output decrypts before returning.
        body["ciphertextDataIntegrityValue"] = cdiv(
            aad=req.aad, metadata=meta, iv=result.iv, ciphertext=result.ciphertext, tag=result.tag
        )
        try:
            check = await pool.decrypt(
                label,
                iv=result.iv,
                ciphertext=result.ciphertext,
                tag=result.tag,
                aad=framed,
                deadline=deadline,
            )
        except KeyUsageNotPermitted as exc:
            # An encrypt-only key: the spec's round trip is not allowed, so no CDIV can be given.
            # (Checked here, where the HSM says so, rather than with a key_info call up front
            # on every Encrypt that asks for a CDIV -- which KMS does on every Encrypt.)
            raise InvalidKeyUsageException(
                "a ciphertext integrity value needs a key allowed to encrypt and decrypt"
            ) from exc
        except Exception as exc:
            # Any other 4xx from the verifying decrypt is our fault, not the caller's: report 500.
            # (Admission never refuses this second call of an admitted request: admission.py.)
            mapped = to_xks_error(exc)
            if mapped is None or mapped.status < 500:
                raise InternalException(
                    "the HSM round-trip check of the ciphertext failed"
                ) from exc
            raise mapped from exc
        if not hmac.compare_digest(check, req.plaintext):
            raise InternalException("the HSM round-trip check of the ciphertext failed")
    return body


async def decrypt(
    pool: CryptoPool, key: KeyRef, req: DecryptRequest, *, deadline: float
) -> dict[str, Any]:
    label = key.label
    parse_metadata(req.ciphertext_metadata)  # unknown format -> InvalidCiphertext, no HSM call
    plaintext = await pool.decrypt(
        label,
        iv=req.iv,
        ciphertext=req.ciphertext,
        tag=req.tag,
        aad=hsm_aad(req.aad, req.ciphertext_metadata),
        deadline=deadline,
    )
    return {"plaintext": b64encode(plaintext)}
