"""Every lifecycle state's four answers over HTTP (GetKeyMetadata, Encrypt, Decrypt, health),
and key versions in ciphertextMetadata, on an in-process app whose pool holds the documents."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from xksproxy.keys import lifecycle
from xksproxy.keys.custody_doc import CustodyDocument, Version

NOW = datetime.now(UTC)
DAY = timedelta(days=1)

# The table: state -> (keyStatus, keyUsage, Encrypt, Decrypt); "ok" = 200.
BOTH = ["ENCRYPT", "DECRYPT"]
STATE_ERR = "InvalidStateException"
TABLE = {
    "pre-active": ("DISABLED", BOTH, STATE_ERR, STATE_ERR),
    "active": ("ENABLED", BOTH, "ok", "ok"),
    "suspended": ("DISABLED", BOTH, STATE_ERR, STATE_ERR),
    "deactivated": ("ENABLED", ["DECRYPT"], "InvalidKeyUsageException", "ok"),
    "compromised": ("ENABLED", ["DECRYPT"], "InvalidKeyUsageException", "ok"),
    "pending-destruction": ("DISABLED", BOTH, STATE_ERR, STATE_ERR),
    "destroyed": (None, None, "KeyNotFoundException", "KeyNotFoundException"),
}


def document(state: str, key: str = "k") -> bytes:
    if state == "pre-active":
        return CustodyDocument(key=key, activation_date=NOW + DAY).to_bytes()
    if state == "deactivated":  # by its expiry date (the command is covered in test_lifecycle)
        return CustodyDocument(key=key, expiry_date=NOW - DAY).to_bytes()
    if state == "pending-destruction":
        return CustodyDocument(
            key=key, state=state, destruction_date=NOW + 7 * DAY, state_before_destruction="active"
        ).to_bytes()
    return CustodyDocument(key=key, state=state).to_bytes()


def test_the_table_matches_the_lifecycle_answers():
    assert set(TABLE) == set(lifecycle.STATES)
    for state, (status, usage, enc, dec) in TABLE.items():
        answer = lifecycle.ANSWERS[state]
        assert (answer.key_status, answer.encrypt, answer.decrypt) == (status, enc, dec)
        assert answer.decrypt_only == (usage == ["DECRYPT"])


def _outcome(r) -> str:
    return "ok" if r.status_code == 200 else r.json()["errorName"]


@pytest.mark.parametrize("state", lifecycle.STATES)
async def test_every_state_answers_as_the_table_says(client, pool, state):
    sealed = (await client.encrypt("k", b"written while active")).json()
    pool.set_document("k", document(state))

    status, usage, enc, dec = TABLE[state]
    md = await client.metadata("k")
    if status is None:
        assert md.status_code == 404 and md.json()["errorName"] == "KeyNotFoundException"
    else:
        assert md.status_code == 200, md.text
        assert md.json()["keyStatus"] == status and md.json()["keyUsage"] == usage

    e = await client.encrypt("k")
    assert _outcome(e) == enc
    if enc == "InvalidStateException" or enc == "InvalidKeyUsageException":
        assert e.status_code == 400
    decrypt_calls = pool.calls["decrypt"]
    d = await client.decrypt("k", sealed)
    assert _outcome(d) == dec
    if dec == "ok":
        assert base64.b64decode(d.json()["plaintext"]) == b"written while active"
    else:
        assert pool.calls["decrypt"] == decrypt_calls  # refused before the HSM

    h = await client.health()
    assert h.status_code == 200 and h.json()["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"


async def test_disabled_keys_override_the_lifecycle_state(client, pool):
    pool.set_document("d", document("active", "d"))
    md = await client.metadata("d")
    assert md.json()["keyStatus"] == "DISABLED"
    assert (await client.encrypt("d")).json()["errorName"] == "InvalidStateException"


async def test_encrypt_writes_the_newest_active_version_and_decrypt_uses_the_named_one(
    client, pool
):
    old = (await client.encrypt("k", b"v0")).json()
    assert base64.b64decode(old["ciphertextMetadata"]) == b"\x01\x00"
    pool.add_key("k#v300")
    versions = (Version(0, None, "retired"), Version(300, NOW, "active"))
    pool.set_document("k", CustodyDocument(key="k", versions=versions).to_bytes())
    new = (await client.encrypt("k", b"v300")).json()
    assert base64.b64decode(new["ciphertextMetadata"]) == b"\x01\x01\x2c"  # 300, minimal
    for sealed, plaintext in ((old, b"v0"), (new, b"v300")):
        r = await client.decrypt("k", sealed)
        assert base64.b64decode(r.json()["plaintext"]) == plaintext


@pytest.mark.parametrize(
    "metadata",
    [b"\x01\x07", b"\x01\x00\x00", b"\x01\x00\x01", b"\x02\x00", b"\x01" + b"\x01" * 19],
    ids=["missing-version", "non-minimal-0", "non-minimal-1", "unknown-format", "huge-version"],
)
async def test_tampered_version_is_invalid_ciphertext_without_an_hsm_decrypt(
    client, pool, metadata
):
    r = await client.encrypt("k", b"secret")
    assert r.status_code == 200, r.text
    sealed = r.json()
    sealed["ciphertextMetadata"] = base64.b64encode(metadata).decode()
    before = pool.calls["decrypt"]
    r = await client.decrypt("k", sealed)
    assert r.status_code == 400 and r.json()["errorName"] == "InvalidCiphertextException"
    assert pool.calls["decrypt"] == before


async def test_a_version_changed_to_another_existing_one_fails_the_tag(client, pool):
    pool.add_key("k#v1")
    versions = (Version(0, None, "retired"), Version(1, NOW, "active"))
    pool.set_document("k", CustodyDocument(key="k", versions=versions).to_bytes())
    sealed = (await client.encrypt("k", b"secret")).json()
    sealed["ciphertextMetadata"] = base64.b64encode(b"\x01\x00").decode()
    r = await client.decrypt("k", sealed)
    assert r.status_code == 400 and r.json()["errorName"] == "InvalidCiphertextException"


async def test_a_corrupt_document_is_refused_not_guessed(client, pool):
    pool.set_document("k", b"{not json")
    r = await client.encrypt("k")
    assert r.status_code == 500 and r.json()["errorName"] == "InternalException"


async def test_decrypt_with_a_compromised_key_is_audited_as_such(tmp_path, pool):
    import httpx
    import orjson
    from custody_http import HOST, Client, write_config

    from xksproxy.config import load_config
    from xksproxy.observe.audit import install
    from xksproxy.service.app import XksApp

    config = load_config(write_config(tmp_path, audit=True), env={})
    app = XksApp(config, pool_factory=lambda c: pool)
    app.observers.clear()
    audit_log = install(app)
    assert audit_log is not None
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
            client = Client(http)
            sealed = (await client.encrypt("k", b"before the incident")).json()
            pool.set_document("k", document("compromised"))
            assert (await client.decrypt("k", sealed)).status_code == 200
    finally:
        await app.shutdown()
    records = [orjson.loads(line) for line in config.audit.file.read_bytes().splitlines()]
    assert [r.get("keyState") for r in records] == [None, "compromised"]
    assert records[-1]["kmsOperation"] == "Decrypt" and records[-1]["outcome"] == "ok"
