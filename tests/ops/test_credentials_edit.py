"""`xksproxy credentials add|remove`: safe edits of the operator's config file."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

from xksproxy.admin import credentials_ops
from xksproxy.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _store(cfg_path: Path, name: str = "demo"):
    return next(s for s in load_config(cfg_path).keystores if s.name == name)


def test_add_then_remove_via_cli(config_path, cli):
    before = _store(config_path).credentials
    original_text = config_path.read_text()
    r = cli("credentials", "add", "--config", str(config_path), "--keystore", "/demo")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["XksProxyUriPath"] == "/demo/kms/xks/v1"
    new = doc["XksProxyAuthenticationCredential"]
    creds = _store(config_path).credentials
    assert [c.access_key_id for c in creds] == [before[0].access_key_id, new["AccessKeyId"]]
    assert creds[1].secret == new["RawSecretAccessKey"]
    text = config_path.read_text()
    assert new["RawSecretAccessKey"] not in text  # secrets only by reference
    assert text.startswith(original_text.rstrip("\n"))  # the operator's text is kept
    secret_files = [
        p for p in (config_path.parent / "secrets").iterdir() if new["AccessKeyId"] in p.name
    ]
    assert len(secret_files) == 1
    assert stat.S_IMODE(secret_files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600

    r = cli(
        "credentials",
        "remove",
        "--config",
        str(config_path),
        "--keystore",
        "demo",
        before[0].access_key_id,
    )
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)["XksProxyAuthenticationCredential"]["AccessKeyId"]
        == new["AccessKeyId"]
    )
    assert [c.access_key_id for c in _store(config_path).credentials] == [new["AccessKeyId"]]
    assert not (config_path.parent / "secrets" / "demo-1.secret").exists()


def test_remove_refuses_last_and_unknown(config_path, cli):
    akid = _store(config_path).credentials[0].access_key_id
    text = config_path.read_text()
    r = cli("credentials", "remove", "--config", str(config_path), "--keystore", "/demo", akid)
    assert r.returncode != 0 and "last credential" in r.stderr
    r = cli(
        "credentials",
        "remove",
        "--config",
        str(config_path),
        "--keystore",
        "/demo",
        "AKIANOSUCHKEYNOSUCHKEY",
    )
    assert r.returncode != 0 and "no credential" in r.stderr
    r = cli("credentials", "add", "--config", str(config_path), "--keystore", "/nope")
    assert r.returncode != 0 and "no key store" in r.stderr
    assert config_path.read_text() == text


def test_edits_the_reference_layout_with_two_stores(tmp_path):
    """The commented reference config with a second store: only the right block changes."""
    d = tmp_path / "conf"
    d.mkdir()
    (d / "secrets").mkdir(mode=0o700)
    for name, text in {
        "user.pin": "1234",
        "audit.key": "ab" * 32,
        "demo-1.secret": "A" * 43,
        "other-1.secret": "B" * 43,
    }.items():
        p = d / "secrets" / name
        p.write_text(text)
        p.chmod(0o600)
    ref = (REPO / "conf" / "xksproxy.toml").read_text()
    ref += """
[[keystore]]
name = "other"
path_prefix = "/other"
hsm = "softhsm-0"
keys = ["*"]
[keystore.quota]
rate = 10
burst = 5

[[keystore.credentials]]
access_key_id = "AKIAOTHEROTHEROTHER2"
secret = "file:secrets/other-1.secret"
"""
    cfg = d / "xksproxy.toml"
    cfg.write_text(ref)
    cfg.chmod(0o600)
    uri, cred = credentials_ops.add(cfg, "/demo")
    assert uri == "/demo/kms/xks/v1"
    assert [c.access_key_id for c in _store(cfg, "demo").credentials] == [
        "AKIAEXAMPLEEXAMPLE23",
        cred.access_key_id,
    ]
    assert [c.access_key_id for c in _store(cfg, "other").credentials] == ["AKIAOTHEROTHEROTHER2"]
    uri, cred2 = credentials_ops.add(cfg, "other")
    assert uri == "/other/kms/xks/v1"
    credentials_ops.remove(cfg, "/other", "AKIAOTHEROTHEROTHER2")
    credentials_ops.remove(cfg, "/demo", "AKIAEXAMPLEEXAMPLE23")
    loaded = load_config(cfg)
    assert [c.access_key_id for c in loaded.keystores[0].credentials] == [cred.access_key_id]
    assert [c.access_key_id for c in loaded.keystores[1].credentials] == [cred2.access_key_id]
    assert loaded.keystores[1].quota_rate == 10
    assert "# Secondary authorization (optional)" in cfg.read_text()  # comments survive
    shutil.rmtree(d)


def test_remove_rewrites_the_console_file_that_held_the_removed_secret(config_path):
    """Issue 17 item 9: kms-console.json kept a removed credential's secret on disk."""
    console = config_path.parent / "kms-console.json"
    old = json.loads(console.read_text())["XksProxyAuthenticationCredential"]
    _, new = credentials_ops.add(config_path, "demo")
    credentials_ops.remove(config_path, "demo", old["AccessKeyId"])
    text = console.read_text()
    assert old["RawSecretAccessKey"] not in text and old["AccessKeyId"] not in text
    doc = json.loads(text)
    assert doc["XksProxyUriPath"] == "/demo/kms/xks/v1"
    assert doc["XksProxyAuthenticationCredential"] == {
        "AccessKeyId": new.access_key_id,
        "RawSecretAccessKey": new.secret,
    }
    assert stat.S_IMODE(console.stat().st_mode) == 0o600
    # removing a credential the console file does not name leaves it as it is
    _, third = credentials_ops.add(config_path, "demo")
    credentials_ops.remove(config_path, "demo", third.access_key_id)
    assert console.read_text() == text
