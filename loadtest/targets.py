"""The hot-path targets (issue 16), measured ``--runs`` times, each figure against its goal.

Why one script: a ratio is only meaningful against a baseline measured in the same run on this
shared machine, and a target is only met if it holds run after run. Each run starts fresh servers
through the existing tools (their ``--json`` output, so nothing is parsed twice):

* ``loadtest.bench_http`` (granian, TLS, HTTP/1.1 and HTTP/2; one worker and the default
  workers): Encrypt+CDIV and Decrypt req/s as a fraction of the same server's ``/ping``;
* ``loadtest.latency mix``: the KMS mix at 1,800 req/s over TLS, p99 and errors (must hold in
  *every* run, not in the median);
* ``loadtest.latency seq``: one connection, sequential Encrypt, p99;
* ``loadtest.network_hsm`` when present: +2 ms per HSM call, threaded mode, throughput against
  the sessions bound and ``/ping`` p99 while it runs;
* ``loadtest.floor --servers floor``: the same ratios for a bare RSGI app that does only the
  work no proxy can skip (SigV4, JSON, the HSM calls, the CDIV), on the same granian and TLS.
  Its figure is printed next to each ratio target, and ``loadtest.network_hsm --floor`` next
  to the network-HSM goals: a goal the floor misses cannot be met by any change to the proxy's
  own code on this machine, and the table says so.

It prints every run's figure, the median and whether the goal is met, and exits 1 if any missed
(``--json``: one JSON document instead). Bounded: every child has its own duration and a timeout.

    python -m loadtest.targets                    # 3 runs, about 4 minutes each on 2 cores
    python -m loadtest.targets --runs 1 --duration 2 --mix-duration 10 --seq-count 500
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import operator
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 600
STOP_TIMEOUT_S = 60  # a stopped tool's own teardown (its servers wait up to 30 s each)
#: Issue 16's throughput goals: Encrypt and Decrypt req/s as a fraction of /ping (loadtest.floor
#: judges its own figures by them too).
RATIO_GOALS = {"encrypt": 0.30, "decrypt": 0.35}


@dataclass(frozen=True)
class Target:
    """One goal: ``name`` is read from each run's figures by ``read``; ``every_run`` goals must
    hold in each run (a latency budget), the others in the median (a throughput ratio)."""

    name: str
    goal: str
    read: Callable[[dict[str, Any]], float | None]
    ok: Callable[[float], bool]
    every_run: bool = False
    fmt: str = "{:.2f}"
    floor: Callable[[dict[str, Any]], float | None] | None = None
    """The same figure of ``loadtest.floor`` in the same run (throughput and /ping goals)."""


@dataclass
class Outcome:
    target: Target
    values: list[float | None] = field(default_factory=list)
    floors: list[float | None] = field(default_factory=list)

    def median(self) -> float | None:
        return _median(self.values)

    def floor_median(self) -> float | None:
        return _median(self.floors)

    def status(self) -> str:
        if self.met():
            return "met"
        floor = self.floor_median()
        if floor is not None and not self.target.ok(floor):
            return "**missed**, and so is the floor"
        return "**missed**"

    def met(self) -> bool:
        got = [v for v in self.values if v is not None]
        if not got or len(got) < len(self.values):
            return False
        if self.target.every_run:
            return all(self.target.ok(v) for v in got)
        m = self.median()
        return m is not None and self.target.ok(m)


def _child(module: str, *args: str) -> Any:
    """Run ``python -m module args --json`` and return its JSON (None if it failed to give any)."""
    cmd = [sys.executable, "-m", module, *args, "--json"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        # SIGINT, not SIGKILL: the tool's finally blocks stop the servers it started (in their
        # own sessions, which a kill of the tool would leave running) and remove its temp dirs.
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"  {module}: timed out after {CHILD_TIMEOUT_S} s", file=sys.stderr)
        return None
    lines = [ln for ln in out.splitlines() if ln.startswith(("{", "["))]
    if not lines:
        tail = (err or out).strip().splitlines()[-5:]
        print(
            f"  {module}: exit {proc.returncode}, no figures: {' | '.join(tail)}", file=sys.stderr
        )
        return None
    return json.loads(lines[-1])


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _ratio(rows: list[dict[str, Any]] | None, op: str, proto: str) -> float | None:
    for row in rows or []:
        if row["op"] == op and row["proto"] == proto:
            return float(row["ratio_to_ping"])
    return None


def _bench_ratio(run: str, op: str, proto: str, figs: dict[str, Any]) -> float | None:
    return _ratio(figs.get(run), op, proto)


def _get(doc: dict[str, Any] | None, key: str) -> float | None:
    return None if doc is None or doc.get(key) is None else float(doc[key])


def targets(*, network: bool) -> list[Target]:
    out: list[Target] = []
    for workers in ("1", "default"):
        for op, goal in RATIO_GOALS.items():
            for proto in ("h1", "h2"):
                out.append(
                    Target(
                        f"{op} / ping, {proto}, workers={workers}",
                        f">= {goal:.2f}",
                        functools.partial(_bench_ratio, f"bench-{workers}", op, proto),
                        functools.partial(operator.le, goal),
                        floor=functools.partial(_bench_ratio, f"floor-{workers}", op, proto),
                    )
                )
    out += [
        Target(
            "mix 1,800/s TLS: p99 ms",
            "<= 10 every run",
            lambda r: _get(r.get("mix"), "p99_ms"),
            lambda v: v <= 10.0,
            every_run=True,
        ),
        Target(
            "mix 1,800/s TLS: errors",
            "0 every run",
            lambda r: _get(r.get("mix"), "errors"),
            lambda v: v == 0,
            every_run=True,
            fmt="{:.0f}",
        ),
        Target(
            "sequential Encrypt p99 ms",
            "<= 1.5",
            lambda r: _get(r.get("seq"), "p99_ms"),
            lambda v: v <= 1.5,
        ),
    ]
    if network:
        out += [
            Target(
                "network HSM (+2 ms/call, 32 sessions): req/s / bound",
                ">= 0.70",
                lambda r: _get(r.get("network"), "ratio_to_bound"),
                lambda v: v >= 0.70,
                floor=lambda r: _get(r.get("network-floor"), "ratio_to_bound"),
            ),
            Target(
                "network HSM: /ping p99 ms during the load",
                "<= 5",
                lambda r: _get(r.get("network"), "ping_p99_ms"),
                lambda v: v <= 5.0,
                floor=lambda r: _get(r.get("network-floor"), "ping_p99_ms"),
            ),
        ]
    return out


def one_run(args: argparse.Namespace, network: bool) -> dict[str, Any]:
    figs: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    bench = ["--servers", "granian", "--transports", "tls", "--protocols", "h1,h2"]
    bench += ["--ops", "ping,encrypt,decrypt", "--duration", f"{args.duration:g}"]
    figs["bench-1"] = _child("loadtest.bench_http", *bench, "--workers", "1")
    figs["bench-default"] = _child("loadtest.bench_http", *bench)
    floor = ["--servers", "floor", "--rounds", "1", "--duration", f"{args.duration:g}"]
    figs["floor-1"] = _child("loadtest.floor", *floor, "--workers", "1")
    figs["floor-default"] = _child("loadtest.floor", *floor)
    figs["mix"] = _child(
        "loadtest.latency", "mix", "--serve", "--rate", "1800",
        "--duration", f"{args.mix_duration:g}",
    )  # fmt: skip
    figs["seq"] = _child("loadtest.latency", "seq", "--serve", "--count", str(args.seq_count))
    if network:
        net = ["loadtest.network_hsm", "--duration", f"{args.duration:g}"]
        figs["network"] = _child(*net)
        figs["network-floor"] = _child(*net, "--floor", "--no-baseline")
    figs["load_after"] = os.getloadavg()[0]
    return figs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=3, help="independent runs (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per h2load run")
    p.add_argument("--mix-duration", type=float, default=60.0, help="seconds of the KMS mix")
    p.add_argument("--seq-count", type=int, default=3000, help="sequential Encrypts")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 5:
        p.error("--runs must be 1..5")
    network = importlib.util.find_spec("loadtest.network_hsm") is not None
    goals = [Outcome(t) for t in targets(network=network)]
    runs = []
    for i in range(args.runs):
        t0 = time.monotonic()
        figs = one_run(args, network)
        runs.append(figs)
        for o in goals:
            o.values.append(o.target.read(figs))
            o.floors.append(o.target.floor(figs) if o.target.floor else None)
        print(
            f"run {i + 1}/{args.runs}: {time.monotonic() - t0:.0f} s, load average "
            f"{figs['load_before']:.1f} -> {figs['load_after']:.1f}",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "runs": runs,
                    "targets": [
                        {
                            "name": o.target.name,
                            "goal": o.target.goal,
                            "values": o.values,
                            "median": o.median(),
                            "floor_values": o.floors,
                            "floor_median": o.floor_median(),
                            "met": o.met(),
                        }
                        for o in goals
                    ],
                }
            )
        )
    else:
        heads = " | ".join(f"run {i + 1}" for i in range(args.runs))
        print(f"| target | {heads} | median | floor: median (runs) | goal | status |")
        print("|---" * (args.runs + 5) + "|")
        for o in goals:
            f = o.target.fmt
            vals = " | ".join("-" if v is None else f.format(v) for v in o.values)
            med, floor = o.median(), o.floor_median()
            floors = "-"
            if floor is not None:
                listed = ", ".join("-" if v is None else f.format(v) for v in o.floors)
                floors = f"{f.format(floor)} ({listed})"
            print(
                f"| {o.target.name} | {vals} | {'-' if med is None else f.format(med)} "
                f"| {floors} | {o.target.goal} | {o.status()} |"
            )
    return 0 if all(o.met() for o in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
