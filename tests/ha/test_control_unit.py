"""The control socket refuses every uid but the proxy's own (SO_PEERCRED), whatever the modes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xksproxy.runtime.control import ControlServer

NOBODY = 65534
# the system interpreter: the test's own may sit in a tree only root can enter
CLIENT_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another uid")
def test_other_uid_is_refused_even_when_modes_would_let_it_in() -> None:
    # tmp_path's parents are private to root: use a directory the other uid can traverse
    with tempfile.TemporaryDirectory(prefix="xks-control-") as d:
        os.chmod(d, 0o755)
        _refused(Path(d))


def _refused(base: Path) -> None:
    server = ControlServer(base / "xksproxy.toml")
    server.start()
    try:
        server.paths.dir.chmod(0o755)  # loosen on purpose: the uid check must still refuse
        server.paths.socket.chmod(0o666)
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
            "print(s.recv(4096).decode())\n"  # refused before any request is read
        )
        res = subprocess.run(
            [CLIENT_PYTHON, "-c", code, str(server.paths.socket)],
            capture_output=True, text=True, timeout=20, user=NOBODY,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        reply = json.loads(res.stdout)
        assert reply["ok"] is False and "not the proxy's owner" in reply["error"]
    finally:
        server.close()
    assert not server.paths.socket.exists()


def test_owner_gets_an_answer_and_a_stale_socket_is_replaced(tmp_path) -> None:
    paths_dir = tmp_path / "control"
    paths_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(paths_dir / "control.sock"))
    stale.close()  # bound, never listening: what a killed launcher leaves
    server = ControlServer(tmp_path / "xksproxy.toml")
    server.start()
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(server.paths.socket))
            conn.sendall(b'{"command": "status"}\n')
            reply = json.loads(conn.makefile().readline())
        assert reply["ok"] is False and "ConfigError" in reply["error"]  # no config file here
        assert (server.paths.socket.stat().st_mode & 0o777) == 0o600
    finally:
        server.close()
