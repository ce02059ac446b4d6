"""Request validation table: what KMS may send, and what each defect answers."""

import base64

import orjson
import pytest

from xksproxy.xks import protocol
from xksproxy.xks.errors import UnsupportedOperationException, ValidationException

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
META = {
    "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
    "kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:key/1234",
    "kmsOperation": "Encrypt",
    "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
}
MAX_PT = 65536


def enc(**over):
    doc = {
        "requestMetadata": dict(META),
        "plaintext": B64(b"hello"),
        "encryptionAlgorithm": "AES_GCM",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def dec(**over):
    doc = {
        "requestMetadata": dict(META),
        "ciphertext": B64(b"c" * 5),
        "initializationVector": B64(b"i" * 12),
        "authenticationTag": B64(b"t" * 16),
        "encryptionAlgorithm": "AES_GCM",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def parse(op, doc):
    return protocol.parse_request(op, doc, max_plaintext_bytes=MAX_PT)


def test_encrypt_happy_path_with_unknown_fields_ignored():
    doc = enc(
        additionalAuthenticatedData=B64(b"aad"),
        ciphertextDataIntegrityValueAlgorithm="SHA_256",
        futureField=1,
    )
    doc["requestMetadata"]["someNewMetadata"] = {"x": 1}
    req = parse("encrypt", doc)
    assert req.plaintext == b"hello" and req.aad == b"aad" and req.want_cdiv
    assert req.metadata.kms_request_id == META["kmsRequestId"]
    assert "hello" not in repr(req)


def test_encrypt_accepts_spec_minimum_sizes():
    req = parse(
        "encrypt", enc(plaintext=B64(b"p" * 4300), additionalAuthenticatedData=B64(b"a" * 8192))
    )
    assert len(req.plaintext) == 4300 and len(req.aad) == 8192


def test_unknown_kms_operation_and_odd_request_id_are_accepted():
    doc = enc()
    doc["requestMetadata"].update(kmsOperation="BulkEncryptOfTheFuture", kmsRequestId="not-a-uuid")
    assert parse("encrypt", doc).metadata.kms_operation == "BulkEncryptOfTheFuture"


@pytest.mark.parametrize(
    "op,doc,field",
    [
        ("encrypt", enc(plaintext=...), "plaintext"),
        ("encrypt", enc(plaintext=5), "plaintext"),
        ("encrypt", enc(plaintext="aGVsbG8"), "plaintext"),  # missing padding
        ("encrypt", enc(plaintext="aGVs bG8="), "plaintext"),  # whitespace
        ("encrypt", enc(plaintext="aGVsbG8=\n"), "plaintext"),
        ("encrypt", enc(plaintext="-_-_"), "plaintext"),  # urlsafe alphabet
        ("encrypt", enc(plaintext="héllo=="), "plaintext"),
        ("encrypt", enc(encryptionAlgorithm=...), "encryptionAlgorithm"),
        ("encrypt", enc(encryptionAlgorithm=1), "encryptionAlgorithm"),
        ("encrypt", enc(additionalAuthenticatedData="%%%%"), "additionalAuthenticatedData"),
        (
            "encrypt",
            enc(ciphertextDataIntegrityValueAlgorithm=[]),
            "ciphertextDataIntegrityValueAlgorithm",
        ),
        ("encrypt", enc(requestMetadata=...), "requestMetadata"),
        ("encrypt", enc(requestMetadata="x"), "requestMetadata"),
        ("decrypt", dec(initializationVector=B64(b"i" * 11)), "initializationVector"),
        ("decrypt", dec(initializationVector=B64(b"i" * 32)), "initializationVector"),
        ("decrypt", dec(authenticationTag=B64(b"t" * 15)), "authenticationTag"),
        ("decrypt", dec(authenticationTag=...), "authenticationTag"),
        ("decrypt", dec(ciphertext=...), "ciphertext"),
        ("decrypt", dec(ciphertextMetadata=B64(b"m" * 21)), "ciphertextMetadata"),
    ],
)
def test_invalid_input_is_validation_exception_naming_the_field(op, doc, field):
    with pytest.raises(ValidationException) as info:
        parse(op, doc)
    assert field in info.value.message
    assert info.value.status == 400


@pytest.mark.parametrize(
    "op,name",
    [
        ("encrypt", "awsPrincipalArn"),
        ("encrypt", "kmsKeyArn"),
        ("encrypt", "kmsOperation"),
        ("encrypt", "kmsRequestId"),
        ("decrypt", "kmsKeyArn"),
        ("metadata", "awsPrincipalArn"),
        ("metadata", "kmsRequestId"),
        ("health", "kmsRequestId"),
        ("health", "kmsOperation"),
    ],
)
def test_missing_required_metadata(op, name):
    doc = dec() if op == "decrypt" else enc()
    del doc["requestMetadata"][name]
    with pytest.raises(ValidationException, match=f"requestMetadata.{name}"):
        parse(op, doc)


def test_optional_metadata_is_optional_and_type_checked():
    doc = {
        "requestMetadata": {
            "kmsOperation": "DescribeKey",
            "kmsRequestId": "r",
            "awsPrincipalArn": "p",
        }
    }
    assert parse("metadata", doc).metadata.kms_key_arn is None
    doc["requestMetadata"]["kmsViaService"] = 3
    with pytest.raises(ValidationException, match="kmsViaService"):
        parse("metadata", doc)


def test_health_needs_only_request_id_and_operation():
    req = parse(
        "health", {"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "x"}}
    )
    assert req.metadata.kms_operation == "KmsHealthCheck"
    with pytest.raises(ValidationException):
        parse("health", {})


@pytest.mark.parametrize(
    "op,doc,field",
    [
        ("encrypt", enc(encryptionAlgorithm="AES_CBC"), "encryptionAlgorithm"),
        ("decrypt", dec(encryptionAlgorithm="RSA"), "encryptionAlgorithm"),
        (
            "encrypt",
            enc(ciphertextDataIntegrityValueAlgorithm="SHA_512"),
            "ciphertextDataIntegrityValueAlgorithm",
        ),
        ("encrypt", enc(plaintext=B64(b"p" * (MAX_PT + 1))), "plaintext"),
        ("encrypt", enc(plaintext="A" * 200000), "plaintext"),
        (
            "encrypt",
            enc(additionalAuthenticatedData=B64(b"a" * 65536)),
            "additionalAuthenticatedData",
        ),
        ("decrypt", dec(ciphertext=B64(b"c" * (MAX_PT + 1))), "ciphertext"),
    ],
)
def test_beyond_our_limits_is_unsupported_operation(op, doc, field):
    with pytest.raises(UnsupportedOperationException) as info:
        parse(op, doc)
    assert field in info.value.message and info.value.status == 501


def test_decrypt_accepts_16_byte_iv_and_metadata():
    req = parse(
        "decrypt", dec(initializationVector=B64(b"i" * 16), ciphertextMetadata=B64(b"\x01\x00"))
    )
    assert len(req.iv) == 16 and req.ciphertext_metadata == b"\x01\x00"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'"x"', b"{"])
def test_body_must_be_a_json_object(body):
    with pytest.raises(ValidationException):
        protocol.decode_json(body)


def test_messages_never_echo_values():
    secret = B64(b"top secret plaintext")[:-1]  # broken padding
    with pytest.raises(ValidationException) as info:
        parse("encrypt", enc(plaintext=secret))
    assert secret not in info.value.message
    assert b"secret" not in info.value.body()
    assert orjson.loads(info.value.body())["errorName"] == "ValidationException"


@pytest.mark.parametrize("bad", ["AAAA====", "QR==", "AAB=", "QQ==\n", " QQ==", "QQ-_"])
def test_only_canonical_standard_base64_is_accepted(bad):
    """One value, one spelling: excess padding, stray bits, whitespace and urlsafe are refused."""
    with pytest.raises(ValidationException, match="plaintext"):
        parse("encrypt", enc(plaintext=bad))
