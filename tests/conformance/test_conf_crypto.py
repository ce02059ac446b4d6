"""Encrypt/Decrypt/GetKeyMetadata semantics: round trips, CDIV, tampering, partial-usage keys."""

from __future__ import annotations

import base64
import hashlib
import secrets

import pytest
from conformance_helpers import (
    ALLOWED_USAGE,
    DENIED_PRINCIPAL,
    DENIED_REQUEST_IDS,
    assert_encrypt_response,
    assert_json_error,
    assert_ok,
    b64,
    decrypt_body,
    encrypt_body,
    expected_cdiv,
    metadata_body,
    rid,
    secret_marker,
    sensitive_large,
    unb64,
)

# ---------------------------------------------------------------------------------------------
# CDIV: the spec's own vector is a pure function check of the formula we recompute everywhere.
# ---------------------------------------------------------------------------------------------


def test_cdiv_spec_vector():
    aad = b"project=nile,department=marketing"
    assert len(aad) == 33
    response = {
        "ciphertextMetadata": b64(b"key_version=1"),
        "initializationVector": "HMrlRw85cAJUd5Ax",
        "ciphertext": "ghxkK1txeDNn3q8Y",
        "authenticationTag": "vBxN2ncH1oEkR8WVXpmyYQ==",
    }
    raw = (
        aad
        + b"key_version=1"
        + base64.b64decode("HMrlRw85cAJUd5Ax")
        + base64.b64decode("ghxkK1txeDNn3q8Y")
        + base64.b64decode("vBxN2ncH1oEkR8WVXpmyYQ==")
    )
    want = "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
    assert base64.b64encode(hashlib.sha256(raw).digest()).decode() == want
    assert expected_cdiv(aad, response) == want


# ---------------------------------------------------------------------------------------------
# Round trips through each signer
# ---------------------------------------------------------------------------------------------


def roundtrip(client, store, key="demo", *, aad=None, cdiv=False, size=32, cred_index=0):
    pt = secret_marker("pt", size)
    cred = store.creds[cred_index]
    enc = assert_ok(
        client.post(
            store.key_path(key, "encrypt"),
            encrypt_body(pt, aad=aad, cdiv=cdiv, expect_logged=True),
            cred,
        )
    )
    assert_encrypt_response(enc, pt, aad, cdiv)
    dec = assert_ok(
        client.post(
            store.key_path(key, "decrypt"), decrypt_body(enc, aad=aad, expect_logged=True), cred
        )
    )
    assert set(dec) == {"plaintext"}, sorted(dec)
    assert unb64(dec["plaintext"]) == pt
    return enc


def test_roundtrip_botocore_with_aad_and_cdiv(boto, stores):
    roundtrip(boto, stores["demo"], aad=secret_marker("aad", 40), cdiv=True)


def test_roundtrip_botocore_plain(boto, stores):
    roundtrip(boto, stores["demo"])


def test_roundtrip_requests(req, stores):
    roundtrip(req, stores["demo"], aad=secret_marker("aad", 17), cdiv=True)


def test_roundtrip_curl(curl, stores):
    roundtrip(curl, stores["demo"], aad=secret_marker("aad", 33), cdiv=True)


def test_roundtrip_second_demo_credential(req, stores):
    roundtrip(req, stores["demo"], cdiv=True, cred_index=1)


def test_roundtrip_second_store(boto, stores):
    roundtrip(boto, stores["second"], aad=secret_marker("aad", 8), cdiv=True)


def test_roundtrip_128_char_uri_path(boto, stores):
    store = stores["longprefix"]
    assert len(store.base) == 128
    roundtrip(boto, store, cdiv=True)


def test_unknown_kms_operation_and_extra_fields_accepted(boto, stores):
    """Spec: never reject an unknown kmsOperation; ignore unknown fields (KMS may add some)."""
    s = stores["demo"]
    pt = secret_marker("pt")
    body = encrypt_body(
        pt,
        operation="BulkEncryptFromTheFuture",
        newMetaField="x",
        kmsViaService="ebs",
        awsSourceVpc="vpc-12345678",
        awsSourceVpce="vpce-12345678",
    )
    body["someFutureTopLevelField"] = {"a": [1, 2, 3]}
    enc = assert_ok(boto.post(s.key_path("demo", "encrypt"), body, s.creds[0]))
    dbody = decrypt_body(enc, operation="ReEncrypt", anotherNewField=True)
    dbody["extra"] = None
    assert (
        unb64(assert_ok(boto.post(s.key_path("demo", "decrypt"), dbody, s.creds[0]))["plaintext"])
        == pt
    )
    md = metadata_body("BulkDescribeKey", someNewField=1)
    md["topLevelExtra"] = "y"
    assert_ok(boto.post(s.key_path("demo", "metadata"), md, s.creds[0]))


def test_long_arns_accepted(boto, stores):
    """ARNs may be up to 2048 characters."""
    s = stores["demo"]
    principal = "arn:aws:iam::123456789012:role/" + "r" * (2048 - 31)
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/" + "k" * (2048 - 39)
    assert len(principal) == len(key_arn) == 2048
    assert_ok(
        boto.post(
            s.key_path("demo", "encrypt"),
            encrypt_body(secret_marker("pt"), principal=principal, key_arn=key_arn),
            s.creds[0],
        )
    )


def test_each_encrypt_uses_fresh_iv(boto, stores):
    s = stores["demo"]
    pt = secret_marker("pt")
    ivs = set()
    for _ in range(8):
        enc = assert_ok(boto.post(s.key_path("demo", "encrypt"), encrypt_body(pt), s.creds[0]))
        ivs.add(enc["initializationVector"])
    assert len(ivs) == 8


# ---------------------------------------------------------------------------------------------
# Size boundaries (minimums the spec requires)
# ---------------------------------------------------------------------------------------------


def test_plaintext_4300_bytes_and_aad_8192_bytes(boto, stores):
    s = stores["demo"]
    pt = sensitive_large("pt-4300", 4300)
    aad = sensitive_large("aad-8192", 8192)
    enc = assert_ok(
        boto.post(s.key_path("demo", "encrypt"), encrypt_body(pt, aad=aad, cdiv=True), s.creds[0])
    )
    assert_encrypt_response(enc, pt, aad, True)
    dec = assert_ok(
        boto.post(s.key_path("demo", "decrypt"), decrypt_body(enc, aad=aad), s.creds[0])
    )
    assert unb64(dec["plaintext"]) == pt


def test_aad_65535_bytes_is_the_framing_limit(boto, stores):
    """AAD is framed with a 2-byte length: 65535 must work."""
    s = stores["demo"]
    pt, aad = secret_marker("pt"), sensitive_large("aad-65535", 65535)
    enc = assert_ok(boto.post(s.key_path("demo", "encrypt"), encrypt_body(pt, aad=aad), s.creds[0]))
    dec = assert_ok(
        boto.post(s.key_path("demo", "decrypt"), decrypt_body(enc, aad=aad), s.creds[0])
    )
    assert unb64(dec["plaintext"]) == pt


def test_aad_65536_bytes_is_unsupported(boto, stores):
    """One byte past the framing limit is beyond our implementation's maximum size → 501."""
    s = stores["demo"]
    r = boto.post(
        s.key_path("demo", "encrypt"),
        encrypt_body(secret_marker("pt"), aad=sensitive_large("aad-65536", 65536)),
        s.creds[0],
    )
    assert_json_error(r, 501, "UnsupportedOperationException")


def test_plaintext_over_configured_maximum_is_unsupported(boto, stores):
    """max_plaintext_bytes (default 65536) is ours, beyond the 4300 minimum → 501."""
    s = stores["demo"]
    ok = sensitive_large("pt-65536", 65536)
    enc = assert_ok(boto.post(s.key_path("demo", "encrypt"), encrypt_body(ok), s.creds[0]))
    assert len(unb64(enc["ciphertext"])) == 65536
    r = boto.post(
        s.key_path("demo", "encrypt"), encrypt_body(sensitive_large("pt-65537", 65537)), s.creds[0]
    )
    assert_json_error(r, 501, "UnsupportedOperationException")


# ---------------------------------------------------------------------------------------------
# Tampering: every field is bound by the tag
# ---------------------------------------------------------------------------------------------


def flip(b64text: str, index: int = 0) -> str:
    raw = bytearray(unb64(b64text))
    raw[index] ^= 0x01
    return b64(bytes(raw))


@pytest.fixture(scope="module")
def sealed(boto, stores):
    s = stores["demo"]
    pt, aad = secret_marker("pt", 48), secret_marker("aad", 24)
    enc = assert_ok(
        boto.post(s.key_path("demo", "encrypt"), encrypt_body(pt, aad=aad, cdiv=True), s.creds[0])
    )
    return s, pt, aad, enc


@pytest.mark.parametrize(
    "field",
    ["ciphertext", "initializationVector", "authenticationTag", "ciphertextMetadata", "aad"],
)
def test_tampered_field_is_invalid_ciphertext(boto, sealed, field):
    s, _, aad, enc = sealed
    enc = dict(enc)
    use_aad = aad
    if field == "aad":
        use_aad = aad[:-1] + bytes([aad[-1] ^ 1])
    elif field == "ciphertextMetadata":
        if "ciphertextMetadata" in enc:
            enc[field] = flip(enc[field])
        else:
            enc[field] = b64(b"\x01")  # metadata added where none was issued
    else:
        enc[field] = flip(enc[field], len(unb64(enc[field])) - 1)
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(enc, aad=use_aad), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_missing_aad_is_invalid_ciphertext(boto, sealed):
    s, _, _, enc = sealed
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(enc), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_added_aad_is_invalid_ciphertext(boto, stores):
    s = stores["demo"]
    enc = assert_ok(
        boto.post(s.key_path("demo", "encrypt"), encrypt_body(secret_marker("pt")), s.creds[0])
    )
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(enc, aad=b"x"), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_metadata_moved_into_aad_is_invalid_ciphertext(boto, stores):
    """The length framing stops 'metadata passed as AAD and dropped' from decrypting."""
    s = stores["demo"]
    enc = assert_ok(
        boto.post(s.key_path("demo", "encrypt"), encrypt_body(secret_marker("pt")), s.creds[0])
    )
    if "ciphertextMetadata" not in enc:
        pytest.skip("proxy issues no ciphertextMetadata")
    moved = dict(enc)
    meta = unb64(moved.pop("ciphertextMetadata"))
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(moved, aad=meta), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_removed_metadata_is_invalid_ciphertext(boto, sealed):
    s, _, aad, enc = sealed
    if "ciphertextMetadata" not in enc:
        pytest.skip("proxy issues no ciphertextMetadata")
    stripped = {k: v for k, v in enc.items() if k != "ciphertextMetadata"}
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(stripped, aad=aad), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_16_byte_iv_is_well_formed(boto, sealed):
    """A 16-byte IV is legal input: a wrong one must be InvalidCiphertext, not Validation/500."""
    s, _, aad, enc = sealed
    wrong = dict(enc, initializationVector=b64(secrets.token_bytes(16)))
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(wrong, aad=aad), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_20_byte_metadata_is_well_formed(boto, sealed):
    s, _, aad, enc = sealed
    wrong = dict(enc, ciphertextMetadata=b64(secrets.token_bytes(20)))
    r = boto.post(s.key_path("demo", "decrypt"), decrypt_body(wrong, aad=aad), s.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_ciphertext_from_another_key_is_invalid(boto, stores, sealed):
    """demo-decrypt-only may decrypt, but not what another key sealed."""
    s, _, aad, enc = sealed
    r = boto.post(
        s.key_path("demo-decrypt-only", "decrypt"), decrypt_body(enc, aad=aad), s.creds[0]
    )
    assert_json_error(r, 400, "InvalidCiphertextException")


# ---------------------------------------------------------------------------------------------
# GetKeyMetadata and keys that may do only part of the work
# ---------------------------------------------------------------------------------------------

EXPECTED_USAGE = {
    "demo": {"ENCRYPT", "DECRYPT"},
    "demo-encrypt-only": {"ENCRYPT"},
    "demo-decrypt-only": {"DECRYPT"},
    "demo-no-usage": set(),
}


@pytest.mark.parametrize("key", sorted(EXPECTED_USAGE))
def test_key_metadata_reports_exact_usage(req, stores, key):
    s = stores["demo"]
    doc = assert_ok(
        req.post(s.key_path(key, "metadata"), metadata_body(expect_logged=True), s.creds[0])
    )
    assert doc["keySpec"] == "AES_256"
    assert doc["keyStatus"] == "ENABLED"
    usage = doc["keyUsage"]
    assert isinstance(usage, list) and len(usage) <= 10 and len(set(usage)) == len(usage)
    assert set(usage) <= ALLOWED_USAGE, usage
    assert set(usage) & {"ENCRYPT", "DECRYPT"} == EXPECTED_USAGE[key], usage


def test_key_metadata_curl_createkey_without_key_arn(curl, stores):
    """CreateKey's GetKeyMetadata carries no kmsKeyArn (optional for metadata)."""
    s = stores["demo"]
    doc = assert_ok(
        curl.post(
            s.key_path("demo", "metadata"), metadata_body("CreateKey", key_arn=None), s.creds[0]
        )
    )
    assert doc["keySpec"] == "AES_256" and doc["keyStatus"] == "ENABLED"
    assert {"ENCRYPT", "DECRYPT"} <= set(doc["keyUsage"])


def test_encrypt_only_key(boto, stores):
    s = stores["demo"]
    path = s.key_path("demo-encrypt-only", "encrypt")
    pt = secret_marker("pt")
    enc = assert_ok(boto.post(path, encrypt_body(pt, aad=b"ctx"), s.creds[0]))
    assert_encrypt_response(enc, pt, b"ctx", False)
    # CDIV needs the round-trip decrypt, which this key may not do.
    assert_json_error(
        boto.post(path, encrypt_body(pt, cdiv=True), s.creds[0]), 400, "InvalidKeyUsageException"
    )
    r = boto.post(
        s.key_path("demo-encrypt-only", "decrypt"), decrypt_body(enc, aad=b"ctx"), s.creds[0]
    )
    assert_json_error(r, 400, "InvalidKeyUsageException")


@pytest.mark.parametrize("key", ["demo-decrypt-only", "demo-no-usage"])
@pytest.mark.parametrize("variant", ["plain", "aad", "cdiv"])
def test_key_without_encrypt_usage(req, stores, key, variant):
    s = stores["demo"]
    body = encrypt_body(
        secret_marker("pt"), aad=b"ctx" if variant != "plain" else None, cdiv=variant == "cdiv"
    )
    assert_json_error(
        req.post(s.key_path(key, "encrypt"), body, s.creds[0]), 400, "InvalidKeyUsageException"
    )


def test_no_usage_key_cannot_decrypt(boto, sealed):
    s, _, aad, enc = sealed
    r = boto.post(s.key_path("demo-no-usage", "decrypt"), decrypt_body(enc, aad=aad), s.creds[0])
    assert_json_error(r, 400, "InvalidKeyUsageException")


# ---------------------------------------------------------------------------------------------
# Key store state: disabled key, disabled store, deny rule, unknown keys
# ---------------------------------------------------------------------------------------------


def test_disabled_key_metadata_reports_disabled(boto, stores):
    s = stores["keyoff"]
    doc = assert_ok(boto.post(s.key_path("demo", "metadata"), metadata_body(), s.creds[0]))
    assert doc["keyStatus"] == "DISABLED", doc
    assert doc["keySpec"] == "AES_256"


def test_disabled_key_encrypt_decrypt_invalid_state(boto, stores, sealed):
    s = stores["keyoff"]
    assert_json_error(
        boto.post(s.key_path("demo", "encrypt"), encrypt_body(secret_marker("pt")), s.creds[0]),
        400,
        "InvalidStateException",
    )
    _, _, aad, enc = sealed
    assert_json_error(
        boto.post(s.key_path("demo", "decrypt"), decrypt_body(enc, aad=aad), s.creds[0]),
        400,
        "InvalidStateException",
    )


@pytest.mark.parametrize("op", ["metadata", "encrypt", "decrypt"])
def test_disabled_store_invalid_state(boto, stores, sealed, op):
    s = stores["storeoff"]
    _, _, aad, enc = sealed
    body = {
        "metadata": metadata_body(),
        "encrypt": encrypt_body(secret_marker("pt")),
        "decrypt": decrypt_body(enc, aad=aad),
    }[op]
    assert_json_error(
        boto.post(s.key_path("demo", op), body, s.creds[0]), 400, "InvalidStateException"
    )


@pytest.mark.parametrize("op", ["metadata", "encrypt", "decrypt"])
def test_deny_rule_access_denied(boto, stores, sealed, op):
    s = stores["demo"]
    _, _, aad, enc = sealed
    request_id = rid()
    DENIED_REQUEST_IDS.append(request_id)
    kw = {"principal": DENIED_PRINCIPAL, "request_id": request_id}
    body = {
        "metadata": metadata_body(**kw),
        "encrypt": encrypt_body(secret_marker("pt"), **kw),
        "decrypt": decrypt_body(enc, aad=aad, **kw),
    }[op]
    assert_json_error(
        boto.post(s.key_path("demo", op), body, s.creds[0]), 403, "AccessDeniedException"
    )


def test_deny_rule_is_per_store(boto, stores):
    s = stores["second"]
    assert_ok(
        boto.post(
            s.key_path("demo", "metadata"), metadata_body(principal=DENIED_PRINCIPAL), s.creds[0]
        )
    )


@pytest.mark.parametrize("key", ["nosuchkey", "demo-encrypt-only", "xks-health-test"])
def test_key_not_in_store(boto, stores, key):
    """Unknown key, a token key this store may not use, and the health test key → 404."""
    s = stores["second"]
    for op, body in [("metadata", metadata_body()), ("encrypt", encrypt_body(secret_marker("pt")))]:
        assert_json_error(
            boto.post(s.key_path(key, op), body, s.creds[0]), 404, "KeyNotFoundException"
        )


def test_key_not_found_curl(curl, stores):
    s = stores["demo"]
    assert_json_error(
        curl.post(s.key_path("absent-key", "metadata"), metadata_body(), s.creds[0]),
        404,
        "KeyNotFoundException",
    )


def test_throttling_quota(boto, stores):
    """rate=1 burst=1: a quick burst of 5 gets at least one 429; the rest succeed."""
    s = stores["throttled"]
    replies = [
        boto.post(
            s.health_path.replace("/health", "/keys/demo/metadata"), metadata_body(), s.creds[0]
        )
        for _ in range(5)
    ]
    statuses = [r.status for r in replies]
    assert statuses[0] == 200, replies[0].describe()
    throttled = [r for r in replies if r.status == 429]
    assert throttled, f"no 429 in a burst of 5 at rate=1/s: {statuses}"
    for r in throttled:
        assert_json_error(r, 429, "ThrottlingException")
    assert set(statuses) <= {200, 429}, statuses


# ---------------------------------------------------------------------------------------------
# Key id resolution: wildcard stores and explicit key_labels
# ---------------------------------------------------------------------------------------------


def test_wildcard_store_reaches_token_keys(boto, stores):
    s = stores["wildcard"]
    for key, usage in EXPECTED_USAGE.items():
        doc = assert_ok(boto.post(s.key_path(key, "metadata"), metadata_body(), s.creds[0]))
        assert set(doc["keyUsage"]) & {"ENCRYPT", "DECRYPT"} == usage


@pytest.mark.parametrize("op", ["metadata", "encrypt"])
def test_wildcard_store_never_exposes_health_key(boto, stores, op):
    """keys = ["*"] means every key *except* the dedicated health test key."""
    s = stores["wildcard"]
    body = metadata_body() if op == "metadata" else encrypt_body(secret_marker("pt"))
    assert_json_error(
        boto.post(s.key_path("xks-health-test", op), body, s.creds[0]), 404, "KeyNotFoundException"
    )


def test_key_labels_map_external_id_to_hsm_key(boto, stores):
    """alias-1 → HSM key "demo": same key material as the demo store's "demo" key."""
    aliased, demo = stores["aliased"], stores["demo"]
    pt = secret_marker("pt")
    enc = assert_ok(
        boto.post(
            aliased.key_path("alias-1", "encrypt"), encrypt_body(pt, cdiv=True), aliased.creds[0]
        )
    )
    dec = assert_ok(boto.post(demo.key_path("demo", "decrypt"), decrypt_body(enc), demo.creds[0]))
    assert unb64(dec["plaintext"]) == pt
    # The HSM label itself is not an external id of this store.
    assert_json_error(
        boto.post(aliased.key_path("demo", "metadata"), metadata_body(), aliased.creds[0]),
        404,
        "KeyNotFoundException",
    )


@pytest.mark.parametrize(
    ("operation", "denied"),
    [
        ("ForbiddenOperation", True),
        ("Forbidden", True),
        ("NotForbidden", False),
        ("Encrypt", False),
    ],
)
def test_deny_rule_operation_glob(boto, stores, operation, denied):
    s = stores["demo"]
    r = boto.post(
        s.key_path("demo", "encrypt"),
        encrypt_body(secret_marker("pt"), operation=operation),
        s.creds[0],
    )
    if denied:
        assert_json_error(r, 403, "AccessDeniedException")
    else:
        assert_ok(r)


@pytest.mark.parametrize(
    ("key", "via", "denied"),
    [
        ("demo-encrypt-only", "blocked-svc", True),
        ("demo-encrypt-only", "ebs", False),
        ("demo-encrypt-only", None, False),
        ("demo", "blocked-svc", False),
    ],
)
def test_deny_rule_fields_all_must_match(boto, stores, key, via, denied):
    """A rule naming several fields matches only when every one of them matches."""
    s = stores["demo"]
    extra = {"kmsViaService": via} if via else {}
    r = boto.post(
        s.key_path(key, "encrypt"), encrypt_body(secret_marker("pt"), **extra), s.creds[0]
    )
    if denied:
        assert_json_error(r, 403, "AccessDeniedException")
    else:
        assert_ok(r)
