"""The launcher: HTTP/2 via ALPN with HTTP/1.1 fallback, plain HTTP warning, workers, shutdown."""

from __future__ import annotations

import signal
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from transport_support import run_serve, serve_env, write_config

SERVERS = ["granian", "hypercorn"]


def _children(pid: int) -> list[str]:
    """Command lines of the direct children of ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.parametrize("server", SERVERS)
def test_http2_alpn_and_http11_fallback(tmp_path, serve_proc, server):
    cfg = write_config(tmp_path)
    s = serve_proc(cfg, "--server", server, "--workers", "1")
    assert s.url.startswith("https://127.0.0.1:")
    assert s.more_lines(1) == ["xksproxy: key store demo: /demo/kms/xks/v1"]
    ctx = ssl.create_default_context(cafile=str(tmp_path / "tls/server.crt"))
    host = s.url.removeprefix("https://")
    with httpx.Client(verify=ctx, http2=True) as c:
        r = c.post(f"{s.url}/demo/kms/xks/v1/health", content=b"{}")
    assert r.http_version == "HTTP/2"
    seen = r.json()
    assert seen["http_version"] == "2"
    # The app gets the :authority as the host header on HTTP/2 (SigV4 signs "host").
    assert ["host", host] in seen["headers"]
    with httpx.Client(verify=ctx, http2=False) as c:
        r = c.post(f"{s.url}/demo/kms/xks/v1/health", content=b"{}")
    assert r.http_version == "HTTP/1.1"
    assert r.json()["http_version"] == "1.1"
    assert ["host", host] in r.json()["headers"]


@pytest.mark.parametrize("alpn", ["h2", "http/1.1"])
@pytest.mark.parametrize("server", SERVERS)
def test_alpn_negotiation_openssl(tmp_path, serve_proc, server, alpn):
    cfg = write_config(tmp_path)
    s = serve_proc(cfg, "--server", server, "--workers", "1")
    r = subprocess.run(
        ["openssl", "s_client", "-connect", s.url.removeprefix("https://"), "-alpn", alpn],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert f"ALPN protocol: {alpn}".encode() in r.stdout


@pytest.mark.parametrize("server", SERVERS)
def test_plain_http_warns_loudly_and_serves_h1_and_h2c(tmp_path, serve_proc, server):
    cfg = write_config(tmp_path)
    s = serve_proc(cfg, "--server", server, "--workers", "1", "--plain-http")
    assert s.url.startswith("http://127.0.0.1:")
    assert "WARNING: plain HTTP, NO TLS" in s.stderr()
    with httpx.Client() as c:
        assert c.post(f"{s.url}/x", content=b"{}").json()["http_version"] == "1.1"
    with httpx.Client(http1=False, http2=True) as c:  # h2c with prior knowledge
        assert c.post(f"{s.url}/x", content=b"{}").json()["http_version"] == "2"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_workers_and_clean_shutdown(tmp_path, serve_proc, server, sig):
    cfg = write_config(tmp_path)
    s = serve_proc(cfg, "--server", server, "--workers", "2", "--plain-http")
    workers = [c for c in _children(s.proc.pid) if "resource_tracker" not in c]
    assert len(workers) == 2, workers
    with httpx.Client() as c:
        assert c.post(f"{s.url}/x", content=b"{}").status_code == 200
    assert s.stop(sig) == 0


def test_missing_certificate_is_a_config_error(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "tls/server.crt").unlink()
    r = run_serve(["--config", str(cfg)], serve_env(probe=True))
    assert r.returncode == 2
    assert "cert_file" in r.stderr


def test_self_signed_files_are_private_and_cover_localhost(tmp_path):
    from cryptography import x509

    from xksproxy.runtime.tls import generate_self_signed

    c, k = tmp_path / "a/server.crt", tmp_path / "a/server.key"
    generate_self_signed(c, k, ["localhost", "127.0.0.1", "::1"])
    assert c.stat().st_mode & 0o777 == 0o600
    assert k.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(c.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert k.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("server", SERVERS)
def test_worker_startup_failure_exits_non_zero(tmp_path, server):
    """An app whose start-up fails (e.g. HSM unreachable) must not leave a silent, dead server."""
    cfg = write_config(tmp_path)
    env = serve_env(probe=True, extra={"XKSPROXY_APP_FACTORY": "transport_probe_app:broken"})
    r = run_serve(
        ["--config", str(cfg), "--bind", "127.0.0.1:0", "--server", server, "--workers", "2"], env
    )
    assert r.returncode != 0
    assert "listening on" not in r.stdout
    assert "HSM unreachable" in r.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_dead_worker_is_replaced(tmp_path, serve_proc, server):
    import os
    import time

    cfg = write_config(tmp_path)
    s = serve_proc(cfg, "--server", server, "--workers", "2", "--plain-http")

    def workers() -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmd = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == s.proc.pid and b"resource_tracker" not in cmd:
                pids.append(int(stat.parent.name))
        return sorted(pids)

    before = workers()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    for _ in range(300):  # waiting for an event (the replacement), not asserting a duration
        now = workers()
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and before[0] not in now
    # Each granian worker has its own SO_REUSEPORT socket; on a loaded machine a connection can
    # still be refused while the kernel drops the dead worker's socket, so wait (bounded) for
    # the first answer, then every request must succeed.
    with httpx.Client() as c:
        for _ in range(50):
            try:
                first = c.post(f"{s.url}/x", content=b"{}")
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        else:
            pytest.fail("no worker accepted connections after the replacement")
        assert first.status_code == 200
        for _ in range(4):
            assert c.post(f"{s.url}/x", content=b"{}").status_code == 200
    assert s.stop() == 0
