"""Metrics: Prometheus text from several worker processes merged by one listener."""

from __future__ import annotations

import multiprocessing
import os
import time

import httpx
import pytest

from xksproxy import environment
from xksproxy.observe import metrics


@pytest.fixture
def metrics_env(tmp_path, monkeypatch):
    d = tmp_path / "m"
    d.mkdir()
    monkeypatch.setenv(environment.METRICS_DIR.name, str(d))
    yield d


def _worker(n_ok: int, n_err: int, slow: int) -> None:
    metrics.REGISTRY.reset()
    metrics.configure(deadline_s=0.15)
    for _ in range(n_ok):
        metrics.observe_request(
            operation="Encrypt", keystore="demo", status=200, error_name=None, seconds=0.002
        )
    for _ in range(n_err):
        metrics.observe_request(
            operation="Decrypt",
            keystore="demo",
            status=400,
            error_name="InvalidCiphertextException",
            seconds=0.003,
        )
    for _ in range(slow):
        metrics.observe_request(
            operation="Encrypt",
            keystore="demo",
            status=503,
            error_name="DependencyTimeoutException",
            seconds=0.16,
        )
    metrics.observe_hsm_op(metrics.hsm_keys("softhsm-0", "encrypt"), 0.0, 0.0001)
    metrics.flush_now()


def _parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_listener_merges_worker_processes(metrics_env):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(10 * (i + 1), 2, 1)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    listener = metrics.start_listener("127.0.0.1:0")
    try:
        assert listener.url.startswith("http://127.0.0.1:") and listener.url.endswith("/metrics")
        r = httpx.get(listener.url, timeout=5)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        m = _parse(r.text)
    finally:
        listener.close()
    ok = 'xksproxy_requests_total{keystore="demo",operation="Encrypt",outcome="ok"}'
    assert m[ok] == 60
    err = 'xksproxy_errors_total{errorName="InvalidCiphertextException",operation="Decrypt"}'
    assert m[err] == 6
    inf = (
        'xksproxy_request_duration_seconds_bucket{keystore="demo",operation="Encrypt",'
        'outcome="ok",le="+Inf"}'
    )
    assert m[inf] == 60
    le1 = (
        'xksproxy_request_duration_seconds_bucket{keystore="demo",operation="Encrypt",'
        'outcome="ok",le="0.001"}'
    )
    assert m[le1] == 0
    assert m['xksproxy_slo_requests_total{keystore="demo"}'] == 69
    assert m['xksproxy_slo_good_requests_total{keystore="demo"}'] == 66
    assert m["xksproxy_slo_within_budget_ratio"] == pytest.approx(66 / 69)
    assert m['xksproxy_slo_error_budget_burn_rate{window="5m"}'] == pytest.approx(
        (3 / 69) / (1 - metrics.SLO_OBJECTIVE)
    )
    assert m['xksproxy_hsm_call_duration_seconds_count{operation="encrypt",token="softhsm-0"}'] == 3
    assert m["xksproxy_workers"] == 0  # the workers have exited; their counts remain


def test_live_gauges_from_pool_stats(monkeypatch):
    monkeypatch.delenv(environment.METRICS_DIR.name, raising=False)

    class Stats:
        sessions, in_use, waiting = 4, 3, 7

    metrics.REGISTRY.reset()
    metrics.register_pool("softhsm-0", Stats)
    metrics.set_token_health("softhsm-0", "DEGRADED")
    listener = metrics.start_listener("127.0.0.1:0", multiprocess=False)
    try:
        m = _parse(httpx.get(listener.url, timeout=5).text)
    finally:
        listener.close()
    assert m['xksproxy_hsm_sessions_in_use{token="softhsm-0"}'] == 3
    assert m['xksproxy_hsm_sessions_waiting{token="softhsm-0"}'] == 7
    assert m['xksproxy_token_health{status="DEGRADED",token="softhsm-0"}'] == 1
    assert m['xksproxy_token_health{status="ACTIVE",token="softhsm-0"}'] == 0


def test_private_directory_is_created_and_removed(monkeypatch):
    monkeypatch.delenv(environment.METRICS_DIR.name, raising=False)
    listener = metrics.start_listener("127.0.0.1:0")
    d = listener.directory
    assert d is not None and d.is_dir() and os.environ[environment.METRICS_DIR.name] == str(d)
    assert (d.stat().st_mode & 0o077) == 0
    listener.close()
    time.sleep(0.05)
    assert not d.exists() and environment.METRICS_DIR.name not in os.environ


def test_busy_metrics_port_warns_with_the_fix_and_still_serves(tmp_path):
    """A second proxy on the host finds 127.0.0.1:9464 taken: it must still serve KMS, and say
    which setting to change (run in a subprocess: the launcher hooks install signal handlers)."""
    import subprocess
    import sys

    code = (
        "import socket\n"
        "from xksproxy.runtime.operations import prepare_launcher\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "hooks = prepare_launcher(f'127.0.0.1:{s.getsockname()[1]}', 1)\n"
        "print('url', hooks.metrics_url)\n"
        "hooks.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != environment.METRICS_DIR.name}
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "url None" in r.stdout
    assert "metrics listener on 127.0.0.1:" in r.stderr
    assert "[metrics] bind" in r.stderr and "serving without metrics" in r.stderr
