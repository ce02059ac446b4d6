"""Concurrency, operator tooling (kms-config) and stray requests outside the API."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conformance_helpers import (
    BotocoreClient,
    Cred,
    Reply,
    assert_encrypt_response,
    assert_json_error,
    assert_ok,
    decrypt_body,
    encrypt_body,
    health_body,
    secret_marker,
    unb64,
)
from server_harness import run_cli

THREADS, ROUNDS = 8, 20


def test_concurrent_round_trips(server, stores):
    """Many clients at once: every answer correct (guards against an HSM used unsafely from
    several threads, which corrupts SoftHSMv2 rather than failing cleanly).

    On a loaded CI machine a request may miss the proxy's 150 ms deadline; shedding it as a
    well-formed 503 DependencyTimeoutException / 429 ThrottlingException is correct behaviour,
    so only wrong answers, other errors and a mostly-failing run count as failures.
    """
    s = stores["demo"]
    shed = {503: "DependencyTimeoutException", 429: "ThrottlingException"}

    def worker(n: int) -> tuple[int, int]:
        client = BotocoreClient(server.base_url)
        ok = dropped = 0
        try:
            for i in range(ROUNDS):
                pt = secret_marker("pt", 16 + (n * ROUNDS + i) % 64)
                aad = secret_marker("aad", 20) if i % 2 else None
                r = client.post(
                    s.key_path("demo", "encrypt"),
                    encrypt_body(pt, aad=aad, cdiv=True),
                    s.creds[i % 2],
                )
                if r.status in shed:
                    assert_json_error(r, r.status, shed[r.status])
                    dropped += 1
                    continue
                enc = assert_ok(r)
                assert_encrypt_response(enc, pt, aad, True)
                r = client.post(
                    s.key_path("demo", "decrypt"), decrypt_body(enc, aad=aad), s.creds[i % 2]
                )
                if r.status in shed:
                    assert_json_error(r, r.status, shed[r.status])
                    dropped += 1
                    continue
                assert unb64(assert_ok(r)["plaintext"]) == pt
                ok += 1
            return ok, dropped
        finally:
            client.close()

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    ok = sum(r[0] for r in results)
    assert ok >= THREADS * ROUNDS // 2, f"only {ok}/{THREADS * ROUNDS} round trips succeeded"
    assert server.proc.poll() is None, "server died under concurrency"


@pytest.mark.parametrize("store", ["demo", "second"])
def test_kms_config_file_is_usable(boto, stores, state, store):
    """`xksproxy kms-config` produces the KMS console file; its path and credential work."""
    s = stores[store]
    done = run_cli("kms-config", "--config", str(state.config), "--keystore", s.prefix)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {"XksProxyUriPath", "XksProxyAuthenticationCredential"}, doc.keys()
    assert doc["XksProxyUriPath"] == s.base
    cred = doc["XksProxyAuthenticationCredential"]
    assert set(cred) == {"AccessKeyId", "RawSecretAccessKey"}
    assert_ok(
        boto.post(
            doc["XksProxyUriPath"] + "/health",
            health_body(),
            Cred(cred["AccessKeyId"], cred["RawSecretAccessKey"]),
        )
    )


@pytest.mark.parametrize(
    "path", ["/", "/favicon.ico", "/kms", "/kms/xks/v1/keys/demo/encrypt", "/demo/kms/xks"]
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_stray_paths_are_404_json(server, method, path):
    """Unauthenticated requests outside any key store: 404 InvalidUriPathException, JSON."""
    r = httpx.request(method, server.base_url + path, content=b"{}", timeout=10)
    assert_json_error(
        Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content),
        404,
        "InvalidUriPathException",
    )


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_other_methods_on_api_uri_are_405(boto, stores, method):
    s = stores["demo"]
    r = boto.raw(method, s.key_path("demo", "encrypt"))
    assert r.status == 405, r.describe()
    if method != "HEAD":
        assert_json_error(r, 405, None)
