"""Transport test helpers: a config writer and a real `xksproxy serve` process on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support.procs import StdoutLines

from xksproxy.runtime.tls import generate_self_signed

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROBE_FACTORY = "transport_probe_app:create_app"
AKID = "AKIAEXAMPLEEXAMPLE23"
SECRET = "x" * 43
_START_TIMEOUT_S = 60.0


def write_config(
    d: Path,
    *,
    client_ca: Path | None = None,
    subjects: Sequence[str] = (),
    regions: Sequence[str] = (),
) -> Path:
    """A minimal valid config (probe-app tests never touch the HSM) with a fresh server cert."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "secrets").mkdir(mode=0o700, exist_ok=True)
    for name, value in (("user.pin", "1234"), ("demo.secret", SECRET)):
        p = d / "secrets" / name
        p.write_text(value)
        p.chmod(0o600)
    generate_self_signed(d / "tls/server.crt", d / "tls/server.key", ["localhost", "127.0.0.1"])
    ca_line = f'client_ca_file = "{client_ca}"' if client_ca else ""
    subj = ", ".join(f'"{s}"' for s in subjects)
    regs = ", ".join(f'"{r}"' for r in regions)
    cfg = d / "xksproxy.toml"
    cfg.write_text(
        f"""
[server]
bind = "127.0.0.1:8443"
[tls]
cert_file = "tls/server.crt"
key_file = "tls/server.key"
{ca_line}
allowed_client_subjects = [{subj}]
[metrics]
bind = ""
[audit]
file = ""
[[hsm]]
name = "softhsm-0"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "xksproxy"
pin = "file:secrets/user.pin"
[[keystore]]
name = "demo"
path_prefix = "/demo"
hsm = "softhsm-0"
regions = [{regs}]
keys = ["demo"]
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo.secret"
"""
    )
    return cfg


class Served:
    """One `python -m xksproxy serve` process; `url` is known once it printed its ready line."""

    def __init__(
        self, args: Sequence[str], env: dict[str, str], log_dir: Path, *, cli: bool | None = None
    ) -> None:
        """``cli``: through `python -m xksproxy serve` (default for the real app) or straight
        to the launcher (default for probe apps, which have no HSM token to pre-check)."""
        if cli is None:
            cli = "XKSPROXY_APP_FACTORY" not in env
        self.stderr_path = log_dir / "serve.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            serve_command(cli) + list(args),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self._out = StdoutLines(self.proc.stdout)
        self.all_stdout = self._out.all  # every stdout line, also after start-up
        self.url = self._wait_listening()

    def _wait_listening(self) -> str:
        ready = "xksproxy: listening on "
        try:
            return self._out.wait_for(ready, _START_TIMEOUT_S).split(ready, 1)[1]
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"server not ready: {self.stderr()}") from None
        except EOFError:
            raise RuntimeError(f"server exited {self.proc.wait()}: {self.stderr()}") from None

    def more_lines(self, n: int) -> list[str]:
        """The next ``n`` stdout lines (e.g. the key store lines after the listening line)."""
        out = []
        for _ in range(n):
            try:
                out.append(self._out.wait_for("", _START_TIMEOUT_S))  # "": any line
            except EOFError:
                break
        return out

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def serve_command(cli: bool) -> list[str]:
    if cli:
        return [sys.executable, "-m", "xksproxy", "serve"]
    return [sys.executable, str(HERE / "transport_serve.py")]


def run_serve(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a serve that is expected to stop by itself (config error, failed start-up)."""
    return subprocess.run(
        serve_command("XKSPROXY_APP_FACTORY" not in env) + list(args),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def serve_env(probe: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env.pop("XKSPROXY_STATE_DIR", None)
    if probe:
        env["XKSPROXY_APP_FACTORY"] = PROBE_FACTORY
    env.update(extra or {})
    return env


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator:
    """Factory: ``serve_proc(config, *cli_args, probe=True, env=None) -> Served``; stops all."""
    started: list[Served] = []

    def start(config: Path, *args: str, probe: bool = True, env: dict | None = None) -> Served:
        s = Served(
            ["--config", str(config), "--bind", "127.0.0.1:0", *args],
            serve_env(probe, env),
            tmp_path,
        )
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
