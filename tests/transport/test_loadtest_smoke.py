"""The load generators still work end to end (tiny bounded runs; no timing is asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transport_support import REPO, Served, serve_env

from hsm.ivbuffer import IV_BATCH


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


def _json_document(tmp_path: Path, *args: str) -> Any:
    """Run ``python -m args --json`` with its temporary files under ``tmp_path``: it must succeed
    and print one JSON document and nothing else on stdout."""
    r = subprocess.run(
        [sys.executable, "-m", *args, "--json"],
        cwd=REPO,
        env=serve_env(probe=False, extra={"TMPDIR": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = r.stdout.splitlines()
    return json.loads(line)


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


def test_latency_json_is_one_document_a_script_can_read(proxy):
    url, state = proxy
    args = ["loadtest.latency", "seq", "--url", url, "--count", "20", "--pool", "3"]
    r = _run(*args, "--json", "--p99-ms", "100000", state=state)
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = r.stdout.splitlines()  # nothing else on stdout
    doc = json.loads(line)
    assert doc["mode"] == "seq" and doc["requests"] == 20 and doc["errors"] == 0
    assert doc["failed"] == [] and doc["p99_ms"] >= doc["p50_ms"] > 0
    # a budget nothing can meet: exit 1 and the miss named in the document
    bad = _run(*args, "--json", "--p99-ms=-1", state=state)
    assert bad.returncode == 1 and json.loads(bad.stdout)["failed"][0].startswith("p99")


def test_targets_judge_ratios_by_median_and_latency_budgets_in_every_run():
    sys.path.insert(0, str(REPO))
    from loadtest.targets import Outcome, targets

    by_name = {t.name: t for t in targets(network=False)}
    ratio = Outcome(by_name["encrypt / ping, h1, workers=1"], [0.2, 0.31, 0.35])
    assert ratio.median() == 0.31 and ratio.met()
    p99 = Outcome(by_name["mix 1,800/s TLS: p99 ms"], [4.0, 11.0, 5.0])
    assert p99.median() == 5.0 and not p99.met()  # one run over budget fails the target
    assert not Outcome(
        by_name["sequential Encrypt p99 ms"], [1.0, None, 1.2]
    ).met()  # a run gave nothing


@pytest.mark.parametrize("server", ["proxy", "floor"])
def test_network_hsm_reports_the_figures_targets_reads(tmp_path, server):
    """A tiny run of the network-HSM tool (its own proxy, or with --floor the floor app, on the
    fault shim, threaded mode): one JSON document with the keys loadtest/targets.py reads, and
    nothing failed."""
    floor = ["--floor"] if server == "floor" else []
    doc = _json_document(
        tmp_path, "loadtest.network_hsm", "--duration", "1", "--warmup", "0.3",
        "--sessions", "4", "--connections", "4", "--ping-rate", "20", *floor,
    )  # fmt: skip
    assert doc["server"] == server and doc["mode"] == "threaded" and doc["sessions"] == 4
    # C_Encrypt and the CDIV's verifying C_Decrypt, each +2 ms, plus one RNG draw per 64 IVs
    # (hsm/ivbuffer.py): 4 sessions / 4.03 ms
    calls = 2 + 1 / IV_BATCH
    assert doc["hsm_calls_per_request"] == pytest.approx(calls)
    assert doc["hsm_ms_per_request"] == pytest.approx(2 * calls)
    assert doc["bound_rps"] == pytest.approx(4 / (0.002 * calls))
    assert doc["errors"] == 0 and doc["error_kinds"] == {}
    assert doc["rps"] > 0 and doc["ratio_to_bound"] == pytest.approx(doc["rps"] / doc["bound_rps"])
    assert doc["ping_requests"] > 0 and doc["ping_p99_ms"] >= doc["ping_p50_ms"] > 0
    assert doc["no_delay"]["delay_ms"] == 0 and doc["no_delay"]["rps"] > 0
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone
    from loadtest.targets import targets

    judged = [t for t in targets(network=True) if t.name.startswith("network HSM")]
    figures = [doc["ratio_to_bound"], doc["ping_p99_ms"]]
    assert [t.read({"network": doc}) for t in judged] == figures
    assert [t.floor({"network-floor": doc}) for t in judged if t.floor] == figures


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")
def test_floor_serves_real_encrypts_and_reports_the_ratios_targets_reads(tmp_path):
    """The floor app (loadtest/floor.py) answers every replayed Encrypt and Decrypt with 200 (the
    tool exits non-zero on any other answer), and loadtest.targets reads its ratios as the floor
    of each ratio target; nothing is left in its temporary directory."""
    rows = _json_document(
        tmp_path, "loadtest.floor", "--servers", "floor", "--rounds", "1", "--duration", "1",
        "--protocols", "h1", "--workers", "1",
    )  # fmt: skip
    assert [(row["server"], row["op"]) for row in rows] == [
        ("floor", "ping"),
        ("floor", "encrypt"),
        ("floor", "decrypt"),
    ]
    assert all(row["rps"] > 0 and row["cpu_us"] > 0 for row in rows)
    assert list(tmp_path.iterdir()) == []
    from loadtest.targets import Outcome, targets

    (target,) = [t for t in targets(network=False) if t.name == "encrypt / ping, h1, workers=1"]
    assert target.floor is not None
    assert target.floor({"floor-1": rows}) == rows[1]["ratio_to_ping"]
    below = Outcome(target, [0.1, 0.1, 0.1], [0.2, 0.25, 0.2])
    assert below.status() == "**missed**, and so is the floor"
    assert Outcome(target, [0.1, 0.1, 0.1], [0.4, 0.4, 0.4]).status() == "**missed**"
    assert Outcome(target, [0.3, 0.4, 0.4], [0.2, 0.2, 0.2]).status() == "met"
