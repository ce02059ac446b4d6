"""HSM AAD framing, our ``ciphertextMetadata`` format, and the CDIV.

HSM AAD (spec): ``len(aad) as 2-byte big-endian || aad || len(meta) as 1 byte || meta``, lengths
0 when absent.  The explicit lengths stop a caller from moving bytes between AAD and metadata.

``ciphertextMetadata`` (ours to define, at most 20 bytes, covered by the GCM tag through the AAD):

==============  ==========================================================================
byte 0          format.  ``0x01`` = AAD framed as above (the only format so far).
bytes 1..19     the key version that encrypted, unsigned big-endian, *minimal length*: 1 byte
                for 0..255 (``01 00`` = version 0, what this proxy wrote before versions
                existed), 2 bytes for 256..65535, ... up to 19 bytes (versions < 2**152).  A
                leading ``0x00`` byte in a version field longer than one byte is not minimal
                and is refused, so each version has exactly one encoding.
==============  ==========================================================================

So the metadata is 2..20 bytes.  The key resolver turns the version into the HSM object
(:mod:`xksproxy.keys.resolver`); a version the key does not have is InvalidCiphertextException
without an HSM call.

Encrypt always returns format 1 with the version it used.  Decrypt accepts: no metadata at all
(ciphertext from a proxy that returned none, framed with a zero metadata length; version 0) and
every format listed in ``_KNOWN_FORMATS``; anything else is InvalidCiphertextException without
touching the HSM.  New formats must be *added* there so old ciphertext stays decryptable.  A
changed metadata either fails this parse, names a version the key lacks, or fails the GCM tag check
in the HSM: InvalidCiphertextException in every case.

CDIV: ``base64(SHA-256(aad || ciphertextMetadata || iv || ciphertext || tag))`` over the raw
(request) AAD, absent fields as empty.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xksproxy.xks.errors import InvalidCiphertextException
from xksproxy.xks.protocol import MAX_AAD_BYTES, MAX_CIPHERTEXT_METADATA_BYTES, b64encode

FORMAT_V1 = 0x01
KEY_VERSION_0 = 0x00
CURRENT_METADATA = bytes((FORMAT_V1, KEY_VERSION_0))
"""The metadata of version 0 (``01 00``)."""
MAX_METADATA_BYTES = MAX_CIPHERTEXT_METADATA_BYTES
"""The XKS limit on ``ciphertextMetadata``."""
MAX_KEY_VERSION = (1 << (8 * (MAX_METADATA_BYTES - 1))) - 1
"""The largest version the format can name (19 bytes)."""

_KNOWN_FORMATS: dict[int, tuple[int, int]] = {FORMAT_V1: (2, MAX_METADATA_BYTES)}
"""format byte -> (shortest, longest) metadata length."""


@dataclass(frozen=True, slots=True)
class MetadataInfo:
    format: int
    key_version: int


def metadata_for(version: int) -> bytes:
    """The ``ciphertextMetadata`` Encrypt returns for key ``version`` (format 1)."""
    if not 0 <= version <= MAX_KEY_VERSION:
        raise ValueError(f"key version {version} does not fit the metadata")
    size = max(1, (version.bit_length() + 7) // 8)
    return bytes((FORMAT_V1,)) + version.to_bytes(size, "big")


def _version_of(metadata: bytes) -> int | None:
    """The version field of well-formed format-1 metadata, else None."""
    bounds = _KNOWN_FORMATS.get(metadata[0])
    if bounds is None or not bounds[0] <= len(metadata) <= bounds[1]:
        return None
    field = metadata[1:]
    if len(field) > 1 and field[0] == 0:
        return None  # not minimal: another encoding of a shorter version
    return int.from_bytes(field, "big")


def hsm_aad(aad: bytes | None, metadata: bytes | None) -> bytes:
    """The AAD given to the HSM for request AAD ``aad`` and ``ciphertextMetadata`` ``metadata``."""
    aad = aad or b""
    metadata = metadata or b""
    if len(aad) > MAX_AAD_BYTES or len(metadata) > 0xFF:  # the 2- and 1-byte length fields
        raise ValueError("AAD or metadata too long for the framing")
    # One join, one copy of the (up to 64 KiB) AAD; chained ``+`` would copy it three times.
    return b"".join((len(aad).to_bytes(2, "big"), aad, bytes((len(metadata),)), metadata))


def parse_metadata(metadata: bytes | None) -> MetadataInfo | None:
    """Check a decrypt request's ``ciphertextMetadata``; ``None`` when it was absent."""
    if metadata is None:
        return None
    if not metadata:
        raise InvalidCiphertextException("ciphertextMetadata is empty")
    version = _version_of(metadata)
    if version is None:
        raise InvalidCiphertextException("ciphertextMetadata was not produced by this proxy")
    return MetadataInfo(format=metadata[0], key_version=version)


def peek_key_version(metadata: bytes | None) -> int | None:
    """The key version a Decrypt's ``ciphertextMetadata`` names; ``None`` if absent or not ours.

    Never raises: the key resolver runs before the metadata is checked (an unknown key is 404
    whatever its metadata), so it needs the version without the check; :func:`parse_metadata`
    then refuses metadata that is not ours.
    """
    if not metadata:
        return None
    return _version_of(metadata)


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
