"""A real `xksproxy serve` under a stand-in systemd: a datagram socket named by $NOTIFY_SOCKET.

What systemd (``Type=notify``, ``NotifyAccess=main``) would see: ``READY=1`` once the listener
answers, ``RELOADING=1`` then ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` at SIGTERM, every
datagram sent by the launcher (the sender's pid, from SO_PASSCRED), no worker with the variable.
The drain is checked on both servers on the way: ``/ready`` is 503 at once after SIGTERM.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
import sys
from pathlib import Path

import pytest
from deploy_support import http_get, start
from support import procs


def _receiver(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(path))
    return sock


def _next(sock: socket.socket, timeout: float = 30.0) -> tuple[str, int]:
    """(datagram text, sender pid)."""
    sock.settimeout(timeout)
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    return data.decode(), pid


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
def test_serve_notifies_systemd_from_the_launcher_only(tmp_path, server):
    state = tmp_path / "state"
    r = procs.run_cli("init", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    config = state / "xksproxy.toml"
    text = config.read_text()
    assert re.search(r"^drain_grace_s = ", text, re.M), "init writes drain_grace_s"
    config.write_text(
        re.sub(r"^drain_grace_s = .*$", "drain_grace_s = 2", text, count=1, flags=re.M)
    )
    notify = tmp_path / "notify"
    sock = _receiver(notify)
    port = procs.free_port()
    env = procs.product_env(
        {"NOTIFY_SOCKET": str(notify), "XKSPROXY_METRICS_BIND": ""},
        drop=["XKSPROXY_CONFIG", "XKSPROXY_METRICS_DIR", "XKSPROXY_DRAIN_GRACE_S"],
    )
    try:
        proxy = start([sys.executable, "-m", "xksproxy", "serve", "--state-dir", str(state),
                       "--bind", f"127.0.0.1:{port}", "--workers", "2", "--server", server],
                      env)  # fmt: skip
    except BaseException:
        sock.close()
        raise
    try:
        launcher = proxy.proc.pid
        text, pid = _next(sock)
        assert text.splitlines()[0] == "READY=1" and pid == launcher, (text, pid)
        assert f"STATUS=listening on {proxy.url}" in text
        workers = _children(launcher)
        assert len(workers) >= 2
        for worker in workers:
            environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith(b"NOTIFY_SOCKET=") for v in environ), worker

        proxy.proc.send_signal(signal.SIGHUP)
        text, pid = _next(sock)
        assert text.startswith("RELOADING=1\n") and pid == launcher, text
        assert re.search(r"^MONOTONIC_USEC=\d+$", text, re.M)
        text, pid = _next(sock)
        assert text.splitlines()[0] == "READY=1" and pid == launcher

        assert http_get(proxy.url + "/ready")[0] == 200
        proxy.proc.send_signal(signal.SIGTERM)
        text, pid = _next(sock)
        assert text.splitlines()[0] == "STOPPING=1" and pid == launcher, text
        status, body = http_get(proxy.url + "/ready")  # the drain: still answering, not ready
        assert status == 503 and b'"reason":"draining' in body, (status, body)
        assert http_get(proxy.url + "/ping")[0] == 200
        assert proxy.proc.wait(30) == 0
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):  # nothing else: no worker ever notified
            _next(sock, 0.2)
    finally:
        proxy.stop()
        sock.close()
