"""Render merged series in the Prometheus text exposition format 0.0.4."""

from __future__ import annotations

import math
from collections.abc import Iterable

from xksproxy.observe.metrics.children import DURATION_BUCKETS
from xksproxy.observe.metrics.merge import Merged
from xksproxy.observe.metrics.series import HELP

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(lb: Iterable[tuple[str, str]]) -> str:
    items = list(lb)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def render(merged: Merged) -> str:
    """Prometheus text exposition format 0.0.4, series grouped by name, names sorted."""
    by_name: dict[str, list[str]] = {}

    def emit(name: str, line: str) -> None:
        by_name.setdefault(name, []).append(line)

    for (n, lb), v in sorted(merged.counters.items()):
        emit(n, f"{n}{_fmt_labels(lb)} {_fmt_value(v)}")
    for (n, lb), v in sorted(merged.gauges.items()):
        emit(n, f"{n}{_fmt_labels(lb)} {_fmt_value(v)}")
    for (n, lb), h in sorted(merged.hists.items()):
        cum = 0.0
        for i, bound in enumerate(DURATION_BUCKETS):
            cum += h[i]
            emit(n, f"{n}_bucket{_fmt_labels((*lb, ('le', repr(bound))))} {_fmt_value(cum)}")
        cum += h[len(DURATION_BUCKETS)]
        emit(n, f"{n}_bucket{_fmt_labels((*lb, ('le', '+Inf')))} {_fmt_value(cum)}")
        emit(n, f"{n}_sum{_fmt_labels(lb)} {_fmt_value(h[-2])}")
        emit(n, f"{n}_count{_fmt_labels(lb)} {_fmt_value(h[-1])}")
    out: list[str] = []
    for name in sorted(by_name):
        kind, help_text = HELP.get(name, ("untyped", name))
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(by_name[name])
    return "\n".join(out) + "\n"
