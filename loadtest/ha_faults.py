"""HSM member faults under load: drain, device errors, reinstatement (issue 13).

    python -m loadtest.ha_faults [--phase-s 4] [--clients 4] [--workers 2] [--runs 1]

Starts its own proxy (``init --hsm-members 2`` in a temporary directory, member ``softhsm-1``
through the fault-injecting shim of tests/support/faultshim.py), drives encrypt+decrypt round
trips from ``--clients`` keep-alive connections, and per event reports: failed requests, time to
fail over / to take out (drain command), time to reinstate, and p99 during and after, with the
p99 of the baseline phase measured in the same run as the reference (ratios, not absolutes).
Bounded: about 6 phases of ``--phase-s`` seconds per run; stops by itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xksproxy.runtime.control import ControlPaths, live_worker_status

# The test suite's helpers (process runner, fault shim, XKS client), loaded by name so the
# type checker does not walk into tests/ (they are not part of the typed tree).
procs: Any = importlib.import_module("tests.support.procs")
FaultShim: Any = importlib.import_module("tests.support.faultshim").FaultShim
XksClient: Any = importlib.import_module("tests.ha.ha_client").XksClient


@dataclass
class Sample:
    t: float  # monotonic end time
    latency_s: float
    ok: bool
    why: str = ""  # errorName (or the exception) of a failed round trip


@dataclass
class Load:
    proxy: dict[str, Any]  # JSON from the server's announce line
    clients: int
    rate: float  # round trips per second, all clients together (paced, not saturating)
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._one, daemon=True) for _ in range(self.clients)]
        for t in threads:
            t.start()
        return threads

    def _one(self) -> None:
        p = self.proxy
        client = XksClient(int(p["port"]), str(p["uri"]), str(p["akid"]), str(p["secret"]))
        interval = self.clients / self.rate
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                t0 = time.monotonic()
                why = ""
                try:
                    status, enc = client.encrypt("demo", os.urandom(64))
                    if status == 200:
                        status, enc = client.decrypt("demo", enc)
                    if status != 200:
                        why = f"{status} {enc.get('errorName')}"
                except OSError as exc:
                    why = type(exc).__name__
                t1 = time.monotonic()
                with self.lock:
                    self.samples.append(Sample(t1, t1 - t0, not why, why))
        finally:
            client.close()

    def window(self, start: float, end: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if start <= s.t < end]


def p99_ms(samples: list[Sample]) -> float:
    lat = sorted(s.latency_s for s in samples if s.ok)
    if not lat:
        return float("nan")
    return 1000.0 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return procs.run_cli(*args, "--config", str(config))


def member_states(config: Path, member: str) -> set[str]:
    """``member``'s state on every worker, read from the workers' status files directly (no CLI
    process per poll; the files are rewritten every second, so +-1 s resolution)."""
    paths = ControlPaths.for_config(config)
    return {
        str(m["state"])
        for doc in live_worker_status(paths)
        for m in doc.get("members", [])
        if m.get("member") == member
    }


def wait_state(config: Path, member: str, state: str, limit_s: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if member_states(config, member) == {state}:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("nan")


def last_failure_after(samples: list[Sample], t0: float) -> float:
    """Seconds from ``t0`` to the last failed request (0.0 when none failed)."""
    failed = [s.t for s in samples if not s.ok and s.t >= t0]
    return max(failed) - t0 if failed else 0.0


def start(
    state: Path, shim: FaultShim, workers: int
) -> tuple[subprocess.Popen[str], dict[str, object], Path]:
    res = procs.run_cli("init", "--state-dir", str(state), "--hsm-members", "2", timeout=120)
    if res.returncode != 0:
        raise SystemExit(f"init failed: {res.stderr}")
    config = state / "xksproxy.toml"
    text = config.read_text()
    text = (
        text.replace('bind = "127.0.0.1:9464"', 'bind = ""')
        .replace("request_log = true", "request_log = false")
        .replace("interval_s = 10", "interval_s = 1")
    )
    start_i = text.index('name = "softhsm-1"')
    end_i = text.index("[[", start_i)
    table = re.sub(
        r'module = "[^"]*"', f'module = "{shim.module_path}"', text[start_i:end_i], count=1
    )
    extra = "".join(f'{k} = "{v}"\n' for k, v in shim.env().items())
    table = table.replace("[hsm.env]\n", "[hsm.env]\n" + extra, 1)
    config.write_text(text[:start_i] + table + text[end_i:])
    console = json.loads((state / "kms-console.json").read_text())
    port = procs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "xksproxy", "serve", "--config", str(config), "--plain-http",
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        env=procs.product_env(), cwd=procs.REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = procs.StdoutLines(proc.stdout)
    out.wait_for("xksproxy: listening on", 60)
    cred = console["XksProxyAuthenticationCredential"]
    info: dict[str, object] = {
        "port": port,
        "uri": console["XksProxyUriPath"],
        "akid": cred["AccessKeyId"],
        "secret": cred["RawSecretAccessKey"],
    }
    return proc, info, config


def one_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="xks-ha-faults-") as d:
        base = Path(d)
        (base / "shim").mkdir()
        shim = FaultShim.create(base / "shim")
        proc, info, config = start(base / "state", shim, args.workers)
        load = Load(info, args.clients, args.rate)
        threads = load.run()
        phase = args.phase_s
        events: list[dict[str, Any]] = []
        try:
            time.sleep(1.0)  # warm-up
            b0 = time.monotonic()
            time.sleep(phase)
            base_p99 = p99_ms(load.window(b0, time.monotonic()))
            failed = sum(not s.ok for s in load.window(b0, time.monotonic()))
            events.append({"event": "baseline", "failed": failed, "p99_during_ms": base_p99})

            # drain: time to take out = the command (every worker applied it)
            t0 = time.monotonic()
            drained = cli(config, "hsm", "drain", "softhsm-1")
            t_out = time.monotonic() - t0
            time.sleep(phase)
            t1 = time.monotonic()
            undrained = cli(config, "hsm", "undrain", "softhsm-1")
            t_back = time.monotonic() - t1
            time.sleep(phase)
            t2 = time.monotonic()
            events.append({
                "event": "drain softhsm-1",
                "ok": drained.returncode == 0 and undrained.returncode == 0,
                "failed": sum(not s.ok for s in load.window(t0, t2)),
                "fail_over_s": t_out, "reinstate_s": t_back,
                "p99_during_ms": p99_ms(load.window(t0, t1)),
                "p99_after_ms": p99_ms(load.window(t1 + t_back, t2)),
            })  # fmt: skip

            # device errors: time to fail over = until every worker shows it failed
            f0 = time.monotonic()
            shim.set("device_error")
            t_taken_out = wait_state(config, "softhsm-1", "failed")
            time.sleep(max(0.0, phase - (time.monotonic() - f0)))
            f1 = time.monotonic()
            shim.set("ok")
            t_re = wait_state(config, "softhsm-1", "active")
            time.sleep(phase)
            f2 = time.monotonic()
            events.append({
                "event": "device errors softhsm-1",
                "failed": sum(not s.ok for s in load.window(f0, f2)),
                # until the last failed request (0: the first failing call was retried at once)
                "fail_over_s": last_failure_after(load.window(f0, f1), f0),
                "out_on_every_worker_s": t_taken_out, "reinstate_s": t_re,
                "p99_during_ms": p99_ms(load.window(f0, f1)),
                "p99_after_ms": p99_ms(load.window(f1 + t_re, f2)),
            })  # fmt: skip
            total = len(load.window(b0, time.monotonic()))
            reasons: dict[str, int] = {}
            for smp in load.window(b0, time.monotonic()):
                if smp.why:
                    reasons[smp.why] = reasons.get(smp.why, 0) + 1
            for e in events:
                e["requests_in_run"] = total
                e["failure_reasons_in_run"] = reasons
                e["p99_ratio_to_baseline"] = round(float(e["p99_during_ms"]) / base_p99, 2)
        finally:
            load.stop.set()
            for t in threads:
                t.join(10)
            shim.set("ok")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return events


COLUMNS = ("failed", "fail_over_s", "reinstate_s", "p99_during_ms", "p99_after_ms",
           "p99_ratio_to_baseline")  # fmt: skip
WIDTHS = (6, 11, 11, 13, 12, 6)


def _cell(event: dict[str, object], key: str) -> str:
    v = event.get(key)
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--phase-s", type=float, default=4.0, help="seconds per phase (default 4)")
    ap.add_argument("--clients", type=int, default=4, help="keep-alive client connections")
    ap.add_argument("--rate", type=float, default=100.0, help="round trips/s, all clients (100)")
    ap.add_argument("--workers", type=int, default=2, help="proxy worker processes")
    ap.add_argument("--runs", type=int, default=1, help="repeat the whole sequence")
    ap.add_argument("--json", action="store_true", help="one JSON array of all events")
    args = ap.parse_args(argv)
    runs = [one_run(args) for _ in range(max(1, args.runs))]
    if args.json:
        print(json.dumps(runs))
        return 0
    for i, events in enumerate(runs, 1):
        print(f"run {i}:")
        print(f"  {'event':<26} {'failed':>6} {'fail over s':>11} {'reinstate s':>11} "
              f"{'p99 during ms':>13} {'p99 after ms':>12} {'ratio':>6}")  # fmt: skip
        for e in events:
            cells = " ".join(f"{_cell(e, k):>{w}}" for k, w in zip(COLUMNS, WIDTHS, strict=True))
            print(f"  {e['event']:<26} {cells}")
        print(f"  requests: {events[0]['requests_in_run']}, failures by reason: "
              f"{events[0]['failure_reasons_in_run'] or 'none'}")  # fmt: skip
    if len(runs) > 1:
        for idx, name in enumerate(e["event"] for e in runs[0]):
            p99s = [float(r[idx]["p99_during_ms"]) for r in runs]
            print(
                f"median p99 during {name}: {statistics.median(p99s):.2f} ms over {len(runs)} runs"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
