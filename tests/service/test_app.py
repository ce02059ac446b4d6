"""The app in-process against the real SoftHSMv2 token: what KMS would see."""

import base64
import hashlib

import orjson
import pytest
from service_helpers import AKID2, SECRET2, b64, metadata

import sigv4

ENC = "/demo/kms/xks/v1/keys/demo/encrypt"
DEC = "/demo/kms/xks/v1/keys/demo/decrypt"
META = "/demo/kms/xks/v1/keys/demo/metadata"
HEALTH = "/demo/kms/xks/v1/health"


def body(op="Encrypt", **fields) -> bytes:
    return orjson.dumps({"requestMetadata": metadata(op), **fields})


def enc_body(plaintext=b"data key bytes 32 long .........", aad=None, cdiv=False) -> bytes:
    fields = {"plaintext": b64(plaintext), "encryptionAlgorithm": "AES_GCM"}
    if aad is not None:
        fields["additionalAuthenticatedData"] = b64(aad)
    if cdiv:
        fields["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return body(**fields)


def dec_body(enc: dict, aad=None, **over) -> bytes:
    fields = {
        "ciphertext": enc["ciphertext"],
        "initializationVector": enc["initializationVector"],
        "authenticationTag": enc["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    }
    if "ciphertextMetadata" in enc:
        fields["ciphertextMetadata"] = enc["ciphertextMetadata"]
    if aad is not None:
        fields["additionalAuthenticatedData"] = b64(aad)
    fields.update(over)
    return body("Decrypt", **{k: v for k, v in fields.items() if v is not None})


def error_name(resp) -> str:
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json()
    assert set(doc) <= {"errorName", "errorMessage"}
    msg = doc.get("errorMessage", "")
    assert len(msg) < 512 and all(" " <= c <= "~" for c in msg)
    return doc["errorName"]


async def test_get_key_metadata(client):
    resp = await client.post(META, body("DescribeKey"))
    assert resp.status_code == 200
    assert resp.json() == {
        "keySpec": "AES_256",
        "keyUsage": ["ENCRYPT", "DECRYPT"],
        "keyStatus": "ENABLED",
    }


async def test_encrypt_decrypt_round_trip_with_aad(client):
    pt, aad = b"p" * 4300, b"a" * 8192
    resp = await client.post(ENC, enc_body(pt, aad))
    assert resp.status_code == 200, resp.text
    enc = resp.json()
    assert "ciphertextDataIntegrityValue" not in enc
    assert len(base64.b64decode(enc["ciphertext"])) == len(pt)
    assert len(base64.b64decode(enc["initializationVector"])) == 12
    assert len(base64.b64decode(enc["authenticationTag"])) == 16
    assert len(base64.b64decode(enc["ciphertextMetadata"])) <= 20
    resp = await client.post(DEC, dec_body(enc, aad))
    assert resp.status_code == 200, resp.text
    assert base64.b64decode(resp.json()["plaintext"]) == pt


async def test_cdiv_present_iff_requested_and_correct(client):
    aad = b"project=nile,department=marketing"
    enc = (await client.post(ENC, enc_body(aad=aad, cdiv=True))).json()
    raw = b"".join(
        base64.b64decode(enc[k])
        for k in ("ciphertextMetadata", "initializationVector", "ciphertext", "authenticationTag")
    )
    expected = base64.b64encode(hashlib.sha256(aad + raw).digest()).decode()
    assert enc["ciphertextDataIntegrityValue"] == expected


@pytest.mark.parametrize(
    "field",
    ["ciphertext", "initializationVector", "authenticationTag", "ciphertextMetadata", "aad"],
)
async def test_tampering_is_invalid_ciphertext(client, field):
    aad = b"context"
    enc = (await client.post(ENC, enc_body(aad=aad))).json()
    if field == "aad":
        aad = b"Context"
    elif field == "ciphertextMetadata":
        enc[field] = b64(b"\x01\x01")  # well-formed, but not what was encrypted
    else:
        raw = bytearray(base64.b64decode(enc[field]))
        raw[0] ^= 1
        enc[field] = b64(bytes(raw))
    resp = await client.post(DEC, dec_body(enc, aad))
    assert resp.status_code == 400
    assert error_name(resp) == "InvalidCiphertextException"


async def test_metadata_moved_into_aad_does_not_decrypt(client):
    enc = (await client.post(ENC, enc_body())).json()
    moved = dict(enc)
    meta = moved.pop("ciphertextMetadata")
    resp = await client.post(DEC, dec_body(moved, base64.b64decode(meta)))
    assert error_name(resp) == "InvalidCiphertextException"


async def test_partial_usage_keys(client):
    base = "/demo/kms/xks/v1/keys/"
    resp = await client.post(base + "demo-encrypt-only/metadata", body("DescribeKey"))
    assert resp.json()["keyUsage"] == ["ENCRYPT"]
    resp = await client.post(base + "demo-encrypt-only/encrypt", enc_body())
    assert resp.status_code == 200
    enc = resp.json()
    resp = await client.post(base + "demo-encrypt-only/encrypt", enc_body(cdiv=True))
    assert (resp.status_code, error_name(resp)) == (400, "InvalidKeyUsageException")
    resp = await client.post(base + "demo-encrypt-only/decrypt", dec_body(enc))
    assert (resp.status_code, error_name(resp)) == (400, "InvalidKeyUsageException")
    for key in ("demo-no-usage",):
        for cdiv in (False, True):
            resp = await client.post(base + f"{key}/encrypt", enc_body(aad=b"x", cdiv=cdiv))
            assert (resp.status_code, error_name(resp)) == (400, "InvalidKeyUsageException")
    resp = await client.post(base + "demo-no-usage/metadata", body("DescribeKey"))
    assert resp.json()["keyUsage"] == []


async def test_disabled_key(client):
    base = "/demo/kms/xks/v1/keys/demo-decrypt-only/"
    resp = await client.post(base + "metadata", body("DescribeKey"))
    assert resp.json() == {"keySpec": "AES_256", "keyUsage": ["DECRYPT"], "keyStatus": "DISABLED"}
    resp = await client.post(base + "encrypt", enc_body())
    assert (resp.status_code, error_name(resp)) == (400, "InvalidStateException")


async def test_health(client):
    resp = await client.post(
        HEALTH,
        orjson.dumps(
            {"requestMetadata": {"kmsRequestId": "r-1", "kmsOperation": "KmsHealthCheck"}}
        ),
    )
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["xksProxyFleetSize"] == 1 and doc["xksProxyVendor"] and doc["ekmVendor"]
    (entry,) = doc["ekmFleetDetails"]
    assert entry["id"] == "softhsm-0" and entry["model"] == "SoftHSMv2 test"
    assert entry["healthStatus"] in ("ACTIVE", "DEGRADED")


async def test_health_without_metadata_is_validation_error(client):
    resp = await client.post(HEALTH, b"{}")
    assert (resp.status_code, error_name(resp)) == (400, "ValidationException")


async def test_disabled_store_still_answers_health(client):
    kw = dict(akid=AKID2, secret=SECRET2)
    resp = await client.post(
        "/other/tenant/kms/xks/v1/health",
        orjson.dumps({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}}),
        **kw,
    )
    assert resp.status_code == 200
    resp = await client.post("/other/tenant/kms/xks/v1/keys/demo/encrypt", enc_body(), **kw)
    assert (resp.status_code, error_name(resp)) == (400, "InvalidStateException")


@pytest.mark.parametrize(
    "path",
    [
        "/nope/kms/xks/v1/health",
        "/demo/kms/xks/v2/health",
        "/demo/kms/xks/v1/keys/demo/sign",
        "/demo/kms/xks/v1/keys/demo",
        "/",
        "/demo/kms/xks/v1/keys/" + "a" * 300 + "/encrypt",
        "/demo/kms/xks/v1/health/",
    ],
)
async def test_unknown_paths_are_invalid_uri_path_json(client, path):
    resp = await client.post(path, enc_body())
    assert (resp.status_code, error_name(resp)) == (404, "InvalidUriPathException")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_non_post_is_405_json(client, method):
    resp = await client.http.request(method, ENC)
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    error_name(resp)


async def test_ping_is_unauthenticated(client):
    resp = await client.http.get("/ping")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


async def test_authentication_failures_are_401(client):
    assert error_name(await client.http.post(ENC, content=enc_body())) == (
        "AuthenticationFailedException"
    )
    resp = await client.post(ENC, enc_body(), secret=SECRET2 + "A")
    assert (resp.status_code, error_name(resp)) == (401, "AuthenticationFailedException")
    # another store's valid credential is unknown here
    resp = await client.post(ENC, enc_body(), akid=AKID2, secret=SECRET2)
    assert (resp.status_code, error_name(resp)) == (401, "AuthenticationFailedException")
    # body changed after signing
    hdrs = {"content-type": "application/json"}
    hdrs.update(
        sigv4.sign(
            method="POST",
            host="xks.example.com",
            path=ENC,
            headers=hdrs,
            body=enc_body(),
            credential=sigv4.Credential("AKIAEXAMPLEEXAMPLE23", "x" * 43),
            region="us-east-1",
        )
    )
    resp = await client.http.post(ENC, content=enc_body(b"other"), headers=hdrs)
    assert resp.status_code == 401


async def test_botocore_signed_request_is_accepted(client):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from service_helpers import AKID, SECRET

    data = body("DescribeKey")
    req = AWSRequest(
        method="POST",
        url=f"http://xks.example.com{META}",
        data=data,
        headers={"content-type": "application/json"},
    )
    SigV4Auth(Credentials(AKID, SECRET), "kms-xks-proxy", "eu-west-1").add_auth(req)
    resp = await client.http.post(META, content=data, headers=dict(req.headers.items()))
    assert resp.status_code == 200, resp.text


async def test_unknown_and_invalid_key_ids(client):
    resp = await client.post("/demo/kms/xks/v1/keys/not-listed/metadata", body("DescribeKey"))
    assert (resp.status_code, error_name(resp)) == (404, "KeyNotFoundException")
    resp = await client.post("/demo/kms/xks/v1/keys/missing-on-hsm/metadata", body("x"))
    assert (resp.status_code, error_name(resp)) == (404, "KeyNotFoundException")
    resp = await client.post("/demo/kms/xks/v1/keys/bad%20id/metadata", body("x"))
    assert (resp.status_code, error_name(resp)) == (400, "ValidationException")


async def test_validation_and_unsupported(client):
    resp = await client.post(ENC, body(plaintext="!!", encryptionAlgorithm="AES_GCM"))
    assert (resp.status_code, error_name(resp)) == (400, "ValidationException")
    assert "plaintext" in resp.json()["errorMessage"]
    resp = await client.post(ENC, body(plaintext=b64(b"x"), encryptionAlgorithm="AES_CBC"))
    assert (resp.status_code, error_name(resp)) == (501, "UnsupportedOperationException")
    resp = await client.post(ENC, b"[not json")
    assert (resp.status_code, error_name(resp)) == (400, "ValidationException")


async def test_body_cap(client):
    big = enc_body(b"x" * 300000)
    resp = await client.post(ENC, big)
    assert (resp.status_code, error_name(resp)) == (400, "ValidationException")
    assert "max_body_bytes" in resp.json()["errorMessage"]


async def test_policy_deny_names_rule_in_log(client):
    data = orjson.loads(enc_body())
    data["requestMetadata"]["awsPrincipalArn"] = "arn:aws:iam::123456789012:root"
    resp = await client.post(ENC, orjson.dumps(data))
    assert (resp.status_code, error_name(resp)) == (403, "AccessDeniedException")
    record = orjson.loads(client.log[-1])
    assert record["denyRule"] == "no-root" and record["outcome"] == "AccessDeniedException"


async def test_request_log_has_one_safe_line_per_request(client):
    secret_pt = b"plaintext-that-must-never-be-logged"
    enc = (await client.post(ENC, enc_body(secret_pt, aad=b"aad-secret"))).json()
    await client.post(DEC, dec_body(enc, b"aad-secret"))
    await client.http.post(ENC, content=b"{}")
    assert len(client.log) == 3
    text = b"".join(client.log)
    for needle in (
        secret_pt,
        b64(secret_pt).encode(),
        b"aad-secret",
        b"Authorization",
        b"AWS4-HMAC",
        b64(b"aad-secret").encode(),
    ):
        assert needle not in text
    first = orjson.loads(client.log[0])
    assert first["kmsRequestId"] == metadata()["kmsRequestId"]
    assert first["kmsOperation"] == "Encrypt" and first["keyStore"] == "demo"
    assert first["keyId"] == "demo" and first["outcome"] == "ok" and first["status"] == 200
    assert first["principal"].endswith("user/Alice") and first["latency_ms"] >= 0
    assert orjson.loads(client.log[2])["outcome"] == "AuthenticationFailedException"


async def test_framing_interoperates_with_an_independent_aes_gcm(client):
    """Known key material: our HSM AAD framing and 16-byte IVs match a software AES-GCM."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from support.hsm_keys import KNOWN_KEY_MATERIAL

    from xksproxy.xks.framing import hsm_aad

    path = "/demo/kms/xks/v1/keys/known/"
    aead = AESGCM(KNOWN_KEY_MATERIAL)
    aad, meta = b"ctx", b"\x01\x00"
    enc = (await client.post(path + "encrypt", enc_body(b"secret", aad=aad))).json()
    assert base64.b64decode(enc["ciphertextMetadata"]) == meta
    raw = base64.b64decode(enc["ciphertext"]) + base64.b64decode(enc["authenticationTag"])
    assert (
        aead.decrypt(base64.b64decode(enc["initializationVector"]), raw, hsm_aad(aad, meta))
        == b"secret"
    )
    for iv in (b"\x07" * 12, b"\x09" * 16):
        ct = aead.encrypt(iv, b"from elsewhere", hsm_aad(aad, None))
        ref = {
            "ciphertext": b64(ct[:-16]),
            "authenticationTag": b64(ct[-16:]),
            "initializationVector": b64(iv),
        }
        resp = await client.post(path + "decrypt", dec_body(ref, aad))
        assert resp.status_code == 200, resp.text
        assert base64.b64decode(resp.json()["plaintext"]) == b"from elsewhere"


async def test_operations_hooks_see_one_context_per_request(client, app):
    from xksproxy.xks.errors import ThrottlingException

    seen, released, finished = [], [], []
    app.before_dispatch.append(
        lambda ctx: seen.append((ctx.store, ctx.key_id, ctx.access_key_id, ctx.kms_operation))
    )
    app.observers.append(lambda ctx: finished.append((ctx.status, ctx.outcome)))
    app.admission.append(lambda ctx: lambda: released.append(ctx.operation))
    assert (await client.post(META, body("DescribeKey"))).status_code == 200
    assert seen == [("demo", "demo", "AKIAEXAMPLEEXAMPLE23", "DescribeKey")]

    def refuse(ctx):
        raise ThrottlingException()

    app.admission.append(refuse)
    resp = await client.post(META, body("DescribeKey"))
    assert (resp.status_code, error_name(resp)) == (429, "ThrottlingException")
    assert released == ["metadata", "metadata"]  # released even when a later hook refuses
    assert finished == [(200, "ok"), (429, "ThrottlingException")]


@pytest.mark.parametrize(
    "field", ["kmsRequestId", "kmsViaService", "awsSourceVpc", "awsPrincipalArn"]
)
async def test_over_long_metadata_is_cut_short_in_the_logs(client, app, field):
    """An opaque id is never refused for its length, but no log line carries more than
    MAX_LOGGED_CHARS of it (an over-long ARN is refused, and its log line is bounded too)."""
    from xksproxy.xks.protocol import MAX_LOGGED_CHARS

    seen = []
    app.observers.append(lambda ctx: seen.append(dict(ctx.extra["metadata"])))
    doc = orjson.loads(enc_body())
    doc["requestMetadata"][field] = "Z" * 100_000
    resp = await client.post(ENC, orjson.dumps(doc))
    assert resp.status_code == (400 if field == "awsPrincipalArn" else 200), resp.text
    line = orjson.loads(client.log[-1])
    assert len(client.log[-1]) < 2 * MAX_LOGGED_CHARS + 1000
    logged = seen[-1][field]
    assert logged.startswith("Z" * MAX_LOGGED_CHARS)
    assert logged.endswith(f"...[{100_000 - MAX_LOGGED_CHARS} more characters]")
    if field == "kmsRequestId":
        assert line["kmsRequestId"] == logged
