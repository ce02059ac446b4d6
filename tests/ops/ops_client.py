"""A tiny signed XKS client for the operations tests (SigV4 via our sigv4.sign)."""

from __future__ import annotations

import base64
import uuid

import orjson

import sigv4

PRINCIPAL = "arn:aws:iam::111122223333:user/ops-test"
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def meta(op: str) -> dict:
    return {
        "awsPrincipalArn": PRINCIPAL,
        "kmsKeyArn": KEY_ARN,
        "kmsOperation": op,
        "kmsRequestId": str(uuid.uuid4()),
        "kmsViaService": "ebs",
        "awsSourceVpc": "vpc-0abc",
        "awsSourceVpce": "vpce-0def",
    }


def encrypt_body(plaintext: bytes, aad: bytes | None = None) -> bytes:
    doc = {
        "requestMetadata": meta("Encrypt"),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    }
    if aad is not None:
        doc["additionalAuthenticatedData"] = b64(aad)
    return orjson.dumps(doc)


def decrypt_body(enc: dict, aad: bytes | None = None) -> bytes:
    doc = {
        "requestMetadata": meta("Decrypt"),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertext": enc["ciphertext"],
        "initializationVector": enc["initializationVector"],
        "authenticationTag": enc["authenticationTag"],
        "ciphertextMetadata": enc.get("ciphertextMetadata"),
    }
    if aad is not None:
        doc["additionalAuthenticatedData"] = b64(aad)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def signed(path: str, body: bytes, cred: sigv4.Credential, host: str) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    headers.update(
        sigv4.sign(
            method="POST",
            host=host,
            path=path,
            headers=headers,
            body=body,
            credential=cred,
            region="us-east-1",
        )
    )
    return headers
