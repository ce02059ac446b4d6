"""Smoke tests of the other launcher choices: --server hypercorn, and several worker processes
(each worker must initialise PKCS#11 after fork and serve correct answers)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from conformance_helpers import (
    BotocoreClient,
    CurlClient,
    assert_json_error,
    assert_ok,
    decrypt_body,
    encrypt_body,
    health_body,
    metadata_body,
    secret_marker,
    unb64,
)
from server_harness import run_cli
from test_conf_health import check_health_shape


def test_launcher_smoke(alt_server, stores):
    s = stores["demo"]
    curl = CurlClient(alt_server.base_url)
    check_health_shape(assert_ok(curl.post(s.health_path, health_body(), s.creds[0])))
    assert_json_error(
        curl.post(s.health_path, health_body(), None), 401, "AuthenticationFailedException"
    )

    def worker(n: int) -> int:
        client = BotocoreClient(alt_server.base_url)
        try:
            for _ in range(10):
                pt = secret_marker("pt", 20 + n)
                enc = assert_ok(
                    client.post(
                        s.key_path("demo", "encrypt"), encrypt_body(pt, cdiv=True), s.creds[0]
                    )
                )
                dec = assert_ok(
                    client.post(s.key_path("demo", "decrypt"), decrypt_body(enc), s.creds[0])
                )
                assert unb64(dec["plaintext"]) == pt
            assert_json_error(
                client.post(s.key_path("nope", "metadata"), metadata_body(), s.creds[0]),
                404,
                "KeyNotFoundException",
            )
            r = client.raw("GET", s.health_path)
            assert_json_error(r, 405, None)
            return 10
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == 40


def _audit_logs(alt_server, state) -> list:
    """This server's audit log, once it holds whole lines."""
    name = alt_server.log_path.stem.removeprefix("server-")
    found = [p for p in (state.path / "audit").glob("*-audit.log") if name in p.name]
    return [p for p in found if p.read_bytes().endswith(b"\n")]


def test_launcher_audit_chain_intact(alt_server, state, stores):
    """Several workers append to one audit chain: it must still verify. Sends its own requests
    (the audit file appears with the first audited request), so it needs no other test."""
    s = stores["demo"]
    client = BotocoreClient(alt_server.base_url)
    try:
        for _ in range(8):
            body = encrypt_body(b"x" * 32)
            assert_ok(client.post(s.key_path("demo", "encrypt"), body, s.creds[0]))
    finally:
        client.close()
    deadline = time.monotonic() + 20  # bounded wait for the writer thread, not a timing claim
    while not _audit_logs(alt_server, state) and time.monotonic() < deadline:
        time.sleep(0.05)
    logs = _audit_logs(alt_server, state)
    assert len(logs) == 1, logs
    done = run_cli("audit", "verify", "--config", str(state.config), str(logs[0]))
    assert done.returncode == 0, done.stdout + done.stderr
