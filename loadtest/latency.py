"""Latency under load with pre-signed XKS requests over TLS keep-alive (HTTP/1.1, like KMS).

Three modes, each printing its figures and exiting 1 when a given budget is missed:

* ``mix``     open-loop KMS mix (Encrypt 60 %, Decrypt 35 %, GetKeyMetadata 4 %, health 1 %) at a
              fixed rate over a pool of keep-alive connections. Latency is measured from each
              request's *scheduled* send time, so a stalled server cannot hide queueing
              (no coordinated omission).
* ``seq``     one connection, sequential Encrypt calls (the floor a single KMS connection sees).
* ``newconn`` a new TCP+TLS connection for each Encrypt (handshake included).

Requests are signed before the run (SigV4 signatures stay valid 5 minutes), so the generator
spends its CPU on I/O, not HMAC. Examples::

    python -m loadtest.latency mix --serve --rate 1800 --duration 60 --p99-ms 10
    python -m loadtest.latency seq --serve --count 3000 --p50-ms 1 --p99-ms 3
    python -m loadtest.latency newconn --url https://127.0.0.1:8443 --count 500 --p99-ms 20
    (without --serve: --url, plus XKS_STATE_DIR or XKS_URI_PATH/XKS_ACCESS_KEY_ID/XKS_SECRET)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import ssl
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.embedded_server import embedded_server, tree_cpu_seconds
from loadtest.xks_requests import (
    Target,
    decrypt_body,
    prepare,
    target_from_env,
)

MIX = (("encrypt", 60), ("decrypt", 35), ("metadata", 4), ("health", 1))
REQUEST_TIMEOUT_S = 10.0  # keeps every run bounded even if the server stalls


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


class Conn:
    """A minimal HTTP/1.1 keep-alive client connection (enough for XKS JSON answers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, ctx: ssl.SSLContext | None) -> Conn:
        hostport = url.split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(
            host.strip("[]"),
            int(port),
            ssl=ctx,
            server_hostname=None if ctx is None else "localhost",
        )
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):  # no extra task per request
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await self.reader.readexactly(length) if length else b""
            return status, body

    def close(self) -> None:
        self.writer.close()


def client_context(url: str, cafile: Path | None) -> ssl.SSLContext | None:
    if not url.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class Result:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[bytes] = field(default_factory=list)  # first few error bodies (XKS JSON)

    def error(self, key: str, body: bytes = b"") -> None:
        self.errors[key] += 1
        if body and len(self.examples) < 3:
            self.examples.append(body[:300])

    elapsed: float = 0.0

    def all(self) -> list[float]:
        return sorted(v for vs in self.latencies.values() for v in vs)

    def n_errors(self) -> int:
        return sum(self.errors.values())


async def presign_pool(target: Target, ctx: ssl.SSLContext | None, n: int) -> dict[str, list]:
    """Pre-signed raw requests per op; decrypts replay ciphertexts made by real Encrypts."""
    host = target.host
    conn = await Conn.open(target.base_url, ctx)
    pools: dict[str, list[bytes]] = {"encrypt": [], "decrypt": [], "metadata": [], "health": []}
    try:
        for _ in range(n):
            enc = prepare(target, "encrypt")
            pools["encrypt"].append(enc.http11(host))
            status, body = await conn.request(enc.http11(host))
            if status != 200:
                raise SystemExit(f"encrypt for the decrypt pool failed: {status} {body[:200]!r}")
            dec = prepare(target, "decrypt", decrypt_body(json.loads(body)))
            pools["decrypt"].append(dec.http11(host))
        for op in ("metadata", "health"):
            pools[op] = [prepare(target, op).http11(host) for _ in range(max(1, n // 10))]
    finally:
        conn.close()
    return pools


async def run_mix(
    target: Target,
    ctx: ssl.SSLContext | None,
    rate: float,
    duration: float,
    connections: int,
    pools: dict[str, list[bytes]],
) -> Result:
    """Open loop: request i is due at start + i/rate; each keep-alive connection takes the next
    due request as soon as it is free and waits for its due time. When every connection is busy,
    requests start late and their latency, counted from the due time, shows it."""
    rng = random.Random(1)
    ops = [op for op, w in MIX for _ in range(w)]
    total = int(rate * duration)
    schedule: list[tuple[str, bytes]] = []
    counters: dict[str, int] = defaultdict(int)
    for _ in range(total):
        op = rng.choice(ops)
        pool = pools[op]
        schedule.append((op, pool[counters[op] % len(pool)]))
        counters[op] += 1
    conns = [await Conn.open(target.base_url, ctx) for _ in range(connections)]
    res = Result()
    next_index = 0
    start = time.perf_counter()

    async def worker(conn: Conn) -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            op, raw = schedule[i]
            try:
                status, body = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                res.errors[f"{op}:{type(exc).__name__}"] += 1
                conn.close()
                conn = await Conn.open(target.base_url, ctx)
                continue
            if status != 200:
                res.error(f"{op}:{status}", body)
            res.latencies[op].append(time.perf_counter() - due)
        conn.close()

    await asyncio.gather(*(worker(c) for c in conns))
    res.elapsed = time.perf_counter() - start
    return res


async def run_seq(
    target: Target, ctx: ssl.SSLContext | None, count: int, pools: dict[str, list[bytes]]
) -> Result:
    res = Result()
    conn = await Conn.open(target.base_url, ctx)
    pool = pools["encrypt"]
    for i in range(min(200, count)):  # warm-up (JIT-free Python, but caches and the TLS session)
        await conn.request(pool[i % len(pool)])
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        status, body = await conn.request(pool[i % len(pool)])
        res.latencies["encrypt"].append(time.perf_counter() - t0)
        if status != 200:
            res.error(f"encrypt:{status}", body)
    res.elapsed = time.perf_counter() - start
    conn.close()
    return res


async def run_newconn(
    target: Target, ctx: ssl.SSLContext | None, count: int, pools: dict[str, list[bytes]]
) -> Result:
    res = Result()
    pool = pools["encrypt"]
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        try:
            conn = await Conn.open(target.base_url, ctx)
            status, body = await conn.request(pool[i % len(pool)])
            conn.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            res.errors[f"encrypt:{type(exc).__name__}"] += 1
            continue
        res.latencies["encrypt"].append(time.perf_counter() - t0)
        if status != 200:
            res.error(f"encrypt:{status}", body)
    res.elapsed = time.perf_counter() - start
    return res


def figures(mode: str, res: Result, cpu: dict[str, float]) -> dict[str, Any]:
    """The run's figures as plain data (what ``--json`` prints and loadtest/targets.py reads)."""
    allv = res.all()
    n = len(allv) + res.n_errors()
    ms = [percentile(allv, q) * 1000 for q in (0.5, 0.9, 0.99, 0.999)]
    return {
        "mode": mode,
        "requests": n,
        "errors": res.n_errors(),
        "error_kinds": dict(res.errors),
        "elapsed_s": res.elapsed,
        "rate": n / res.elapsed if res.elapsed else 0.0,
        "p50_ms": ms[0],
        "p90_ms": ms[1],
        "p99_ms": ms[2],
        "p999_ms": ms[3],
        "max_ms": allv[-1] * 1000 if allv else float("nan"),
        **cpu,
    }


def verdict(fig: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What missed its budget (empty: every given budget met)."""
    failed = []
    if fig["errors"]:
        failed.append(f"{fig['errors']} errors")
    if args.p50_ms is not None and fig["p50_ms"] > args.p50_ms:
        failed.append(f"p50 {fig['p50_ms']:.2f} ms > {args.p50_ms} ms")
    if args.p99_ms is not None and fig["p99_ms"] > args.p99_ms:
        failed.append(f"p99 {fig['p99_ms']:.2f} ms > {args.p99_ms} ms")
    return failed


def report(mode: str, res: Result, args: argparse.Namespace) -> int:
    allv = res.all()
    n = len(allv) + res.n_errors()
    ms = [percentile(allv, q) * 1000 for q in (0.5, 0.9, 0.99, 0.999)]
    print(
        f"mode={mode} requests={n} errors={res.n_errors()} elapsed={res.elapsed:.1f}s "
        f"rate={n / res.elapsed:.0f}/s"
    )
    print(
        f"latency ms: p50={ms[0]:.2f} p90={ms[1]:.2f} p99={ms[2]:.2f} p99.9={ms[3]:.2f} "
        f"max={(allv[-1] * 1000 if allv else float('nan')):.2f}"
    )
    for op, vs in sorted(res.latencies.items()):
        vs.sort()
        print(
            f"  {op:9s} n={len(vs):6d} p50={percentile(vs, 0.5) * 1000:.2f} "
            f"p99={percentile(vs, 0.99) * 1000:.2f}"
        )
    if res.errors:
        print(f"errors: {dict(res.errors)}")
        for body in res.examples:
            print(f"  e.g. {body!r}")
    failed = verdict(figures(mode, res, {}), args)
    print("RESULT: " + ("FAIL (" + "; ".join(failed) + ")" if failed else "PASS"))
    return 1 if failed else 0


async def amain(
    args: argparse.Namespace, target: Target, cafile: Path | None, server_pid: int | None = None
) -> int:
    ctx = client_context(target.base_url, cafile)
    pools = await presign_pool(target, ctx, args.pool)
    cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.mode == "mix":
        res = await run_mix(target, ctx, args.rate, args.duration, args.connections, pools)
    elif args.mode == "seq":
        res = await run_seq(target, ctx, args.count, pools)
    else:
        res = await run_newconn(target, ctx, args.count, pools)
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    n = max(1, len(res.all()) + res.n_errors())
    mine = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
    cpu = {"client_cpu_us": mine / n * 1e6}
    if cpu0 is not None and server_pid:
        cpu["server_cpu_us"] = (tree_cpu_seconds(server_pid) - cpu0) / n * 1e6
    if args.json:
        fig = figures(args.mode, res, cpu)
        fig["failed"] = verdict(fig, args)
        print(json.dumps(fig))
        return 1 if fig["failed"] else 0
    print(f"client CPU: {cpu['client_cpu_us']:.0f} µs/request, {mine / res.elapsed:.2f} cores busy")
    if "server_cpu_us" in cpu:
        used = cpu["server_cpu_us"] * n / 1e6
        print(
            f"server CPU: {cpu['server_cpu_us']:.0f} µs/request, "
            f"{used / res.elapsed:.2f} cores busy"
        )
    return report(args.mode, res, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mode", choices=["mix", "seq", "newconn"])
    p.add_argument("--url", help="proxy base URL (default $XKS_URL); not with --serve")
    p.add_argument(
        "--serve",
        action="store_true",
        help="start the embedded default in a temp state dir and measure it",
    )
    p.add_argument("--server", choices=["granian", "hypercorn"], help="with --serve")
    p.add_argument("--workers", type=int, help="with --serve (default: config = cores)")
    p.add_argument("--plain-http", action="store_true", help="with --serve")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="with --serve: this state dir (init'ed if new) instead of a temp one",
    )
    p.add_argument("--cafile", type=Path, help="CA for the server certificate (default: none)")
    p.add_argument("--rate", type=float, default=1800.0, help="mix: requests/s")
    p.add_argument("--duration", type=float, default=60.0, help="mix: seconds (max 240)")
    p.add_argument("--connections", type=int, default=32, help="mix: keep-alive connections")
    p.add_argument("--count", type=int, default=2000, help="seq/newconn: requests")
    p.add_argument("--pool", type=int, default=200, help="pre-signed requests per operation")
    p.add_argument("--p50-ms", type=float)
    p.add_argument("--p99-ms", type=float)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the figures as one JSON object (and nothing else on stdout)",
    )
    args = p.parse_args(argv)
    if args.duration > 240:
        p.error("--duration is at most 240 s (pre-signed requests expire after 300 s)")
    # uvloop.run and asyncio.run differ in keyword options; only the coroutine is passed here.
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    server_pid: int | None = None
    with contextlib.ExitStack() as stack:
        if args.serve:
            running = stack.enter_context(
                embedded_server(
                    server=args.server,
                    workers=args.workers,
                    plain_http=args.plain_http,
                    state_dir=args.state_dir,
                )
            )
            os.environ["XKS_STATE_DIR"] = str(running.state_dir)
            target = target_from_env(running.url)
            cafile = running.state_dir / "tls/server.crt"
            server_pid = running.pid
            if not args.json:
                print(
                    f"server: {args.server or 'default'} workers={args.workers or 'default'} "
                    f"url={running.url}"
                )
        else:
            target = target_from_env(args.url)
            cafile = args.cafile
        return runner(amain(args, target, cafile, server_pid))


if __name__ == "__main__":
    raise SystemExit(main())
