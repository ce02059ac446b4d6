"""The Grafana dashboard and the Prometheus rules use only metrics a real running proxy exports:
every metric name in every expression is found on a live proxy's /metrics (after traffic that
makes the event counters appear), histogram names with their _bucket/_sum/_count series."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    encrypt_decrypt,
    http_get,
    set_metrics_bind,
    start,
    unverified_tls,
)
from support import procs

from xksproxy.observe import metrics

DASHBOARD = DEPLOY / "grafana" / "xksproxy-dashboard.json"
RULES = sorted((DEPLOY / "prometheus").glob("*.yml"))
NAME = re.compile(r"\bxksproxy_[a-z0-9_]+\b")
# Counters that only appear once their event happened and that a short test cannot provoke
# honestly (a full audit queue, a stalled stdout, an HSM member failing calls). They are checked
# against the exposition's own table of names instead (metrics.HELP: what /metrics would print
# as # TYPE); tests/ha checks the failover counter on a live two-member proxy.
EVENT_ONLY = {
    "xksproxy_audit_dropped_total",
    "xksproxy_request_log_dropped_total",
    "xksproxy_hsm_member_failovers_total",
}


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return exprs


def _rule_exprs() -> list[str]:
    out = []
    for path in RULES:
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            out += [r["expr"] for r in group["rules"]]
    return out


def used_names() -> set[str]:
    names: set[str] = set()
    for e in _dashboard_exprs() + _rule_exprs():
        names |= set(NAME.findall(e))
    return names


def exported_families(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}  # fmt: skip


def test_dashboard_is_well_formed():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] == "xksproxy"
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in (
        "latency",
        "operation and outcome",
        "errorname",
        "throttled",
        "hsm sessions",
        "health probe",
        "audit",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        for t in p.get("targets", []):
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_every_used_metric_is_exported_by_a_running_proxy(tmp_path):
    used = used_names()
    assert len(used) > 15
    state = tmp_path / "state"
    r = procs.run_cli("init", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    mport = procs.free_port()
    set_metrics_bind(state, f"127.0.0.1:{mport}")
    config = state / "xksproxy.toml"
    text = config.read_text()
    assert "[keystore.quota]\nrate = 0\nburst = 0" in text
    # A tight quota, so the throttle counter appears after a few requests.
    config.write_text(text.replace("[keystore.quota]\nrate = 0\nburst = 0",
                                   "[keystore.quota]\nrate = 1\nburst = 1"))  # fmt: skip
    env = procs.product_env(drop=["XKSPROXY_CONFIG", "XKSPROXY_METRICS_DIR"])
    proxy = start([sys.executable, "-m", "xksproxy", "serve", "--state-dir", str(state),
                   "--bind", f"127.0.0.1:{procs.free_port()}", "--workers", "1"], env)  # fmt: skip
    try:
        assert http_get(f"{proxy.url}/ping")[0] == 200
        try:
            encrypt_decrypt(proxy.url, state)  # successful calls: latency, HSM histograms
        except AssertionError:
            pass  # over the quota already; the loop below keeps calling
        unsigned = urllib.request.Request(f"{proxy.url}/no-such-store/kms/xks/v1/keys/demo/encrypt",
                                          data=b"{}", method="POST")  # fmt: skip
        try:
            urllib.request.urlopen(unsigned, timeout=10, context=unverified_tls())
        except urllib.error.HTTPError as err:
            assert err.code == 404  # InvalidUriPathException -> errors_total
        proxy.proc.send_signal(signal.SIGHUP)  # -> config_reloads_total
        deadline = time.monotonic() + 20
        missing: set[str] = set()
        while time.monotonic() < deadline:
            for _ in range(3):  # over the quota: 429 ThrottlingException -> throttled_total
                try:
                    encrypt_decrypt(proxy.url, state)
                except AssertionError:
                    pass
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10)
            families = exported_families(scraped.read().decode())
            missing = {n for n in used - EVENT_ONLY if n not in families}
            if not missing:
                break
            time.sleep(0.5)
        assert not missing, f"used but not exported: {sorted(missing)}"
        for n in used:
            kind = metrics.HELP.get(n.removesuffix("_bucket"), ("", ""))[0]
            if n.endswith("_bucket"):
                assert kind == "histogram", n
                base = n.removesuffix("_bucket")
                assert {f"{base}_sum", f"{base}_count"} <= families
        assert EVENT_ONLY <= set(metrics.HELP)
        assert (EVENT_ONLY & used) == EVENT_ONLY  # the dashboard does show them
    finally:
        assert proxy.stop() == 0, proxy.output()[-3000:]


def test_name_extraction_has_teeth():
    assert NAME.findall("sum(rate(xksproxy_requests_total{a='b'}[5m])) / xksproxy:rule") == [
        "xksproxy_requests_total"
    ]
    with pytest.raises(AssertionError):
        assert not {"xksproxy_no_such_metric"} - exported_families("xksproxy_workers 1\n")
