"""The load generators still work end to end (tiny bounded runs; no timing is asserted)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from transport_support import REPO, serve_env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=serve_env(probe=False),
                          capture_output=True, text=True, timeout=180)


def test_latency_tool_against_embedded_default():
    r = _run("loadtest.latency", "mix", "--serve", "--rate", "50", "--duration", "1",
             "--pool", "3", "--connections", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "errors=0" in r.stdout and "RESULT: PASS" in r.stdout


def test_slo_gate_passes_and_fails_on_budget():
    ok = _run("loadtest.slo", "--serve", "--rate", "20", "--duration", "2", "--p99-ms", "100000")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "failures=0" in ok.stdout and "SLO: PASS" in ok.stdout
    # A budget nothing can meet must fail the gate (exit status 1), with the figures printed.
    bad = _run("loadtest.slo", "--serve", "--rate", "20", "--duration", "2", "--p99-ms=-1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "SLO: FAIL" in bad.stdout and "p99" in bad.stdout


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")
def test_bench_http_runs():
    r = _run("loadtest.bench_http", "--servers", "granian", "--transports", "tls",
             "--protocols", "h1", "--ops", "ping,encrypt,decrypt", "--duration", "1",
             "--clients", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| granian")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-2:] == ["0", "0"], row  # no non-2xx, no errors
