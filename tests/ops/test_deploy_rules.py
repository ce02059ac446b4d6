"""The shipped Prometheus rules only use metrics the proxy really exposes."""

from __future__ import annotations

import re
from pathlib import Path

from xksproxy.observe import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_alert_rules_reference_exposed_metrics():
    text = (DEPLOY / "xksproxy-slo-alerts.yml").read_text()
    used = set(re.findall(r"\b(xksproxy_[a-z_]+)", text))
    exposed = set(metrics.HELP)
    exposed |= {f"{n}_bucket" for n, (kind, _) in metrics.HELP.items() if kind == "histogram"}
    assert used and used <= exposed, used - exposed
    assert "\t" not in text  # YAML forbids tabs
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"xksproxy:slo_error_ratio:rate{window}" in text
