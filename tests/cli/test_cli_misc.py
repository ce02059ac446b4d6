"""Small commands and the error contract: one clear line, exit 2 for usage/config errors."""

from __future__ import annotations

import json
import re


def test_credentials_new_prints_a_fresh_spec_conformant_pair(cli):
    a, b = cli("credentials", "new"), cli("credentials", "new")
    assert a.returncode == 0 and b.returncode == 0
    pa, pb = json.loads(a.stdout), json.loads(b.stdout)
    for p in (pa, pb):
        assert re.fullmatch(r"[A-Z2-7]{20,30}", p["AccessKeyId"])
        assert re.fullmatch(r"[A-Za-z0-9+/=]{43,64}", p["RawSecretAccessKey"])
    assert pa != pb


def test_missing_config_file_is_a_usage_error(tmp_path, cli):
    missing = tmp_path / "nope.toml"
    for args in (["keys", "list"], ["kms-config"], ["serve"]):
        r = cli(*args, "--config", str(missing))
        assert r.returncode == 2, args
        assert str(missing) in r.stderr
        assert "Traceback" not in r.stderr


def test_uninitialised_state_dir_says_to_run_init(tmp_path, cli):
    r = cli("keys", "list", "--state-dir", str(tmp_path / "empty"))
    assert r.returncode == 2
    assert "xksproxy init" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_config_names_the_problem(initialised, cli):
    config = initialised / "xksproxy.toml"
    text = config.read_text().replace('server = "granian"', 'server = "gunicorn"')
    bad = initialised / "bad.toml"
    bad.write_text(text)
    bad.chmod(0o600)
    r = cli("keys", "list", "--config", str(bad))
    assert r.returncode == 2
    assert "server" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_subcommand_is_a_usage_error(cli):
    r = cli("frobnicate")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_missing_softhsm_says_how_to_install_it(tmp_path, cli, monkeypatch):
    # An empty PATH hides softhsm2-util exactly as on a machine without the softhsm2 package.
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    r = cli("init", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 1
    assert "apt-get install softhsm2" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "state" / "xksproxy.toml").exists()


def test_doctor_checks_a_fresh_embedded_default(initialised, cli):
    r = cli("doctor", "--state-dir", str(initialised))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configuration" in r.stdout
    assert "Traceback" not in r.stderr
    # issue 17 item 11: the demo keys restricted on purpose are expected, not warnings
    assert "0 failed, 0 warnings" in r.stdout, r.stdout
    assert r.stdout.count("(demo key, as intended)") == 3, r.stdout


def test_audit_verify_reports_a_missing_file_cleanly(initialised, cli):
    missing = initialised / "audit" / "nothing-here.log"
    r = cli("audit", "verify", "--state-dir", str(initialised), str(missing))
    assert r.returncode == 2
    assert str(missing) in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_on_a_state_dir_with_a_broken_config_is_a_config_error(initialised, cli):
    (initialised / "xksproxy.toml").write_text("[keystore\n")
    r = cli("serve", "--state-dir", str(initialised), "--plain-http", "--bind", "127.0.0.1:0")
    assert r.returncode == 2
    assert "xksproxy.toml" in r.stderr
    assert "Traceback" not in r.stderr


def test_kms_emulator_subcommand_hands_over_to_the_emulator(cli):
    listed = cli("--help")
    assert "kms-emulator" in listed.stdout
    shown = cli("kms-emulator", "--help")
    assert shown.returncode == 0
    assert shown.stdout.startswith("usage: xksproxy kms-emulator")
    assert "--proxy-ca-file" in shown.stdout and "--allow-plain-http" in shown.stdout
    wrong = cli("kms-emulator", "--no-such-option")
    assert wrong.returncode == 2
    assert "unrecognized arguments: --no-such-option" in wrong.stderr
