"""`xksproxy init`: idempotent, private files, and a KMS console file KMS would accept."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

AKID_RE = re.compile(r"^[A-Z2-7]{20,30}$")
SECRET_RE = re.compile(r"^[A-Za-z0-9+/=]{43,64}$")
URI_PATH_RE = re.compile(r"^[a-zA-Z0-9/_-]{1,128}$")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and "tokens" not in p.parts and "audit" not in p.parts
    }


def test_first_init_prints_credential_once_and_second_run_keeps_everything(state_dir, cli):
    first = cli("init", "--state-dir", str(state_dir))
    assert first.returncode == 0, first.stderr
    console = json.loads((state_dir / "kms-console.json").read_text())
    secret = console["XksProxyAuthenticationCredential"]["RawSecretAccessKey"]
    akid = console["XksProxyAuthenticationCredential"]["AccessKeyId"]
    assert secret in first.stdout and akid in first.stdout
    assert "/demo/kms/xks/v1" in first.stdout
    for key_id in ("demo", "demo-encrypt-only", "demo-decrypt-only", "demo-no-usage"):
        assert key_id in first.stdout
    before = _snapshot(state_dir)

    second = cli("init", "--state-dir", str(state_dir))
    assert second.returncode == 0, second.stderr
    assert "already initialised" in second.stdout
    assert secret not in second.stdout + second.stderr
    assert akid in second.stdout
    assert _snapshot(state_dir) == before


def test_state_dir_defaults_to_environment_variable(state_dir, cli):
    r = cli("init", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert (state_dir / "xksproxy.toml").is_file()


def test_secrets_are_private(initialised):
    d = initialised
    for sub in (d, d / "secrets", d / "tls", d / "audit"):
        assert _mode(sub) == 0o700, sub
    private = [d / "xksproxy.toml", d / "kms-console.json", d / "tls" / "server.key"]
    private += list((d / "secrets").iterdir())
    assert len(private) >= 5
    for f in private:
        assert _mode(f) & 0o077 == 0, f
    leftovers = [p for p in d.rglob("*.tmp")]
    assert leftovers == []


def test_audit_key_is_64_hex_chars(initialised):
    text = (initialised / "secrets" / "audit.key").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", text)


def test_kms_console_file_has_the_shape_the_console_accepts(initialised):
    doc = json.loads((initialised / "kms-console.json").read_text())
    assert set(doc) == {"XksProxyUriPath", "XksProxyAuthenticationCredential"}
    assert doc["XksProxyUriPath"] == "/demo/kms/xks/v1"
    assert URI_PATH_RE.match(doc["XksProxyUriPath"])
    cred = doc["XksProxyAuthenticationCredential"]
    assert set(cred) == {"AccessKeyId", "RawSecretAccessKey"}
    assert AKID_RE.match(cred["AccessKeyId"])
    assert SECRET_RE.match(cred["RawSecretAccessKey"])


def test_config_references_secrets_instead_of_containing_them(initialised):
    config = (initialised / "xksproxy.toml").read_text()
    doc = json.loads((initialised / "kms-console.json").read_text())
    assert doc["XksProxyAuthenticationCredential"]["RawSecretAccessKey"] not in config
    assert doc["XksProxyAuthenticationCredential"]["AccessKeyId"] in config
    assert "SOFTHSM2_CONF" in config
    assert str(initialised / "audit" / "xksproxy-audit.log") in config


def test_kms_config_prints_the_console_file(initialised, cli):
    expected = json.loads((initialised / "kms-console.json").read_text())
    for extra in ([], ["--keystore", "/demo"], ["--keystore", "demo"]):
        r = cli("kms-config", "--state-dir", str(initialised), *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == expected


def test_kms_config_names_the_stores_when_the_prefix_is_unknown(initialised, cli):
    r = cli("kms-config", "--state-dir", str(initialised), "--keystore", "/nope")
    assert r.returncode == 2
    assert "/nope" in r.stderr and "demo" in r.stderr
    assert "Traceback" not in r.stderr


def test_odd_characters_in_the_state_dir_path_still_give_a_valid_config(tmp_path, cli):
    odd = tmp_path / 'my "state" dir\\x'
    r = cli("init", "--state-dir", str(odd))
    assert r.returncode == 0, r.stderr
    listed = cli("keys", "list", "--json", "--state-dir", str(odd))
    assert listed.returncode == 0, listed.stderr
    assert "demo" in {k["id"] for k in json.loads(listed.stdout)}


def test_a_lost_console_file_is_rebuilt_with_the_same_credential(initialised, cli):
    console = initialised / "kms-console.json"
    before = json.loads(console.read_text())
    console.unlink()
    r = cli("init", "--state-dir", str(initialised))
    assert r.returncode == 0, r.stderr
    assert json.loads(console.read_text()) == before
    assert _mode(console) == 0o600


def test_an_interrupted_init_is_completed_by_the_next_run(initialised, cli):
    # xksproxy.toml is written last: without it, init starts over with a fresh credential.
    (initialised / "xksproxy.toml").unlink()
    old = json.loads((initialised / "kms-console.json").read_text())
    r = cli("init", "--state-dir", str(initialised))
    assert r.returncode == 0, r.stderr
    new = json.loads((initialised / "kms-console.json").read_text())
    assert new["XksProxyAuthenticationCredential"]["RawSecretAccessKey"] in r.stdout
    assert new != old
    ok = cli("kms-config", "--state-dir", str(initialised))
    assert ok.returncode == 0 and json.loads(ok.stdout) == new


def test_atomic_write_replaces_whole_files_privately(tmp_path):
    from xksproxy.admin.embedded import atomic_write

    target = tmp_path / "f.txt"
    target.write_text("old")
    target.chmod(0o644)
    atomic_write(target, b"new contents", 0o600)
    assert target.read_bytes() == b"new contents"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_kms_config_hands_out_the_newest_credential_after_a_rotation(initialised, cli):
    d = str(initialised)
    old = json.loads(cli("kms-config", "--state-dir", d).stdout)
    added = cli("credentials", "add", "--keystore", "/demo", "--state-dir", d)
    assert added.returncode == 0, added.stderr
    new = json.loads(cli("kms-config", "--state-dir", d).stdout)
    assert new != old and new["XksProxyUriPath"] == old["XksProxyUriPath"]
    assert AKID_RE.match(new["XksProxyAuthenticationCredential"]["AccessKeyId"])
    akid = old["XksProxyAuthenticationCredential"]["AccessKeyId"]
    picked = cli("kms-config", "--state-dir", d, "--access-key-id", akid)
    assert json.loads(picked.stdout) == old


def _shape(value):
    """Table structure without values: nested dict keys; arrays of tables by their first entry."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_shape(value[0])]
    return type(value).__name__


def test_generated_config_sets_every_option_of_the_reference(initialised):
    import tomllib

    reference = tomllib.loads((Path(__file__).parents[2] / "conf" / "xksproxy.toml").read_text())
    generated = tomllib.loads((initialised / "xksproxy.toml").read_text())
    assert _shape(generated) == _shape(reference)


def test_concurrent_inits_agree_on_one_credential_and_one_key_each(state_dir, cli):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: cli("init", "--state-dir", str(state_dir)), range(3)))
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert sum("already initialised" not in r.stdout for r in runs) == 1
    console = json.loads((state_dir / "kms-console.json").read_text())
    assert json.loads(cli("kms-config", "--state-dir", str(state_dir)).stdout) == console
    listed = json.loads(cli("keys", "list", "--json", "--state-dir", str(state_dir)).stdout)
    ids = [k["id"] for k in listed]
    assert sorted(ids) == sorted(set(ids))


def test_default_state_dir_is_under_home_local_state(tmp_path, cli, monkeypatch):
    # HOME points into the test's tmp dir: the real ~/.local/state is never touched.
    monkeypatch.setenv("HOME", str(tmp_path))
    r = cli("init")
    assert r.returncode == 0, r.stderr
    d = tmp_path / ".local" / "state" / "xksproxy"
    assert (d / "xksproxy.toml").is_file()
    assert _mode(d) == 0o700
