"""KMS-side cryptography: the local AES-256-GCM layer, the AAD sent to proxies, ciphertext blobs.

KMS encrypts data for a key in an external key store twice: first under KMS-side key material
that belongs to the KMS key (here: 32 random bytes kept in the emulator's SQLite state), then the
result once more through the proxy, inside the HSM. Neither party alone can decrypt. We do the
same, so a proxy that loses a key, or an emulator that loses its state, both make old ciphertext
undecryptable, exactly as in production.

Ciphertext blob layout (version 1; integers big-endian; this is ours, like KMS's is its own)::

    offset  size  field
    0       1     format: 0x01 = external key store (two layers), 0x02 = AWS_KMS key (one layer)
    1       1     n = length of the KMS key id
    2       n     KMS key id (ASCII, the UUID of the key)
    2+n     12    local IV (AES-256-GCM under the KMS-side key material)
    -- format 0x01 only --
            1     m = length of the proxy's initializationVector (12 or 16)
            m     proxy IV
            16    proxy authenticationTag
            1     k = length of the proxy's ciphertextMetadata (0..20)
            k     proxy ciphertextMetadata
    -- both --
            rest  ciphertext: format 0x01: the proxy's ciphertext of (local ciphertext || local
                  tag); format 0x02: local ciphertext || local tag

What binds what:

* The local layer's AAD is ``"kmsemu/local/v1" || format || key id || SHA-256(context)``, so a
  blob decrypts only under the key whose id it names, with the same encryption context.
* The proxy's AAD (:func:`xks_aad`) is a 32-byte SHA-256 over the KMS key ARN and the encryption
  context: the proxy binds its ciphertext, IV, tag and ciphertextMetadata to both (the HSM AAD
  includes the metadata), so editing the key id or any proxy field in a blob fails at the proxy
  with InvalidCiphertextException before the local layer is even tried.
* A blob presented with another KeyId is refused (IncorrectKeyException) by the operations layer
  before any decryption, because the blob names its key.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_XKS = 0x01
FORMAT_LOCAL = 0x02
LOCAL_IV_BYTES = 12
TAG_BYTES = 16
MAX_METADATA_BYTES = 20
MAX_BLOB_BYTES = 6144  # KMS's CiphertextBlob limit


class BlobError(ValueError):
    """A ciphertext blob that is not ours or is damaged; KMS calls that InvalidCiphertext."""


def new_key_material() -> bytes:
    """Fresh KMS-side key material for one KMS key (256 bits from the OS CSPRNG)."""
    return os.urandom(32)


def context_digest(context: Mapping[str, str]) -> bytes:
    """SHA-256 of a canonical encoding of an encryption context (order-independent).

    Each pair is encoded with 4-byte length prefixes so that no two different contexts can
    produce the same bytes (``{"a": "bc"}`` vs ``{"ab": "c"}``).
    """
    h = hashlib.sha256(b"kmsemu/context/v1")
    for key in sorted(context):
        for part in (key.encode(), context[key].encode()):
            h.update(struct.pack(">I", len(part)))
            h.update(part)
    return h.digest()


def xks_aad(key_arn: str, context: Mapping[str, str]) -> bytes:
    """The additionalAuthenticatedData sent to the proxy: 32 bytes, whatever the context size.

    A fixed size keeps us far inside every proxy's AAD limit while binding the proxy's layer
    to the KMS key and the encryption context.
    """
    arn = key_arn.encode()
    return hashlib.sha256(
        b"kmsemu/xks-aad/v1" + struct.pack(">I", len(arn)) + arn + context_digest(context)
    ).digest()


def _local_aad(fmt: int, key_id: str, context: Mapping[str, str]) -> bytes:
    return b"kmsemu/local/v1" + bytes([fmt]) + key_id.encode() + context_digest(context)


def local_encrypt(
    material: bytes, fmt: int, key_id: str, plaintext: bytes, context: Mapping[str, str]
) -> tuple[bytes, bytes]:
    """The local layer: ``(iv, ciphertext || tag)`` under the KMS key's own material."""
    iv = os.urandom(LOCAL_IV_BYTES)
    return iv, AESGCM(material).encrypt(iv, plaintext, _local_aad(fmt, key_id, context))


def local_decrypt(
    material: bytes, fmt: int, key_id: str, iv: bytes, sealed: bytes, context: Mapping[str, str]
) -> bytes:
    """Undo :func:`local_encrypt`; :class:`BlobError` when anything does not match."""
    try:
        return AESGCM(material).decrypt(iv, sealed, _local_aad(fmt, key_id, context))
    except (InvalidTag, ValueError):
        raise BlobError("local layer does not authenticate") from None


def cdiv(aad: bytes, metadata: bytes, iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    """The ciphertextDataIntegrityValue a proxy must return (raw SHA-256, before base64)."""
    return hashlib.sha256(aad + metadata + iv + ciphertext + tag).digest()


@dataclass(frozen=True)
class Blob:
    """A parsed ciphertext blob (see the module docstring for the byte layout)."""

    fmt: int
    key_id: str
    local_iv: bytes
    ciphertext: bytes
    xks_iv: bytes = b""
    xks_tag: bytes = b""
    xks_metadata: bytes = b""

    def pack(self) -> bytes:
        """The blob's bytes; refuses field sizes the layout cannot carry."""
        kid = self.key_id.encode("ascii")
        if not 0 < len(kid) < 256 or len(self.local_iv) != LOCAL_IV_BYTES:
            raise ValueError("bad key id or local IV")
        out = bytearray([self.fmt, len(kid)]) + kid + self.local_iv
        if self.fmt == FORMAT_XKS:
            if len(self.xks_iv) not in (12, 16) or len(self.xks_tag) != TAG_BYTES:
                raise ValueError("proxy IV must be 12 or 16 bytes and its tag 16")
            if len(self.xks_metadata) > MAX_METADATA_BYTES:
                raise ValueError("proxy ciphertextMetadata longer than 20 bytes")
            out += bytes([len(self.xks_iv)]) + self.xks_iv + self.xks_tag
            out += bytes([len(self.xks_metadata)]) + self.xks_metadata
        elif self.fmt != FORMAT_LOCAL:
            raise ValueError(f"unknown blob format {self.fmt}")
        out += self.ciphertext
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes) -> Blob:
        """Parse a blob; :class:`BlobError` for anything that is not a well-formed blob."""
        try:
            return cls._unpack(memoryview(data))
        except (IndexError, UnicodeDecodeError):
            raise BlobError("ciphertext blob is truncated or malformed") from None

    @classmethod
    def _unpack(cls, v: memoryview) -> Blob:
        fmt, n = v[0], v[1]
        if fmt not in (FORMAT_XKS, FORMAT_LOCAL) or n == 0:
            raise BlobError("not a ciphertext blob of this emulator")
        pos = 2
        key_id = bytes(v[pos : pos + n]).decode("ascii")
        if len(key_id) != n:
            raise IndexError
        pos += n
        local_iv = bytes(v[pos : pos + LOCAL_IV_BYTES])
        pos += LOCAL_IV_BYTES
        xks_iv = xks_tag = meta = b""
        if fmt == FORMAT_XKS:
            m = v[pos]
            if m not in (12, 16):
                raise BlobError("ciphertext blob has a bad proxy IV length")
            xks_iv = bytes(v[pos + 1 : pos + 1 + m])
            pos += 1 + m
            xks_tag = bytes(v[pos : pos + TAG_BYTES])
            pos += TAG_BYTES
            k = v[pos]
            if k > MAX_METADATA_BYTES:
                raise BlobError("ciphertext blob has a bad proxy metadata length")
            meta = bytes(v[pos + 1 : pos + 1 + k])
            pos += 1 + k
            if len(xks_iv) != m or len(xks_tag) != TAG_BYTES or len(meta) != k:
                raise IndexError
        body = bytes(v[pos:])
        # Either way the body holds at least the local layer's tag and one byte of data.
        if len(local_iv) != LOCAL_IV_BYTES or len(body) < TAG_BYTES + 1:
            raise IndexError
        return cls(fmt, key_id, local_iv, body, xks_iv, xks_tag, meta)
