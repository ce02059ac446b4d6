"""Operator key management (stable CLI) seen through the API: `keys list` agrees with
GetKeyMetadata; a key created or deleted on the token shows up in a keys=["*"] store without a
restart."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from conformance_helpers import (
    assert_json_error,
    assert_ok,
    decrypt_body,
    encrypt_body,
    metadata_body,
    secret_marker,
    unb64,
)
from server_harness import run_cli


def test_keys_list_agrees_with_get_key_metadata(boto, stores, state):
    done = run_cli("keys", "list", "--json", "--config", str(state.config))
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    s = stores["wildcard"]
    seen = set()
    for entry in listed:
        if entry.get("health_key"):
            continue
        key_id = entry["id"]
        seen.add(key_id)
        doc = assert_ok(boto.post(s.key_path(key_id, "metadata"), metadata_body(), s.creds[0]))
        assert set(doc["keyUsage"]) == set(entry["usage"]), (key_id, doc, entry)
    assert {"demo", "demo-encrypt-only", "demo-decrypt-only", "demo-no-usage"} <= seen


def poll_metadata(client, store, key_id, want: int, tries: int = 50):
    """GetKeyMetadata until the status is ``want`` (bounded ~10 s: caches may hold a key)."""
    r = None
    for _ in range(tries):
        r = client.post(store.key_path(key_id, "metadata"), metadata_body(), store.creds[0])
        if r.status == want:
            return r
        time.sleep(0.2)
    return r


@pytest.mark.parametrize(
    ("usage", "expect"), [("encrypt-decrypt", {"ENCRYPT", "DECRYPT"}), ("decrypt", {"DECRYPT"})]
)
def test_created_key_usable_then_deleted_key_gone(boto, stores, state, usage, expect):
    s = stores["wildcard"]
    key_id = f"conf-{secrets.token_hex(6)}"
    done = run_cli("keys", "create", key_id, "--usage", usage, "--config", str(state.config))
    assert done.returncode == 0, done.stderr
    try:
        r = poll_metadata(boto, s, key_id, 200)
        doc = assert_ok(r)
        assert set(doc["keyUsage"]) & {"ENCRYPT", "DECRYPT"} == expect, doc
        if "ENCRYPT" in expect:
            pt = secret_marker("pt")
            enc = assert_ok(
                boto.post(s.key_path(key_id, "encrypt"), encrypt_body(pt, cdiv=True), s.creds[0])
            )
            dec = assert_ok(boto.post(s.key_path(key_id, "decrypt"), decrypt_body(enc), s.creds[0]))
            assert unb64(dec["plaintext"]) == pt
    finally:
        done = run_cli("keys", "delete", key_id, "--config", str(state.config))
    assert done.returncode == 0, done.stderr
    assert_json_error(poll_metadata(boto, s, key_id, 404), 404, "KeyNotFoundException")
