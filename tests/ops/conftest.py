"""Fixtures for operations tests: a fresh embedded state dir (real SoftHSMv2 token) per test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import procs


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """`xksproxy init` into the test's own tmp dir (demo store, demo keys, secrets 0600)."""
    from xksproxy.admin import embedded

    d = tmp_path / "state"
    embedded.init(d)
    return d


@pytest.fixture
def config_path(state: Path) -> Path:
    return state / "xksproxy.toml"


def run_cli(
    *args: str, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """``support.procs.run_cli`` with ``env`` added to this environment."""
    return procs.run_cli(*args, env=procs.product_env(env), timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
