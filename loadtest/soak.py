"""Soak: hours-long behaviour in minutes. A steady KMS mix at a fixed rate against one proxy.

What it reports (issue 14), and exits 1 on:

- any failed request (a non-200 answer, a reset, a timeout): **zero errors** expected;
- p99 per minute: the run is **stable** when no minute's p99 exceeds 3 x the median minute's
  (a leak or a growing queue shows as a rising p99 long before errors);
- RSS and open file descriptors of the launcher and of each child (workers), sampled every 5 s:
  start / end / max per process. **Flat** = end RSS within 25 % (and 32 MiB) of the value after
  the first minute (warm-up: caches, pools), and fds within 16 of their start.

Open loop (requests due at a fixed rate, latency counted from the due time --
``fleet_client.Record.response_s`` -- so a stall cannot hide; a refused connection is a failed
request), HTTP/1.1 keep-alive like KMS, pre-signed requests re-signed every 2 minutes (SigV4
signatures are valid for 5). Bounded: ``--duration`` at most one hour. Not part of the test
suite. Example::

    python -m loadtest.soak --duration 600 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import fleet_client
from loadtest.embedded_server import embedded_server
from loadtest.fleet import unverified_tls
from loadtest.xks_requests import target_from_env

SEGMENT_S = 120.0  # re-sign before the 5-minute SigV4 window closes
SAMPLE_S = 5.0


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Samples:
    """(seconds since start, rss, fds) per process."""

    by_pid: dict[int, list[tuple[float, int, int]]] = field(default_factory=dict)

    def take(self, pids: list[int], t: float) -> None:
        for pid in pids:
            rss, fds = rss_bytes(pid), open_fds(pid)
            if rss is not None and fds is not None:
                self.by_pid.setdefault(pid, []).append((t, rss, fds))


def sample_loop(launcher: int, samples: Samples, stop: threading.Event, t0: float) -> None:
    while not stop.is_set():
        samples.take([launcher, *children(launcher)], time.monotonic() - t0)
        stop.wait(SAMPLE_S)


async def drive(url: str, rate: float, duration_s: float, connections: int) -> fleet_client.Load:
    load = fleet_client.Load()
    target = target_from_env(url)
    ctx = unverified_tls()
    end = time.monotonic() + duration_s
    while (left := end - time.monotonic()) > 0.5:
        pools = await fleet_client.presign(target, ctx, 40)
        requests = fleet_client.schedule(pools, 5000, seed=int(left))
        await fleet_client.run(url, ctx, requests, connections=connections,
                               duration_s=min(SEGMENT_S, left), rate=rate, load=load)  # fmt: skip
    return load


def report(load: fleet_client.Load, samples: Samples, t0: float, launcher: int) -> int:
    failures = 0
    print(f"{'minute':>6} {'requests':>9} {'req/s':>7} {'failed':>7} {'p50_ms':>7} {'p99_ms':>7}")
    first = min((r.sent for r in load.records), default=t0)
    last = max((r.ended for r in load.records), default=t0)
    p99s = []
    minute = 0
    while first + 60 * minute < last:
        a = first + 60 * minute
        w = fleet_client.window(load, a, min(a + 60, last + 1e-9))
        print(f"{minute + 1:6d} {w.requests:9d} {w.rate:7.0f} {w.failures:7d} {w.p50_ms:7.2f} "
              f"{w.p99_ms:7.2f}  {w.kinds or ''}")  # fmt: skip
        if w.requests >= 100:
            p99s.append(w.p99_ms)
        minute += 1
    total = fleet_client.window(load, -float("inf"), float("inf"))
    failures = total.failures
    print(f"total: {total.requests} requests, {failures} failed, p50 {total.p50_ms:.2f} ms, "
          f"p99 {total.p99_ms:.2f} ms, {load.connect_failures} connect failures")  # fmt: skip
    print(f"{'process':<16} {'rss_start_MiB':>13} {'rss_1min':>9} {'rss_end':>8} {'rss_max':>8} "
          f"{'fd_start':>8} {'fd_end':>6} {'fd_max':>6}")  # fmt: skip
    flat = True
    mib = 1024 * 1024
    for pid, rows in sorted(samples.by_pid.items()):
        name = "launcher" if pid == launcher else f"child {pid}"
        warm = next((r for r in rows if r[0] >= 60), rows[0])
        rss = [r[1] for r in rows]
        fds = [r[2] for r in rows]
        print(f"{name:<16} {rss[0] / mib:13.1f} {warm[1] / mib:9.1f} {rss[-1] / mib:8.1f} "
              f"{max(rss) / mib:8.1f} {fds[0]:8d} {fds[-1]:6d} {max(fds):6d}")  # fmt: skip
        if rss[-1] > warm[1] * 1.25 and rss[-1] - warm[1] > 32 * mib:
            flat = False
        if fds[-1] - fds[0] > 16:
            flat = False
    stable = bool(p99s) and max(p99s) <= 3 * statistics.median(p99s)
    checks = [
        ("zero failed requests", failures == 0),
        ("p99 stable (no minute > 3 x the median minute)", stable),
        ("RSS and file descriptors flat after warm-up", flat),
    ]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(ok for _, ok in checks) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (<= 3600)")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second in total")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--server", choices=("granian", "hypercorn"), default=None)
    args = ap.parse_args(argv)
    if not 10 <= args.duration <= 3600 or not 1 <= args.rate <= 20000:
        ap.error("--duration 10..3600 and --rate 1..20000 keep the run bounded")
    with embedded_server(server=args.server, workers=args.workers) as srv:
        os.environ["XKS_STATE_DIR"] = str(srv.state_dir)
        print(f"soak: {args.rate:g} req/s KMS mix for {args.duration:g} s on {srv.url} "
              f"({args.workers} workers, {args.connections} connections)", flush=True)  # fmt: skip
        samples, stop = Samples(), threading.Event()
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample_loop, args=(srv.pid, samples, stop, t0),
                                   daemon=True)  # fmt: skip
        sampler.start()
        try:
            load = asyncio.run(drive(srv.url, args.rate, args.duration, args.connections))
        finally:
            stop.set()
            sampler.join(10)
        samples.take([srv.pid, *children(srv.pid)], time.monotonic() - t0)
        return report(load, samples, t0, srv.pid)


if __name__ == "__main__":
    raise SystemExit(main())
