"""500 concurrent connections, good and bad mixed: every answer well-formed, the worker survives."""

from __future__ import annotations

import asyncio
import json

from adversarial_helpers import Answer, Target, assert_xks_error
from conformance_helpers import b64, botocore_headers, decrypt_body, encrypt_body

CONNECTIONS = 500
EXPECTED = {
    "good": {200, 429},
    "bad-json": {400, 429},
    "unsigned": {401, 429},
    "unknown-key": {404, 429},
    "bad-path": {404},
    "bad-ciphertext": {400, 429},
}
NAMES = {400: None, 401: "AuthenticationFailedException", 404: None, 429: "ThrottlingException"}


def _request(target: Target, kind: str) -> bytes:
    path = target.key_path("demo", "encrypt")
    if kind == "good":
        body = json.dumps(encrypt_body(b"adversarial")).encode()
    elif kind == "bad-json":
        body = b'{"requestMetadata": '
    elif kind == "unsigned":
        body = json.dumps(encrypt_body(b"adversarial")).encode()
    elif kind == "unknown-key":
        path = target.key_path("nosuchkey", "encrypt")
        body = json.dumps(encrypt_body(b"adversarial")).encode()
    elif kind == "bad-path":
        path = "/nowhere"
        body = b"{}"
    else:
        path = target.key_path("demo", "decrypt")
        body = json.dumps(
            decrypt_body(
                {
                    "ciphertext": "AAAA",
                    "initializationVector": b64(b"\0" * 12),
                    "authenticationTag": b64(b"\0" * 16),
                }
            )
        ).encode()
    headers = {"Content-Type": "application/json"}
    if kind != "unsigned":
        headers = botocore_headers(target.server.base_url + path, body, target.cred)
    headers["Host"] = target.server.host
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def _one(port: int, data: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    return Answer(int(lines[0].split()[1]), headers, body)


def test_mixed_concurrent_connections(target: Target) -> None:
    kinds = sorted(EXPECTED)
    plan = [kinds[i % len(kinds)] for i in range(CONNECTIONS)]
    payloads = [_request(target, kind) for kind in plan]

    async def run() -> list[Answer]:
        return await asyncio.gather(*(_one(target.port, p) for p in payloads))

    answers = asyncio.run(run())
    for kind, answer in zip(plan, answers, strict=True):
        assert answer.status in EXPECTED[kind], (kind, answer.describe())
        if answer.status == 200:
            assert "ciphertext" in answer.json()
        else:
            doc = assert_xks_error(answer, answer.status, answer.json().get("errorName", ""))
            expected_name = NAMES.get(answer.status)
            assert expected_name is None or doc["errorName"] == expected_name
    assert any(a.status == 200 for a in answers)
    assert target.server.proc.poll() is None
    after = target.post(
        target.key_path("demo", "encrypt"), json.dumps(encrypt_body(b"adversarial")).encode()
    )
    assert after.status == 200, after.describe()
