"""Sizes the HSM layer enforces: the one home of every hsm limit (pure constants, no PKCS#11).

Why one module: the pool validates inputs before a session is taken, ``gcm.py`` builds the GCM
parameters, ``keys.py`` and ``admin.py`` check key lengths and ``types.py`` validates the config;
each used to spell its own copy (and the AAD limit shared a name with the service's *caller* AAD
limit while meaning something larger). Importing this module loads nothing.
"""

from __future__ import annotations

from typing import Final

#: Length of the IV that Encrypt generates (AES-GCM's native 96-bit nonce).
IV_BYTES: Final = 12

#: IV lengths Decrypt accepts: our own 12, and the 16 other XKS proxies produce.
IV_LENGTHS: Final = (IV_BYTES, 16)

#: The authentication tag, split off the ciphertext (128-bit GCM tag).
TAG_BYTES: Final = 16

#: AES-256 key material: the only key the pool resolves and the admin code creates or imports.
AES_KEY_BYTES: Final = 32

#: Longest CKA_LABEL ``admin.create_key`` gives a new key, in UTF-8 bytes.
MAX_KEY_LABEL_BYTES: Final = 128

# The service frames AAD for the HSM as 2-byte length || caller AAD || 1-byte length || metadata;
# each length field bounds the part it prefixes.
_CALLER_AAD_LENGTH_FIELD_BYTES: Final = 2
_METADATA_LENGTH_FIELD_BYTES: Final = 1
_MAX_CALLER_AAD_BYTES: Final = (1 << (8 * _CALLER_AAD_LENGTH_FIELD_BYTES)) - 1  # 65,535
_MAX_METADATA_BYTES: Final = (1 << (8 * _METADATA_LENGTH_FIELD_BYTES)) - 1  # 255

#: Longest *framed* AAD the pool accepts (65,793 bytes): the largest caller AAD plus its framing.
MAX_FRAMED_AAD_BYTES: Final = (
    _CALLER_AAD_LENGTH_FIELD_BYTES
    + _MAX_CALLER_AAD_BYTES
    + _METADATA_LENGTH_FIELD_BYTES
    + _MAX_METADATA_BYTES
)

#: Default ``HsmConfig.max_plaintext_bytes`` (plaintext and ciphertext per call).
DEFAULT_MAX_PLAINTEXT_BYTES: Final = 65536

#: Smallest ``max_plaintext_bytes`` a config may set: KMS sends up to 4,300 bytes of plaintext.
MIN_MAX_PLAINTEXT_BYTES: Final = 4300

__all__ = [
    "AES_KEY_BYTES",
    "DEFAULT_MAX_PLAINTEXT_BYTES",
    "IV_BYTES",
    "IV_LENGTHS",
    "MAX_FRAMED_AAD_BYTES",
    "MAX_KEY_LABEL_BYTES",
    "MIN_MAX_PLAINTEXT_BYTES",
    "TAG_BYTES",
]

#: Budget of one health probe round trip (every pool, the member set and the test double).
PROBE_TIMEOUT_S: Final = 5.0
