"""Hostile JSON bodies, all signed (so they reach the parser): the right XKS error, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from adversarial_helpers import MARKER, Target, assert_xks_error
from conformance_helpers import b64, encrypt_body


def _good() -> dict[str, Any]:
    return encrypt_body(MARKER)


def _with_meta(**fields: Any) -> bytes:
    doc = _good()
    doc["requestMetadata"].update(fields)
    return json.dumps(doc).encode()


def _with(**fields: Any) -> bytes:
    doc = _good()
    doc.update(fields)
    return json.dumps(doc).encode()


GOOD = json.dumps(_good()).encode()

INVALID = {
    "invalid-utf8": b'{"requestMetadata":{"kmsRequestId":"\xff\xfe"}}',
    "bom": b"\xef\xbb\xbf" + GOOD,
    "trailing-garbage": GOOD + b"xyz",
    "nested-10k": b'{"a":' + b"[" * 10000 + b"]" * 10000 + b"}",
    "nan": GOOD[:-1] + b',"x":NaN}',
    # orjson refuses integers beyond 64 bits even in fields we ignore; KMS sends no numbers, so a
    # 400 is fine as long as it is the JSON error and not a 500.
    "huge-integer-elsewhere": GOOD[:-1] + b',"x":1' + b"0" * 5000 + b"}",
    "lone-surrogate": GOOD[:-1] + b',"x":"\\ud800"}',
    "empty-object": b"{}",
    "top-array": b"[" + GOOD + b"]",
    "top-null": b"null",
    "empty-body": b"",
    "meta-list": _with(requestMetadata=[]),
    "meta-string": _with(requestMetadata="x"),
    "meta-null": _with(requestMetadata=None),
    "plaintext-number": _with(plaintext=5),
    "plaintext-null": _with(plaintext=None),
    "plaintext-not-base64": _with(plaintext="!!!!"),
    "algorithm-number": _with(encryptionAlgorithm=5),
    "request-id-number": _with_meta(kmsRequestId=5),
    "operation-list": _with_meta(kmsOperation=["Encrypt"]),
    "principal-null": _with_meta(awsPrincipalArn=None),
    "principal-2049": _with_meta(awsPrincipalArn="a" * 2049),
    "key-arn-100k": _with_meta(kmsKeyArn="b" * 100_000),
    "via-service-object": _with_meta(kmsViaService={"a": 1}),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_json_is_a_validation_error(target: Target, case: str) -> None:
    answer = target.post(target.key_path("demo", "encrypt"), INVALID[case])
    doc = assert_xks_error(answer, 400, "ValidationException")
    assert MARKER.decode() not in doc["errorMessage"]


ACCEPTED = {
    "arns-2048": _with_meta(awsPrincipalArn="a" * 2048, kmsKeyArn="b" * 2048),
    "request-id-64k": _with_meta(kmsRequestId="r" * 65536),
    "request-id-nul": _with_meta(kmsRequestId="a\u0000b"),
    "unknown-fields": _with_meta(futureField={"x": [1, 2]}),
    "empty-plaintext": _with(plaintext=b64(b"")),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_odd_but_valid_bodies_are_served(target: Target, case: str) -> None:
    answer = target.post(target.key_path("demo", "encrypt"), ACCEPTED[case])
    assert answer.status == 200, answer.describe()
    assert set(answer.json()) >= {"ciphertext", "initializationVector", "authenticationTag"}
