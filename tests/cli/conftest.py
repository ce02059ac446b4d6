"""Helpers for CLI tests: run `python -m xksproxy` as an operator would, in a private state dir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support import procs


def run_cli(
    *args: str, state_dir: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``support.procs.run_cli`` with ``XKSPROXY_STATE_DIR`` set to ``state_dir`` (or unset)."""
    if state_dir is None:
        env = procs.product_env(drop=["XKSPROXY_STATE_DIR"])
    else:
        env = procs.product_env({"XKSPROXY_STATE_DIR": str(state_dir)})
    return procs.run_cli(*args, env=env, timeout=timeout)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh, not yet existing state directory under the test's tmp dir."""
    return tmp_path / "state"


@pytest.fixture(scope="session")
def _initialised_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `xksproxy init`, cloned by `initialised` (init itself is tested on its own)."""
    d = tmp_path_factory.mktemp("template") / "state"
    r = run_cli("init", "--state-dir", str(d))
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def initialised(state_dir: Path, _initialised_template: Path) -> Path:
    """A private state dir as `xksproxy init` leaves it: a copy of the template with its paths
    (absolute in softhsm2.conf and xksproxy.toml) pointed at the copy. Much cheaper than a fresh
    init per test, and each test still owns its token and files."""
    shutil.copytree(_initialised_template, state_dir, symlinks=True)
    for name in ("softhsm2.conf", "xksproxy.toml"):
        f = state_dir / name
        f.write_text(f.read_text().replace(str(_initialised_template), str(state_dir)))
    return state_dir


@pytest.fixture
def cli():
    """The `run_cli` helper, as a fixture so test modules need not import conftest."""
    return run_cli
