"""The operations features wired into a real app (in-process ASGI, real SoftHSMv2 token)."""

from __future__ import annotations

import os
import re

import httpx
import orjson
import pytest
from ops_client import KEY_ARN, PRINCIPAL, decrypt_body, encrypt_body, signed
from ops_config import add_store, demo_credential, set_option

from xksproxy import environment
from xksproxy.config import load_config
from xksproxy.observe import metrics
from xksproxy.observe.audit import main_verify

HOST = "xks.test"
PLAINTEXT = b"ops-suite-plaintext-4f1c2b"
AAD = b"ops-suite-aad-77e0"


@pytest.fixture
async def ops_app(config_path, monkeypatch):
    monkeypatch.setenv(environment.WORKERS.name, "1")
    monkeypatch.delenv(environment.METRICS_DIR.name, raising=False)
    metrics.REGISTRY.reset()
    set_option(config_path, "server", "plain_http", "true")
    set_option(config_path, "logging", "request_log", "false")
    other = add_store(config_path, "busy", "/busy", rate=5, burst=5)
    from xksproxy.runtime.factory import create_app

    app = create_app(load_config(config_path))
    await app.startup()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        yield app, http, other
    await app.shutdown()


async def _post(http, path, body, cred):
    return await http.post(path, content=body, headers=signed(path, body, cred, HOST))


async def test_quota_throttles_only_that_store(ops_app, config_path):
    _app, http, busy_cred = ops_app
    demo = demo_credential(config_path)
    busy = [
        await _post(http, "/busy/kms/xks/v1/keys/demo/encrypt", encrypt_body(b"x"), busy_cred)
        for _ in range(20)
    ]
    codes = [r.status_code for r in busy]
    assert codes.count(200) >= 5 and codes.count(429) >= 10, codes
    assert set(codes) <= {200, 429}
    throttled = next(r for r in busy if r.status_code == 429)
    assert throttled.json()["errorName"] == "ThrottlingException"
    for _ in range(20):
        r = await _post(http, "/demo/kms/xks/v1/keys/demo/encrypt", encrypt_body(b"x"), demo)
        assert r.status_code == 200


async def test_audit_records_every_request_without_plaintext(ops_app, config_path, capsys):
    app, http, _ = ops_app
    demo = demo_credential(config_path)
    path = "/demo/kms/xks/v1/keys/demo/encrypt"
    r = await _post(http, path, encrypt_body(PLAINTEXT, AAD), demo)
    assert r.status_code == 200
    r2 = await _post(http, "/demo/kms/xks/v1/keys/demo/decrypt", decrypt_body(r.json(), AAD), demo)
    assert r2.status_code == 200
    bad = await _post(http, "/demo/kms/xks/v1/keys/nope/encrypt", encrypt_body(PLAINTEXT), demo)
    assert bad.status_code == 404
    await app.shutdown()  # flushes the audit queue
    cfg = load_config(config_path)
    text = cfg.audit.file.read_text()
    recs = [orjson.loads(line) for line in text.splitlines()]
    assert [r["outcome"] for r in recs] == ["ok", "ok", "KeyNotFoundException"]
    first = recs[0]
    assert first["kmsOperation"] == "Encrypt" and first["principal"] == PRINCIPAL
    assert first["kmsKeyArn"] == KEY_ARN and first["kmsViaService"] == "ebs"
    assert first["awsSourceVpc"] == "vpc-0abc" and first["awsSourceVpce"] == "vpce-0def"
    assert first["keystore"] == "demo" and first["keyId"] == "demo"
    assert first["token"] == "softhsm-0" and first["status"] == 200
    assert "latencyMs" in first and "kmsRequestId" in first
    for needle in (PLAINTEXT, AAD):
        for form in (needle, __import__("base64").b64encode(needle)):
            assert form.decode() not in text
    assert demo.secret not in text
    assert main_verify([str(cfg.audit.file)], key=cfg.audit.key) == 0
    assert "3 records" in capsys.readouterr().out


async def test_metrics_count_requests_and_slo(ops_app, config_path):
    _app, http, _ = ops_app
    demo = demo_credential(config_path)
    for _ in range(7):
        r = await _post(http, "/demo/kms/xks/v1/keys/demo/encrypt", encrypt_body(b"m"), demo)
        assert r.status_code == 200
    r = await _post(http, "/demo/kms/xks/v1/keys/nope/encrypt", encrypt_body(b"m"), demo)
    assert r.status_code == 404
    text = metrics.exposition(None, metrics.SloTracker())
    assert 'xksproxy_requests_total{keystore="demo",operation="encrypt",outcome="ok"} 7' in text
    assert 'xksproxy_errors_total{errorName="KeyNotFoundException",operation="encrypt"} 1' in text
    assert re.search(
        r'xksproxy_hsm_call_duration_seconds_count\{operation="encrypt",'
        r'token="softhsm-0"\} 7',
        text,
    )
    assert 'xksproxy_hsm_sessions{token="softhsm-0"} 4' in text
    assert 'xksproxy_slo_good_requests_total{keystore="demo"} 8' in text
    assert "xksproxy_slo_within_budget_ratio 1" in text
    assert 'xksproxy_token_health{status="ACTIVE",token="softhsm-0"} 1' in text


async def test_removed_credential_stops_after_reload(ops_app, config_path):
    from xksproxy.admin import credentials_ops

    app, http, _ = ops_app
    old = demo_credential(config_path)
    _, new = credentials_ops.add(config_path, "/demo")
    path = "/demo/kms/xks/v1/keys/demo/encrypt"
    assert app.operations.reloader.check() is True
    assert (await _post(http, path, encrypt_body(b"r"), new)).status_code == 200
    credentials_ops.remove(config_path, "/demo", old.access_key_id)
    assert app.operations.reloader.check() is True
    r = await _post(http, path, encrypt_body(b"r"), old)
    assert r.status_code == 401
    assert (await _post(http, path, encrypt_body(b"r"), new)).status_code == 200


async def test_invalid_reload_keeps_running_config(ops_app, config_path, caplog):
    app, http, _ = ops_app
    demo = demo_credential(config_path)
    good = config_path.read_text()
    config_path.write_text(good.replace("max_body_bytes = 262144", "max_body_bytes = -1"))
    os.utime(config_path, ns=(1, 1))
    assert app.operations.reloader.check() is False
    assert "max_body_bytes" in (app.operations.reloader.last_error or "")
    r = await _post(http, "/demo/kms/xks/v1/keys/demo/encrypt", encrypt_body(b"k"), demo)
    assert r.status_code == 200


async def test_slo_counts_authenticated_requests_only(ops_app, config_path):
    """Issue 17 item 5: an anonymous 401 used to count as a good request (and a slow-body 400
    against the budget); only what KMS sends, authenticated, is the SLO's."""
    _app, http, _other = ops_app
    path = "/demo/kms/xks/v1/keys/demo/encrypt"

    def slo_total() -> float:
        counters = metrics.REGISTRY.counters.items()
        return sum(v for (n, _), v in counters if n == "xksproxy_slo_requests_total")

    before = slo_total()
    for _ in range(5):
        assert (await http.post(path, content=b"{}")).status_code == 401
    assert slo_total() == before
    r = await _post(http, path, encrypt_body(b"x"), demo_credential(config_path))
    assert r.status_code == 200
    assert slo_total() == before + 1
