"""Fixtures for operations tests: a fresh embedded state dir (real SoftHSMv2 token) per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
    """Run the real CLI in a subprocess, like an operator shell."""
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "xksproxy", *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
