"""deploy/haproxy/haproxy.cfg: valid for HAProxy, and a real HAProxy with it carries TLS and
SigV4 end to end to a real `xksproxy serve`."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_support import DEPLOY, encrypt_decrypt, http_get, set_metrics_bind, start
from support import procs

CFG = DEPLOY / "haproxy" / "haproxy.cfg"

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy missing (scripts/bootstrap.sh installs it)"
)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)


def test_shipped_config_is_valid():
    r = _check(CFG)
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_has_teeth(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text(CFG.read_text().replace("balance leastconn", "balance leastconnections"))
    assert _check(bad).returncode != 0


def test_shipped_choices():
    text = CFG.read_text()
    lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
    assert "mode tcp" in lines and "balance leastconn" in lines
    assert "option httpchk" in lines
    assert any(ln.startswith("http-check send meth GET uri /ready ") for ln in lines)
    default_server = next(ln for ln in lines if ln.startswith("default-server"))
    for word in ("check", "check-ssl", "verify none"):
        assert f" {word}" in default_server
    # Cutting sessions at mark-down kills requests in flight on a draining instance.
    assert "shutdown-sessions" not in default_server
    # Connect timeout well under KMS's 250 ms per call.
    m = re.search(r"^timeout connect (\d+)ms$", "\n".join(lines), re.M)
    assert m and int(m.group(1)) <= 100
    assert len([ln for ln in lines if ln.startswith("server ")]) == 3
    assert all(" 127.0.0.1:" in ln for ln in lines if ln.startswith(("server ", "bind ")))


def live_config(frontend_port: int, proxy_port: int, check_path: str = "/ready") -> str:
    """The shipped file with the ports of this test and ONE backend server (the shipped check,
    ``/ready``, unless ``check_path`` says otherwise). tests/fleet runs several servers."""
    text = CFG.read_text()
    # The test runner's file-descriptor limit may be lower than 2 x the shipped maxconn.
    text = text.replace("    maxconn 20000\n", "    maxconn 500\n")
    text = text.replace("bind 127.0.0.1:8443", f"bind 127.0.0.1:{frontend_port}")
    text = text.replace("uri /ready ", f"uri {check_path} ")
    text = re.sub(r"^    server xks[23] .*\n", "", text, flags=re.M)
    text = text.replace("server xks1 127.0.0.1:9443", f"server xks1 127.0.0.1:{proxy_port}")
    assert "maxconn 500\n" in text
    assert f"127.0.0.1:{proxy_port}" in text and f"uri {check_path} " in text
    return text


def test_haproxy_carries_tls_and_sigv4_to_a_real_proxy(tmp_path):
    state = tmp_path / "state"
    r = procs.run_cli("init", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    set_metrics_bind(state, "")  # not needed here
    proxy_port, frontend_port = procs.free_port(), procs.free_port()
    env = procs.product_env(drop=["XKSPROXY_CONFIG", "XKSPROXY_METRICS_DIR"])
    proxy = start([sys.executable, "-m", "xksproxy", "serve", "--state-dir", str(state),
                   "--bind", f"127.0.0.1:{proxy_port}", "--workers", "1"], env)  # fmt: skip
    haproxy = None
    try:
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(live_config(frontend_port, proxy_port))
        assert _check(cfg).returncode == 0
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        out = procs.StdoutLines(haproxy.stdout)
        front = f"https://127.0.0.1:{frontend_port}"
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline and haproxy.poll() is None:
            try:
                status = http_get(f"{front}/ping", timeout=2)[0]
            except OSError:
                status = None  # not listening yet, or server not up yet
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200, "\n".join(out.all)
        # TLS passthrough: the certificate seen through HAProxy is the proxy's own...
        assert ssl.get_server_certificate(("127.0.0.1", frontend_port)) == (
            ssl.get_server_certificate(("127.0.0.1", proxy_port))
        )
        # ...and a signed request, Host header included, verifies on the proxy.
        encrypt_decrypt(front, state)
    finally:
        if haproxy is not None:
            haproxy.terminate()
            try:
                haproxy.wait(10)
            except subprocess.TimeoutExpired:
                haproxy.kill()
                haproxy.wait()
        assert proxy.stop() == 0, proxy.output()[-3000:]
