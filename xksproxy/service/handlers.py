"""The four XKS operations on top of an ``hsm.HsmPool``.

Each handler receives an already authenticated, validated and authorized request and returns
the response document.  HSM domain errors propagate and are mapped in ``xksproxy.xks.errors``.

Key usage rules (spec "Keys that may do only part of the work"):
- Encrypt needs ENCRYPT (the HSM refuses otherwise -> InvalidKeyUsageException);
- Encrypt *with* a CDIV also needs DECRYPT, because the result is verified by one HSM decrypt
  before it is returned; an encrypt-only key gets InvalidKeyUsageException up front;
- Decrypt needs DECRYPT.
"""

from __future__ import annotations

import hmac
from typing import Any

from xksproxy.keys.keystores import KeyStore
from xksproxy.xks.errors import (
    InternalException,
    InvalidKeyUsageException,
    InvalidStateException,
    to_xks_error,
)
from xksproxy.xks.framing import CURRENT_METADATA, cdiv, hsm_aad, parse_metadata
from xksproxy.xks.protocol import DecryptRequest, EncryptRequest, b64encode, ordered_key_usage

_CURRENT_METADATA_B64 = b64encode(CURRENT_METADATA)  # the same for every Encrypt answer


async def get_key_metadata(
    pool: Any, store: KeyStore, key_id: str, *, deadline: float
) -> dict[str, Any]:
    label = store.label_for(key_id)
    info = await pool.key_info(label, deadline=deadline)
    return {
        "keySpec": "AES_256",
        "keyUsage": ordered_key_usage(info.usage),
        "keyStatus": "DISABLED" if store.is_disabled(key_id) else "ENABLED",
    }


def _check_key_enabled(store: KeyStore, key_id: str) -> None:
    if store.is_disabled(key_id):
        raise InvalidStateException(f"external key {key_id} is disabled")


async def encrypt(
    pool: Any, store: KeyStore, key_id: str, req: EncryptRequest, *, deadline: float
) -> dict[str, Any]:
    label = store.label_for(key_id)
    _check_key_enabled(store, key_id)
    if req.want_cdiv:
        info = await pool.key_info(label, deadline=deadline)
        if "ENCRYPT" not in info.usage or "DECRYPT" not in info.usage:
            raise InvalidKeyUsageException(
                "a ciphertext integrity value needs a key allowed to encrypt and decrypt"
            )
    meta = CURRENT_METADATA
    framed = hsm_aad(req.aad, meta)
    result = await pool.encrypt(label, req.plaintext, framed, deadline=deadline)
    body: dict[str, Any] = {
        "authenticationTag": b64encode(result.tag),
        "ciphertext": b64encode(result.ciphertext),
        "initializationVector": b64encode(result.iv),
        "ciphertextMetadata": _CURRENT_METADATA_B64,
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
        except Exception as exc:
            # A 4xx from the verifying decrypt is our fault, not the caller's: report 500.
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
    pool: Any, store: KeyStore, key_id: str, req: DecryptRequest, *, deadline: float
) -> dict[str, Any]:
    label = store.label_for(key_id)
    _check_key_enabled(store, key_id)
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
