"""Listener side: read every worker's snapshot and merge them into one set of series.

Counters and histograms are summed over every snapshot (a worker that died keeps its counts, so
counters never go backwards); gauges are merged over *live* workers only, summed or, for the
names in :data:`~xksproxy.observe.metrics.series.MAX_GAUGES`, maxed (in ``MIN_GAUGES``: the
minimum, so one worker with a broken audit chain shows).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from xksproxy.observe.metrics.registry import REGISTRY, Labels, SeriesKey, Snapshot
from xksproxy.observe.metrics.series import MAX_GAUGES, MIN_GAUGES


@dataclass
class Merged:
    """Series of all workers together, ready to render."""

    counters: dict[SeriesKey, float] = field(default_factory=dict)
    hists: dict[SeriesKey, list[float]] = field(default_factory=dict)
    gauges: dict[SeriesKey, float] = field(default_factory=dict)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_snapshots(directory: Path | None) -> list[Snapshot]:
    """Every worker's snapshot in ``directory``; this process's registry when None."""
    if directory is None:
        return [REGISTRY.snapshot()]
    snaps = []
    for p in directory.glob("w-*.json"):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            snaps.append(orjson.loads(p.read_bytes()))
    return snaps


def _key(name: str, raw_labels: list[list[str]]) -> SeriesKey:
    lb: Labels = tuple((str(k), str(v)) for k, v in raw_labels)
    return (name, lb)


def merge(snaps: list[Snapshot]) -> Merged:
    """Sum counters/histograms of all snapshots; gauges of live processes (sum or max)."""
    out = Merged()
    live = 0
    for s in snaps:
        for n, lb, v in s.get("counters", []):
            k = _key(n, lb)
            out.counters[k] = out.counters.get(k, 0.0) + v
        for n, lb, h in s.get("hists", []):
            k = _key(n, lb)
            acc = out.hists.get(k)
            if acc is None:
                out.hists[k] = list(h)
            else:
                for i, v in enumerate(h):
                    acc[i] += v
        if not _alive(int(s.get("pid", 0))):
            continue
        live += 1
        for n, lb, v in s.get("gauges", []):
            k = _key(n, lb)
            if n in MAX_GAUGES:
                out.gauges[k] = max(out.gauges.get(k, v), v)
            elif n in MIN_GAUGES:
                out.gauges[k] = min(out.gauges.get(k, v), v)
            else:
                out.gauges[k] = out.gauges.get(k, 0.0) + v
    out.gauges[("xksproxy_workers", ())] = float(live)
    return out
