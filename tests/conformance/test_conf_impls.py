"""The service over each PKCS#11 implementation: where implementations can differ.

A representative slice (not the whole suite twice): a round trip with AAD, key usage, a tampered
tag, GetHealthStatus. "softhsm" reuses the suite's main server (no extra process); "opencryptoki"
starts ``xksproxy serve`` on openCryptoki's soft token (tests/support/ock_token.py, claimed and
put back by the ``ock_token`` fixture) with the same demo keys. openCryptoki 3.8 (Debian 12) has
no CKM_AES_GCM, so that server refuses to start: ``test_serve_refuses_a_token_without_aes_gcm``
pins the refusal and the slice skips there with the server's own message as the reason.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conformance_helpers import (
    BotocoreClient,
    assert_json_error,
    assert_ok,
    decrypt_body,
    encrypt_body,
    health_body,
    secret_marker,
    unb64,
)
from server_harness import Server, StateDir, copy_config, start_server
from support.ock_token import OckToken

IMPLS = ("softhsm", "opencryptoki")


@dataclass
class Refusal:
    """``xksproxy serve`` exited instead of listening: its exit code and log."""

    exit_code: int
    log: str


@pytest.fixture(scope="module")
def ock_serve(state: StateDir, ock_token: OckToken) -> Iterator[Server | Refusal]:
    """``xksproxy serve`` with the [[hsm]] table pointed at openCryptoki's soft token."""
    pin_file = state.write_secret("ock-user.pin", ock_token.user_pin)
    cfg = copy_config(
        state,
        "xksproxy-ock.toml",
        {
            ("hsm", "module"): f'"{ock_token.module_path}"',
            ("hsm", "token_label"): f'"{ock_token.token_label}"',
            ("hsm", "pin"): f'"file:{pin_file}"',
            ("hsm", "model"): '"openCryptoki soft token"',
            ("audit", "file"): '"audit/ock-audit.log"',
        },
    )
    try:
        srv = start_server(state, config=cfg, log_name="server-ock")
    except AssertionError as exc:  # start_server: "xksproxy serve exited N:\n<log>"
        m = re.match(r"xksproxy serve exited (-?\d+):\n(.*)", str(exc), re.S)
        if m is None:
            raise
        yield Refusal(int(m.group(1)), m.group(2))
        return
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module", params=IMPLS)
def impl_client(request: pytest.FixtureRequest, server: Server) -> Iterator[BotocoreClient]:
    """A botocore-signing client for the server on each implementation."""
    srv = server
    if request.param == "opencryptoki":
        attempt = request.getfixturevalue("ock_serve")
        if isinstance(attempt, Refusal):
            lines = [line for line in attempt.log.splitlines() if "[[hsm]]" in line]
            pytest.skip(f"opencryptoki: xksproxy serve refused the token: {lines[-1:]}")
        srv = attempt
    client = BotocoreClient(srv.base_url)
    yield client
    client.close()


def test_serve_refuses_a_token_without_aes_gcm(ock_serve: Server | Refusal, ock_token) -> None:
    """On a token without AES-GCM, serve stops before listening (exit 1: a runtime failure of
    the HSM, not a config syntax error) with one line naming the [[hsm]] and the mechanism,
    and never shows the PIN. If a future openCryptoki has AES-GCM, the server starts instead."""
    if isinstance(ock_serve, Server):
        pytest.skip("this openCryptoki implements AES-GCM: the slice below runs on it")
    assert ock_serve.exit_code == 1, ock_serve.log[-2000:]
    assert re.search(r"\[\[hsm\]\] softhsm-0: .*does not implement CKM_AES_GCM", ock_serve.log), (
        ock_serve.log[-2000:]
    )
    assert ock_token.user_pin not in ock_serve.log


def test_roundtrip_with_aad(impl_client: BotocoreClient, stores: dict) -> None:
    store = stores["demo"]
    pt, aad = secret_marker("pt", 100), b"impl-context"
    enc = assert_ok(
        impl_client.post(
            store.key_path("demo", "encrypt"), encrypt_body(pt, aad=aad), store.creds[0]
        )
    )
    dec = assert_ok(
        impl_client.post(
            store.key_path("demo", "decrypt"), decrypt_body(enc, aad=aad), store.creds[0]
        )
    )
    assert unb64(dec["plaintext"]) == pt


def test_tampered_tag_is_invalid_ciphertext(impl_client: BotocoreClient, stores: dict) -> None:
    store = stores["demo"]
    enc = assert_ok(
        impl_client.post(
            store.key_path("demo", "encrypt"), encrypt_body(secret_marker("pt")), store.creds[0]
        )
    )
    tag = bytearray(unb64(enc["authenticationTag"]))
    tag[0] ^= 1
    enc = {**enc, "authenticationTag": base64.b64encode(bytes(tag)).decode()}
    r = impl_client.post(store.key_path("demo", "decrypt"), decrypt_body(enc), store.creds[0])
    assert_json_error(r, 400, "InvalidCiphertextException")


def test_key_usage_is_enforced(impl_client: BotocoreClient, stores: dict) -> None:
    store = stores["demo"]
    r = impl_client.post(
        store.key_path("demo-decrypt-only", "encrypt"),
        encrypt_body(secret_marker("pt")),
        store.creds[0],
    )
    assert_json_error(r, 400, "InvalidKeyUsageException")


def test_health_is_active(impl_client: BotocoreClient, stores: dict) -> None:
    store = stores["demo"]
    doc = assert_ok(impl_client.post(store.health_path, health_body(), store.creds[0]))
    assert doc["ekmFleetDetails"] and all(
        e["healthStatus"] == "ACTIVE" for e in doc["ekmFleetDetails"]
    ), doc
