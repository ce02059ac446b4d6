"""Fixtures for operations tests: a fresh embedded state dir (real SoftHSMv2 token) per test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import procs


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """`xksproxy init` into the test's own tmp dir (demo store, demo keys, secrets 0600)."""
    from xksproxy import embedded

    d = tmp_path / "state"
    embedded.init(d)
    return d


@pytest.fixture
def config_path(state: Path) -> Path:
    return state / "xksproxy.toml"


def run_cli(*args: str, timeout: float = 60, env: dict | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``support.procs.run_cli`` with ``env`` added to this environment."""
    return procs.run_cli(*args, env=procs.product_env(env), timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


# -- config editing helpers (text appended/replaced per conf/xksproxy.toml) ----------------------
def set_option(config_path: Path, section: str, key: str, value: str) -> None:
    """Replace ``key = ...`` inside ``[section]`` (first occurrence after the header)."""
    lines = config_path.read_text().splitlines(keepends=True)
    in_section = False
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("["):
            in_section = s in (f"[{section}]", f"[[{section}]]")
            continue
        if in_section and s.split("=", 1)[0].strip() == key:
            lines[i] = f"{key} = {value}\n"
            config_path.write_text("".join(lines))
            return
    raise KeyError(f"{section}.{key} not in {config_path}")


def add_store(config_path: Path, name: str, prefix: str, *, rate: float = 0, burst: int = 0):
    """Append a key store using the demo keys, with its own fresh credential; returns it."""
    import sigv4

    cred = sigv4.generate_credential()
    secret_file = config_path.parent / "secrets" / f"{name}-1.secret"
    secret_file.write_text(cred.secret + "\n")
    secret_file.chmod(0o600)
    with config_path.open("a") as fh:
        fh.write(f"""
[[keystore]]
name = "{name}"
path_prefix = "{prefix}"
hsm = "softhsm-0"
keys = ["demo"]
[keystore.quota]
rate = {rate}
burst = {burst}

[[keystore.credentials]]
access_key_id = "{cred.access_key_id}"
secret = "file:{secret_file}"
""")
    return cred


def demo_credential(config_path: Path):
    from xksproxy.config import load_config

    return load_config(config_path, env={}).keystores[0].credentials[0]
