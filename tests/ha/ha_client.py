"""A small independent XKS client for the HA tests: botocore's SigV4Auth over http.client."""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

META = {
    "awsPrincipalArn": "arn:aws:iam::123456789012:user/ha-test",
    "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/ha",
}


class XksClient:
    """One keep-alive connection; not thread-safe (one per thread)."""

    def __init__(self, port: int, uri_path: str, akid: str, secret: str) -> None:
        self.port, self.uri_path = port, uri_path
        self.creds = Credentials(akid, secret)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def close(self) -> None:
        self.conn.close()

    def call(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode()
        url = f"http://127.0.0.1:{self.port}{self.uri_path}{path}"
        req = AWSRequest(
            method="POST", url=url, data=data, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(self.creds, "kms-xks-proxy", "us-east-1").add_auth(req)
        try:
            self.conn.request("POST", self.uri_path + path, body=data, headers=dict(req.headers))
            resp = self.conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            raise

    def health(self) -> tuple[int, dict[str, Any]]:
        meta = {"kmsRequestId": str(uuid.uuid4()), "kmsOperation": "KmsHealthCheck"}
        return self.call("/health", {"requestMetadata": meta})

    def encrypt(self, key: str, plaintext: bytes) -> tuple[int, dict[str, Any]]:
        meta = {**META, "kmsRequestId": str(uuid.uuid4()), "kmsOperation": "Encrypt"}
        body = {
            "requestMetadata": meta,
            "plaintext": base64.b64encode(plaintext).decode(),
            "encryptionAlgorithm": "AES_GCM",
        }
        return self.call(f"/keys/{key}/encrypt", body)

    def decrypt(self, key: str, enc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = {**META, "kmsRequestId": str(uuid.uuid4()), "kmsOperation": "Decrypt"}
        body = {
            "requestMetadata": meta,
            "ciphertext": enc["ciphertext"],
            "initializationVector": enc["initializationVector"],
            "authenticationTag": enc["authenticationTag"],
            "encryptionAlgorithm": "AES_GCM",
        }
        if "ciphertextMetadata" in enc:
            body["ciphertextMetadata"] = enc["ciphertextMetadata"]
        return self.call(f"/keys/{key}/decrypt", body)

    def round_trip(self, key: str, plaintext: bytes) -> bool:
        status, enc = self.encrypt(key, plaintext)
        if status != 200:
            return False
        status, dec = self.decrypt(key, enc)
        return status == 200 and base64.b64decode(dec["plaintext"]) == plaintext
