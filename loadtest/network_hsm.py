"""Network HSM: threaded mode against an HSM that takes milliseconds per call (issue 16).

    python -m loadtest.network_hsm --duration 10 [--delay-ms 2] [--sessions 32] [--json]

A network HSM spends 1-3 ms per call on the wire; the proxy's answer is threaded mode (one worker
thread per session, hsm/threaded.py). This tool starts a real proxy (granian, TLS, the embedded
default of loadtest/embedded_server.py) whose ``[[hsm]]`` is the fault shim of
tests/support/faultshim.py delaying every crypto call by ``--delay-ms``, in mode "threaded" with
``--sessions`` sessions per worker, and then, per phase:

* drives Encrypt with a CDIV (what KMS sends; loadtest/xks_requests.py) closed-loop from
  ``--connections`` keep-alive connections (loadtest/fleet_client.py), after ``--warmup`` s not
  counted, for ``--duration`` s or ``--max-requests`` answers, whichever comes first;
* meanwhile probes ``/ping`` on the same server from a *separate process* (so the load client's
  own event loop and GIL cannot add to what it measures) at ``--ping-rate`` per second, open
  loop (latency counted from each probe's due time), and reports its p50/p99.

The bound is what the sessions allow: ``workers x sessions / per-request HSM time``, where the
per-request HSM time is the shim's delay times the delayed calls one Encrypt+CDIV makes (see
:func:`hsm_calls_per_encrypt`). ``ratio_to_bound`` = measured req/s / bound. The second phase
(``--no-baseline`` skips it) runs the same load with the shim's delay off, on the same server in
the same run: its req/s is the CPU ceiling of this machine, which says whether a missed ratio is
the proxy waiting on the HSM or two shared cores running out.

``--floor`` serves the same load from ``loadtest.floor``'s bare app instead of the proxy (same
granian, TLS, shim and sessions; each request's HSM work one thread-pool job): the most any
Python server on this stack reaches here, so a goal above the floor's figure cannot be met by
changing the proxy.

Exit status 0 whether or not a goal is met (loadtest/targets.py judges ``ratio_to_bound`` and
``ping_p99_ms``); 1 only when the run produced no figure (no successful Encrypt or /ping).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import multiprocessing
import os
import queue
import re
import resource
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hsm.ivbuffer import IV_BATCH
from loadtest import fleet_client
from loadtest.embedded_server import Running, embedded_server, init_state, tree_cpu_seconds
from loadtest.fleet import unverified_tls
from loadtest.floor import floor_server
from loadtest.xks_requests import Target, prepare, target_from_env

# The test suite's fault shim, loaded by name so the type checker does not walk into tests/
# (not part of the typed tree), as loadtest/ha_faults.py does.
FaultShim: Any = importlib.import_module("tests.support.faultshim").FaultShim

#: Pre-signed Encrypt requests cycled by the load (each has its own kmsRequestId).
POOL = 256
#: Shim control changes take effect within 20 ms (faultshim.c re-reads its file at most that
#: often); wait a little longer before a phase relies on the new mode.
SHIM_SETTLE_S = 0.1
#: Hard limit on a phase, whatever the flags say: pre-signed requests expire after 300 s.
MAX_DURATION_S = 120.0


def hsm_calls_per_encrypt(iv_source: str) -> float:
    """Delayed HSM calls one Encrypt with a CDIV makes on average, each holding its session for
    the delay.

    The shim delays the *crypto* functions only (faultshim.c's table: C_Encrypt, C_Decrypt,
    C_GenerateRandom, ...; not C_EncryptInit/C_DecryptInit, object search or attributes, and key
    handles are cached anyway). hsm/pool.py ``_encrypt`` takes the IV from the session's buffer
    when ``iv_source = "rng"`` (one C_GenerateRandom per :data:`hsm.ivbuffer.IV_BATCH` Encrypts,
    hsm/ivbuffer.py) then calls C_Encrypt; xksproxy/service/handlers.py ``encrypt`` then proves
    the CDIV'd ciphertext decrypts: one C_Decrypt (a second pool operation).
    """
    return (1 / IV_BATCH if iv_source == "rng" else 0) + 1 + 1


def configure(config: Path, shim: Any, *, sessions: int, mode: str) -> dict[str, Any]:
    """Point the init'ed config's ``[[hsm]]`` at the shim (threaded, ``sessions``); returns the
    ``[[hsm]]`` table as the server will read it.

    The metrics listener is turned off: its fixed default port would collide with any other
    proxy on this shared machine, and it is not what is measured.
    """
    text = config.read_text()
    env = "".join(f'{k} = "{v}"\n' for k, v in shim.env().items())
    edits: list[tuple[str, str]] = [
        (r'(?m)^module = "[^"]*"$', f'module = "{shim.module_path}"'),
        (r"(?m)^sessions = \d+$", f"sessions = {sessions}"),
        (r'(?m)^mode = "[a-z]+"$', f'mode = "{mode}"'),
        (r"(?m)^\[hsm\.env\]\n", "[hsm.env]\n" + env),
        (r'(?m)^(\[metrics\]\n)bind = "[^"]*"$', r'\1bind = ""'),
    ]  # fmt: skip
    for pattern, repl in edits:
        text, n = re.subn(pattern, repl, text, count=1)
        if n != 1:
            raise SystemExit(
                f"{config}: no line matching {pattern!r} (did `xksproxy init` change?)"
            )
    config.write_text(text)
    (hsm,) = tomllib.loads(text)["hsm"]
    return dict(hsm)


def _ping_child(url: str, raw: bytes, rate: float, cap_s: float, stop: Event, out: Queue) -> None:
    """In its own process: GET /ping at ``rate`` until ``stop`` (at most ``cap_s``); put the
    records as (sent, latency_s, outcome, queued_s) tuples (the monotonic clock is one clock
    for every process, so the parent can cut them into its phases)."""

    async def go() -> fleet_client.Load:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.02)
            done.set()

        watcher = asyncio.create_task(watch())
        try:
            return await fleet_client.run(url, unverified_tls(), [("ping", raw)], connections=1,
                                          duration_s=cap_s, rate=rate, stop=done)  # fmt: skip
        finally:
            watcher.cancel()

    load = asyncio.run(go())
    out.put([(r.sent, r.latency_s, r.outcome, r.queued_s) for r in load.records])


@dataclass(frozen=True)
class Phase:
    """One load phase's figures (``window`` are the measured requests, after the warm-up)."""

    delay_ms: int
    window: fleet_client.Window
    failures: int  # every failed Encrypt of the phase, warm-up included
    start: float  # measured window, monotonic
    end: float
    server_cores: float
    client_cores: float


async def run_phase(
    delay_ms: int, url: str, pool: list[tuple[str, bytes]], args: argparse.Namespace,
    server_pid: int,
) -> Phase:  # fmt: skip
    """Closed-loop Encrypt load for warm-up + duration (or ``max_requests`` answers)."""
    load = fleet_client.Load()
    stop = asyncio.Event()
    cap = args.max_requests

    async def count() -> None:
        while not stop.is_set():
            if len(load.records) >= cap:
                stop.set()
            await asyncio.sleep(0.05)

    counter = asyncio.create_task(count())
    cpu0, me0, t0 = (
        tree_cpu_seconds(server_pid),
        resource.getrusage(resource.RUSAGE_SELF),
        time.monotonic(),
    )
    await fleet_client.run(
        url, unverified_tls(), pool, connections=args.connections,
        duration_s=args.warmup + args.duration, stop=stop, load=load,
    )  # fmt: skip
    t1, me1, cpu1 = (
        time.monotonic(),
        resource.getrusage(resource.RUSAGE_SELF),
        tree_cpu_seconds(server_pid),
    )
    stop.set()
    await counter
    start = t0 + args.warmup
    end = min(t1, start + args.duration)
    if end <= start:
        raise SystemExit(
            f"--max-requests {cap} was reached during the {args.warmup:g} s warm-up: "
            "raise it or shorten --warmup"
        )
    mine = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
    return Phase(
        delay_ms, fleet_client.window(load, start, end), len(load.failures()), start, end,
        (cpu1 - cpu0) / (t1 - t0), mine / (t1 - t0),
    )  # fmt: skip


PingRecords = list[tuple[float, float, str, float]]


def ping_window(records: PingRecords, start: float, end: float) -> fleet_client.Window:
    load = fleet_client.Load([fleet_client.Record(*r) for r in records])
    return fleet_client.window(load, start, end)


def phase_figures(ph: Phase, pings: PingRecords, bound: float) -> dict[str, Any]:
    w, p = ph.window, ping_window(pings, ph.start, ph.end)
    # Only answered Encrypts count: a 429 from admission control is quick and would inflate it.
    rps = (w.requests - w.failures) / (ph.end - ph.start)
    return {
        "delay_ms": ph.delay_ms,
        "requests": w.requests,
        "rps": rps,
        "ratio_to_bound": rps / bound,
        "encrypt_p50_ms": w.p50_ms,
        "encrypt_p99_ms": w.p99_ms,
        "encrypt_errors": ph.failures,
        "error_kinds": w.kinds,
        "ping_requests": p.requests,
        "ping_errors": p.failures,
        "ping_p50_ms": p.p50_ms,
        "ping_p99_ms": p.p99_ms,
        "server_cores": ph.server_cores,
        "client_cores": ph.client_cores,
    }


async def measure(
    args: argparse.Namespace, target: Target, shim: Any, server_pid: int
) -> list[Phase]:
    url = target.base_url
    pool = [("encrypt", prepare(target, "encrypt").http11(target.host)) for _ in range(POOL)]
    phases = []
    shim.set("delay", delay_ms=args.delay_ms)
    await asyncio.sleep(SHIM_SETTLE_S)
    phases.append(await run_phase(args.delay_ms, url, pool, args, server_pid))
    if args.baseline:
        shim.set("ok")
        await asyncio.sleep(SHIM_SETTLE_S)
        phases.append(await run_phase(0, url, pool, args, server_pid))
    return phases


def _runner() -> Callable[[Coroutine[Any, Any, list[Phase]]], list[Phase]]:
    """uvloop when installed (as loadtest/latency.py): less client CPU on the same two cores."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run
    return uvloop.run


@contextlib.contextmanager
def _server(args: argparse.Namespace, state: Path) -> Iterator[Running]:
    """The proxy (embedded default on ``state``) or, with ``--floor``, the floor app."""
    if not args.floor:
        with embedded_server(workers=args.workers, state_dir=state, init=False) as srv:
            yield srv
        return
    with floor_server(state, args.workers) as srv:
        yield srv


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    (work / "shim").mkdir()
    shim = FaultShim.create(work / "shim")
    state = work / "state"
    init_state(state)
    hsm = configure(state / "xksproxy.toml", shim, sessions=args.sessions, mode="threaded")
    calls = hsm_calls_per_encrypt(str(hsm["iv_source"]))
    hsm_s = calls * args.delay_ms / 1000.0
    total_sessions = args.workers * int(hsm["sessions"])
    bound = total_sessions / hsm_s
    # The shim reports its own manufacturer, so the pool would not serialise SoftHSMv2's calls
    # anyway (hsm/module.py); say so explicitly, since threaded mode inline would measure nothing.
    os.environ["XKSPROXY_PKCS11_SERIALIZE"] = "0"
    load_before = os.getloadavg()[0]
    with _server(args, state) as srv:
        os.environ["XKS_STATE_DIR"] = str(srv.state_dir)
        ctx = multiprocessing.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        target = target_from_env(srv.url)
        ping_raw = prepare(target, "ping").http11(target.host)
        cap_s = 2 * (args.warmup + args.duration) + 30.0
        prober = ctx.Process(
            target=_ping_child,
            args=(srv.url, ping_raw, args.ping_rate, cap_s, stop, out),
            daemon=True,
        )
        prober.start()
        try:
            phases = _runner()(measure(args, target, shim, srv.pid))
        finally:
            stop.set()
            pings: PingRecords = []
            # a prober that died gives no /ping figure, and the exit status says so
            with contextlib.suppress(queue.Empty):
                pings = out.get(timeout=30)
            prober.join(10)
        shim.set("ok")
    figs = phase_figures(phases[0], pings, bound)
    ping_failures = sum(1 for r in pings if r[2] != "ok")
    doc: dict[str, Any] = {
        "server": "floor" if args.floor else "proxy",
        "mode": str(hsm["mode"]),
        "workers": args.workers,
        "sessions": int(hsm["sessions"]),
        "connections": args.connections,
        "duration_s": args.duration,
        "hsm_calls_per_request": calls,
        "hsm_ms_per_request": hsm_s * 1000.0,
        "bound_rps": bound,
        **figs,
        "errors": sum(p.failures for p in phases) + ping_failures,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    if len(phases) > 1:
        base = phase_figures(phases[1], pings, bound)
        doc["no_delay"] = base
        doc["ratio_to_no_delay"] = figs["rps"] / base["rps"] if base["rps"] else None
    return doc


def print_table(doc: dict[str, Any]) -> None:
    print(f"{doc['server']}, network HSM: +{doc['delay_ms']} ms per crypto call, "
          f"{doc['hsm_calls_per_request']:.3f} calls per Encrypt+CDIV = "
          f"{doc['hsm_ms_per_request']:.1f} ms; mode {doc['mode']}, "
          f"{doc['workers']} worker(s) x {doc['sessions']} sessions, {doc['connections']} "
          f"connections: bound {doc['bound_rps']:.0f} req/s")  # fmt: skip
    print("| phase | req/s | / bound | encrypt p50 ms | p99 ms | ping p50 ms | ping p99 ms "
          "| errors | server cores | client cores |")  # fmt: skip
    print("|---" * 10 + "|")
    rows = [(f"+{doc['delay_ms']} ms", doc)]
    if "no_delay" in doc:
        rows.append(("no delay", doc["no_delay"]))
    kinds: Counter[str] = Counter()
    for name, r in rows:
        errors = r["encrypt_errors"] + r["ping_errors"]
        kinds.update(r["error_kinds"])
        print(f"| {name} | {r['rps']:.0f} | {r['ratio_to_bound']:.2f} | {r['encrypt_p50_ms']:.2f} "
              f"| {r['encrypt_p99_ms']:.2f} | {r['ping_p50_ms']:.2f} | {r['ping_p99_ms']:.2f} "
              f"| {errors} | {r['server_cores']:.2f} | {r['client_cores']:.2f} |")  # fmt: skip
    if doc.get("ratio_to_no_delay") is not None:
        print(f"req/s with the delay / without it (same server, same run): "
              f"{doc['ratio_to_no_delay']:.2f}")  # fmt: skip
    print(f"errors (every phase, warm-up included, /ping too): {doc['errors']} "
          f"(measured windows: {dict(kinds) or 'none'}); load average {doc['load_before']:.1f} -> "
          f"{doc['load_after']:.1f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.network_hsm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    p.add_argument("--delay-ms", type=int, default=2, help="shim delay per crypto call (2)")
    p.add_argument("--sessions", type=int, default=32, help="HSM sessions per worker (32)")
    p.add_argument("--workers", type=int, default=1, help="proxy worker processes (1)")
    p.add_argument("--connections", type=int, default=64, help="Encrypts in flight (64)")
    p.add_argument("--ping-rate", type=float, default=100.0, help="/ping probes per second (100)")
    p.add_argument("--max-requests", type=int, default=200_000, help="answers per phase, at most")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the phase without the delay (the CPU ceiling)")  # fmt: skip
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="run in this new directory and keep it: the server's request log "
                   "(state/serve.stdout) and stderr say what an error was")  # fmt: skip
    p.add_argument("--floor", action="store_true",
                   help="serve the load from loadtest.floor's bare app, not the proxy")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON document, nothing else")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or not 0 <= args.warmup <= 30:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:g}] and --warmup in [0, 30]")
    if args.delay_ms < 1 or args.sessions < 1 or args.workers < 1 or args.connections < 1:
        p.error("--delay-ms, --sessions, --workers and --connections must be at least 1")
    if not 1 <= args.ping_rate <= 1000 or args.max_requests < 1:
        p.error("--ping-rate must be in [1, 1000] and --max-requests at least 1")
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # a new directory: never mixes with an earlier run
        doc = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="xks-network-hsm-") as d:
            doc = run(args, Path(d))
    if args.json:
        print(json.dumps(doc))
    else:
        print_table(doc)
    return 0 if doc["rps"] > 0 and doc["ping_requests"] > doc["ping_errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
