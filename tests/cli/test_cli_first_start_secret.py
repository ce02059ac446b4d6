"""Issue 17 item 10: the demo secret printed by the first `serve` must not reach a log.

`serve` on a fresh state dir provisions it and prints a summary on stdout, which is also the JSON
request log (journald under systemd). The secret is printed only when stdout is a terminal (a
pty here); otherwise one line names kms-console.json instead.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import procs

STARTUP_LIMIT_S = 60


def _serve(state: Path, stdout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "xksproxy", "serve", "--state-dir", str(state),
         "--plain-http", "--bind", f"127.0.0.1:{procs.free_port()}", "--workers", "1"],
        env=procs.product_env(), cwd=procs.REPO,  # metrics port taken: a warning only
        stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _read_until_listening(fd: int, proc: subprocess.Popen[bytes]) -> str:
    """Everything the child wrote on ``fd`` up to its "listening on" line."""
    out = b""
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while b"listening on" not in out:
        assert time.monotonic() < deadline and proc.poll() is None, out.decode(errors="replace")
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO on a pty whose child closed it
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _secret(state: Path) -> str:
    doc = json.loads((state / "kms-console.json").read_text())
    return str(doc["XksProxyAuthenticationCredential"]["RawSecretAccessKey"])


def test_first_start_on_a_pipe_names_the_console_file_not_the_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    read_end, write_end = os.pipe()
    proc = _serve(state, write_end)
    os.close(write_end)
    try:
        text = _read_until_listening(read_end, proc)
    finally:
        _stop(proc)
        os.close(read_end)
    assert "xksproxy: initialised" in text
    assert _secret(state) not in text and "RawSecretAccessKey" not in text
    assert str(state / "kms-console.json") in text and "owner-only" in text


def test_first_start_on_a_terminal_shows_the_secret_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    leader, follower = pty.openpty()
    proc = _serve(state, follower)
    os.close(follower)
    try:
        text = _read_until_listening(leader, proc)
    finally:
        _stop(proc)
        os.close(leader)
    assert "RawSecretAccessKey" in text and _secret(state) in text
