"""`xksproxy doctor` and secrets hygiene (file modes, no secret in repr/errors/output)."""

from __future__ import annotations

import datetime as dt
import os

import orjson
from ops_config import set_option

from xksproxy.config import ConfigError, load_config


def test_doctor_healthy_deployment(config_path, cli):
    r = cli("doctor", "--config", str(config_path))
    assert r.returncode == 0, r.stdout + r.stderr
    for needle in (
        "configuration",
        "module + login",
        "test-key round trip",
        "key demo/demo",
        "TLS certificate",
        "permissions",
        "0 failed",
    ):
        assert needle in r.stdout
    cfg = load_config(config_path)
    secrets = [c.secret for s in cfg.keystores for c in s.credentials] + [cfg.hsms[0].pin]
    assert not any(s in r.stdout + r.stderr for s in secrets)


def test_doctor_reports_what_to_fix(config_path, cli, state):
    from hsm import admin
    from xksproxy.admin.doctor import run_checks

    cfg = load_config(config_path)
    admin.delete_key(cfg.hsms[0], "demo-encrypt-only")
    _write_expired_cert(cfg.tls.cert_file, cfg.tls.key_file)
    set_option(config_path, "server", "request_deadline_ms", "300")
    (state / "audit").mkdir(exist_ok=True)
    from xksproxy.observe.audit import AuditLog

    log = AuditLog(cfg.audit.file, cfg.audit.key)
    log.start()
    for i in range(3):
        log.record({"kmsRequestId": str(i), "outcome": "ok"})
    log.close()
    lines = cfg.audit.file.read_bytes().splitlines()
    rec = orjson.loads(lines[1])
    rec["outcome"] = "KeyNotFoundException"
    lines[1] = orjson.dumps(rec)
    cfg.audit.file.write_bytes(b"\n".join(lines) + b"\n")

    report = run_checks(config_path)
    by_name = {c.name: c for c in report.checks}
    assert by_name["key demo/demo-encrypt-only"].status == "FAIL"
    assert "xksproxy keys create" in by_name["key demo/demo-encrypt-only"].fix
    assert by_name["TLS certificate"].status == "FAIL"
    assert "expired" in by_name["TLS certificate"].detail
    assert by_name["latency budget"].status == "FAIL"
    assert by_name["audit log"].status == "FAIL" and ":2:" in by_name["audit log"].detail
    r = cli("doctor", "--config", str(config_path))
    assert r.returncode == 1
    assert "FAIL" in r.stdout


def test_group_readable_secret_is_refused_by_name(config_path, cli, state):
    secret_file = state / "secrets" / "demo-1.secret"
    os.chmod(secret_file, 0o640)
    try:
        load_config(config_path)
        raise AssertionError("loaded a config with a group-readable secret")
    except ConfigError as exc:
        assert str(secret_file) in exc.message and "chmod 600" in exc.message
        assert secret_file.read_text().strip() not in exc.message
    r = cli(
        "serve", "--config", str(config_path), "--plain-http", "--bind", "127.0.0.1:0", timeout=60
    )
    assert r.returncode != 0
    assert str(secret_file) in r.stdout + r.stderr
    assert secret_file.read_text().strip() not in r.stdout + r.stderr
    r = cli("doctor", "--config", str(config_path))
    assert r.returncode != 0 and str(secret_file) in r.stdout + r.stderr


def test_secrets_never_in_repr(config_path):
    cfg = load_config(config_path)
    secrets = [c.secret for s in cfg.keystores for c in s.credentials]
    secrets += [cfg.hsms[0].pin, cfg.audit.key.decode()]
    text = repr(cfg) + str(cfg) + repr(cfg.keystores) + repr(cfg.hsms) + repr(cfg.audit)
    assert not any(s in text for s in secrets)


def _write_expired_cert(cert_path, key_path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)


def test_doctor_table_keeps_the_fix_column_aligned():
    """Issue 17 item 11: a long DETAIL used to push FIX to the right on its row."""
    from xksproxy.admin.doctor import COLUMN_CAPS, WARN, Report

    report = Report()
    report.add("short", "OK", "fine")
    long_detail = "/very/long/path/" + "x" * 90 + " and some more words after it"
    report.add("a check with a long detail", WARN, long_detail, "do this")
    report.add("another " * 8, WARN, "short detail", "do that")
    lines = report.render().splitlines()
    fix_col = lines[0].index("FIX")
    assert fix_col == sum(COLUMN_CAPS) + 6  # three capped columns, two spaces after each
    table = lines[: lines.index("")]
    fixes = [line[fix_col:] for line in table if line[fix_col - 2 : fix_col] == "  "]
    assert fixes == ["FIX", "-", "do this", "do that"]  # FIX always starts in its column
    assert long_detail.split()[0] in report.render()  # the long path is whole, never cut
    assert len(table) > 4  # the long cells took continuation lines


def test_doctor_warns_when_a_wildcard_store_shares_its_token(config_path):
    """Issue 17 item 9: keys = ["*"] on a token another store uses reaches that store's keys."""
    from ops_config import add_store

    from xksproxy.admin.doctor import WARN, Report, check_shared_tokens

    add_store(config_path, "tenant-b", "/tenant-b", rate=0, burst=0)
    cfg = load_config(config_path)
    report = Report()
    check_shared_tokens(report, cfg)
    assert report.checks == []  # two stores on one token, both with explicit keys: fine
    text = config_path.read_text()
    text = text.replace('keys = ["demo"', 'keys = ["*"] #', 1)
    config_path.write_text(text)
    cfg = load_config(config_path)
    assert "*" in cfg.keystores[0].keys
    check_shared_tokens(report, cfg)
    (check,) = report.checks
    assert check.status == WARN and "tenant-b" in check.detail and '["*"]' in check.detail
    assert "own token" in check.fix
