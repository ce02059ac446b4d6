"""XKS request building for the load generators: targets, bodies, SigV4 signing, pre-signing.

Why one module: Locust, the open-loop latency generator and the wrk/h2load replays must send the
same KMS-like requests (32-byte data keys, 64-byte AAD, CDIV), signed the same way as KMS does.
Signed requests stay valid for 5 minutes (SigV4 window), which is what lets tools without HMAC
support replay them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import sigv4
from xksproxy import environment

XKS_SERVICE = "kms-xks-proxy"
DEFAULT_REGION = "us-east-1"
PRINCIPAL = "arn:aws:iam::123456789012:role/loadtest"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@dataclass(frozen=True)
class Target:
    """Where and as whom to call: base URL (scheme://host:port), URI path, credential, key."""

    base_url: str
    uri_path: str  # "<prefix>/kms/xks/v1"
    credential: sigv4.Credential
    key_id: str = "demo"
    region: str = DEFAULT_REGION

    @property
    def host(self) -> str:
        return self.base_url.split("://", 1)[1].rstrip("/")

    def path(self, op: str) -> str:
        if op == "health":
            return f"{self.uri_path}/health"
        return f"{self.uri_path}/keys/{self.key_id}/{op}"


def target_from_env(base_url: str | None = None) -> Target:
    """Build a target from ``XKS_*`` environment variables and/or a state dir's kms-console.json.

    ``XKS_STATE_DIR`` (or ``XKSPROXY_STATE_DIR``) supplies URI path and credential from
    ``kms-console.json``; ``XKS_URI_PATH``, ``XKS_ACCESS_KEY_ID``, ``XKS_SECRET``, ``XKS_KEY_ID``,
    ``XKS_REGION`` and ``XKS_URL`` override.
    """
    uri_path = os.environ.get("XKS_URI_PATH")
    akid = os.environ.get("XKS_ACCESS_KEY_ID")
    secret = os.environ.get("XKS_SECRET")
    state = os.environ.get("XKS_STATE_DIR") or environment.STATE_DIR.get()
    if state and not (uri_path and akid and secret):
        console = json.loads((Path(state) / "kms-console.json").read_text())
        cred = console["XksProxyAuthenticationCredential"]
        uri_path = uri_path or console["XksProxyUriPath"]
        akid = akid or cred["AccessKeyId"]
        secret = secret or cred["RawSecretAccessKey"]
    url = base_url or os.environ.get("XKS_URL")
    if not (url and uri_path and akid and secret):
        raise SystemExit(
            "target incomplete: give the proxy URL (--host / XKS_URL) and either XKS_STATE_DIR "
            "(a state dir with kms-console.json) or XKS_URI_PATH, XKS_ACCESS_KEY_ID, XKS_SECRET"
        )
    return Target(
        base_url=url.rstrip("/"),
        uri_path=uri_path.rstrip("/"),
        credential=sigv4.Credential(akid, secret),
        key_id=os.environ.get("XKS_KEY_ID", "demo"),
        region=os.environ.get("XKS_REGION", DEFAULT_REGION),
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _meta(op: str) -> dict:
    meta = {"kmsOperation": op, "kmsRequestId": str(uuid.uuid4())}
    if op != "KmsHealthCheck":
        meta.update(awsPrincipalArn=PRINCIPAL, kmsKeyArn=KEY_ARN)
    return meta


def encrypt_body(
    plaintext: bytes | None = None, aad: bytes | None = None, cdiv: bool = True
) -> bytes:
    """Encrypt of a 32-byte data key, 64-byte AAD, CDIV (what KMS sends for GenerateDataKey)."""
    body = {
        "requestMetadata": _meta("Encrypt"),
        "plaintext": _b64(plaintext if plaintext is not None else secrets.token_bytes(32)),
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": _b64(aad if aad is not None else b"A" * 64),
    }
    if cdiv:
        body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return json.dumps(body).encode()


def decrypt_body(encrypted: dict, aad: bytes | None = None) -> bytes:
    """Decrypt of an Encrypt answer (``encrypted`` is its JSON)."""
    body = {
        "requestMetadata": _meta("Decrypt"),
        "ciphertext": encrypted["ciphertext"],
        "initializationVector": encrypted["initializationVector"],
        "authenticationTag": encrypted["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": _b64(aad if aad is not None else b"A" * 64),
    }
    if "ciphertextMetadata" in encrypted:
        body["ciphertextMetadata"] = encrypted["ciphertextMetadata"]
    return json.dumps(body).encode()


def metadata_body() -> bytes:
    return json.dumps({"requestMetadata": _meta("DescribeKey")}).encode()


def health_body() -> bytes:
    return json.dumps({"requestMetadata": _meta("KmsHealthCheck")}).encode()


def signed_headers(
    target: Target, path: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers for a POST of ``body`` to ``path``: content-type + SigV4 (host is the URL's)."""
    headers = {"content-type": "application/json"}
    headers.update(
        sigv4.sign(
            method="POST",
            host=target.host,
            path=path,
            headers=headers,
            body=body,
            credential=target.credential,
            region=target.region,
            service=XKS_SERVICE,
            now=now,
        )
    )
    return headers


@dataclass(frozen=True)
class Prepared:
    """One fully pre-signed request (valid for replay for 5 minutes)."""

    op: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def http11(self, host: str) -> bytes:
        """The raw HTTP/1.1 keep-alive request bytes."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.method == "POST":
            lines.append(f"content-length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def prepare(target: Target, op: str, body: bytes | None = None) -> Prepared:
    """Pre-sign one request: op in ping, health, metadata, encrypt, decrypt (decrypt needs body)."""
    if op == "ping":
        return Prepared("ping", "GET", "/ping", {}, b"")
    if body is None:
        body = {"health": health_body, "metadata": metadata_body, "encrypt": encrypt_body}[op]()
    path = target.path(op)
    return Prepared(op, "POST", path, signed_headers(target, path, body), body)
