"""SLO gate: run the Locust KMS mix headless at a fixed rate and fail on a p99 budget or any error.

    python -m loadtest.slo --rate 300 --duration 60 --p99-ms 25 --serve
    python -m loadtest.slo --rate 300 --duration 60 --p99-ms 25 --host https://proxy:8443
        (target as in loadtest/locustfile.py: XKS_STATE_DIR or XKS_URI_PATH/XKS_ACCESS_KEY_ID/...)

Exit status 0 only when every request succeeded, the p99 latency (all operations) is within the
budget and the achieved rate is at least 90 % of the requested one (otherwise the generator, not
the proxy, was the limit and the figure says nothing). Runs are bounded (≤ 600 s).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import gevent
from locust import constant_throughput, events
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import locustfile
from loadtest.embedded_server import embedded_server

MAX_DURATION_S = 600


def run(host: str, rate: float, duration: float, users: int) -> tuple[dict, float]:
    """Run the mix; returns (figures, elapsed)."""
    locustfile.XksUser.wait_time = constant_throughput(rate / users)
    env = Environment(user_classes=[locustfile.XksUser], host=host, events=events)
    runner = env.create_local_runner()
    start = time.monotonic()
    stopped_at: list[float] = []

    def stop() -> None:
        stopped_at.append(time.monotonic())
        runner.quit()

    runner.start(users, spawn_rate=users)
    gevent.spawn_later(duration, stop)
    runner.greenlet.join()
    # The achieved rate is over the load window only: stopping the users afterwards (waiting for
    # requests in flight) is not time in which the generator was asked to send anything.
    elapsed = (stopped_at[0] if stopped_at else time.monotonic()) - start
    total = env.stats.total
    figures = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rate": total.num_requests / elapsed if elapsed else 0.0,
        "p50": total.get_response_time_percentile(0.5),
        "p95": total.get_response_time_percentile(0.95),
        "p99": total.get_response_time_percentile(0.99),
        "max": total.max_response_time,
        "by_name": {
            name: (s.num_requests, s.num_failures, s.get_response_time_percentile(0.99))
            for (name, _method), s in sorted(env.stats.entries.items())
        },
        "errors": {f"{e.name}: {e.error}": e.occurrences for e in env.stats.errors.values()},
    }
    return figures, elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.slo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, required=True, help="requests/s (all operations)")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--p99-ms", type=float, required=True, help="p99 budget in milliseconds")
    p.add_argument("--users", type=int, help="concurrent users/connections (default rate/15)")
    p.add_argument("--host", help="proxy URL (default $XKS_URL); not with --serve")
    p.add_argument("--serve", action="store_true", help="start the embedded default and gate it")
    p.add_argument("--server", choices=["granian", "hypercorn"], help="with --serve")
    p.add_argument("--workers", type=int, help="with --serve")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S}]")
    users = args.users or max(1, math.ceil(args.rate / 15))
    with contextlib.ExitStack() as stack:
        host = args.host
        if args.serve:
            running = stack.enter_context(embedded_server(server=args.server, workers=args.workers))
            os.environ["XKS_STATE_DIR"] = str(running.state_dir)
            host = running.url
            print(
                f"server: {args.server or 'default'} workers={args.workers or 'default'} url={host}"
            )
        if not host:
            host = os.environ.get("XKS_URL")
        locustfile.target(host)  # fail early on an incomplete target
        f, elapsed = run(host, args.rate, args.duration, users)
    print(
        f"locust mix: rate target={args.rate:.0f}/s achieved={f['rate']:.0f}/s "
        f"users={users} duration={elapsed:.0f}s requests={f['requests']} "
        f"failures={f['failures']}"
    )
    print(
        f"latency ms (all): p50={f['p50']:.0f} p95={f['p95']:.0f} p99={f['p99']:.0f} "
        f"max={f['max']:.0f} (budget p99 <= {args.p99_ms:g})"
    )
    for name, (n, fails, p99) in f["by_name"].items():
        print(f"  {name:16s} n={n:6d} failures={fails} p99={p99:.0f} ms")
    for err, count in f["errors"].items():
        print(f"  error x{count}: {err}")
    problems = []
    if f["failures"]:
        problems.append(f"{f['failures']} failed requests")
    if f["p99"] > args.p99_ms:
        problems.append(f"p99 {f['p99']:.0f} ms > {args.p99_ms:g} ms")
    if f["rate"] < 0.9 * args.rate:
        problems.append(f"achieved {f['rate']:.0f}/s < 90% of {args.rate:.0f}/s")
    print("SLO: " + ("FAIL (" + "; ".join(problems) + ")" if problems else "PASS"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
