"""XKS request parsing and validation: JSON bytes -> typed, checked requests.

Rules (public XKS API spec v1.0.3, summarised in docs/xks-contract.md; the spec decides):

- The body must be a JSON object with a ``requestMetadata`` object, else 400 ValidationException
  (also for GetHealthStatus: the reference implementation and the public test client do this).
- Required metadata: ``kmsRequestId`` and ``kmsOperation`` everywhere; ``awsPrincipalArn`` for
  metadata/encrypt/decrypt; ``kmsKeyArn`` for encrypt/decrypt.  Every present metadata field must
  be a string.  Values are never shape-checked (``kmsOperation`` is open-ended, ``kmsRequestId``
  is opaque), except that ``awsPrincipalArn`` and ``kmsKeyArn`` longer than 2048 characters (the
  spec's ARN maximum) are a 400 ValidationException, which also bounds what reaches the logs.
  Unknown fields, top-level or in the metadata, are ignored: KMS may add some.
- Binary fields are *strict standard* base64: alphabet ``A-Za-z0-9+/``, correct ``=`` padding,
  no whitespace or URL-safe characters -> otherwise 400 ValidationException naming the field.
- ``encryptionAlgorithm`` other than ``AES_GCM`` and ``ciphertextDataIntegrityValueAlgorithm``
  other than ``SHA_256`` -> 501 UnsupportedOperationException (the spec's "cryptographic
  operation is not implemented"); a non-string value is a 400 ValidationException.
- Sizes: plaintext/ciphertext above the token's ``max_plaintext_bytes`` (>= 4300) and AAD above
  65535 bytes (the 2-byte length in the HSM AAD framing; the spec minimum is 8192) -> 501
  UnsupportedOperationException, as the spec prescribes for "a parameter value exceeded the
  maximum size ... supported by a specific implementation beyond the minimum size required".
- IV must decode to 12 or 16 bytes, the tag to 16 bytes and ``ciphertextMetadata`` to at most 20
  bytes, else 400 ValidationException (malformed input, not a failed authentication).

Error messages name the field and the rule, never the value.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from hsm import limits
from xksproxy.xks import operations
from xksproxy.xks.errors import UnsupportedOperationException, ValidationException

MAX_AAD_BYTES = 65535
MAX_ARN_CHARS = 2048
_ARN_FIELDS = ("awsPrincipalArn", "kmsKeyArn")
MAX_CIPHERTEXT_METADATA_BYTES = 20

# URI names of the operations (their one home is xksproxy.xks.operations).
OP_HEALTH = operations.HEALTH.name
OP_METADATA = operations.METADATA.name
OP_ENCRYPT = operations.ENCRYPT.name
OP_DECRYPT = operations.DECRYPT.name

_REQUIRED_METADATA: dict[str, tuple[str, ...]] = {
    OP_HEALTH: ("kmsRequestId", "kmsOperation"),
    OP_METADATA: ("kmsRequestId", "kmsOperation", "awsPrincipalArn"),
    OP_ENCRYPT: ("kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"),
    OP_DECRYPT: ("kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"),
}
_OPTIONAL_METADATA = (
    "awsPrincipalArn",
    "kmsKeyArn",
    "kmsViaService",
    "awsSourceVpc",
    "awsSourceVpce",
)
# What the logs record of requestMetadata, and how much of each value (see logged_metadata).
_LOGGED_METADATA = ("kmsRequestId", "kmsOperation", *_OPTIONAL_METADATA)
MAX_LOGGED_CHARS = MAX_ARN_CHARS


KEY_USAGE_ORDER = ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE")
"""GetKeyMetadata ``keyUsage`` order: the two KMS checks first, then the rest (spec section 4)."""

MAX_KEY_USAGE_ENTRIES = 10
"""The spec allows at most this many ``keyUsage`` entries."""


def ordered_key_usage(usage: Iterable[str]) -> list[str]:
    """Usage names upper-case in :data:`KEY_USAGE_ORDER`, then any others sorted, at most 10."""
    names = {u.upper() for u in usage}
    ordered = [u for u in KEY_USAGE_ORDER if u in names]
    ordered += sorted(names.difference(KEY_USAGE_ORDER))
    return ordered[:MAX_KEY_USAGE_ENTRIES]


@dataclass(slots=True, frozen=True)
class RequestMetadata:
    """The ``requestMetadata`` object; ``None`` for absent optional fields."""

    kms_request_id: str
    kms_operation: str
    aws_principal_arn: str | None = None
    kms_key_arn: str | None = None
    kms_via_service: str | None = None
    aws_source_vpc: str | None = None
    aws_source_vpce: str | None = None


@dataclass(slots=True, frozen=True)
class HealthRequest:
    metadata: RequestMetadata


@dataclass(slots=True, frozen=True)
class MetadataRequest:
    metadata: RequestMetadata


@dataclass(slots=True, frozen=True)
class EncryptRequest:
    metadata: RequestMetadata
    plaintext: bytes
    aad: bytes | None
    want_cdiv: bool

    def __repr__(self) -> str:  # never show plaintext or AAD
        return f"EncryptRequest(len={len(self.plaintext)}, cdiv={self.want_cdiv})"


@dataclass(slots=True, frozen=True)
class DecryptRequest:
    metadata: RequestMetadata
    ciphertext: bytes
    iv: bytes
    tag: bytes
    aad: bytes | None
    ciphertext_metadata: bytes | None

    def __repr__(self) -> str:
        return f"DecryptRequest(len={len(self.ciphertext)})"


XksRequest = HealthRequest | MetadataRequest | EncryptRequest | DecryptRequest


def decode_json(body: bytes) -> dict[str, Any]:
    """Decode the body; anything but a JSON object is a ValidationException."""
    if not body:
        raise ValidationException("request body is empty: a JSON object is required")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValidationException("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValidationException("request body must be a JSON object")
    return doc


def logged_metadata(doc: Any) -> dict[str, str]:
    """The request metadata as the request and audit logs may record it, read before validation.

    Only the known string fields, each cut to :data:`MAX_LOGGED_CHARS` with a marked ending. Why
    cut and not refuse: ``kmsRequestId``, ``kmsViaService`` and the VPC ids are opaque (the spec
    forbids checking their shape) and a length limit on them would be ours, not KMS's; refusing
    KMS traffic for the sake of a log line is worse than a visibly shortened value. Without this,
    an authenticated caller could put up to ``max_body_bytes`` into every log line, and invalid
    requests (logged before the ARN length check) could do so anonymously.
    """
    meta = doc.get("requestMetadata") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        return {}
    out: dict[str, str] = {}
    for name in _LOGGED_METADATA:
        value = meta.get(name)
        if type(value) is str:
            if len(value) > MAX_LOGGED_CHARS:
                value = (
                    f"{value[:MAX_LOGGED_CHARS]}"
                    f"...[{len(value) - MAX_LOGGED_CHARS} more characters]"
                )
            out[name] = value
    return out


def parse_metadata(doc: dict[str, Any], operation: str) -> RequestMetadata:
    meta = doc.get("requestMetadata")
    if meta is None:
        raise ValidationException("requestMetadata is required")
    if not isinstance(meta, dict):
        raise ValidationException("requestMetadata must be a JSON object")
    for name in _REQUIRED_METADATA[operation]:
        value = meta.get(name)
        if value is None:
            raise ValidationException(f"requestMetadata.{name} is required")
        if not isinstance(value, str):
            raise ValidationException(f"requestMetadata.{name} must be a string")
    for name in _OPTIONAL_METADATA:
        value = meta.get(name)
        if value is not None and not isinstance(value, str):
            raise ValidationException(f"requestMetadata.{name} must be a string")
    for name in _ARN_FIELDS:
        value = meta.get(name)
        if value is not None and len(value) > MAX_ARN_CHARS:
            raise ValidationException(
                f"requestMetadata.{name} is longer than {MAX_ARN_CHARS} characters"
            )
    return RequestMetadata(
        kms_request_id=meta["kmsRequestId"],
        kms_operation=meta["kmsOperation"],
        aws_principal_arn=meta.get("awsPrincipalArn"),
        kms_key_arn=meta.get("kmsKeyArn"),
        kms_via_service=meta.get("kmsViaService"),
        aws_source_vpc=meta.get("awsSourceVpc"),
        aws_source_vpce=meta.get("awsSourceVpce"),
    )


def _b64(
    doc: dict[str, Any],
    name: str,
    *,
    max_bytes: int | None = None,
    too_big: type[Exception] = UnsupportedOperationException,
) -> bytes | None:
    """Strictly decode the optional standard-base64 field ``name`` (``None`` when absent).

    The encoded length is checked *before* decoding so an oversized value costs nothing.
    """
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationException(f"{name} must be a base64 string")
    if max_bytes is not None and len(value) > 4 * ((max_bytes + 2) // 3):
        raise too_big(f"{name} is larger than the supported maximum of {max_bytes} bytes")
    if len(value) % 4:
        raise ValidationException(f"{name} is not valid standard base64 (length/padding)")
    try:
        encoded = value.encode("ascii")
        raw = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValidationException(f"{name} is not valid standard base64") from None
    # strict_mode still accepts excess padding ("AAAA====") and non-zero trailing bits ("QR=="):
    # only the canonical encoding of the decoded bytes is accepted, so one value has one spelling.
    if binascii.b2a_base64(raw, newline=False) != encoded:
        raise ValidationException(f"{name} is not canonical standard base64 (padding or bits)")
    if max_bytes is not None and len(raw) > max_bytes:
        raise too_big(f"{name} is larger than the supported maximum of {max_bytes} bytes")
    return raw


def _b64_required(
    doc: dict[str, Any],
    name: str,
    *,
    max_bytes: int | None = None,
    too_big: type[Exception] = UnsupportedOperationException,
) -> bytes:
    """:func:`_b64` for a field that must be present (absent -> ValidationException)."""
    raw = _b64(doc, name, max_bytes=max_bytes, too_big=too_big)
    if raw is None:
        raise ValidationException(f"{name} is required")
    return raw


def _algorithm(doc: dict[str, Any], name: str, expected: str, *, required: bool) -> bool:
    value = doc.get(name)
    if value is None:
        if required:
            raise ValidationException(f"{name} is required")
        return False
    if not isinstance(value, str):
        raise ValidationException(f"{name} must be a string")
    if value != expected:
        raise UnsupportedOperationException(f"{name} is not supported: only {expected} is")
    return True


# One parser per operation: (body document, the backend's max_plaintext_bytes) -> typed request.
# Fields are checked in a fixed order, so the first error named is the same on every run.


def parse_health(doc: dict[str, Any], max_plaintext_bytes: int) -> HealthRequest:
    """GetHealthStatus: only the request metadata."""
    return HealthRequest(parse_metadata(doc, OP_HEALTH))


def parse_key_metadata(doc: dict[str, Any], max_plaintext_bytes: int) -> MetadataRequest:
    """GetKeyMetadata: only the request metadata."""
    return MetadataRequest(parse_metadata(doc, OP_METADATA))


def parse_encrypt(doc: dict[str, Any], max_plaintext_bytes: int) -> EncryptRequest:
    """Encrypt: plaintext (<= the backend's limit), AES_GCM, optional AAD and CDIV request."""
    metadata = parse_metadata(doc, OP_ENCRYPT)
    plaintext = _b64_required(doc, "plaintext", max_bytes=max_plaintext_bytes)
    _algorithm(doc, "encryptionAlgorithm", "AES_GCM", required=True)
    aad = _b64(doc, "additionalAuthenticatedData", max_bytes=MAX_AAD_BYTES)
    cdiv = _algorithm(doc, "ciphertextDataIntegrityValueAlgorithm", "SHA_256", required=False)
    return EncryptRequest(metadata, plaintext, aad, cdiv)


def parse_decrypt(doc: dict[str, Any], max_plaintext_bytes: int) -> DecryptRequest:
    """Decrypt: AES_GCM, ciphertext, IV (12/16 bytes), tag (16), optional AAD and metadata."""
    metadata = parse_metadata(doc, OP_DECRYPT)
    _algorithm(doc, "encryptionAlgorithm", "AES_GCM", required=True)
    ciphertext = _b64_required(doc, "ciphertext", max_bytes=max_plaintext_bytes)
    iv = _b64_required(
        doc, "initializationVector", max_bytes=max(limits.IV_LENGTHS), too_big=ValidationException
    )
    tag = _b64_required(
        doc, "authenticationTag", max_bytes=limits.TAG_BYTES, too_big=ValidationException
    )
    aad = _b64(doc, "additionalAuthenticatedData", max_bytes=MAX_AAD_BYTES)
    meta = _b64(
        doc,
        "ciphertextMetadata",
        max_bytes=MAX_CIPHERTEXT_METADATA_BYTES,
        too_big=ValidationException,
    )
    if len(iv) not in limits.IV_LENGTHS:
        raise ValidationException(f"initializationVector must be {_IV_LENGTHS_TEXT} bytes")
    if len(tag) != limits.TAG_BYTES:
        raise ValidationException(f"authenticationTag must be {limits.TAG_BYTES} bytes")
    return DecryptRequest(metadata, ciphertext, iv, tag, aad, meta)


_IV_LENGTHS_TEXT = " or ".join(str(n) for n in sorted(limits.IV_LENGTHS))

_PARSERS: dict[str, Callable[[dict[str, Any], int], XksRequest]] = {
    OP_HEALTH: parse_health,
    OP_METADATA: parse_key_metadata,
    OP_ENCRYPT: parse_encrypt,
    OP_DECRYPT: parse_decrypt,
}


def parse_request(operation: str, doc: dict[str, Any], *, max_plaintext_bytes: int) -> XksRequest:
    """Validate ``doc`` for ``operation`` (a URI operation name) into its typed request.

    The service calls the per-operation parsers through its dispatch table; this entry is for
    callers that hold only the name (tests, tools).
    """
    parser = _PARSERS.get(operation)
    if parser is None:
        raise ValueError(f"unknown XKS operation {operation!r}")
    return parser(doc, max_plaintext_bytes)


def b64encode(data: bytes) -> str:
    """Standard base64 without a trailing newline (response encoding)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")
