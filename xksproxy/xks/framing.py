"""HSM AAD framing, our ``ciphertextMetadata`` format, and the CDIV.

HSM AAD (spec): ``len(aad) as 2-byte big-endian || aad || len(meta) as 1 byte || meta``, lengths
0 when absent.  The explicit lengths stop a caller from moving bytes between AAD and metadata.

``ciphertextMetadata`` (ours to define, at most 20 bytes, covered by the GCM tag through the AAD):

=========  ==============================================================================
byte 0     format.  ``0x01`` = AAD framed as above (the only format so far).
byte 1     key version, ``0x00`` today (room for key rotation: a later version may select
           another HSM object for the same external key id).
=========  ==============================================================================

Encrypt always returns format 1.  Decrypt accepts: no metadata at all (ciphertext from a proxy
that returned none, framed with a zero metadata length) and every format listed in
``_KNOWN_FORMATS``; anything else is InvalidCiphertextException without touching the HSM.  New
formats must be *added* there so old ciphertext stays decryptable.  A changed metadata either fails
this parse or fails the GCM tag check in the HSM, both InvalidCiphertextException.

CDIV: ``base64(SHA-256(aad || ciphertextMetadata || iv || ciphertext || tag))`` over the raw
(request) AAD, absent fields as empty.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xksproxy.xks.errors import InvalidCiphertextException
from xksproxy.xks.protocol import b64encode

FORMAT_V1 = 0x01
KEY_VERSION_0 = 0x00
CURRENT_METADATA = bytes((FORMAT_V1, KEY_VERSION_0))

_KNOWN_FORMATS: dict[int, int] = {FORMAT_V1: 2}  # format byte -> exact metadata length


@dataclass(frozen=True, slots=True)
class MetadataInfo:
    format: int
    key_version: int


def hsm_aad(aad: bytes | None, metadata: bytes | None) -> bytes:
    """The AAD given to the HSM for request AAD ``aad`` and ``ciphertextMetadata`` ``metadata``."""
    aad = aad or b""
    metadata = metadata or b""
    if len(aad) > 0xFFFF or len(metadata) > 0xFF:
        raise ValueError("AAD or metadata too long for the framing")
    # One join, one copy of the (up to 64 KiB) AAD; chained ``+`` would copy it three times.
    return b"".join((len(aad).to_bytes(2, "big"), aad, bytes((len(metadata),)), metadata))


def parse_metadata(metadata: bytes | None) -> MetadataInfo | None:
    """Check a decrypt request's ``ciphertextMetadata``; ``None`` when it was absent."""
    if metadata is None:
        return None
    if not metadata:
        raise InvalidCiphertextException("ciphertextMetadata is empty")
    expected_len = _KNOWN_FORMATS.get(metadata[0])
    if expected_len is None or len(metadata) != expected_len:
        raise InvalidCiphertextException("ciphertextMetadata was not produced by this proxy")
    return MetadataInfo(format=metadata[0], key_version=metadata[1])


def peek_key_version(metadata: bytes | None) -> int | None:
    """The key version a Decrypt's ``ciphertextMetadata`` names; ``None`` if absent or not ours.

    Never raises: the key resolver runs before the metadata is checked (an unknown key is 404
    whatever its metadata), so it needs the version without the check; :func:`parse_metadata`
    then refuses metadata that is not ours.
    """
    if metadata is None or not metadata or _KNOWN_FORMATS.get(metadata[0]) != len(metadata):
        return None
    return metadata[1]


def cdiv(
    *, aad: bytes | None, metadata: bytes | None, iv: bytes, ciphertext: bytes, tag: bytes
) -> str:
    """The ciphertext data integrity value, base64-encoded."""
    h = hashlib.sha256()
    if aad:
        h.update(aad)
    if metadata:
        h.update(metadata)
    h.update(iv)
    h.update(ciphertext)
    h.update(tag)
    return b64encode(h.digest())
