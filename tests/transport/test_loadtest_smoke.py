"""The load generators still work end to end (tiny bounded runs; no timing is asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from transport_support import REPO, Served, serve_env


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """One real proxy on the embedded default for the generators that take a target."""
    d = tmp_path_factory.mktemp("loadtest") / "state"
    r = subprocess.run(
        [sys.executable, "-m", "xksproxy", "init", "--state-dir", str(d)],
        cwd=REPO,
        env=serve_env(probe=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    s = Served(
        ["--config", str(d / "xksproxy.toml"), "--bind", "127.0.0.1:0", "--workers", "1"],
        serve_env(probe=False),
        d.parent,
    )
    assert json.loads((d / "kms-console.json").read_text())["XksProxyUriPath"]
    yield s.url, d
    s.stop()


def _run(*args: str, state: os.PathLike | None = None) -> subprocess.CompletedProcess[str]:
    env = serve_env(probe=False, extra={"XKS_STATE_DIR": str(state)} if state else None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_latency_tool(proxy):
    url, state = proxy
    r = _run(
        "loadtest.latency",
        "mix",
        "--url",
        url,
        "--rate",
        "50",
        "--duration",
        "1",
        "--pool",
        "3",
        "--connections",
        "4",
        state=state,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "errors=0" in r.stdout and "RESULT: PASS" in r.stdout


def test_slo_gate_passes_and_fails_on_budget(proxy):
    url, state = proxy
    ok = _run(
        "loadtest.slo",
        "--host",
        url,
        "--rate",
        "20",
        "--duration",
        "3",
        "--p99-ms",
        "100000",
        state=state,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "failures=0" in ok.stdout and "SLO: PASS" in ok.stdout
    # A budget nothing can meet must fail the gate (exit status 1), with the figures printed.
    bad = _run(
        "loadtest.slo", "--host", url, "--rate", "20", "--duration", "2", "--p99-ms=-1", state=state
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "SLO: FAIL" in bad.stdout and "p99" in bad.stdout


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")
def test_bench_http_runs():
    """bench_http starts its own embedded server (that is part of what it does)."""
    r = _run(
        "loadtest.bench_http",
        "--servers",
        "granian",
        "--transports",
        "tls",
        "--protocols",
        "h1",
        "--ops",
        "ping,encrypt,decrypt",
        "--duration",
        "1",
        "--clients",
        "2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| granian")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-2:] == ["0", "0"], row  # no non-2xx, no errors
