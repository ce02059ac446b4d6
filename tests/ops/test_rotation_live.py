"""Credential rotation under continuous signed traffic against a real 2-worker server."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import orjson
import pytest
from ops_client import encrypt_body, signed
from ops_config import demo_credential, set_option
from ops_server import assert_clean_and_chained, start

from xksproxy.admin import credentials_ops

PATH = "/demo/kms/xks/v1/keys/demo/encrypt"


@pytest.fixture
def server(config_path):
    set_option(config_path, "metrics", "bind", '""')
    srv = start(config_path, workers=2)
    yield srv
    srv.stop()


class Traffic:
    """Threads sending signed Encrypt requests with whatever credential is current."""

    def __init__(self, srv, cred, threads: int = 3) -> None:
        self.srv, self.cred = srv, cred
        self.ok = 0
        self.failures: list[tuple[str, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.srv.base_url, timeout=5) as http:
            while not self._stop.is_set():
                cred = self.cred
                body = encrypt_body(b"pt-rotation-51c2e8")
                r = http.post(PATH, content=body, headers=signed(PATH, body, cred, self.srv.host))
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append((cred.access_key_id, r.status_code, r.text[:200]))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(10)


def _status_fresh_connection(srv, cred) -> int:
    body = encrypt_body(b"pt-probe-0d44b1")
    with httpx.Client(base_url=srv.base_url, timeout=5) as http:
        return http.post(PATH, content=body, headers=signed(PATH, body, cred, srv.host)).status_code


def test_rotate_without_failed_requests(server, config_path):
    old = demo_credential(config_path)
    with Traffic(server, old) as traffic:
        time.sleep(0.5)
        _, new = credentials_ops.add(config_path, "/demo")
        time.sleep(2.5)  # every worker polls the file each second (documented procedure)
        traffic.cred = new  # "switch KMS to the new credential"
        time.sleep(0.5)
        removed_at = time.monotonic()
        credentials_ops.remove(config_path, "/demo", old.access_key_id)
        last_accepted = removed_at
        while time.monotonic() - removed_at < 6.0:
            if _status_fresh_connection(server, old) == 200:
                last_accepted = time.monotonic()
            time.sleep(0.05)
    # No request with a valid credential is refused. A 503 DependencyTimeout can only come from
    # the worker being starved of CPU past the 150 ms deadline on a loaded 2-core CI box (seen
    # before any reload too); it is not a rotation failure, and it must stay rare.
    refused = [f for f in traffic.failures if f[1] != 503]
    assert refused == [], refused[:5]
    assert len(traffic.failures) <= 0.02 * (traffic.ok + len(traffic.failures))
    assert traffic.ok > 50
    assert last_accepted - removed_at < 5.0
    assert all(_status_fresh_connection(server, old) == 401 for _ in range(10))
    assert all(_status_fresh_connection(server, new) == 200 for _ in range(10))
    out = server.output()
    assert "configuration reloaded" in out
    assert new.secret not in out and old.secret not in out
    server.stop()
    plaintexts = [b"pt-rotation-51c2e8", b"pt-probe-0d44b1"]
    assert assert_clean_and_chained(server, config_path, plaintexts) > traffic.ok


def test_sighup_and_invalid_file(server, config_path):
    def reloads() -> list[str]:
        return [line for line in server.lines if "configuration reloaded" in line]

    # SIGHUP to the launcher: every worker reloads itself; none is respawned
    before = len(reloads())
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while len(reloads()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(reloads()) >= before + 2, server.output()[-2000:]
    assert "respawning" not in server.output()
    assert _status_fresh_connection(server, demo_credential(config_path)) == 200

    # SIGHUP straight to one worker (e.g. a process-group signal): it reloads, it does not die
    worker_pid = orjson.loads(reloads()[-1])["pid"]
    os.kill(worker_pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any('"SIGHUP"' in line for line in reloads()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any('"SIGHUP"' in line for line in reloads()), server.output()[-2000:]
    os.kill(worker_pid, 0)  # still alive
    assert _status_fresh_connection(server, demo_credential(config_path)) == 200

    # an invalid file: the running configuration stays, the log says exactly what is wrong
    good = config_path.read_text()
    config_path.write_text(good.replace("request_deadline_ms = 150", "request_deadline_ms = -5"))
    time.sleep(2.5)
    try:
        status = _status_fresh_connection(server, demo_credential_from(good, config_path))
    except httpx.ConnectError:
        raise AssertionError(server.output()[-3000:]) from None
    assert status == 200
    assert "request_deadline_ms" in server.output()
    assert "reload refused" in server.output()


def demo_credential_from(text: str, config_path):
    probe = config_path.with_name("probe.toml")
    probe.write_text(text)
    probe.chmod(0o600)
    return demo_credential(probe)
