"""Black-box helpers for the XKS conformance suite.

Everything here talks to a *running* proxy over a loopback socket, the way AWS KMS and an external
checker do. Nothing imports the product: signing is done by three independent SigV4 implementations
(botocore, aws-requests-auth, curl) so that a bug shared by our signer and our verifier cannot hide.

Request bodies are built from the public XKS spec (docs/xks-contract.md). Every plaintext and
AAD the suite sends is recorded in ``SENSITIVE`` so that the log test at the end of the session can
prove none of them (nor any secret) reached a log file.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.auth
import httpx
import requests
from aws_requests_auth.aws_auth import AWSRequestsAuth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "kms-xks-proxy"
REGION = "us-east-1"
API = "/kms/xks/v1"
PRINCIPAL = "arn:aws:iam::123456789012:user/conformance"
DENIED_PRINCIPAL = "arn:aws:iam::123456789012:role/denied"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALLOWED_USAGE = {"ENCRYPT", "DECRYPT", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE"}

# Values that must never appear in any log: (label, raw bytes). Filled as the suite runs.
SENSITIVE: list[tuple[str, bytes]] = []
# kmsRequestIds of requests that passed authentication and parsing: each logged exactly once.
LOGGED_REQUEST_IDS: list[str] = []
# SigV4 signatures the suite sent (a sample): Authorization headers must never be logged.
SIGNATURES: list[str] = []
# kmsRequestIds of requests a deny rule refused: the log must name the rule (xks-spec §8).
DENIED_REQUEST_IDS: list[str] = []


def b64(data: bytes) -> str:
    """Standard base64 text, as the XKS API uses for every binary field."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict standard base64 decoding: a proxy answering anything else is wrong."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def secret_marker(kind: str, size: int = 24) -> bytes:
    """A distinctive random printable value, registered as sensitive.

    Printable so that a log that writes it raw (or base64 of it) is found by a byte search; random
    so that a hit cannot be a coincidence.
    """
    core = f"{kind}-{secrets.token_hex(12)}-"
    filler = (core * (size // len(core) + 1))[:size]
    value = filler.encode("ascii")
    SENSITIVE.append((kind, value))
    return value


def sensitive_large(kind: str, size: int) -> bytes:
    """A large random binary value (registered sensitive) for size boundary tests."""
    value = secrets.token_bytes(size)
    SENSITIVE.append((kind, value))
    return value


def rid() -> str:
    """A fresh kmsRequestId (opaque to the proxy, but UUID-shaped like KMS's)."""
    return str(uuid.uuid4())


def request_metadata(
    operation: str = "Encrypt",
    *,
    principal: str | None = PRINCIPAL,
    key_arn: str | None = KEY_ARN,
    request_id: str | None = None,
    expect_logged: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """The ``requestMetadata`` object; ``None`` drops a field (for missing-field tests)."""
    meta: dict[str, Any] = {
        "awsPrincipalArn": principal,
        "kmsKeyArn": key_arn,
        "kmsOperation": operation,
        "kmsRequestId": request_id or rid(),
    }
    meta.update(extra)
    meta = {k: v for k, v in meta.items() if v is not None}
    if expect_logged:
        LOGGED_REQUEST_IDS.append(meta["kmsRequestId"])
    return meta


def health_body(operation: str = "KmsHealthCheck", **extra: Any) -> dict[str, Any]:
    """GetHealthStatus body: only kmsRequestId and kmsOperation are defined for health."""
    return {"requestMetadata": {"kmsRequestId": rid(), "kmsOperation": operation, **extra}}


def metadata_body(operation: str = "DescribeKey", **kw: Any) -> dict[str, Any]:
    """GetKeyMetadata body."""
    return {"requestMetadata": request_metadata(operation, **kw)}


def encrypt_body(
    plaintext: bytes,
    *,
    aad: bytes | None = None,
    cdiv: bool = False,
    algorithm: str = "AES_GCM",
    operation: str = "Encrypt",
    **kw: Any,
) -> dict[str, Any]:
    """Encrypt body; AAD and CDIV algorithm only when asked, exactly as KMS sends them."""
    body: dict[str, Any] = {
        "requestMetadata": request_metadata(operation, **kw),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": algorithm,
    }
    if aad is not None:
        body["additionalAuthenticatedData"] = b64(aad)
    if cdiv:
        body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return body


def decrypt_body(
    encrypted: Mapping[str, Any],
    *,
    aad: bytes | None = None,
    operation: str = "Decrypt",
    **kw: Any,
) -> dict[str, Any]:
    """Decrypt body built from an Encrypt response (ciphertextMetadata passed back when present)."""
    body: dict[str, Any] = {
        "requestMetadata": request_metadata(operation, **kw),
        "ciphertext": encrypted["ciphertext"],
        "initializationVector": encrypted["initializationVector"],
        "authenticationTag": encrypted["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    }
    if "ciphertextMetadata" in encrypted:
        body["ciphertextMetadata"] = encrypted["ciphertextMetadata"]
    if aad is not None:
        body["additionalAuthenticatedData"] = b64(aad)
    return body


def expected_cdiv(aad: bytes | None, response: Mapping[str, Any]) -> str:
    """CDIV recomputed from the spec: SHA-256(aad || metadata || iv || ciphertext || tag)."""
    parts = [aad or b""]
    for name in ("ciphertextMetadata", "initializationVector", "ciphertext", "authenticationTag"):
        parts.append(unb64(response[name]) if name in response else b"")
    return b64(hashlib.sha256(b"".join(parts)).digest())


# --------------------------------------------------------------------------------------------
# Replies and clients
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP answer, normalised across clients (header names lower-case)."""

    status: int
    headers: dict[str, str]
    body: bytes
    http_version: str = "HTTP/1.1"
    local_addr: Any = None  # client side of the TCP connection (httpx only): detects reconnects

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        """Short text for assertion messages (never large: bodies may hold ciphertext)."""
        return f"HTTP {self.status} {self.headers.get('content-type')!r} {self.body[:300]!r}"


@dataclass(frozen=True)
class Cred:
    """One SigV4 credential. repr hides the secret so a failing assertion cannot print it."""

    akid: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Store:
    """A logical key store as seen from outside: its URI path prefix and credentials."""

    name: str
    prefix: str
    creds: tuple[Cred, ...]

    @property
    def base(self) -> str:
        return self.prefix + API

    def key_path(self, key_id: str, op: str) -> str:
        return f"{self.base}/keys/{key_id}/{op}"

    @property
    def health_path(self) -> str:
        return f"{self.base}/health"


def _as_bytes(body: bytes | Mapping[str, Any] | list[Any] | str) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def botocore_headers(
    url: str,
    body: bytes,
    cred: Cred,
    *,
    region: str = REGION,
    service: str = SERVICE,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    at: dt.datetime | None = None,
) -> dict[str, str]:
    """Sign with botocore's SigV4Auth (what KMS-like AWS tooling does); ``at`` fakes the clock."""
    req = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers=dict(headers or {"Content-Type": "application/json"}),
    )
    signer = SigV4Auth(Credentials(cred.akid, cred.secret), service, region)
    if at is None:
        signer.add_auth(req)
    else:
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=at):
            signer.add_auth(req)
    return dict(req.headers.items())


class BotocoreClient:
    """botocore SigV4Auth signing + httpx transport (HTTP/1.1, or HTTP/2 over TLS)."""

    name = "botocore"

    def __init__(self, base_url: str, *, verify: Any = False, http2: bool = False) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, verify=verify, http2=http2, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def post(
        self,
        path: str,
        body: bytes | Mapping[str, Any] | str,
        cred: Cred,
        *,
        region: str = REGION,
        service: str = SERVICE,
        headers: Mapping[str, str] | None = None,
        at: dt.datetime | None = None,
        mutate: Any = None,
    ) -> Reply:
        """Sign and POST; ``mutate(headers, body) -> (headers, body)`` tampers after signing."""
        data = _as_bytes(body)
        signed = botocore_headers(
            self.base_url + path, data, cred, region=region, service=service, headers=headers, at=at
        )
        if len(SIGNATURES) < 500:
            SIGNATURES.append(signed["Authorization"].rsplit("Signature=", 1)[-1])
        if mutate is not None:
            signed, data = mutate(signed, data)
        return self.raw("POST", path, data, signed)

    def raw(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send exactly what is given (no signing): unauthenticated and tampered requests."""
        r = self.http.request(method, path, content=data, headers=dict(headers or {}))
        local = None
        stream = r.extensions.get("network_stream")
        if stream is not None:
            try:
                local = stream.get_extra_info("client_addr")
            except OSError:  # the server closed the connection after answering: fine
                local = None
        return Reply(
            r.status_code,
            {k.lower(): v for k, v in r.headers.items()},
            r.content,
            r.http_version,
            local,
        )


class RequestsClient:
    """aws-requests-auth signing + requests transport (a second, independent signer)."""

    name = "requests"

    def __init__(self, base_url: str, host: str) -> None:
        self.base_url = base_url
        self.host = host
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def post(
        self, path: str, body: bytes | Mapping[str, Any] | str, cred: Cred, *, region: str = REGION
    ) -> Reply:
        auth = AWSRequestsAuth(
            aws_access_key=cred.akid,
            aws_secret_access_key=cred.secret,
            aws_host=self.host,
            aws_region=region,
            aws_service=SERVICE,
        )
        r = self.session.post(
            self.base_url + path,
            data=_as_bytes(body),
            auth=auth,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


class CurlClient:
    """``curl --aws-sigv4``: the signer the spec's troubleshooting appendix recommends."""

    name = "curl"

    def __init__(self, base_url: str, *, cacert: Path | None = None) -> None:
        self.base_url = base_url
        self.cacert = cacert

    def post(
        self,
        path: str,
        body: bytes | Mapping[str, Any] | str,
        cred: Cred | None,
        *,
        region: str = REGION,
        extra_args: list[str] | None = None,
    ) -> Reply:
        data = _as_bytes(body)
        with tempfile.TemporaryDirectory(prefix="xks-curl-") as tmp:
            body_file = Path(tmp, "body")
            body_file.write_bytes(data)
            out_file, hdr_file = Path(tmp, "out"), Path(tmp, "hdr")
            cmd = [
                "curl",
                "-sS",
                "--max-time",
                "30",
                "-o",
                str(out_file),
                "-D",
                str(hdr_file),
                "-w",
                "%{http_code} %{http_version}",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                f"@{body_file}",
            ]
            if cred is not None:
                # The secret goes through a 0600 config file, not argv (visible in ps).
                cfg = Path(tmp, "curlrc")
                cfg.write_text(f'user = "{cred.akid}:{cred.secret}"\n')
                os.chmod(cfg, 0o600)
                cmd += ["--aws-sigv4", f"aws:amz:{region}:{SERVICE}", "-K", str(cfg)]
            if self.cacert is not None:
                cmd += ["--cacert", str(self.cacert)]
            cmd += list(extra_args or [])
            cmd.append(self.base_url + path)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, f"curl failed: {done.returncode} {done.stderr}"
            code, version = done.stdout.split()
            headers: dict[str, str] = {}
            # -D may hold several header blocks (100-continue); keep the last one.
            for line in hdr_file.read_text(errors="replace").splitlines():
                if line.startswith("HTTP/"):
                    headers = {}
                elif ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            return Reply(int(code), headers, out_file.read_bytes(), f"HTTP/{version}")


# --------------------------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------------------------

PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def assert_json_error(reply: Reply, status: int, name: str | set[str] | None) -> dict[str, Any]:
    """Every failure must be JSON ``{"errorName", "errorMessage"?}`` with the right status."""
    assert reply.status == status, f"expected {status} {name}, got {reply.describe()}"
    ctype = reply.headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == "application/json", f"content-type {ctype!r}"
    doc = reply.json()
    assert isinstance(doc, dict), doc
    assert isinstance(doc.get("errorName"), str) and doc["errorName"], doc
    if isinstance(name, str):
        assert doc["errorName"] == name, f"expected {name}, got {reply.describe()}"
    elif name is not None:
        assert doc["errorName"] in name, f"expected one of {name}, got {reply.describe()}"
    for label, value in SENSITIVE[-50:]:  # the values this request may have carried
        for form in (value[:30], base64.b64encode(value[:30])[:40]):
            assert len(form) < 16 or form not in reply.body, f"error body echoes {label}"
    if "errorMessage" in doc:
        msg = doc["errorMessage"]
        assert isinstance(msg, str), doc
        assert len(msg) < 512, f"errorMessage too long ({len(msg)})"
        assert PRINTABLE.match(msg), f"errorMessage not printable ASCII: {msg!r}"
    return doc


def assert_ok(reply: Reply) -> dict[str, Any]:
    """A 200 JSON object answer."""
    assert reply.status == 200, f"expected 200, got {reply.describe()}"
    ctype = reply.headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == "application/json", f"content-type {ctype!r}"
    doc = reply.json()
    assert isinstance(doc, dict), doc
    return doc


def assert_encrypt_response(
    doc: Mapping[str, Any], plaintext: bytes, aad: bytes | None, cdiv: bool
) -> None:
    """Shape and sizes of a successful Encrypt answer, CDIV recomputed independently."""
    ct, iv, tag = (
        unb64(doc[k]) for k in ("ciphertext", "initializationVector", "authenticationTag")
    )
    assert len(ct) == len(plaintext)
    assert len(iv) in (12, 16), len(iv)
    assert len(tag) == 16, len(tag)
    assert ct != plaintext or not plaintext
    if "ciphertextMetadata" in doc:
        assert len(unb64(doc["ciphertextMetadata"])) <= 20
    if cdiv:
        assert "ciphertextDataIntegrityValue" in doc, sorted(doc)
        assert doc["ciphertextDataIntegrityValue"] == expected_cdiv(aad, doc)
    else:
        assert "ciphertextDataIntegrityValue" not in doc, sorted(doc)
