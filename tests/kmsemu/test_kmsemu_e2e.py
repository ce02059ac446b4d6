"""boto3 against a real emulator process calling a real embedded proxy (HTTPS, SigV4, SoftHSMv2).

Fixtures (conftest.py): one proxy, one emulator, one connected key store and one KMS key on the
proxy's ``demo`` key per module. Tests never change the shared key's state; tests that need a
key to disable or delete create a local one, and tests that stop processes start their own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import botocore.exceptions
import httpx
import pytest
from kmsemu_harness import Emulator, Proxy, create_store, start_emulator, start_proxy

import sigv4
from kmsemu.mapping import connection_error_code
from kmsemu.xksclient import ProxyConfig, XksClient, XksTlsError


def error_code(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_key_store_is_connected_and_described(kms: Any, key_store_id: str, proxy: Proxy) -> None:
    (ks,) = kms.describe_custom_key_stores(CustomKeyStoreId=key_store_id)["CustomKeyStores"]
    assert ks["ConnectionState"] == "CONNECTED"
    assert "ConnectionErrorCode" not in ks
    assert ks["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE"
    cfg = ks["XksProxyConfiguration"]
    assert cfg["UriEndpoint"] == proxy.url and cfg["UriPath"] == proxy.uri_path
    assert cfg["AccessKeyId"] == proxy.credential["AccessKeyId"]
    assert proxy.credential["RawSecretAccessKey"] not in str(ks)


def test_create_key_on_demo_reports_xks_configuration(
    kms: Any, xks_key: dict[str, Any], key_store_id: str
) -> None:
    md = kms.describe_key(KeyId=xks_key["Arn"])["KeyMetadata"]
    assert md["Origin"] == "EXTERNAL_KEY_STORE"
    assert md["CustomKeyStoreId"] == key_store_id
    assert md["XksKeyConfiguration"] == {"Id": "demo"}
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    listed = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    assert xks_key["KeyId"] in listed


def test_encrypt_decrypt_round_trip(kms: Any, xks_key: dict[str, Any]) -> None:
    ctx = {"purpose": "test", "tenant": "a"}
    out = kms.encrypt(KeyId=xks_key["KeyId"], Plaintext=b"attack at dawn", EncryptionContext=ctx)
    assert out["KeyId"] == xks_key["Arn"]
    assert b"attack at dawn" not in out["CiphertextBlob"]
    back = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext=ctx)
    assert back["Plaintext"] == b"attack at dawn"
    assert back["KeyId"] == xks_key["Arn"]
    # KeyId given explicitly, as the ARN
    again = kms.decrypt(
        CiphertextBlob=out["CiphertextBlob"], EncryptionContext=ctx, KeyId=xks_key["Arn"]
    )
    assert again["Plaintext"] == b"attack at dawn"


def test_encrypt_through_an_alias(kms: Any, xks_key: dict[str, Any]) -> None:
    alias = f"alias/kmsemu-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=xks_key["KeyId"])
    try:
        names = {a["AliasName"]: a for a in kms.list_aliases(KeyId=xks_key["KeyId"])["Aliases"]}
        assert names[alias]["TargetKeyId"] == xks_key["KeyId"]
        out = kms.encrypt(KeyId=alias, Plaintext=b"via alias")
        assert out["KeyId"] == xks_key["Arn"]
        assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == b"via alias"
    finally:
        kms.delete_alias(AliasName=alias)


def test_generate_data_key_round_trip(kms: Any, xks_key: dict[str, Any]) -> None:
    ctx = {"file": "report.pdf"}
    dk = kms.generate_data_key(KeyId=xks_key["KeyId"], KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32
    back = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert back["Plaintext"] == dk["Plaintext"]
    wo = kms.generate_data_key_without_plaintext(KeyId=xks_key["KeyId"], NumberOfBytes=64)
    assert "Plaintext" not in wo
    assert len(kms.decrypt(CiphertextBlob=wo["CiphertextBlob"])["Plaintext"]) == 64


def test_re_encrypt_round_trip(
    kms: Any, xks_key: dict[str, Any], local_key: dict[str, Any]
) -> None:
    first = kms.encrypt(KeyId=xks_key["KeyId"], Plaintext=b"move me", EncryptionContext={"v": "1"})
    moved = kms.re_encrypt(
        CiphertextBlob=first["CiphertextBlob"],
        SourceEncryptionContext={"v": "1"},
        DestinationKeyId=local_key["KeyId"],
        DestinationEncryptionContext={"v": "2"},
    )
    assert moved["SourceKeyId"] == xks_key["Arn"] and moved["KeyId"] == local_key["Arn"]
    back = kms.re_encrypt(
        CiphertextBlob=moved["CiphertextBlob"],
        SourceEncryptionContext={"v": "2"},
        DestinationKeyId=xks_key["Arn"],
    )
    assert kms.decrypt(CiphertextBlob=back["CiphertextBlob"])["Plaintext"] == b"move me"


@pytest.mark.parametrize("xks_key_id", ["demo-encrypt-only", "demo-decrypt-only", "demo-no-usage"])
def test_create_key_refuses_keys_without_both_usages(
    kms: Any, key_store_id: str, xks_key_id: str
) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.create_key(
            Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=key_store_id, XksKeyId=xks_key_id
        )
    assert error_code(exc) == "XksKeyInvalidConfigurationException"


def test_create_key_on_unknown_external_key(kms: Any, key_store_id: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.create_key(
            Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=key_store_id, XksKeyId="no-such-key"
        )
    assert error_code(exc) == "XksKeyNotFoundException"


def test_second_kms_key_on_the_same_external_key_is_refused(
    kms: Any, key_store_id: str, xks_key: dict[str, Any]
) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=key_store_id, XksKeyId="demo")
    assert error_code(exc) == "XksKeyAlreadyInUseException"


def test_changed_encryption_context_is_invalid_ciphertext(
    kms: Any, xks_key: dict[str, Any]
) -> None:
    out = kms.encrypt(KeyId=xks_key["KeyId"], Plaintext=b"x", EncryptionContext={"a": "1"})
    for ctx in ({"a": "2"}, {}, {"a": "1", "b": "2"}):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext=ctx)
        assert error_code(exc) == "InvalidCiphertextException"


def test_tampered_blob_is_invalid_ciphertext(kms: Any, xks_key: dict[str, Any]) -> None:
    blob = bytearray(kms.encrypt(KeyId=xks_key["KeyId"], Plaintext=b"payload")["CiphertextBlob"])
    for pos in (len(blob) - 1, 2 + 36 + 12 + 1):  # proxy ciphertext, proxy IV
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            kms.decrypt(CiphertextBlob=bytes(bad))
        assert error_code(exc) == "InvalidCiphertextException"


def test_blob_presented_with_another_key(
    kms: Any, xks_key: dict[str, Any], local_key: dict[str, Any]
) -> None:
    blob = kms.encrypt(KeyId=xks_key["KeyId"], Plaintext=b"mine")["CiphertextBlob"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob, KeyId=local_key["KeyId"])
    assert error_code(exc) == "IncorrectKeyException"
    # the key id inside the blob rewritten to the other key: no layer authenticates
    forged = blob.replace(xks_key["KeyId"].encode(), local_key["KeyId"].encode())
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.decrypt(CiphertextBlob=forged)
    assert error_code(exc) == "InvalidCiphertextException"


def test_request_metadata_reaches_the_proxy(
    kms: Any, xks_key: dict[str, Any], proxy: Proxy, emulator: Emulator
) -> None:
    out = kms.encrypt(KeyId=xks_key["KeyId"], Plaintext=b"who am i")
    request_id = out["ResponseMetadata"]["RequestId"]
    # the proxy writes its request log after answering: wait for the line, do not race it
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in proxy.log_records() if r.get("kmsRequestId") == request_id]
        if records or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (record,) = records
    assert record["kmsOperation"] == "Encrypt"
    assert record["operation"] == "encrypt"
    assert record["principal"] == "arn:aws:iam::111122223333:user/kmsemu"
    assert record["keyId"] == "demo"


def test_local_key_lifecycle(kms: Any) -> None:
    key = kms.create_key(Description="lifecycle")["KeyMetadata"]
    assert key["Origin"] == "AWS_KMS"
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"local")["CiphertextBlob"]
    kms.disable_key(KeyId=key["KeyId"])
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob)
    assert error_code(exc) == "DisabledException"
    kms.enable_key(KeyId=key["KeyId"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"local"
    sched = kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    assert sched["KeyState"] == "PendingDeletion"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    assert error_code(exc) == "KMSInvalidStateException"
    kms.cancel_key_deletion(KeyId=key["KeyId"])
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"


def test_generate_random(kms: Any) -> None:
    assert len(kms.generate_random(NumberOfBytes=48)["Plaintext"]) == 48


def test_unknown_key_is_not_found(kms: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.encrypt(KeyId=str(uuid.uuid4()), Plaintext=b"x")
    assert error_code(exc) == "NotFoundException"


def test_wrong_aws_signature_is_refused(emulator: Emulator) -> None:
    wrong_secret = emulator.client(aws_secret_access_key="A" * 40)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        wrong_secret.list_keys()
    assert error_code(exc) == "InvalidSignatureException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    wrong_id = emulator.client(aws_access_key_id="AKIAAAAAAAAAAAAAAAAA")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        wrong_id.list_keys()
    assert error_code(exc) == "UnrecognizedClientException"
    wrong_region = emulator.client(region_name="eu-west-1")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        wrong_region.list_keys()
    assert error_code(exc) == "InvalidSignatureException"
    unsigned = httpx.post(
        emulator.url,
        content=b"{}",
        headers={
            "X-Amz-Target": "TrentService.ListKeys",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    assert unsigned.status_code == 400
    assert unsigned.json()["__type"] == "MissingAuthenticationTokenException"


def test_wrong_proxy_credential_refused_by_create(kms: Any, proxy: Proxy) -> None:
    wrong = dict(proxy.credential, RawSecretAccessKey="B" * 44)
    # "localhost" (in the proxy certificate) keeps the endpoint distinct from the module's store
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.create_custom_key_store(
            CustomKeyStoreName=f"wrong-{uuid.uuid4().hex[:8]}",
            CustomKeyStoreType="EXTERNAL_KEY_STORE",
            XksProxyUriEndpoint=proxy.url.replace("127.0.0.1", "localhost"),
            XksProxyUriPath=proxy.uri_path,
            XksProxyConnectivity="PUBLIC_ENDPOINT",
            XksProxyAuthenticationCredential=wrong,
        )
    assert error_code(exc) == "XksProxyIncorrectAuthenticationCredentialException"


def test_wrong_proxy_credential_fails_connect(kms: Any, proxy: Proxy) -> None:
    ks_id = create_store(
        kms, proxy, f"creds-{uuid.uuid4().hex[:8]}", proxy.url.replace("127.0.0.1", "localhost")
    )
    try:
        kms.update_custom_key_store(
            CustomKeyStoreId=ks_id,
            XksProxyAuthenticationCredential=dict(proxy.credential, RawSecretAccessKey="C" * 44),
        )
        kms.connect_custom_key_store(CustomKeyStoreId=ks_id)
        (ks,) = kms.describe_custom_key_stores(CustomKeyStoreId=ks_id)["CustomKeyStores"]
        assert ks["ConnectionState"] == "FAILED"
        assert ks["ConnectionErrorCode"] == "INVALID_CREDENTIALS"
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            kms.connect_custom_key_store(CustomKeyStoreId=ks_id)  # FAILED: disconnect first
        assert error_code(exc) == "CustomKeyStoreInvalidStateException"
    finally:
        kms.disconnect_custom_key_store(CustomKeyStoreId=ks_id)
        kms.delete_custom_key_store(CustomKeyStoreId=ks_id)


def test_unreachable_proxy_refused_by_create(kms: Any, proxy: Proxy) -> None:
    from support.procs import free_port

    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.create_custom_key_store(
            CustomKeyStoreName=f"nowhere-{uuid.uuid4().hex[:8]}",
            CustomKeyStoreType="EXTERNAL_KEY_STORE",
            XksProxyUriEndpoint=f"https://127.0.0.1:{free_port()}",
            XksProxyUriPath=proxy.uri_path,
            XksProxyConnectivity="PUBLIC_ENDPOINT",
            XksProxyAuthenticationCredential=proxy.credential,
        )
    assert error_code(exc) == "XksProxyUriUnreachableException"


def test_plain_http_endpoint_needs_the_flag(kms: Any, proxy: Proxy) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.create_custom_key_store(
            CustomKeyStoreName=f"plain-{uuid.uuid4().hex[:8]}",
            CustomKeyStoreType="EXTERNAL_KEY_STORE",
            XksProxyUriEndpoint=proxy.url.replace("https://", "http://"),
            XksProxyUriPath=proxy.uri_path,
            XksProxyConnectivity="PUBLIC_ENDPOINT",
            XksProxyAuthenticationCredential=proxy.credential,
        )
    assert error_code(exc) == "ValidationException"
    assert "--allow-plain-http" in exc.value.response["Error"]["Message"]


def test_stopped_proxy_gives_kms_invalid_state(
    kms: Any, emulator: Emulator, proxy_template: Any, tmp_path: Any
) -> None:
    own = start_proxy(proxy_template, tmp_path)
    try:
        ks_id = create_store(kms, own, f"stopped-{uuid.uuid4().hex[:8]}")
        kms.connect_custom_key_store(CustomKeyStoreId=ks_id)
        key = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=ks_id, XksKeyId="demo")[
            "KeyMetadata"
        ]
        blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"before")["CiphertextBlob"]
    finally:
        own.proc.stop()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"after")
    assert error_code(exc) == "KMSInvalidStateException"
    assert "not reachable" in exc.value.response["Error"]["Message"]
    # the emulator's own record of that request says the same
    request_id = exc.value.response["ResponseMetadata"]["RequestId"]
    (line,) = [x for x in emulator.proc.stderr_path.read_text().splitlines() if request_id in x]
    assert "Encrypt status=400 error=KMSInvalidStateException" in line
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob)
    assert error_code(exc) == "KMSInvalidStateException"
    # reconnecting now fails with the code KMS would set
    kms.disconnect_custom_key_store(CustomKeyStoreId=ks_id)
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Unavailable"
    kms.connect_custom_key_store(CustomKeyStoreId=ks_id)
    (ks,) = kms.describe_custom_key_stores(CustomKeyStoreId=ks_id)["CustomKeyStores"]
    assert (ks["ConnectionState"], ks["ConnectionErrorCode"]) == (
        "FAILED",
        "XKS_PROXY_NOT_REACHABLE",
    )
    kms.disconnect_custom_key_store(CustomKeyStoreId=ks_id)


def test_state_survives_an_emulator_restart(proxy: Proxy, tmp_path: Any) -> None:
    state = tmp_path / "emu"
    first = start_emulator(state, proxy.ca_file)
    try:
        kms = first.client()
        ks_id = create_store(kms, proxy, "restart")
        kms.connect_custom_key_store(CustomKeyStoreId=ks_id)
        key = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=ks_id, XksKeyId="demo")[
            "KeyMetadata"
        ]
        kms.create_alias(AliasName="alias/restart", TargetKeyId=key["KeyId"])
        blob = kms.encrypt(KeyId="alias/restart", Plaintext=b"durable")["CiphertextBlob"]
    finally:
        first.proc.stop()
    second = start_emulator(state, proxy.ca_file)
    try:
        assert second.credentials["AccessKeyId"] == first.credentials["AccessKeyId"]
        kms = second.client()  # the same credentials are still accepted
        (ks,) = kms.describe_custom_key_stores(CustomKeyStoreId=ks_id)["CustomKeyStores"]
        assert ks["ConnectionState"] == "CONNECTED"
        assert kms.decrypt(CiphertextBlob=blob, KeyId="alias/restart")["Plaintext"] == b"durable"
    finally:
        second.proc.stop()


def test_emulator_output_hides_the_secret(emulator: Emulator) -> None:
    secret = emulator.credentials["SecretAccessKey"]
    assert not any(secret in line for line in emulator.proc.lines.all)
    assert secret not in emulator.proc.stderr_path.read_text()
    mode = (emulator.state_dir / "credentials.json").stat().st_mode & 0o777
    assert mode == 0o600


async def test_proxy_certificate_is_verified(proxy: Proxy) -> None:
    """Without the proxy's CA (system trust only) the handshake fails, and says so."""
    cred = sigv4.Credential(proxy.credential["AccessKeyId"], proxy.credential["RawSecretAccessKey"])
    metadata = {"kmsOperation": "KmsHealthCheck", "kmsRequestId": str(uuid.uuid4())}
    untrusted = XksClient(ProxyConfig(proxy.url, proxy.uri_path, cred, "us-east-1", None, 5.0))
    trusted = XksClient(
        ProxyConfig(proxy.url, proxy.uri_path, cred, "us-east-1", str(proxy.ca_file), 5.0)
    )
    try:
        with pytest.raises(XksTlsError):
            await untrusted.health(metadata)
        assert connection_error_code(XksTlsError("x")) == "XKS_PROXY_INVALID_TLS_CONFIGURATION"
        doc = await trusted.health(metadata)
        assert doc["xksProxyFleetSize"] >= 1
    finally:
        await untrusted.aclose()
        await trusted.aclose()
