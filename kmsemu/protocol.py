"""The KMS wire format: JSON 1.1 requests, responses and errors, exactly as SDKs expect them.

Every AWS SDK talks to KMS the same way: ``POST /`` with ``Content-Type:
application/x-amz-json-1.1`` and ``X-Amz-Target: TrentService.<Operation>``; the body is a JSON
object whose binary members are standard base64 strings and whose timestamps are epoch seconds.
Errors come back as ``{"__type": "<Name>", "message": "..."}`` with the HTTP status KMS uses
for that name; botocore turns ``__type`` into ``ClientError.response["Error"]["Code"]``. Keeping
all of that in one module means the operations never see HTTP and the app never sees KMS rules.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."

# KMS's HTTP status per error name. Anything not listed is a client error (400), as for KMS.
_STATUS: dict[str, int] = {
    "KMSInternalException": 500,
    "DependencyTimeoutException": 503,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
}


class KmsError(Exception):
    """One KMS error: its ``__type`` name, HTTP status and a message safe to send to the caller.

    Messages are written by us and never carry plaintext, key material or secrets.
    """

    def __init__(self, name: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.status = status if status is not None else _STATUS.get(name, 400)

    def body(self) -> bytes:
        """The JSON error document KMS sends."""
        return encode({"__type": self.name, "message": self.message})

    def __repr__(self) -> str:
        return f"KmsError({self.name!r}, {self.message!r}, status={self.status})"


def validation(message: str) -> KmsError:
    """A ``ValidationException``: the request is well-formed JSON but a parameter is wrong."""
    return KmsError("ValidationException", message)


def operation_name(target: str | None) -> str:
    """The operation named by an ``X-Amz-Target`` header value.

    A missing or foreign target is ``UnknownOperationException``, as KMS answers.
    """
    if not target or not target.startswith(TARGET_PREFIX) or len(target) <= len(TARGET_PREFIX):
        raise KmsError("UnknownOperationException", "missing or unknown X-Amz-Target")
    return target[len(TARGET_PREFIX) :]


def check_content_type(value: str | None) -> None:
    """KMS accepts only the JSON 1.1 media type (parameters such as charset are ignored)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != CONTENT_TYPE:
        raise KmsError(
            "UnknownOperationException" if not media else "SerializationException",
            f"Content-Type must be {CONTENT_TYPE}",
        )


def decode(body: bytes) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty request (SDKs send ``{}``)."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise KmsError("SerializationException", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise KmsError("SerializationException", "request body must be a JSON object")
    return doc


def encode(doc: Mapping[str, Any]) -> bytes:
    """Compact JSON; ``bytes`` values become standard base64 (the JSON 1.1 blob encoding)."""
    return json.dumps(doc, separators=(",", ":"), default=_default).encode()


def _default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")


# ---- typed access to request members: every defect is a ValidationException naming the member


def get_str(
    req: Mapping[str, Any], name: str, *, required: bool = False, max_len: int = 2048
) -> str | None:
    """A string member, or None when absent and not required."""
    value = req.get(name)
    if value is None:
        if required:
            raise validation(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise KmsError("SerializationException", f"{name} must be a string")
    if len(value) > max_len:
        raise validation(f"{name} must be at most {max_len} characters long")
    return value


def need_str(req: Mapping[str, Any], name: str, *, max_len: int = 2048) -> str:
    """A required, non-empty string member."""
    value = get_str(req, name, required=True, max_len=max_len)
    assert value is not None
    if not value:
        raise validation(f"{name} must not be empty")
    return value


def get_int(
    req: Mapping[str, Any], name: str, *, low: int, high: int, required: bool = False
) -> int | None:
    """An integer member within ``[low, high]``."""
    value = req.get(name)
    if value is None:
        if required:
            raise validation(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise KmsError("SerializationException", f"{name} must be an integer")
    if not low <= value <= high:
        raise validation(f"{name} must be between {low} and {high}")
    return value


def get_blob(
    req: Mapping[str, Any], name: str, *, required: bool = False, min_len: int = 1, max_len: int
) -> bytes | None:
    """A base64 blob member decoded, with KMS's length limits on the decoded bytes."""
    value = req.get(name)
    if value is None:
        if required:
            raise validation(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise KmsError("SerializationException", f"{name} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsError("SerializationException", f"{name} is not valid base64") from None
    if not min_len <= len(raw) <= max_len:
        raise validation(f"{name} must be {min_len} to {max_len} bytes long")
    return raw


def need_blob(req: Mapping[str, Any], name: str, *, max_len: int) -> bytes:
    """A required blob member."""
    value = get_blob(req, name, required=True, max_len=max_len)
    assert value is not None
    return value


def get_context(req: Mapping[str, Any], name: str = "EncryptionContext") -> dict[str, str]:
    """An encryption context: a string-to-string map (absent means empty)."""
    value = req.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise KmsError("SerializationException", f"{name} must map strings to strings")
    if sum(len(k) + len(v) for k, v in value.items()) > 8192:
        raise validation(f"{name} must be at most 8192 characters in total")
    return dict(value)
