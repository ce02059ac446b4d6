"""The app in-process: the JSON 1.1 protocol over ASGI, and the XKS client against a fake proxy.

The fake proxy (an ``httpx.MockTransport``) checks our SigV4 signature for ``kms-xks-proxy``,
records each request's metadata, does AES-GCM per the XKS specification (framed HSM AAD, CDIV),
and can misbehave on demand: hang (to see the deadline and the single retry), answer 401/503, send
a wrong CDIV or a non-JSON body. Nothing here measures time: the retry is counted, not timed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import sigv4
from kmsemu.app import create_app
from kmsemu.operations import Emulator, Settings
from kmsemu.store import Store
from kmsemu.xksclient import ClientPool

AWS = sigv4.Credential("AKIAEXAMPLEEXAMPLE23", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
PROXY = sigv4.generate_credential()
PRINCIPAL = "arn:aws:iam::111122223333:user/unit"


class FakeProxy:
    """Enough of an XKS proxy for the emulator's client, with switchable faults."""

    def __init__(self) -> None:
        self.key = AESGCM.generate_key(256)
        self.mode = "ok"
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        sigv4.verify(
            method=request.method,
            path=request.url.raw_path,
            query=b"",
            headers=list(request.headers.raw),
            body=body,
            lookup=lambda akid: [PROXY] if akid == PROXY.access_key_id else [],
            now=time.time(),
            service="kms-xks-proxy",
            regions=["us-east-1"],
        )
        doc = json.loads(body)
        op = request.url.path.rsplit("/", 1)[-1]
        self.calls.append((op, doc["requestMetadata"]))
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "auth":
            return self.error(401, "AuthenticationFailedException")
        if self.mode == "hsm-slow" and op in ("encrypt", "decrypt"):
            return self.error(503, "DependencyTimeoutException")
        if self.mode == "garbage":
            return httpx.Response(200, content=b"<html>")
        if op == "health":
            return self.json(
                {
                    "xksProxyFleetSize": 1,
                    "xksProxyVendor": "fake",
                    "xksProxyModel": "fake 1",
                    "ekmVendor": "fake",
                    "ekmFleetDetails": [{"id": "h1", "model": "m", "healthStatus": "ACTIVE"}],
                }
            )
        if op == "metadata":
            return self.json(
                {"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"}
            )
        aad = base64.b64decode(doc.get("additionalAuthenticatedData", ""))
        meta = b"m1"
        framed = len(aad).to_bytes(2, "big") + aad + bytes([len(meta)]) + meta
        if op == "encrypt":
            iv = os.urandom(12)
            out = AESGCM(self.key).encrypt(iv, base64.b64decode(doc["plaintext"]), framed)
            ct, tag = out[:-16], out[-16:]
            cdiv = hashlib.sha256(aad + meta + iv + ct + tag).digest()
            if self.mode == "bad-cdiv":
                cdiv = bytes(32)
            return self.json(
                {
                    "ciphertext": base64.b64encode(ct).decode(),
                    "initializationVector": base64.b64encode(iv).decode(),
                    "authenticationTag": base64.b64encode(tag).decode(),
                    "ciphertextMetadata": base64.b64encode(meta).decode(),
                    "ciphertextDataIntegrityValue": base64.b64encode(cdiv).decode(),
                }
            )
        try:
            pt = AESGCM(self.key).decrypt(
                base64.b64decode(doc["initializationVector"]),
                base64.b64decode(doc["ciphertext"]) + base64.b64decode(doc["authenticationTag"]),
                framed,
            )
        except Exception:
            return self.error(400, "InvalidCiphertextException")
        return self.json({"plaintext": base64.b64encode(pt).decode()})

    @staticmethod
    def json(doc: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json=doc)

    @staticmethod
    def error(status: int, name: str) -> httpx.Response:
        return httpx.Response(status, json={"errorName": name, "errorMessage": "fake"})


class Kms:
    """A signed KMS JSON 1.1 client for the in-process app."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client

    async def raw(self, target: str, body: bytes, *, credential: sigv4.Credential = AWS) -> Any:
        headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
        headers.update(
            sigv4.sign(
                method="POST",
                host="testserver",
                path="/",
                headers=headers,
                body=body,
                credential=credential,
                region="us-east-1",
                service="kms",
            )
        )
        return await self.http.post("/", content=body, headers=headers)

    async def __call__(self, op: str, **doc: Any) -> dict[str, Any]:
        resp = await self.raw(f"TrentService.{op}", json.dumps(doc).encode())
        out: dict[str, Any] = resp.json()
        if resp.status_code != 200:
            raise AssertionError(f"{op}: {resp.status_code} {out}")
        return out

    async def error(self, op: str, **doc: Any) -> tuple[int, str]:
        resp = await self.raw(f"TrentService.{op}", json.dumps(doc).encode())
        assert resp.status_code != 200, resp.text
        assert resp.headers["content-type"] == "application/x-amz-json-1.1"
        return resp.status_code, resp.json()["__type"]


@pytest.fixture
def fake() -> FakeProxy:
    return FakeProxy()


@pytest.fixture
async def kms(tmp_path: Path, fake: FakeProxy) -> AsyncIterator[Kms]:
    store = Store(tmp_path / "state")
    settings = Settings("us-east-1", "111122223333", PRINCIPAL, proxy_deadline_s=0.05)
    emu = Emulator(store, settings, ClientPool(httpx.MockTransport(fake)))
    transport = httpx.ASGITransport(app=create_app(emu, [AWS]))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Kms(client)
    await emu.pool.aclose()
    store.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def xks_key(kms: Kms) -> str:
    ks = (
        await kms(
            "CreateCustomKeyStore",
            CustomKeyStoreName="fake",
            CustomKeyStoreType="EXTERNAL_KEY_STORE",
            XksProxyUriEndpoint="https://proxy.invalid",
            XksProxyUriPath="/t/kms/xks/v1",
            XksProxyConnectivity="VPC_ENDPOINT_SERVICE",
            XksProxyVpcEndpointServiceName="com.amazonaws.vpce.us-east-1.vpce-svc-0",
            XksProxyAuthenticationCredential={
                "AccessKeyId": PROXY.access_key_id,
                "RawSecretAccessKey": PROXY.secret,
            },
        )
    )["CustomKeyStoreId"]
    await kms("ConnectCustomKeyStore", CustomKeyStoreId=ks)
    md = await kms("CreateKey", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=ks, XksKeyId="k1")
    return str(md["KeyMetadata"]["Arn"])


# ---- wire protocol


async def test_protocol_errors(kms: Kms) -> None:
    resp = await kms.http.post(
        "/", content=b"{}", headers={"X-Amz-Target": "TrentService.ListKeys"}
    )
    assert (resp.status_code, resp.json()["__type"]) == (400, "MissingAuthenticationTokenException")
    assert (await kms.raw("TrentService.NoSuchThing", b"{}")).json()["__type"] == (
        "UnknownOperationException"
    )
    assert (await kms.raw("TrentService.ListKeys", b"{not json")).json()["__type"] == (
        "SerializationException"
    )
    other = sigv4.Credential(AWS.access_key_id, "x" * 40)
    bad_sig = await kms.raw("TrentService.ListKeys", b"{}", credential=other)
    assert (bad_sig.status_code, bad_sig.json()["__type"]) == (400, "InvalidSignatureException")
    assert (await kms.http.get("/")).json()["__type"] == "UnknownOperationException"
    for method, path in (("OPTIONS", "/"), ("OPTIONS", "/foo"), ("HEAD", "/x"), ("GET", "/y")):
        other_method = await kms.http.request(method, path)
        assert other_method.headers["content-type"].startswith("application/x-amz-json-1.1")
        if method != "HEAD":
            assert other_method.json()["__type"] == "UnknownOperationException", (method, path)
    assert await kms.error("Encrypt", KeyId="nope", Plaintext=b64(b"x")) == (
        400,
        "NotFoundException",
    )
    assert (await kms.error("Encrypt", Plaintext=b64(b"x")))[1] == "ValidationException"
    assert (await kms.error("GenerateRandom", NumberOfBytes=0))[1] == "ValidationException"


async def test_local_key_and_aliases(kms: Kms) -> None:
    arn = (await kms("CreateKey", Description="d"))["KeyMetadata"]["Arn"]
    await kms("CreateAlias", AliasName="alias/one", TargetKeyId=arn)
    assert (await kms.error("CreateAlias", AliasName="alias/one", TargetKeyId=arn))[1] == (
        "AlreadyExistsException"
    )
    alias_arn = "arn:aws:kms:us-east-1:111122223333:alias/one"
    blob = (await kms("Encrypt", KeyId=alias_arn, Plaintext=b64(b"hi")))["CiphertextBlob"]
    out = await kms("Decrypt", CiphertextBlob=blob)
    assert (base64.b64decode(out["Plaintext"]), out["KeyId"]) == (b"hi", arn)
    assert [a["AliasName"] for a in (await kms("ListAliases"))["Aliases"]] == ["alias/one"]
    page = await kms("ListKeys", Limit=1)
    assert page["Truncated"] is False and len(page["Keys"]) == 1


# ---- XKS behaviour against the fake proxy


async def test_request_metadata_sent_to_the_proxy(kms: Kms, fake: FakeProxy) -> None:
    arn = await xks_key(kms)
    resp = await kms.raw(
        "TrentService.Encrypt", json.dumps({"KeyId": arn, "Plaintext": b64(b"p")}).encode()
    )
    assert resp.status_code == 200
    op, md = fake.calls[-1]
    assert op == "encrypt"
    assert md == {
        "awsPrincipalArn": PRINCIPAL,
        "kmsKeyArn": arn,
        "kmsOperation": "Encrypt",
        "kmsRequestId": resp.headers["x-amzn-requestid"],
    }
    health_ops = [md["kmsOperation"] for op, md in fake.calls if op == "health"]
    assert health_ops == ["CreateCustomKeyStore", "ConnectCustomKeyStore"]
    assert all("awsPrincipalArn" not in md for op, md in fake.calls if op == "health")


async def test_via_service_is_passed_on(kms: Kms, fake: FakeProxy) -> None:
    arn = await xks_key(kms)
    body = json.dumps({"KeyId": arn, "NumberOfBytes": 16}).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "TrentService.GenerateDataKey",
        "X-Kmsemu-Via-Service": "s3.amazonaws.com",
    }
    headers.update(
        sigv4.sign(
            method="POST",
            host="testserver",
            path="/",
            headers=headers,
            body=body,
            credential=AWS,
            region="us-east-1",
            service="kms",
        )
    )
    assert (await kms.http.post("/", content=body, headers=headers)).status_code == 200
    assert fake.calls[-1][1]["kmsViaService"] == "s3.amazonaws.com"


async def test_timeout_is_retried_once_then_kms_invalid_state(kms: Kms, fake: FakeProxy) -> None:
    arn = await xks_key(kms)
    fake.mode = "hang"
    before = len(fake.calls)
    status, name = await kms.error("Encrypt", KeyId=arn, Plaintext=b64(b"p"))
    assert (status, name) == (400, "KMSInvalidStateException")
    assert [op for op, _ in fake.calls[before:]] == ["encrypt", "encrypt"]


async def test_hsm_timeout_is_dependency_timeout(kms: Kms, fake: FakeProxy) -> None:
    arn = await xks_key(kms)
    fake.mode = "hsm-slow"
    assert await kms.error("Encrypt", KeyId=arn, Plaintext=b64(b"p")) == (
        503,
        "DependencyTimeoutException",
    )


@pytest.mark.parametrize("mode", ["bad-cdiv", "garbage", "auth"])
async def test_bad_proxy_answers_are_kms_invalid_state(
    kms: Kms, fake: FakeProxy, mode: str
) -> None:
    arn = await xks_key(kms)
    fake.mode = mode
    assert (await kms.error("Encrypt", KeyId=arn, Plaintext=b64(b"p")))[
        1
    ] == "KMSInvalidStateException"


async def test_connect_failure_sets_the_error_code(kms: Kms, fake: FakeProxy) -> None:
    await xks_key(kms)
    (ks,) = (await kms("DescribeCustomKeyStores"))["CustomKeyStores"]
    assert ks["XksProxyConfiguration"]["Connectivity"] == "VPC_ENDPOINT_SERVICE"
    await kms("DisconnectCustomKeyStore", CustomKeyStoreId=ks["CustomKeyStoreId"])
    fake.mode = "hang"
    await kms("ConnectCustomKeyStore", CustomKeyStoreId=ks["CustomKeyStoreId"])
    (ks,) = (await kms("DescribeCustomKeyStores"))["CustomKeyStores"]
    assert (ks["ConnectionState"], ks["ConnectionErrorCode"]) == ("FAILED", "XKS_PROXY_TIMED_OUT")
    assert (await kms.error("DeleteCustomKeyStore", CustomKeyStoreId=ks["CustomKeyStoreId"]))[
        1
    ] == ("CustomKeyStoreInvalidStateException")
    await kms("DisconnectCustomKeyStore", CustomKeyStoreId=ks["CustomKeyStoreId"])
    assert (await kms.error("DeleteCustomKeyStore", CustomKeyStoreId=ks["CustomKeyStoreId"]))[
        1
    ] == ("CustomKeyStoreHasCMKsException")


async def test_key_store_uniqueness(kms: Kms) -> None:
    await xks_key(kms)
    doc = {
        "CustomKeyStoreName": "other",
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "XksProxyUriEndpoint": "https://proxy.invalid",
        "XksProxyUriPath": "/t/kms/xks/v1",
        "XksProxyAuthenticationCredential": {
            "AccessKeyId": PROXY.access_key_id,
            "RawSecretAccessKey": PROXY.secret,
        },
    }
    assert (await kms.error("CreateCustomKeyStore", **doc))[1] == "XksProxyUriInUseException"
    doc["CustomKeyStoreName"] = "fake"
    assert (await kms.error("CreateCustomKeyStore", **doc))[1] == "CustomKeyStoreNameInUseException"
    doc["CustomKeyStoreType"] = "AWS_CLOUDHSM"
    assert (await kms.error("CreateCustomKeyStore", **doc))[1] == "UnsupportedOperationException"
