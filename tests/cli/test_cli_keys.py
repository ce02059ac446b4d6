"""`xksproxy keys`: what an operator sees when listing, creating and deleting keys."""

from __future__ import annotations

import json


def _keys(cli, state_dir) -> dict[str, dict]:
    r = cli("keys", "list", "--json", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stderr
    return {k["id"]: k for k in json.loads(r.stdout)}


def test_init_creates_demo_keys_with_their_usage(initialised, cli):
    keys = _keys(cli, initialised)
    assert set(keys["demo"]["usage"]) == {"ENCRYPT", "DECRYPT"}
    assert keys["demo-encrypt-only"]["usage"] == ["ENCRYPT"]
    assert keys["demo-decrypt-only"]["usage"] == ["DECRYPT"]
    assert keys["demo-no-usage"]["usage"] == []
    assert keys["xks-health-test"]["health_key"] is True


def test_keys_list_text_shows_usage(initialised, cli):
    r = cli("keys", "list", "--state-dir", str(initialised))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("demo-encrypt-only"))
    assert "ENCRYPT" in line and "DECRYPT" not in line


def test_create_list_delete_round_trip(initialised, cli):
    d = str(initialised)
    r = cli("keys", "create", "tenant-1", "--usage", "encrypt", "--state-dir", d)
    assert r.returncode == 0, r.stderr
    assert _keys(cli, initialised)["tenant-1"]["usage"] == ["ENCRYPT"]

    again = cli("keys", "create", "tenant-1", "--state-dir", d)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    r = cli("keys", "delete", "tenant-1", "--state-dir", d)
    assert r.returncode == 0, r.stderr
    assert "tenant-1" not in _keys(cli, initialised)

    gone = cli("keys", "delete", "tenant-1", "--state-dir", d)
    assert gone.returncode == 1
    assert "tenant-1" in gone.stderr


def test_default_usage_is_encrypt_decrypt(initialised, cli):
    r = cli("keys", "create", "both", "--state-dir", str(initialised))
    assert r.returncode == 0, r.stderr
    assert set(_keys(cli, initialised)["both"]["usage"]) == {"ENCRYPT", "DECRYPT"}


def test_health_key_is_protected_unless_forced(initialised, cli):
    d = str(initialised)
    r = cli("keys", "delete", "xks-health-test", "--state-dir", d)
    assert r.returncode == 2
    assert "--force" in r.stderr
    assert "xks-health-test" in _keys(cli, initialised)
    r = cli("keys", "delete", "xks-health-test", "--force", "--state-dir", d)
    assert r.returncode == 0, r.stderr
    assert "xks-health-test" not in _keys(cli, initialised)


def test_invalid_key_id_is_refused(initialised, cli):
    r = cli("keys", "create", "bad id!", "--state-dir", str(initialised))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_unloadable_pkcs11_module_is_reported_without_a_traceback(initialised, cli):
    text = (initialised / "xksproxy.toml").read_text()
    bad = initialised / "bad-module.toml"
    bad.write_text(text.replace("libsofthsm2.so", "libsofthsm2-missing.so"))
    bad.chmod(0o600)
    r = cli("keys", "list", "--config", str(bad))
    assert r.returncode == 1
    assert "libsofthsm2-missing.so" in r.stderr
    assert "apt-get install softhsm2" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_deleted_demo_key_stays_deleted_across_restarts(initialised, cli):
    d = str(initialised)
    assert cli("keys", "delete", "demo-no-usage", "--state-dir", d).returncode == 0
    assert cli("init", "--state-dir", d).returncode == 0
    keys = _keys(cli, initialised)
    assert "demo-no-usage" not in keys
    assert "demo" in keys


def test_init_recreates_a_missing_health_key(initialised, cli):
    d = str(initialised)
    assert cli("keys", "delete", "xks-health-test", "--force", "--state-dir", d).returncode == 0
    assert cli("init", "--state-dir", d).returncode == 0
    assert "xks-health-test" in _keys(cli, initialised)


def test_create_says_whether_a_key_store_can_use_the_key(initialised, cli):
    d = str(initialised)
    r = cli("keys", "create", "not-listed", "--state-dir", d)
    assert r.returncode == 0 and "no [[keystore]]" in r.stdout
    assert cli("keys", "delete", "demo", "--state-dir", d).returncode == 0
    r = cli("keys", "create", "demo", "--state-dir", d)
    assert r.returncode == 0 and "/demo/kms/xks/v1" in r.stdout
