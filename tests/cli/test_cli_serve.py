"""`xksproxy serve`: starts on the embedded default, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from support import procs

STARTUP_LIMIT_S = 45


def _wait_for(out: procs.StdoutLines, needle: str) -> str:
    try:
        return out.wait_for(needle, STARTUP_LIMIT_S)
    except (TimeoutError, EOFError) as exc:
        pytest.fail(f"{exc}; output so far:\n" + "\n".join(out.seen))


def _signed_health(base: str, uri_path: str, akid: str, secret: str) -> tuple[int, dict]:
    """A GetHealthStatus call signed by botocore, an independent SigV4 implementation."""
    body = json.dumps(
        {"requestMetadata": {"kmsRequestId": str(uuid.uuid4()), "kmsOperation": "KmsHealthCheck"}}
    ).encode()
    url = f"{base}{uri_path}/health"
    req = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(akid, secret), "kms-xks-proxy", "us-east-1").add_auth(req)
    http_req = urllib.request.Request(url, data=body, headers=dict(req.headers), method="POST")
    try:
        with urllib.request.urlopen(http_req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_serve_plain_http_answers_ping_and_signed_health_then_stops(initialised, cli):
    config = initialised / "xksproxy.toml"
    # Another test run (or a real proxy) may hold the default metrics port: turn metrics off.
    config.write_text(config.read_text().replace('bind = "127.0.0.1:9464"', 'bind = ""'))
    console = json.loads((initialised / "kms-console.json").read_text())
    cred = console["XksProxyAuthenticationCredential"]
    port = procs.free_port()
    env = dict(os.environ, PYTHONPATH=str(procs.REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xksproxy", "serve", "--state-dir", str(initialised),
         "--plain-http", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=env, cwd=procs.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = procs.StdoutLines(proc.stdout)
    seen = out.seen
    try:
        line = _wait_for(out, "xksproxy: listening on")
        assert f"http://127.0.0.1:{port}" in line
        assert any("/demo/kms/xks/v1" in s for s in seen) or "/demo/kms/xks/v1" in _wait_for(
            out, "/demo/kms/xks/v1"
        )
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/ping", timeout=10) as resp:
            assert resp.status == 200
        status, doc = _signed_health(
            base, console["XksProxyUriPath"], cred["AccessKeyId"], cred["RawSecretAccessKey"]
        )
        assert status == 200, doc
        assert doc["xksProxyFleetSize"] >= 1
        assert doc["ekmFleetDetails"][0]["healthStatus"] in ("ACTIVE", "DEGRADED")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    secret = cred["RawSecretAccessKey"]
    assert not any(secret in s for s in seen), "the secret must not be printed on a later start"


def test_serve_refuses_a_broken_config_before_starting(tmp_path: Path, cli):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    r = cli("serve", "--config", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_with_a_missing_pkcs11_module_says_so_and_does_not_start(initialised, cli):
    text = (initialised / "xksproxy.toml").read_text()
    bad = initialised / "bad-module.toml"
    bad.write_text(text.replace("libsofthsm2.so", "libsofthsm2-missing.so"))
    bad.chmod(0o600)
    r = cli("serve", "--config", str(bad), "--plain-http", "--bind", "127.0.0.1:0")
    assert r.returncode == 1
    assert "libsofthsm2-missing.so" in r.stderr and "apt-get install softhsm2" in r.stderr
    assert "listening" not in r.stdout
