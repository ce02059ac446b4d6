"""Methods, odd paths and crypto-field boundaries on a real server: always the XKS JSON error."""

from __future__ import annotations

import json

import pytest
from adversarial_helpers import API, Target, assert_xks_error
from conformance_helpers import b64, decrypt_body, encrypt_body


def _enc() -> bytes:
    return json.dumps(encrypt_body(b"adversarial")).encode()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_non_post_is_405_json(target: Target, method: str) -> None:
    path = target.key_path("demo", "encrypt")
    answer = target.exchange(
        f"{method} {path} HTTP/1.1\r\nHost: {target.server.host}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    assert_xks_error(answer, 405, "ValidationException")
    assert answer.headers.get("allow") == "POST"


@pytest.mark.parametrize(
    ("suffix", "status", "name"),
    [
        ("/keys/de%21o/encrypt", 400, "ValidationException"),  # "!" is no key-id character
        ("/keys/de%20o/encrypt", 400, "ValidationException"),  # nor is ' '
        ("//keys/demo/encrypt", 404, "InvalidUriPathException"),
        ("/keys/demo/encrypt/", 404, "InvalidUriPathException"),
        ("/keys/../keys/demo/encrypt", 404, "InvalidUriPathException"),
        ("/keys/demo/encrypt%00", 404, "InvalidUriPathException"),
        ("/keys/" + "k" * 129 + "/encrypt", 400, "ValidationException"),
        ("/keys/" + "k" * 128 + "/encrypt", 404, "KeyNotFoundException"),
        ("/keys/a.b-c_d/encrypt", 404, "KeyNotFoundException"),
        ("/keys/xks-health-test/encrypt", 404, "KeyNotFoundException"),
        ("/keys/" + "k" * 300 + "/encrypt", 404, "InvalidUriPathException"),  # URI > 256 chars
    ],
)
def test_odd_paths(target: Target, suffix: str, status: int, name: str) -> None:
    path = f"{target.prefix}{API}{suffix}"
    assert_xks_error(target.post(path, _enc()), status, name)


def test_encoded_unreserved_character_is_never_served(target: Target) -> None:
    """``de%6Do`` is RFC 3986's spelling of ``demo``. granian (RSGI) hands the app only the decoded
    path, so the request is routed as ``demo`` and the signature the client made over the encoded
    path no longer matches: 401, never an answer from the key (ASGI servers see the raw path and
    refuse the id with 400; README "Known limits")."""
    answer = target.post(f"{target.prefix}{API}/keys/de%6Do/encrypt", _enc())
    assert_xks_error(answer, 401, "AuthenticationFailedException")


@pytest.mark.parametrize("path", ["/DEMO/KMS/XKS/V1/health", f"{API}/health", "/" + "a" * 9000])
def test_unknown_paths_are_404_json(target: Target, path: str) -> None:
    assert_xks_error(target.post(path, _enc()), 404, "InvalidUriPathException")


def test_crypto_field_boundaries(target: Target) -> None:
    encrypted = target.post(
        target.key_path("demo", "encrypt"),
        json.dumps(encrypt_body(b"adversarial", aad=b"A")).encode(),
    )
    assert encrypted.status == 200, encrypted.describe()
    good = encrypted.json()
    decrypt = target.key_path("demo", "decrypt")

    def attempt(field: str, raw: bytes | None) -> dict[str, object]:
        body = decrypt_body(good, aad=b"A")
        if raw is None:
            body.pop(field, None)
        else:
            body[field] = b64(raw)
        return body

    cases = [
        ("initializationVector", b"\0" * 0, 400, "ValidationException"),
        ("initializationVector", b"\0" * 11, 400, "ValidationException"),
        ("initializationVector", b"\0" * 13, 400, "ValidationException"),
        ("initializationVector", b"\0" * 16, 400, "InvalidCiphertextException"),
        ("initializationVector", b"\0" * 17, 400, "ValidationException"),
        ("authenticationTag", b"\0" * 15, 400, "ValidationException"),
        ("authenticationTag", b"\0" * 17, 400, "ValidationException"),
        ("ciphertextMetadata", b"", 400, "InvalidCiphertextException"),
        ("ciphertextMetadata", b"x" * 20, 400, "InvalidCiphertextException"),
        ("ciphertextMetadata", b"x" * 21, 400, "ValidationException"),
        ("ciphertextMetadata", None, 400, "InvalidCiphertextException"),
        ("additionalAuthenticatedData", b"a" * 65536, 501, "UnsupportedOperationException"),
    ]
    for field, raw, status, name in cases:
        answer = target.post(decrypt, json.dumps(attempt(field, raw)).encode())
        assert_xks_error(answer, status, name)
    ok = target.post(decrypt, json.dumps(decrypt_body(good, aad=b"A")).encode())
    assert ok.status == 200, ok.describe()
    # Someone else's ciphertext: the same fields under another key must not decrypt.
    other = target.post(
        target.key_path("demo-encrypt-only", "encrypt"),
        json.dumps(encrypt_body(b"adversarial", aad=b"A")).encode(),
    ).json()
    assert_xks_error(
        target.post(decrypt, json.dumps(decrypt_body(other, aad=b"A")).encode()),
        400,
        "InvalidCiphertextException",
    )
