"""High-rate benchmark: pre-signed XKS requests replayed with h2load against the embedded default.

For each server (granian, hypercorn) and transport (TLS, plain) it starts `xksproxy serve` on a
throw-away embedded state dir, then for each protocol (HTTP/1.1, HTTP/2) and operation replays one
request signed just before the run (valid 5 minutes; each run lasts seconds):

    ping      GET /ping: the same server's ceiling (no auth, no HSM), measured in the same run
    health    GetHealthStatus (cached deep probe)
    metadata  GetKeyMetadata
    encrypt   Encrypt, 32-byte plaintext, 64-byte AAD, CDIV (each replay gets a fresh IV)
    decrypt   Decrypt of a ciphertext made by one real Encrypt first

and prints req/s, req/s as a fraction of /ping, the server's CPU time per request (all its
processes, sampled over the measurement period: far steadier than req/s on a shared machine) and
p50/p99/p99.9 (from h2load's per-request log).

    python -m loadtest.bench_http                         # everything, 5 s per run
    python -m loadtest.bench_http --servers granian --transports tls --duration 5

Needs h2load (Debian nghttp2-client; `scripts/bootstrap.sh test`).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.embedded_server import embedded_server, init_state, tree_cpu_seconds
from loadtest.xks_requests import (
    Prepared,
    Target,
    decrypt_body,
    encrypt_body,
    prepare,
    target_from_env,
)

OPS = ("ping", "health", "metadata", "encrypt", "decrypt")
MAX_RUN_S = 60


@dataclass(frozen=True)
class Figures:
    rps: float
    done: int
    non_2xx: int
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us: float  # server CPU (all workers) per request


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def make_ciphertext(target: Target) -> dict:
    """One real Encrypt (so Decrypt replays open a genuine ciphertext)."""
    p = prepare(target, "encrypt", encrypt_body())
    hostport = target.host
    host, port = hostport.rsplit(":", 1)
    if target.base_url.startswith("https://"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, int(port), context=ctx, timeout=30
        )
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", p.path, body=p.body, headers=p.headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"encrypt failed: {r.status} {body[:300]!r}")
        return json.loads(body)
    finally:
        conn.close()


def h2load(
    target: Target,
    req: Prepared,
    *,
    h1: bool,
    duration: float,
    clients: int,
    streams: int,
    workdir: Path,
    server_pid: int,
) -> Figures:
    """One bounded h2load run of one pre-signed request; percentiles from its request log."""
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    # Same number of requests in flight on both protocols: h1 `clients` connections, h2
    # clients/streams connections with `streams` streams each.
    conns = clients if h1 else max(1, clients // streams)
    cmd = [
        "h2load",
        "-D",
        f"{duration:g}",
        "--warm-up-time",
        "1",
        "-c",
        str(conns),
        "-t",
        "1",
        "-m",
        str(1 if h1 else streams),
        f"--log-file={log}",
    ]
    if h1:
        cmd.append("--h1")
    if req.method == "POST":
        body = workdir / "body.json"
        body.write_bytes(req.body)
        cmd += ["-d", str(body)]
    for k, v in req.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(target.base_url + req.path)
    # Server CPU is sampled over the measurement period only (after h2load's 1 s warm-up):
    # CPU per request is far less sensitive to a noisy shared machine than req/s.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    cpu0 = tree_cpu_seconds(server_pid)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    cpu1 = tree_cpu_seconds(server_pid)
    r = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    reqs = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and reqs and codes):
        raise SystemExit(f"cannot parse h2load output ({r.returncode}): {out}\n{r.stderr}")
    durations: list[float] = []
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[2].isdigit():
                durations.append(int(parts[2]) / 1000.0)
    durations.sort()
    non_2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    done = int(reqs.group(3))
    return Figures(
        cpu_us=(cpu1 - cpu0) / done * 1e6 if done else float("nan"),
        rps=float(m.group(1)),
        done=done,
        non_2xx=non_2xx,
        errors=int(reqs.group(6)) + int(reqs.group(7)),  # errored + timeout (non-2xx: above)
        p50_ms=_pct(durations, 0.5),
        p99_ms=_pct(durations, 0.99),
        p999_ms=_pct(durations, 0.999),
    )


def bench_one(
    server: str, tls: bool, args: argparse.Namespace, state_dir: Path, workdir: Path
) -> list[tuple]:
    rows = []
    with embedded_server(
        server=server, workers=args.workers, plain_http=not tls, state_dir=state_dir
    ) as running:
        os.environ["XKS_STATE_DIR"] = str(running.state_dir)
        target = target_from_env(running.url)
        encrypted = make_ciphertext(target)
        for proto in args.protocols:
            ping_rps = None
            for op in args.ops:
                body = decrypt_body(encrypted) if op == "decrypt" else None
                req = prepare(target, op, body)  # signed now, replayed for seconds
                f = h2load(
                    target,
                    req,
                    h1=(proto == "h1"),
                    duration=args.duration,
                    clients=args.clients,
                    streams=args.streams,
                    workdir=workdir,
                    server_pid=running.pid,
                )
                if op == "ping":
                    ping_rps = f.rps
                ratio = f.rps / ping_rps if ping_rps else float("nan")
                row = (server, "tls" if tls else "plain", proto, op, f, ratio)
                rows.append(row)
                if not args.json:
                    print_row(row, flush=True)
    return rows


def print_header() -> None:
    print(
        "| server | transport | proto | op | req/s | vs /ping | server CPU µs/req | p50 ms "
        "| p99 ms | p99.9 ms | non-2xx | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def print_row(row: tuple, flush: bool = False) -> None:
    server, transport, proto, op, f, ratio = row
    print(
        f"| {server} | {transport} | {proto} | {op} | {f.rps:,.0f} | {ratio:.2f} | "
        f"{f.cpu_us:,.0f} | {f.p50_ms:.2f} | {f.p99_ms:.2f} | {f.p999_ms:.2f} | {f.non_2xx} "
        f"| {f.errors} |",
        flush=flush,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench_http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--servers", default="granian,hypercorn")
    p.add_argument("--transports", default="tls,plain")
    p.add_argument("--protocols", default="h1,h2")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--duration", type=float, default=5.0, help=f"seconds per run (≤ {MAX_RUN_S})")
    p.add_argument(
        "--clients",
        type=int,
        default=32,
        help="requests in flight (h1: connections; h2: clients/streams connections)",
    )
    p.add_argument("--streams", type=int, default=4, help="HTTP/2 streams per connection")
    p.add_argument("--workers", type=int, help="server workers (default: config = cores)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON list of rows (server, transport, proto, op, req/s, ratio to /ping, "
        "server CPU µs/req, percentiles, non-2xx, errors) and nothing else on stdout",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="use this state dir (init'ed if new), e.g. with an edited xksproxy.toml",
    )
    args = p.parse_args(argv)
    args.servers = args.servers.split(",")
    args.protocols = args.protocols.split(",")
    args.ops = args.ops.split(",")
    if "ping" not in args.ops:
        args.ops.insert(0, "ping")
    if not 0 < args.duration <= MAX_RUN_S:
        p.error(f"--duration must be in (0, {MAX_RUN_S}]")
    if shutil.which("h2load") is None:
        p.error("h2load not found (apt-get install nghttp2-client)")
    if not args.json:
        print(
            f"h2load: {args.clients} in flight (HTTP/1.1 -c {args.clients}; HTTP/2 "
            f"-c {max(1, args.clients // args.streams)} -m {args.streams}), -t 1, "
            f"-D {args.duration:g}s after 1 s warm-up; workers={args.workers or 'default'}"
        )
        print_header()
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = args.state_dir or Path(tmp) / "state"
        init_state(state_dir)
        for server in args.servers:
            for transport in args.transports.split(","):
                rows += bench_one(server, transport == "tls", args, state_dir, Path(tmp))
    if args.json:
        doc = [
            {
                "server": server,
                "transport": transport,
                "proto": proto,
                "op": op,
                "workers": args.workers,
                "ratio_to_ping": ratio,
                **dataclasses.asdict(f),
            }
            for server, transport, proto, op, f, ratio in rows
        ]
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
