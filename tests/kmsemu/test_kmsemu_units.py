"""Unit tests: ciphertext blob layout, AAD/CDIV, the JSON 1.1 wire format, error mapping."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from kmsemu import crypto, protocol
from kmsemu.mapping import connection_error_code, crypto_error, key_store_admin_error
from kmsemu.protocol import KmsError
from kmsemu.store import Alias, Conflict, Key, KeyStore, Store
from kmsemu.xksclient import (
    XksErrorResponse,
    XksInvalidResponse,
    XksTimeout,
    XksTlsError,
    XksUnreachable,
)

KEY_ID = "0f5d2c5e-8a0e-4b7e-9a59-1c2d3e4f5a6b"

# ---- blobs


def xks_blob(meta: bytes = b"v1", iv_len: int = 12) -> crypto.Blob:
    return crypto.Blob(
        crypto.FORMAT_XKS,
        KEY_ID,
        os.urandom(12),
        os.urandom(40),
        os.urandom(iv_len),
        os.urandom(16),
        meta,
    )


@pytest.mark.parametrize("meta", [b"", b"k", b"x" * 20])
@pytest.mark.parametrize("iv_len", [12, 16])
def test_xks_blob_round_trip(meta: bytes, iv_len: int) -> None:
    blob = xks_blob(meta, iv_len)
    data = blob.pack()
    assert data[0] == crypto.FORMAT_XKS and data[1] == len(KEY_ID)
    assert data[2 : 2 + len(KEY_ID)] == KEY_ID.encode()
    assert crypto.Blob.unpack(data) == blob


def test_local_blob_round_trip() -> None:
    blob = crypto.Blob(crypto.FORMAT_LOCAL, KEY_ID, os.urandom(12), os.urandom(33))
    assert crypto.Blob.unpack(blob.pack()) == blob


def test_every_truncation_is_refused() -> None:
    data = xks_blob().pack()
    header = 2 + len(KEY_ID) + 12 + 1 + 12 + 16 + 1 + 2
    for cut in range(header + crypto.TAG_BYTES):
        with pytest.raises(crypto.BlobError):
            crypto.Blob.unpack(data[:cut])


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 80, b"\x07" + b"\x24" + b"a" * 100, bytes([1, 0]) + b"a" * 80],
)
def test_foreign_bytes_are_not_blobs(data: bytes) -> None:
    with pytest.raises(crypto.BlobError):
        crypto.Blob.unpack(data)


def test_pack_refuses_what_the_layout_cannot_carry() -> None:
    with pytest.raises(ValueError):
        xks_blob(meta=b"x" * 21).pack()
    with pytest.raises(ValueError):
        xks_blob(iv_len=8).pack()


# ---- local layer, AAD, CDIV


def test_context_digest_is_order_independent_and_unambiguous() -> None:
    assert crypto.context_digest({"a": "1", "b": "2"}) == crypto.context_digest(
        {"b": "2", "a": "1"}
    )
    assert crypto.context_digest({"a": "bc"}) != crypto.context_digest({"ab": "c"})
    assert crypto.context_digest({}) != crypto.context_digest({"": ""})


def test_xks_aad_binds_key_arn_and_context() -> None:
    arn = "arn:aws:kms:us-east-1:111122223333:key/" + KEY_ID
    aad = crypto.xks_aad(arn, {"a": "1"})
    assert len(aad) == 32
    assert aad != crypto.xks_aad(arn.replace("us-east-1", "eu-west-1"), {"a": "1"})
    assert aad != crypto.xks_aad(arn, {"a": "2"})


def test_local_layer_binds_key_id_format_and_context() -> None:
    material = crypto.new_key_material()
    iv, sealed = crypto.local_encrypt(material, crypto.FORMAT_XKS, KEY_ID, b"data", {"c": "1"})
    assert crypto.local_decrypt(material, crypto.FORMAT_XKS, KEY_ID, iv, sealed, {"c": "1"}) == (
        b"data"
    )
    for fmt, kid, ctx, mat in [
        (crypto.FORMAT_LOCAL, KEY_ID, {"c": "1"}, material),
        (crypto.FORMAT_XKS, KEY_ID[::-1], {"c": "1"}, material),
        (crypto.FORMAT_XKS, KEY_ID, {"c": "2"}, material),
        (crypto.FORMAT_XKS, KEY_ID, {"c": "1"}, crypto.new_key_material()),
    ]:
        with pytest.raises(crypto.BlobError):
            crypto.local_decrypt(mat, fmt, kid, iv, sealed, ctx)


def test_cdiv_matches_the_specification_vector() -> None:
    value = crypto.cdiv(
        b"project=nile,department=marketing",
        b"key_version=1",
        base64.b64decode("HMrlRw85cAJUd5Ax"),
        base64.b64decode("ghxkK1txeDNn3q8Y"),
        base64.b64decode("vBxN2ncH1oEkR8WVXpmyYQ=="),
    )
    assert base64.b64encode(value).decode() == "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="


# ---- JSON 1.1 wire format


def test_operation_name_from_target() -> None:
    assert protocol.operation_name("TrentService.Encrypt") == "Encrypt"
    for bad in (None, "", "TrentService.", "Other.Encrypt"):
        with pytest.raises(KmsError) as exc:
            protocol.operation_name(bad)
        assert exc.value.name == "UnknownOperationException"


def test_content_type() -> None:
    protocol.check_content_type("application/x-amz-json-1.1")
    protocol.check_content_type("application/x-amz-json-1.1; charset=utf-8")
    with pytest.raises(KmsError):
        protocol.check_content_type("application/json")


def test_decode_and_encode() -> None:
    assert protocol.decode(b"") == {}
    assert protocol.decode(b'{"KeyId": "k"}') == {"KeyId": "k"}
    for bad in (b"{", b"[1]", b"\xff"):
        with pytest.raises(KmsError) as exc:
            protocol.decode(bad)
        assert exc.value.name == "SerializationException"
    doc = json.loads(protocol.encode({"Plaintext": b"\x00\x01", "N": 1.5}))
    assert doc == {"Plaintext": "AAE=", "N": 1.5}


def test_error_body_and_statuses() -> None:
    err = KmsError("NotFoundException", "no such key")
    assert err.status == 400
    assert json.loads(err.body()) == {"__type": "NotFoundException", "message": "no such key"}
    assert KmsError("KMSInternalException", "x").status == 500
    assert KmsError("DependencyTimeoutException", "x").status == 503


def test_member_accessors() -> None:
    req = {"B": base64.b64encode(b"abc").decode(), "N": 5, "S": "s", "C": {"k": "v"}}
    assert protocol.need_blob(req, "B", max_len=3) == b"abc"
    assert protocol.get_int(req, "N", low=1, high=5) == 5
    assert protocol.need_str(req, "S") == "s"
    assert protocol.get_context(req, "C") == {"k": "v"}
    cases: list[tuple[dict[str, object], str]] = [
        ({"B": "!!"}, "SerializationException"),
        ({"B": base64.b64encode(b"abcd").decode()}, "ValidationException"),
        ({}, "ValidationException"),
    ]
    for doc, name in cases:
        with pytest.raises(KmsError) as exc:
            protocol.need_blob(doc, "B", max_len=3)
        assert exc.value.name == name
    with pytest.raises(KmsError):
        protocol.get_int({"N": True}, "N", low=0, high=9)
    with pytest.raises(KmsError):
        protocol.get_int({"N": 10}, "N", low=0, high=9)
    with pytest.raises(KmsError):
        protocol.get_context({"C": {"k": 1}}, "C")


# ---- proxy failures → what KMS says


FAILURES = {
    "auth": XksErrorResponse(401, "AuthenticationFailedException", ""),
    "denied": XksErrorResponse(403, "AccessDeniedException", ""),
    "path": XksErrorResponse(404, "InvalidUriPathException", ""),
    "ciphertext": XksErrorResponse(400, "InvalidCiphertextException", ""),
    "hsm-slow": XksErrorResponse(503, "DependencyTimeoutException", ""),
    "internal": XksErrorResponse(500, "InternalException", ""),
    "timeout": XksTimeout("t"),
    "tls": XksTlsError("t"),
    "down": XksUnreachable("d"),
    "garbage": XksInvalidResponse("g"),
}


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("auth", "INVALID_CREDENTIALS"),
        ("denied", "XKS_PROXY_ACCESS_DENIED"),
        ("path", "XKS_PROXY_INVALID_CONFIGURATION"),
        ("internal", "XKS_PROXY_INVALID_RESPONSE"),
        ("timeout", "XKS_PROXY_TIMED_OUT"),
        ("tls", "XKS_PROXY_INVALID_TLS_CONFIGURATION"),
        ("down", "XKS_PROXY_NOT_REACHABLE"),
        ("garbage", "XKS_PROXY_INVALID_RESPONSE"),
    ],
)
def test_connection_error_codes(case: str, code: str) -> None:
    assert connection_error_code(FAILURES[case]) == code


@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("auth", "XksProxyIncorrectAuthenticationCredentialException"),
        ("path", "XksProxyInvalidConfigurationException"),
        ("internal", "XksProxyInvalidResponseException"),
        ("garbage", "XksProxyInvalidResponseException"),
        ("timeout", "XksProxyUriUnreachableException"),
        ("tls", "XksProxyUriUnreachableException"),
        ("down", "XksProxyUriUnreachableException"),
    ],
)
def test_key_store_admin_errors(case: str, name: str) -> None:
    assert key_store_admin_error(FAILURES[case]).name == name


@pytest.mark.parametrize(
    ("case", "decrypting", "name"),
    [
        ("ciphertext", True, "InvalidCiphertextException"),
        ("ciphertext", False, "KMSInvalidStateException"),
        ("hsm-slow", False, "DependencyTimeoutException"),
        ("auth", False, "KMSInvalidStateException"),
        ("internal", True, "KMSInvalidStateException"),
        ("timeout", False, "KMSInvalidStateException"),
        ("down", True, "KMSInvalidStateException"),
        ("garbage", False, "KMSInvalidStateException"),
    ],
)
def test_crypto_errors(case: str, decrypting: bool, name: str) -> None:
    err = crypto_error(FAILURES[case], decrypting=decrypting)
    assert err.name == name
    if name == "KMSInvalidStateException" and isinstance(FAILURES[case], XksErrorResponse):
        assert FAILURES[case].error_name in err.message  # type: ignore[attr-defined]


# ---- SQLite state


def test_store_rules_and_persistence(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    ks = KeyStore(
        "cks-1",
        "one",
        "https://p",
        "/kms/xks/v1",
        "PUBLIC_ENDPOINT",
        None,
        "A" * 20,
        "s" * 44,
        "DISCONNECTED",
        None,
        1.0,
    )
    store.add_key_store(ks)
    with pytest.raises(Conflict, match="CustomKeyStoreNameInUseException"):
        store.add_key_store(replace(ks, id="cks-2"))
    with pytest.raises(Conflict, match="XksProxyUriInUseException"):
        store.add_key_store(replace(ks, id="cks-2", name="two"))
    key = Key(
        KEY_ID, "arn:k", "", "Enabled", "EXTERNAL_KEY_STORE", "cks-1", "demo", b"m" * 32, 1.0, None
    )
    store.add_key(key)
    with pytest.raises(Conflict, match="XksKeyAlreadyInUseException"):
        store.add_key(replace(key, id="other", arn="arn:o"))
    assert store.key("other") is None  # the failed insert left nothing behind
    store.add_alias(Alias("alias/a", KEY_ID, 1.0, 1.0))
    store.set_key_state(KEY_ID, "PendingDeletion", 5.0)
    store.close()
    again = Store(tmp_path / "s")
    assert again.key_store("cks-1") == ks
    assert again.key_store("cks-1") is not None
    again.purge_deleted(now=4.0)  # before the deletion date: kept
    assert again.alias("alias/a") is not None
    again.purge_deleted(now=10.0)  # after it: the key and its alias are gone
    assert again.key(KEY_ID) is None and again.alias("alias/a") is None
    assert (tmp_path / "s" / "kmsemu.sqlite3").stat().st_mode & 0o777 == 0o600
