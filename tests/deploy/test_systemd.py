"""deploy/systemd: the units verify, score <= 2.0 exposed, and the proxy runs under the hardening
that can be reproduced without systemd (another user, umask 077, W^X memory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from deploy_support import (
    DEPLOY,
    VENV_BIN,
    encrypt_decrypt,
    http_get,
    make_runtime,
    set_metrics_bind,
    start,
)
from support import procs

UNITS = DEPLOY / "systemd"
SHIPPED_BIN = "/opt/xksproxy/.venv/bin/xksproxy"
MAX_EXPOSURE = 2.0
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (scripts/bootstrap.sh installs it)",
)


def _unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> every value assigned in the unit file (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _copy_units(tmp_path: Path) -> Path:
    """The shipped units with ExecStart pointed at this checkout's real `xksproxy` script:
    `systemd-analyze verify` refuses a unit whose binary does not exist."""
    binary = VENV_BIN / "xksproxy"
    assert binary.exists(), binary
    d = tmp_path / "units"
    d.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text()
        (d / unit.name).write_text(text.replace(SHIPPED_BIN, str(binary)))
    return d


def test_every_unit_verifies(tmp_path):
    d = _copy_units(tmp_path)
    units = sorted(str(p) for p in d.iterdir())
    assert {Path(u).name for u in units} >= {
        "xksproxy.service",
        "xksproxy-key-maintenance.service",
        "xksproxy-key-maintenance.timer",
    }
    r = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True,
                       cwd=d)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no warning either


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above has teeth: a typo in a directive fails it."""
    d = _copy_units(tmp_path)
    unit = d / "xksproxy.service"
    unit.write_text(unit.read_text().replace("ExecStart=", "ExecStrat="))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode != 0 or "ExecStrat" in r.stderr


@pytest.mark.parametrize("name", ["xksproxy.service", "xksproxy-key-maintenance.service"])
def test_exposure_is_at_most_2(name, tmp_path):
    d = _copy_units(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(d / name)], capture_output=True, text=True)  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_service_contract():
    s = _unit_settings(UNITS / "xksproxy.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"][0].startswith(SHIPPED_BIN + " serve ")
    assert s["StateDirectory"] == ["xksproxy"] and s["UMask"] == ["0077"]
    assert s["User"] != ["root"]
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert s[key] == [""], key  # empty: no capability at all
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "MemoryDenyWriteExecute",
        "LockPersonality",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "RestrictNamespaces",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
    ):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["SystemCallFilter"][0] == "@system-service"
    assert s["SystemCallArchitectures"] == ["native"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    # The stop timeout leaves room for the 10 s drain.
    assert int(s["TimeoutStopSec"][0]) > 10


def test_key_maintenance_pair_runs_both_commands_daily():
    svc = _unit_settings(UNITS / "xksproxy-key-maintenance.service")
    assert svc["Type"] == ["oneshot"]
    cmds = [c.split()[1:3] for c in svc["ExecStart"]]
    assert cmds == [["keys", "rotate-due"], ["keys", "destroy-due"]]
    timer = _unit_settings(UNITS / "xksproxy-key-maintenance.timer")
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["yes"]


def _service_env(state: Path) -> dict[str, str]:
    """What systemd gives the service: the unit's Environment= lines and little else (no
    PYTHONPATH into this checkout, no virtualenv of the test run)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(state),
        "XKSPROXY_STATE_DIR": str(state),
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": str(state),
    }  # PrivateTmp=: a /tmp of its own; here the state dir


def _mdwe_supported() -> bool:
    r = subprocess.run([sys.executable, str(HERE / "mdwe_exec.py"), sys.executable, "-c",
                        "import mmap; mmap.mmap(-1, 4096, prot=7)"],
                       capture_output=True, text=True)  # fmt: skip
    # prot=7 = READ|WRITE|EXEC: must be refused once W^X is on.
    return r.returncode != 0 and "PermissionError" in r.stderr


@pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to run the proxy as another user (setpriv)"
)
def test_proxy_serves_as_another_user_under_write_xor_execute_memory():
    """MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE (Linux >= 6.3, inherited by every
    worker) refuses the same W+X mappings. granian, SoftHSMv2, python-pkcs11 and cryptography must
    still start, serve and run AES-GCM. User=, UMask=0077 and the state dir as the only
    proxy-owned path come along."""
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3): cannot reproduce W^X here")
    uid = 10001
    root = Path(tempfile.mkdtemp(prefix="xksproxy-unit-"))
    try:
        root.chmod(0o755)
        xksproxy = make_runtime(root / "opt-xksproxy")  # ExecStart's /opt/xksproxy/.venv
        python = xksproxy.parent / "python"
        mdwe = root / "mdwe_exec.py"
        shutil.copy(HERE / "mdwe_exec.py", mdwe)
        mdwe.chmod(0o644)
        state = root / "var-lib-xksproxy"  # StateDirectory=: created 0700, owned by User=
        state.mkdir(mode=0o700)
        shutil.chown(state, uid, uid)
        env = _service_env(state)
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        init = subprocess.run(
            [*as_user, str(xksproxy), "init", "--state-dir", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stderr
        set_metrics_bind(state, f"127.0.0.1:{procs.free_port()}")
        port = procs.free_port()
        # The unit's ExecStart, under the unit's user, umask and W^X memory.
        argv = [*as_user, str(python), str(mdwe), "--umask", "077",
                str(xksproxy), "serve", "--state-dir", str(state),
                "--bind", f"127.0.0.1:{port}", "--workers", "2"]  # fmt: skip
        proxy = start(argv, env)
        try:
            assert http_get(f"{proxy.url}/ping")[0] == 200
            encrypt_decrypt(proxy.url, state)
            with open(f"/proc/{proxy.proc.pid}/status") as f:
                assert f"Uid:\t{uid}" in f.read()
        finally:
            assert proxy.stop() == 0, proxy.output()[-3000:]
        audit = state / "audit" / "xksproxy-audit.log"
        assert audit.stat().st_uid == uid and audit.stat().st_mode & 0o077 == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
