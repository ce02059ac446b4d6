"""Run a real multi-worker proxy (granian) with the operations launcher hooks, for ops tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.procs import REPO, StdoutLines, free_port, product_env

HERE = Path(__file__).resolve().parent


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    host: str
    metrics_url: str
    lines: list[str] = field(default_factory=list)  # every stdout+stderr line, growing

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return "\n".join(self.lines)


def start(
    config_path: Path, *, workers: int = 2, env: dict[str, str] | None = None, timeout: float = 40.0
) -> Server:
    port, mport = free_port(), free_port()
    full = product_env(
        env, drop=["XKSPROXY_CONFIG", "XKSPROXY_METRICS_DIR", "XKSPROXY_RELOAD_FILE"]
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "launch_with_ops.py"),
            str(config_path),
            f"127.0.0.1:{port}",
            f"127.0.0.1:{mport}",
            str(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=full,
    )
    out = StdoutLines(proc.stdout)
    srv = Server(
        proc,
        f"http://127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        f"http://127.0.0.1:{mport}/metrics",
        out.all,
    )
    deadline = time.monotonic() + timeout
    try:
        out.wait_for("listening on", timeout)
    except (TimeoutError, EOFError):
        pass
    else:
        if _wait_workers(srv, workers, deadline):
            return srv
    srv.stop()
    raise RuntimeError("server did not start:\n" + srv.output()[-3000:])


def _wait_workers(srv: Server, n: int, deadline: float) -> bool:
    """ "listening" means one worker answers; wait until all ``n`` built their app (each one
    publishes metrics from then on), so every worker watches the config from here on."""
    import httpx

    while time.monotonic() < deadline:
        try:
            text = httpx.get(srv.metrics_url, timeout=2).text
        except httpx.HTTPError:
            text = ""
        for line in text.splitlines():
            if line.startswith("xksproxy_workers ") and float(line.split()[1]) >= n:
                return True
        time.sleep(0.1)
    return False


def assert_clean_and_chained(srv: Server, config_path: Path, plaintexts: list[bytes]) -> int:
    """After ``srv`` stopped: no plaintext (raw or base64) in its output or any audit file, and
    the audit files (rotated ones included) form one intact chain. Returns the record count."""
    import base64

    from xksproxy.config import load_config
    from xksproxy.observe.audit import verify_files

    cfg = load_config(config_path)
    audit_dir = cfg.audit.file.parent
    files = sorted(p for p in audit_dir.iterdir() if p.suffix == ".log")
    blobs = [srv.output().encode()] + [p.read_bytes() for p in files]
    for pt in plaintexts:
        for form in (pt, base64.b64encode(pt)):
            assert not any(form in b for b in blobs), f"plaintext {pt!r} leaked"
    res = verify_files(files, cfg.audit.key)
    assert res.ok, res.message
    return res.records
