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
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Running:
    url: str
    state_dir: Path
    pid: int


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("XKSPROXY_STATE_DIR", None)
    return env


def init_state(state_dir: Path) -> None:
    """`xksproxy init` into ``state_dir`` (idempotent)."""
    r = subprocess.run([sys.executable, "-m", "xksproxy", "init", "--state-dir", str(state_dir)],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"xksproxy init failed: {r.stderr.strip()}")


@contextlib.contextmanager
def embedded_server(
    *,
    server: str | None = None,
    workers: int | None = None,
    plain_http: bool = False,
    state_dir: Path | None = None,
) -> Iterator[Running]:
    """Yield a running proxy (its URL and state dir); stop it with SIGTERM afterwards.

    The server's stdout (one request-log line per request) is drained and discarded, as a log
    shipper would; stderr goes to ``<state>/serve.stderr``.
    """
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "state"
        init_state(state_dir)
        args = [sys.executable, "-m", "xksproxy", "serve", "--config",
                str(state_dir / "xksproxy.toml"), "--bind", "127.0.0.1:0"]
        if server:
            args += ["--server", server]
        if workers:
            args += ["--workers", str(workers)]
        if plain_http:
            args.append("--plain-http")
        err = (state_dir / "serve.stderr").open("wb")
        stack.callback(err.close)
        proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True)
        stack.callback(_stop, proc)
        url = _wait_listening(proc, state_dir)
        yield Running(url=url, state_dir=state_dir, pid=proc.pid)


def _wait_listening(proc: subprocess.Popen, state_dir: Path) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("xksproxy: listening on "):
            url = line.strip().removeprefix("xksproxy: listening on ")
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return url
    raise SystemExit(f"server exited ({proc.wait()}): "
                     f"{(state_dir / 'serve.stderr').read_text(errors='replace')[-2000:]}")


def _drain(stream) -> None:
    """Discard the request log in 64 KiB reads (cheap, like a log shipper; lines are not parsed)."""
    fd = stream.fileno()
    while os.read(fd, 1 << 16):
        pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
