"""Input validation, URI routing and method handling: every rejection is the spec's JSON error."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from conformance_helpers import (
    assert_json_error,
    assert_ok,
    b64,
    botocore_headers,
    decrypt_body,
    encrypt_body,
    metadata_body,
    secret_marker,
)


@pytest.fixture(scope="module")
def sealed(boto, stores):
    s = stores["demo"]
    enc = assert_ok(
        boto.post(s.key_path("demo", "encrypt"), encrypt_body(secret_marker("pt")), s.creds[0])
    )
    return s, enc


# ---------------------------------------------------------------------------------------------
# Missing / malformed fields
# ---------------------------------------------------------------------------------------------

ENCRYPT_REQUIRED = ["plaintext", "encryptionAlgorithm"]
DECRYPT_REQUIRED = [
    "ciphertext",
    "initializationVector",
    "authenticationTag",
    "encryptionAlgorithm",
]
META_REQUIRED = {
    "encrypt": ["awsPrincipalArn", "kmsKeyArn", "kmsOperation", "kmsRequestId"],
    "decrypt": ["awsPrincipalArn", "kmsKeyArn", "kmsOperation", "kmsRequestId"],
    "metadata": ["awsPrincipalArn", "kmsOperation", "kmsRequestId"],
}


def body_for(op, sealed_enc):
    return {
        "encrypt": encrypt_body(secret_marker("pt")),
        "decrypt": decrypt_body(sealed_enc),
        "metadata": metadata_body(),
    }[op]


CASES = (
    [("encrypt", f) for f in ENCRYPT_REQUIRED]
    + [("decrypt", f) for f in DECRYPT_REQUIRED]
    + [(op, "requestMetadata") for op in META_REQUIRED]
    + [(op, f"requestMetadata.{f}") for op, fs in META_REQUIRED.items() for f in fs]
)


@pytest.mark.parametrize(("op", "missing"), CASES)
def test_missing_required_field_named_in_validation_error(boto, sealed, op, missing):
    s, enc = sealed
    body = body_for(op, enc)
    if missing.startswith("requestMetadata."):
        del body["requestMetadata"][missing.split(".", 1)[1]]
    else:
        del body[missing]
    doc = assert_json_error(
        boto.post(s.key_path("demo", op), body, s.creds[0]), 400, "ValidationException"
    )
    assert missing.split(".")[-1] in doc.get("errorMessage", ""), doc


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b'"string"', b"{", b"null", b'{"requestMetadata": "x"}']
)
def test_malformed_body_is_validation(req, stores, raw):
    s = stores["demo"]
    assert_json_error(
        req.post(s.key_path("demo", "encrypt"), raw, s.creds[0]), 400, "ValidationException"
    )


@pytest.mark.parametrize("field", ["plaintext", "additionalAuthenticatedData"])
@pytest.mark.parametrize("bad", ["not base64!", "AA=A", "A", "AAAAA", "\u00e9t\u00e9"])
def test_non_base64_encrypt_field_is_validation(boto, stores, field, bad):
    s = stores["demo"]
    body = encrypt_body(secret_marker("pt"), aad=b"ctx")
    body[field] = bad
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]), 400, "ValidationException"
    )


def urlsafe_only(size: int = 30) -> tuple[bytes, str]:
    """Bytes whose standard base64 contains '+' or '/', returned with the urlsafe form."""
    for _ in range(1000):
        raw = secrets.token_bytes(size)
        std = base64.b64encode(raw).decode()
        if "+" in std or "/" in std:
            return raw, base64.urlsafe_b64encode(raw).decode()
    raise AssertionError("unreachable")


def test_urlsafe_base64_is_validation(boto, stores, sealed):
    s, enc = sealed
    raw, url = urlsafe_only()
    body = encrypt_body(raw)
    body["plaintext"] = url
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]), 400, "ValidationException"
    )
    body = decrypt_body(enc)
    body["ciphertext"] = urlsafe_only(len(base64.b64decode(enc["ciphertext"])))[1]
    assert_json_error(
        boto.post(s.key_path("demo", "decrypt"), body, s.creds[0]), 400, "ValidationException"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("plaintext", 12),
        ("encryptionAlgorithm", None),
        ("additionalAuthenticatedData", 5),
        ("ciphertextDataIntegrityValueAlgorithm", ["SHA_256"]),
    ],
)
def test_wrong_json_types_are_validation(boto, stores, field, value):
    s = stores["demo"]
    body = encrypt_body(secret_marker("pt"))
    body[field] = value
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]), 400, "ValidationException"
    )


def test_request_metadata_field_wrong_type_is_validation(boto, stores):
    s = stores["demo"]
    body = encrypt_body(secret_marker("pt"))
    body["requestMetadata"]["kmsRequestId"] = 42
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]), 400, "ValidationException"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("encryptionAlgorithm", "AES_CBC"), ("ciphertextDataIntegrityValueAlgorithm", "SHA_512")],
)
def test_unsupported_algorithm(boto, stores, field, value):
    """xks-spec §5: unsupported algorithm → 501 UnsupportedOperationException."""
    s = stores["demo"]
    body = encrypt_body(secret_marker("pt"))
    body[field] = value
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]),
        501,
        "UnsupportedOperationException",
    )


def test_unsupported_decrypt_algorithm(boto, sealed):
    s, enc = sealed
    body = decrypt_body(enc)
    body["encryptionAlgorithm"] = "AES_CBC"
    assert_json_error(
        boto.post(s.key_path("demo", "decrypt"), body, s.creds[0]),
        501,
        "UnsupportedOperationException",
    )


# ---------------------------------------------------------------------------------------------
# Decrypt field size boundaries (both sides)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "size"),
    [
        ("initializationVector", 11),
        ("initializationVector", 13),
        ("initializationVector", 15),
        ("initializationVector", 17),
        ("initializationVector", 0),
        ("authenticationTag", 15),
        ("authenticationTag", 17),
        ("authenticationTag", 0),
        ("ciphertextMetadata", 21),
    ],
)
def test_decrypt_field_size_rejected(boto, sealed, field, size):
    s, enc = sealed
    body = decrypt_body(enc)
    body[field] = b64(secrets.token_bytes(size))
    assert_json_error(
        boto.post(s.key_path("demo", "decrypt"), body, s.creds[0]), 400, "ValidationException"
    )


@pytest.mark.parametrize(
    ("field", "size"),
    [
        ("initializationVector", 12),
        ("initializationVector", 16),
        ("authenticationTag", 16),
        ("ciphertextMetadata", 20),
        ("ciphertextMetadata", 1),
    ],
)
def test_decrypt_field_size_accepted(boto, sealed, field, size):
    """Well-formed but wrong values pass validation and fail authentication of the ciphertext."""
    s, enc = sealed
    body = decrypt_body(enc)
    body[field] = b64(secrets.token_bytes(size))
    assert_json_error(
        boto.post(s.key_path("demo", "decrypt"), body, s.creds[0]),
        400,
        "InvalidCiphertextException",
    )


def test_body_over_max_body_bytes_is_validation(boto, stores):
    """conf: bodies over max_body_bytes (262144) → 400 ValidationException naming the limit."""
    s = stores["demo"]
    body = encrypt_body(b"x")
    body["padding"] = "A" * 270_000
    doc = assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]), 400, "ValidationException"
    )
    assert "262144" in doc.get("errorMessage", ""), doc


# ---------------------------------------------------------------------------------------------
# Key ids
# ---------------------------------------------------------------------------------------------


def test_key_id_128_chars_is_well_formed(boto, stores):
    s = stores["demo"]
    key = "k" * 64 + "A-Z.0_9" + "x" * 57
    assert len(key) == 128
    assert_json_error(
        boto.post(s.key_path(key, "metadata"), metadata_body(), s.creds[0]),
        404,
        "KeyNotFoundException",
    )


@pytest.mark.parametrize(
    "key", ["", "k" * 129, "de!mo", "de%20mo", "de~mo", "de+mo", "de:mo", "de%2Fmo"]
)
def test_malformed_key_id_rejected(boto, stores, key):
    """Outside 1..128 of [A-Za-z0-9._-]: rejected as bad input or bad path, never looked up."""
    s = stores["demo"]
    r = boto.post(s.key_path(key, "metadata"), metadata_body(), s.creds[0])
    assert_json_error(r, r.status, {"ValidationException", "InvalidUriPathException"})
    assert r.status in (400, 404), r.describe()


# ---------------------------------------------------------------------------------------------
# URI paths and methods
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/nosuchstore/kms/xks/v1/health",
        "/demo/kms/xks/v2/health",
        "/demo/kms/xks/v1/keys/demo/sign",
        "/demo/kms/xks/v1/keys/demo",
        "/demo/kms/xks/v1/keys/demo/encrypt/extra",
        "/demo/kms/xks/v1/healthz",
        "/demo/kms/xks/v1",
        "/kms/xks/v1/health",
        "/" + "p" * 118 + "/kms/xks/v1/health",
    ],
)
def test_unknown_uri_path(boto, stores, path):
    s = stores["demo"]
    if path.startswith("/demo/") and s.prefix != "/demo":
        path = s.prefix + path[len("/demo") :]
    body = (
        metadata_body()
        if "/keys/" in path
        else {"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}}
    )
    assert_json_error(boto.post(path, body, s.creds[0]), 404, "InvalidUriPathException")


def test_unknown_uri_path_curl(curl, stores):
    s = stores["demo"]
    assert_json_error(
        curl.post(s.prefix + "/kms/xks/v9/health", metadata_body(), s.creds[0]),
        404,
        "InvalidUriPathException",
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "op", ["health", "keys/demo/metadata", "keys/demo/encrypt", "keys/demo/decrypt"]
)
def test_non_post_is_405_json(boto, stores, method, op):
    s = stores["demo"]
    r = boto.raw(method, f"{s.base}/{op}")
    assert_json_error(r, 405, None)


def test_get_with_valid_signature_is_405(boto, stores):
    """Signed or not, a GET on an API URI is 405 (it must not be treated as an auth failure)."""
    s = stores["demo"]
    url = boto.base_url + s.health_path
    headers = botocore_headers(url, b"", s.creds[0], method="GET")
    assert_json_error(boto.raw("GET", s.health_path, None, headers), 405, None)


def test_key_id_one_char_is_well_formed(boto, stores):
    s = stores["demo"]
    assert_json_error(
        boto.post(s.key_path("k", "metadata"), metadata_body(), s.creds[0]),
        404,
        "KeyNotFoundException",
    )


@pytest.mark.parametrize(
    "request_id", ["x", "not a uuid !@#$%^&*()", "\u00fcnicode-\u2603", "r" * 1000, ""]
)
def test_kms_request_id_is_opaque(boto, stores, request_id):
    """kmsRequestId: never validate its shape (spec: MUST treat it as an opaque string)."""
    s = stores["demo"]
    body = metadata_body()
    body["requestMetadata"]["kmsRequestId"] = request_id
    assert_ok(boto.post(s.key_path("demo", "metadata"), body, s.creds[0]))


def exact_size_body(size: int) -> bytes:
    """A valid Encrypt body of exactly ``size`` bytes (padded with an unknown field)."""
    body = encrypt_body(b"x")
    body["padding"] = ""
    base = len(json.dumps(body).encode())
    body["padding"] = "A" * (size - base)
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


def test_body_exactly_max_body_bytes_accepted(boto, stores):
    s = stores["demo"]
    assert_ok(boto.post(s.key_path("demo", "encrypt"), exact_size_body(262144), s.creds[0]))


def test_body_one_over_max_body_bytes_rejected(boto, stores):
    s = stores["demo"]
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), exact_size_body(262145), s.creds[0]),
        400,
        "ValidationException",
    )


def test_decrypt_ciphertext_over_configured_maximum_is_unsupported(boto, sealed):
    s, enc = sealed
    body = decrypt_body(enc)
    body["ciphertext"] = b64(secrets.token_bytes(65537))
    assert_json_error(
        boto.post(s.key_path("demo", "decrypt"), body, s.creds[0]),
        501,
        "UnsupportedOperationException",
    )
