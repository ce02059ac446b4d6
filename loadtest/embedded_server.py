"""Start the proxy on the embedded default in a throw-away state dir, for benchmarks.

Why: every benchmark must measure the same thing a newcomer gets from `xksproxy serve` (default
config, request log on), on loopback, and must tear it down even when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xksproxy import environment

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Running:
    url: str
    state_dir: Path
    pid: int


def server_env() -> dict[str, str]:
    """The environment of a benchmark's server process: the checkout importable, no state dir
    inherited, no drain grace."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop(environment.STATE_DIR.name, None)
    # A benchmark's proxy has no load balancer to drain from: stop at SIGTERM at once.
    env.setdefault(environment.DRAIN_GRACE_S.name, "0")
    return env


def init_state(state_dir: Path) -> None:
    """`xksproxy init` into ``state_dir`` (idempotent)."""
    r = subprocess.run(
        [sys.executable, "-m", "xksproxy", "init", "--state-dir", str(state_dir)],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        raise SystemExit(f"xksproxy init failed: {r.stderr.strip()}")


@contextlib.contextmanager
def embedded_server(
    *,
    server: str | None = None,
    workers: int | None = None,
    plain_http: bool = False,
    state_dir: Path | None = None,
    init: bool = True,
) -> Iterator[Running]:
    """Yield a running proxy (its URL and state dir); stop it with SIGTERM afterwards.

    The server's stdout (start-up lines, then one request-log line per request) goes to
    ``<state>/serve.stdout``, stderr to ``<state>/serve.stderr``: a file never applies
    back-pressure, whereas a pipe that nobody drains fast enough stalls the server's writes.
    """
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "state"
        if init:  # False: the caller init'ed (and maybe edited) state_dir already
            init_state(state_dir)
        args = [
            sys.executable,
            "-m",
            "xksproxy",
            "serve",
            "--config",
            str(state_dir / "xksproxy.toml"),
            "--bind",
            "127.0.0.1:0",
        ]
        if server:
            args += ["--server", server]
        if workers:
            args += ["--workers", str(workers)]
        if plain_http:
            args.append("--plain-http")
        out = (state_dir / "serve.stdout").open("wb")
        stack.callback(out.close)
        err = (state_dir / "serve.stderr").open("wb")
        stack.callback(err.close)
        proc = subprocess.Popen(
            args, cwd=REPO, env=server_env(), stdout=out, stderr=err, start_new_session=True
        )
        stack.callback(stop_server, proc)
        url = _wait_listening(proc, state_dir)
        yield Running(url=url, state_dir=state_dir, pid=proc.pid)


def _wait_listening(proc: subprocess.Popen, state_dir: Path) -> str:
    """Poll the stdout file for the ready line (the server prints it once a worker answers)."""
    prefix = b"xksproxy: listening on "
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        with (state_dir / "serve.stdout").open("rb") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.strip().removeprefix(prefix).decode()
        time.sleep(0.05)
    stop_server(proc)
    raise SystemExit(
        f"server not ready (exit status {proc.poll()}): "
        f"{(state_dir / 'serve.stderr').read_text(errors='replace')[-2000:]}"
    )


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then after 30 s SIGKILL to its whole session (its workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        ticks[child] = int(fields[11]) + int(fields[12])  # utime, stime
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo.extend(c for c, parent in parents.items() if parent == p)
    return total / os.sysconf("SC_CLK_TCK")
