"""Nothing hostile requests carried as plaintext, AAD or secret reaches the server's output or its
audit log, and no request produces a traceback or an error-level line.

Self-contained (passes alone and in any order): the module starts its own server on the
adversarial state directory, sends its own hostile and valid requests, stops the server so
buffered output is on disk, then reads what that server wrote.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from adversarial_helpers import MARKER, Target
from conformance_helpers import b64, encrypt_body
from server_harness import copy_config, start_server

#: Hostile bodies (all signed, so they reach the parser) that carry the marker.
HOSTILE = {
    "trailing-garbage": json.dumps(encrypt_body(MARKER)).encode() + b"xyz",
    "bom": b"\xef\xbb\xbf" + json.dumps(encrypt_body(MARKER)).encode(),
    "plaintext-not-base64": json.dumps({**encrypt_body(MARKER), "plaintext": "!!!!"}).encode(),
    "aad-marker": json.dumps(
        {**encrypt_body(MARKER), "additionalAuthenticatedData": b64(MARKER), "x": 1e999}
    ).encode(),
}


@dataclass
class Written:
    """What the module's own server wrote, after it stopped."""

    texts: dict[str, str]
    secrets: list[str]


@pytest.fixture(scope="module")
def written(target: Target) -> Iterator[Written]:
    state = target.server.state
    audit = state.path / "audit" / "adv-logs-audit.log"
    config = copy_config(state, "xksproxy-adv-logs.toml", {("audit", "file"): f'"{audit}"'})
    server = start_server(state, config=config, log_name="adversarial-logs")
    own = Target(server=server, cred=target.cred, prefix=target.prefix)
    try:
        path = own.key_path("demo", "encrypt")
        assert own.post(path, json.dumps(encrypt_body(MARKER)).encode()).status == 200
        for body in HOSTILE.values():
            assert own.post(path, body).status in (400, 413)
        unsigned = json.dumps(encrypt_body(MARKER)).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\n"
        answer = own.exchange(
            head.encode() + f"Content-Length: {len(unsigned)}\r\n\r\n".encode() + unsigned
        )
        assert answer.status in (400, 401, 403)
    finally:
        server.stop()
    texts = {"server output": server.log_text()}
    for file in sorted(audit.parent.glob(audit.name + "*")):
        if file.is_file():
            texts[file.name] = Path(file).read_text(errors="replace")
    assert audit.name in texts, sorted(texts)
    yield Written(texts=texts, secrets=list(state.secrets_used))


def test_logs_hold_no_plaintext_secret_or_signature(written: Written) -> None:
    forbidden = [
        MARKER.decode(),
        base64.b64encode(MARKER).decode(),
        "Signature=",
        "AWS4-HMAC-SHA256",
        *written.secrets,
    ]
    for name, text in written.texts.items():
        for value in forbidden:
            assert value not in text, f"{name} contains a forbidden value ({value[:12]}...)"


def test_no_request_produced_a_traceback_or_an_error_line(written: Written) -> None:
    for name, text in written.texts.items():
        assert "Traceback" not in text, name
        assert '"level":"error"' not in text, name
