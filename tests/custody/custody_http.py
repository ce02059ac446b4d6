"""An in-process app on a MemoryPool with lifecycle documents, and a signing client for it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import orjson

import sigv4

AKID = "AKIACUSTODYEXAMPLE23"
SECRET = "C" * 20 + "ustodySecretSecretSecretSecret/+="[:32]
HOST = "xks.example.com"
PREFIX = "/custody/kms/xks/v1"


def write_config(directory: Path, *, state_cache_s: float = 0, audit: bool = False) -> Path:
    """A config whose one store ``custody`` serves keys ``k`` and ``d`` (d is disabled_keys)."""
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for name, value in (("pin", "1234"), ("s", SECRET), ("audit.key", "a" * 40)):
        (secrets / name).write_text(value + "\n")
        os.chmod(secrets / name, 0o600)
    audit_table = 'file = "audit/a.log"\nkey = "file:secrets/audit.key"' if audit else 'file = ""'
    text = f"""
[server]
plain_http = true
[audit]
{audit_table}
[custody]
state_cache_s = {state_cache_s}
[[hsm]]
name = "mem"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "unused"
pin = "file:secrets/pin"
[[keystore]]
name = "custody"
path_prefix = "/custody"
hsm = "mem"
keys = ["k", "d"]
disabled_keys = ["d"]
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/s"
"""
    path = directory / "xksproxy.toml"
    path.write_text(text)
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def meta(op: str) -> dict[str, str]:
    return {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/0c5d1c2e",
        "kmsOperation": op,
        "kmsRequestId": "0c5d1c2e-0000-4000-8000-000000000012",
    }


class Client:
    """Signs (with sigv4.sign) and posts XKS requests to an in-process app."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(self, key: str, op: str, doc: dict) -> httpx.Response:
        path = f"{PREFIX}/keys/{key}/{op}" if key else f"{PREFIX}/{op}"
        body = orjson.dumps(doc)
        headers = {"content-type": "application/json"}
        headers.update(
            sigv4.sign(
                method="POST",
                host=HOST,
                path=path,
                headers=headers,
                body=body,
                credential=sigv4.Credential(AKID, SECRET),
                region="us-east-1",
            )
        )
        return await self.http.post(path, content=body, headers=headers)

    async def metadata(self, key: str) -> httpx.Response:
        return await self.call(key, "metadata", {"requestMetadata": meta("DescribeKey")})

    async def encrypt(self, key: str, plaintext: bytes = b"pt") -> httpx.Response:
        doc = {
            "requestMetadata": meta("Encrypt"),
            "plaintext": b64(plaintext),
            "encryptionAlgorithm": "AES_GCM",
        }
        return await self.call(key, "encrypt", doc)

    async def decrypt(self, key: str, sealed: dict) -> httpx.Response:
        doc = {
            "requestMetadata": meta("Decrypt"),
            "encryptionAlgorithm": "AES_GCM",
            "ciphertext": sealed["ciphertext"],
            "initializationVector": sealed["initializationVector"],
            "authenticationTag": sealed["authenticationTag"],
        }
        if sealed.get("ciphertextMetadata") is not None:
            doc["ciphertextMetadata"] = sealed["ciphertextMetadata"]
        return await self.call(key, "decrypt", doc)

    async def health(self) -> httpx.Response:
        return await self.call("", "health", {"requestMetadata": meta("KmsHealthCheck")})
