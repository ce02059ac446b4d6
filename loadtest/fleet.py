"""A fleet behind HAProxy under load, with faults: rolling SIGTERM, SIGKILL, restart.

What it shows (issue 14): N ``xksproxy serve`` instances on loopback share one HSM token (one
state dir and config; their own ``--bind`` and ``XKSPROXY_METRICS_BIND``), HAProxy runs the
shipped ``deploy/haproxy/haproxy.cfg`` (TCP passthrough, health checks on ``/ready``) with the
ports of this run, and pre-signed KMS-mix traffic goes through HAProxy while

1. one instance gets SIGTERM (a rolling restart): it answers ``/ready`` 503 at once, HAProxy
   takes it out, it serves its grace period out and exits; it is started again and HAProxy puts
   it back. Expected: **0 failed requests**.
2. one instance gets SIGKILL: expected failures <= the sessions HAProxy had open on it at that
   moment, and **none sent more than one check interval after the kill**; then it is restarted
   and must be back in rotation.
3. (``--h2``) the same rolling SIGTERM under h2load over HTTP/2 (a draining proxy cannot send
   ``Connection: close`` on HTTP/2; h2load reports what its clients saw).

It prints per-event requests, failures and p50/p99, and exits 1 when an expectation fails.
Bounded: every wait has a limit and the whole run stops by itself. Example::

    python -m loadtest.fleet --instances 3 --workers 1 --connections 16 --phase-s 5 --h2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import fleet_client
from loadtest.embedded_server import init_state
from loadtest.xks_requests import prepare, target_from_env

REPO = Path(__file__).resolve().parents[1]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
CHECK_INTERVAL_S = 1.0  # `inter 1s` in the shipped config (checked in haproxy_config)
START_LIMIT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unverified_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get_status(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=unverified_tls()) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:  # it holds the connection: close it (no unclosed socket left to the GC)
            return err.code, err.read()
    except (OSError, ValueError):
        return 0, b""


def prepare_state(state_dir: Path, *, drain_grace_s: float, health_interval_s: int = 1) -> None:
    """`xksproxy init`, then what a fleet on one host needs: a short health interval (so /ready
    follows the HSM within a second) and the drain grace for this run."""
    init_state(state_dir)
    config = state_dir / "xksproxy.toml"
    text = config.read_text()
    text = re.sub(r"(?m)^interval_s = \d+$", f"interval_s = {health_interval_s}", text)
    if "drain_grace_s" not in text:
        text = text.replace("[server]\n", f"[server]\ndrain_grace_s = {drain_grace_s:g}\n", 1)
    config.write_text(text)


def haproxy_config(frontend_port: int, ports: dict[str, int], stats_socket: Path) -> str:
    """The shipped HAProxy config with this run's ports, servers and an admin stats socket."""
    text = HAPROXY_CFG.read_text()
    assert f" inter {CHECK_INTERVAL_S:g}s " in text, "shipped check interval changed"
    text = text.replace("    maxconn 20000\n", "    maxconn 2000\n", 1)
    text = text.replace(
        "global\n", f"global\n    stats socket {stats_socket} mode 600 level admin\n", 1
    )
    text = text.replace("bind 127.0.0.1:8443", f"bind 127.0.0.1:{frontend_port}")
    text = re.sub(r"(?m)^    server xks\d .*\n", "", text)
    servers = "".join(f"    server {name} 127.0.0.1:{port}\n" for name, port in ports.items())
    return text.rstrip("\n") + "\n" + servers


@dataclass
class Instance:
    """One `xksproxy serve` of the fleet."""

    name: str
    port: int
    metrics_port: int
    state_dir: Path
    workers: int
    server: str
    logdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.logdir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
        env["XKSPROXY_METRICS_BIND"] = f"127.0.0.1:{self.metrics_port}"
        for name in (
            "XKSPROXY_CONFIG",
            "XKSPROXY_METRICS_DIR",
            "XKSPROXY_STATE_DIR",
            "XKSPROXY_DRAIN_GRACE_S",
        ):  # fmt: skip  (the fleet's grace is in its config)
            env.pop(name, None)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xksproxy", "serve", "--state-dir", str(self.state_dir),
                 "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                 "--server", self.server],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
            )  # fmt: skip

    def wait_listening(self, limit_s: float = START_LIMIT_S) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if b"xksproxy: listening on" in self.log.read_bytes():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_bytes()[-2000:].decode(errors="replace")
        raise SystemExit(f"{self.name} did not start:\n{tail}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, limit_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGINT (an operator's stop: no drain grace, in-flight requests still finish), then
        SIGKILL if it does not end; always leaves no process behind. Rolling restarts use
        SIGTERM (:func:`rolling_restart`), which drains."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        if self.wait_exit(30) is None:
            self.proc.kill()
            self.proc.wait(10)

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []


@dataclass
class HAProxy:
    config: Path
    stats_socket: Path
    log: Path
    frontend_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.frontend_port}"

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(str(self.stats_socket))
            s.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers from ``show stat``: status (UP/DOWN/...), scur (sessions)."""
        try:
            lines = self.command("show stat").splitlines()
        except OSError:
            return {}
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "xksproxy" and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row
        return out

    def wait_status(self, name: str, prefix: str, limit_s: float = 30.0) -> float:
        """Wait until server ``name``'s status starts with ``prefix``; monotonic time then."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.servers().get(name, {}).get("status", "").startswith(prefix):
                return time.monotonic()
            time.sleep(0.05)
        raise SystemExit(f"HAProxy: {name} not {prefix} within {limit_s:g} s: {self.servers()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Fleet:
    state_dir: Path
    instances: list[Instance]
    haproxy: HAProxy
    workdir: Path
    events: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, name: str) -> float:
        t = time.monotonic()
        self.events.append((name, t))
        return t

    def all_up(self, limit_s: float = 30.0) -> None:
        for inst in self.instances:
            self.haproxy.wait_status(inst.name, "UP", limit_s)


@contextlib.contextmanager
def fleet(
    *,
    instances: int = 3,
    workers: int = 1,
    server: str = "granian",
    drain_grace_s: float = 4.0,
    workdir: Path | None = None,
    configure: Callable[[Path], None] | None = None,
) -> Iterator[Fleet]:
    """Start the fleet and HAProxy, wait until HAProxy has every instance UP; stop all after.
    ``configure(config_path)`` may edit the shared config first (tests: a fault-shim module)."""
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy not installed (scripts/bootstrap.sh test installs it)")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="xksproxy-fleet-")) if workdir is None else workdir
    state = work / "state"
    prepare_state(state, drain_grace_s=drain_grace_s)
    if configure is not None:
        configure(state / "xksproxy.toml")
    members = [
        Instance(f"xks{i + 1}", free_port(), free_port(), state, workers, server, work)
        for i in range(instances)
    ]
    frontend = free_port()
    cfg = work / "haproxy.cfg"
    sock = work / "haproxy.sock"
    cfg.write_text(haproxy_config(frontend, {m.name: m.port for m in members}, sock))
    lb = HAProxy(cfg, sock, work / "haproxy.log", frontend)
    f = Fleet(state, members, lb, work)
    try:
        for m in members:
            m.start()
        for m in members:
            m.wait_listening()
        lb.start()
        f.all_up()
        yield f
    finally:
        lb.stop()
        for m in members:
            m.stop()
        if own:
            shutil.rmtree(work, ignore_errors=True)


# -- the scenario ----------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def rolling_restart(f: Fleet, inst: Instance, grace_s: float) -> tuple[float, float]:
    """SIGTERM ``inst``, check /ready says draining, wait for its exit, start it again and wait
    until HAProxy has it UP. Returns (sent SIGTERM, back in rotation) times."""
    t0 = f.mark(f"SIGTERM {inst.name}")
    inst.signal(signal.SIGTERM)
    f.haproxy.wait_status(inst.name, "DOWN", grace_s + 10)
    if inst.wait_exit(grace_s + 30) is None:
        raise SystemExit(f"{inst.name} did not exit after SIGTERM")
    f.mark(f"{inst.name} exited")
    inst.start()
    inst.wait_listening()
    t1 = f.haproxy.wait_status(inst.name, "UP", 30)
    f.events.append((f"{inst.name} back in rotation", t1))
    return t0, t1


def kill_and_restart(f: Fleet, inst: Instance) -> tuple[float, int, float]:
    """SIGKILL ``inst`` (workers too: they would stop via the lifeline anyway), restart it.
    Returns (kill time, sessions HAProxy had open on it just before, back in rotation time)."""
    sessions = int(f.haproxy.servers().get(inst.name, {}).get("scur", "0") or 0)
    pids = inst.worker_pids()
    t0 = f.mark(f"SIGKILL {inst.name} ({sessions} sessions open)")
    inst.signal(signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    inst.wait_exit(10)
    f.haproxy.wait_status(inst.name, "DOWN", 15)
    f.mark(f"{inst.name} marked DOWN")
    inst.start()
    inst.wait_listening()
    t1 = f.haproxy.wait_status(inst.name, "UP", 30)
    f.events.append((f"{inst.name} back in rotation", t1))
    return t0, sessions, t1


async def _presigned(url: str, n: int = 40) -> list[tuple[str, bytes]]:
    target = target_from_env(url)
    pools = await fleet_client.presign(target, unverified_tls(), n)
    return fleet_client.schedule(pools, 2000)


def h1_scenario(
    f: Fleet,
    *,
    connections: int,
    phase_s: float,
    grace_s: float,
    kill: bool = True,
    rate: float | None = None,
) -> tuple[fleet_client.Load, list[Check], list[tuple[str, float, float]]]:
    """Load through HAProxy while one instance is rolled and (``kill``) another killed."""
    os.environ["XKS_STATE_DIR"] = str(f.state_dir)
    url = f.haproxy.url
    requests = asyncio.run(_presigned(url))
    load = fleet_client.Load()
    checks: list[Check] = []
    windows: list[tuple[str, float, float]] = []
    stop = asyncio.Event()

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        runner = asyncio.ensure_future(
            fleet_client.run(url, unverified_tls(), requests, connections=connections,
                             duration_s=600, stop=stop, load=load, rate=rate)
        )  # fmt: skip
        try:
            t_start = f.mark("load started")
            await asyncio.sleep(phase_s)
            roll = f.instances[0]
            t_term, t_back = await loop.run_in_executor(None, rolling_restart, f, roll, grace_s)
            windows.append(("baseline", t_start, t_term))
            windows.append((f"rolling SIGTERM {roll.name} until back", t_term, t_back))
            await asyncio.sleep(phase_s)
            if kill and len(f.instances) > 1:
                victim = f.instances[1]
                t_kill, sessions, t_back2 = await loop.run_in_executor(
                    None, kill_and_restart, f, victim
                )
                windows.append((f"after {roll.name} is back", t_back, t_kill))
                windows.append((f"SIGKILL {victim.name}: first check interval", t_kill,
                                t_kill + CHECK_INTERVAL_S))  # fmt: skip
                windows.append((f"SIGKILL {victim.name}: later, until back", t_kill +
                                CHECK_INTERVAL_S, t_back2))  # fmt: skip
                await asyncio.sleep(phase_s)
                windows.append((f"after {victim.name} is back", t_back2, time.monotonic()))
                failed = len(load.failures(t_kill, t_back2, deadline_misses=False))
                late = len([r for r in load.failures(deadline_misses=False)
                            if r.sent >= t_kill + CHECK_INTERVAL_S])  # fmt: skip
                checks.append(Check(f"SIGKILL {victim.name}: failures <= sessions open on it",
                                    failed <= max(sessions, 0), f"{failed} failed, {sessions} "
                                    "sessions open"))  # fmt: skip
                checks.append(Check("no failure sent > 1 check interval after the SIGKILL",
                                    late == 0, f"{late} late failures"))  # fmt: skip
            else:
                windows.append((f"after {roll.name} is back", t_back, time.monotonic()))
            rolled = len(load.failures(t_start, t_back, deadline_misses=False))
            checks.insert(0, Check(f"rolling SIGTERM {roll.name}: 0 failed requests",
                                   rolled == 0, f"{rolled} failed"))  # fmt: skip
        finally:
            stop.set()
            await runner

    asyncio.run(drive())
    checks.append(Check("every instance back in rotation", True, "all UP"))
    f.all_up(5)
    return load, checks, windows


def h2_scenario(
    f: Fleet, *, phase_s: float, grace_s: float, clients: int, rate: float | None = None
) -> Check:
    """h2load (HTTP/2, pre-signed Encrypt) through HAProxy during a rolling SIGTERM."""
    if shutil.which("h2load") is None:
        return Check("HTTP/2 rolling SIGTERM (h2load)", True, "skipped: h2load not installed")
    target = target_from_env(f.haproxy.url)
    req = prepare(target, "encrypt")
    body = f.workdir / "h2-body.json"
    body.write_bytes(req.body)
    duration = 2 * phase_s + grace_s + 12
    # --rps: a fixed request rate per client, like the HTTP/1.1 phase's open loop.
    cmd = ["h2load", "-D", f"{duration:g}", "-c", str(clients), "-m", "4", "-t", "1",
           "-d", str(body)]  # fmt: skip
    if rate:
        cmd.append(f"--rps={max(1, round(rate / clients))}")
    log = f.workdir / "h2load.log"
    cmd.append(f"--log-file={log}")
    for k, v in req.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(target.base_url + req.path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(phase_s)
        t_term = time.time()
        rolling_restart(f, f.instances[-1], grace_s)
        out, _ = proc.communicate(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)  # fmt: skip
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and codes):
        return Check("HTTP/2 rolling SIGTERM (h2load)", False, f"cannot parse: {out[-500:]}")
    done, ok, failed = int(m.group(3)), int(m.group(4)), int(m.group(5))
    errored, timeouts = int(m.group(6)), int(m.group(7))
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    unsent = int(m.group(1)) - done
    bad: Counter[str] = Counter()  # non-2xx by status and by second since the SIGTERM
    with contextlib.suppress(OSError):
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].isdigit() and not parts[1].startswith("2"):
                bad[f"{parts[1]}@{int(parts[0]) / 1e6 - t_term:+.0f}s"] += 1
    detail = (f"{done} done, {ok} succeeded, {failed} failed: {non2xx} non-2xx, {errored} "
              f"errored, {timeouts} timeout; {unsent} not sent when the run ended; non-2xx "
              f"(status@time from SIGTERM): {dict(bad)}")  # fmt: skip
    return Check("HTTP/2 rolling SIGTERM (h2load): 0 failed requests", failed == 0, detail)


def print_report(load: fleet_client.Load, windows: list[tuple[str, float, float]],
                 checks: list[Check], t0: float) -> int:  # fmt: skip
    print(f"{'window':<44} {'from_s':>7} {'to_s':>7} {'requests':>9} {'failed':>7} "
          f"{'p50_ms':>7} {'p99_ms':>7}  failures")  # fmt: skip
    for name, a, b in windows:
        w = fleet_client.window(load, a, b)
        kinds = json.dumps(w.kinds) if w.kinds else ""
        print(f"{name:<44} {a - t0:7.1f} {b - t0:7.1f} {w.requests:9d} {w.failures:7d} "
              f"{w.p50_ms:7.2f} {w.p99_ms:7.2f}  {kinds}")  # fmt: skip
    misses = len(load.failures()) - len(load.failures(deadline_misses=False))
    load_avg = os.getloadavg()[0]
    print(f"deadline misses ({fleet_client.DEADLINE_MISS}: answered past [server] "
          f"request_deadline_ms, a starved CPU, not a lost request; not counted by the checks "
          f"below): {misses}; load average {load_avg:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    fails = load.failures()
    if fails:
        print("failures sent at (s): " + ", ".join(f"{r.sent - t0:.2f} {r.outcome}"
                                                   for r in fails[:20]))  # fmt: skip
    total = fleet_client.window(load, -float("inf"), float("inf"))
    print(f"total: {total.requests} requests, {total.failures} failed, p99 {total.p99_ms:.2f} ms, "
          f"{load.reconnects} reconnects on Connection: close, "
          f"{load.connect_failures} connect failures")  # fmt: skip
    bad = 0
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}: {c.name} ({c.detail})")
        bad += not c.ok
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="workers per instance")
    ap.add_argument("--server", choices=("granian", "hypercorn"), default="granian")
    ap.add_argument("--connections", type=int, default=16, help="HTTP/1.1 client connections")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="requests/s in total, open loop (0 = closed loop, saturating: then "
                         "503 deadline misses measure the machine, not the fleet)")  # fmt: skip
    ap.add_argument("--phase-s", type=float, default=5.0, help="load between events (seconds)")
    ap.add_argument("--grace-s", type=float, default=4.0, help="[server] drain_grace_s")
    ap.add_argument("--h2", action="store_true", help="also a rolling SIGTERM under h2load")
    ap.add_argument("--h2-clients", type=int, default=8)
    args = ap.parse_args(argv)
    if not 1 <= args.instances <= 9 or not 1 <= args.phase_s <= 60 or args.grace_s > 30:
        ap.error("--instances 1..9, --phase-s 1..60, --grace-s <= 30 keep the run bounded")
    with fleet(instances=args.instances, workers=args.workers, server=args.server,
               drain_grace_s=args.grace_s) as f:  # fmt: skip
        t0 = time.monotonic()
        print(f"fleet: {args.instances} x `xksproxy serve --workers {args.workers} --server "
              f"{args.server}` behind HAProxy {f.haproxy.url}; HTTP/1.1, {args.connections} "
              f"connections, KMS mix at {args.rate or 'max'} req/s", flush=True)  # fmt: skip
        load, checks, windows = h1_scenario(
            f, connections=args.connections, phase_s=args.phase_s, grace_s=args.grace_s,
            kill=args.instances > 1, rate=args.rate or None,
        )  # fmt: skip
        if args.h2:
            checks.append(h2_scenario(f, phase_s=args.phase_s, grace_s=args.grace_s,
                                      clients=args.h2_clients, rate=args.rate or None))  # fmt: skip
        for name, t in f.events:
            print(f"event {t - t0:7.1f} s  {name}")
        return print_report(load, windows, checks, t0)


if __name__ == "__main__":
    raise SystemExit(main())
