"""Issue 17 item 1, reproduced against a real 2-worker server: cut the live audit log (truncate its
tail, or delete it), send signed requests, and the proxy records the gap, raises the metric,
refuses Encrypt/Decrypt until ``xksproxy audit acknowledge``, and ``audit verify`` says so.

Requests are signed by botocore's SigV4Auth (an independent client); one module-scoped server
serves both attacks (the second starts from an acknowledged chain).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from ops_client import encrypt_body, meta
from ops_server import start

from xksproxy.admin import embedded
from xksproxy.config import load_config
from xksproxy.observe.audit import alarm_path

ENCRYPT = "/demo/kms/xks/v1/keys/demo/encrypt"
HEALTH = "/demo/kms/xks/v1/health"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    state = tmp_path_factory.mktemp("audit-live") / "state"
    embedded.init(state)
    config_path = state / "xksproxy.toml"
    srv = start(config_path, workers=2)
    try:
        yield srv, config_path, load_config(config_path, env={})
    finally:
        srv.stop()


def _post(srv, cfg, path: str, body: bytes) -> httpx.Response:
    cred = cfg.keystores[0].credentials[0]
    req = AWSRequest(
        method="POST",
        url=srv.base_url + path,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials(cred.access_key_id, cred.secret), "kms-xks-proxy", "us-east-1").add_auth(
        req
    )
    with httpx.Client(timeout=10) as http:  # a fresh connection: either worker may answer
        return http.post(srv.base_url + path, content=body, headers=dict(req.headers.items()))


def _encrypt(live) -> httpx.Response:
    srv, _, cfg = live
    return _post(srv, cfg, ENCRYPT, encrypt_body(b"pt-audit-gap-9c1f"))


def _metric(srv, name: str) -> float | None:
    """The family's value summed over its series (None when it is not exported)."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(srv.metrics_url, timeout=5).text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    ]
    return sum(values) if values else None


def _until(cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _cli(cli, config_path: Path, *args: str):
    return cli("audit", *args, "--config", str(config_path))


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("attack", ["truncate_tail", "delete_file"])
def test_cut_audit_log_is_recorded_refused_and_acknowledged(live, cli, attack):
    _, config_path, cfg = live
    try:
        _attack_and_acknowledge(live, cli, attack)
    finally:  # leave the shared server serving, whatever happened
        if alarm_path(cfg.audit.file).exists():
            _cli(cli, config_path, "acknowledge", "--reason", "test clean-up")


def _attack_and_acknowledge(live, cli, attack: str) -> None:
    srv, config_path, cfg = live
    log = cfg.audit.file
    # every worker serves (after an earlier attack's acknowledgement each worker notices the
    # lifted alarm on its own next look, a fraction of a second apart)
    assert _until(lambda: all(_encrypt(live).status_code == 200 for _ in range(6)), 20.0)
    assert _until(lambda: log.exists() and len(_lines(log)) >= 6)
    before = max(orjson.loads(x)["seq"] for x in _lines(log))  # gaps of an earlier attack: older
    if attack == "truncate_tail":
        with log.open("r+b") as fh:  # same inode, the newest records cut off
            fh.truncate(sum(len(x) for x in _lines(log)[:-3]))
    else:
        log.unlink()
    # the writers find the cut on their next batch: the first answers may still succeed
    # every worker refuses once it has seen the cut or the alarm file another worker raised
    refused = _until(lambda: all(_encrypt(live).status_code == 500 for _ in range(6)), 20.0)
    assert refused, srv.output()[-2000:]
    r = _encrypt(live)
    assert r.status_code == 500 and r.json()["errorName"] == "InternalException"
    assert "audit acknowledge" in r.json()["errorMessage"]
    health = _post(srv, cfg, HEALTH, orjson.dumps({"requestMetadata": meta("KmsHealthCheck")}))
    assert health.status_code == 200  # KMS still sees the proxy; only crypto is refused
    assert alarm_path(log).exists()
    gaps = [orjson.loads(x) for x in _lines(log) if b'"event":"gap"' in x]
    gaps = [g for g in gaps if g["seq"] > before]
    # a worker that wrote before the cut finds its own tip gone; one that had not written yet
    # finds the head naming records the file no longer holds
    reasons = {"truncated" if attack == "truncate_tail" else "missing", "cut-before-start"}
    assert gaps and {g["gapReason"] for g in gaps} <= reasons, gaps
    assert _until(lambda: _metric(srv, "xksproxy_audit_integrity_ok") == 0.0)
    # the worker that recorded the gap publishes its counter on its next metrics flush
    assert _until(lambda: (_metric(srv, "xksproxy_audit_gaps_total") or 0) >= 1)
    assert "GAP in the audit chain" in srv.output()
    # verify (no FILE: the configured log) names the gap and fails until acknowledged
    out = _cli(cli, config_path, "verify")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "GAP (" in out.stdout and "unacknowledged" in out.stdout
    ack = _cli(cli, config_path, "acknowledge", "--reason", f"drill {attack}", "--json")
    assert ack.returncode == 0, ack.stderr
    assert orjson.loads(ack.stdout)["acknowledged"] is True
    # every worker resumes (fresh connections reach both)
    assert _until(lambda: all(_encrypt(live).status_code == 200 for _ in range(6)), 20.0)
    assert _until(lambda: _metric(srv, "xksproxy_audit_integrity_ok") == 1.0)
    out = _cli(cli, config_path, "verify")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "acknowledged by" in out.stdout and f"drill {attack}" in out.stdout
    acks = [orjson.loads(x) for x in _lines(log) if b'"event":"ack"' in x]
    assert acks and acks[-1]["reason"] == f"drill {attack}"
