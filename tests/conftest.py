"""Shared fixtures: one SoftHSMv2 token for the whole test session.

``hsm_token`` provisions a private token in a pytest tmp dir (never ~/.local/state) with the demo
keys and the health test key (labels in tests/support/hsm_keys.py, importable as
``support.hsm_keys``: pyproject's pytest ``pythonpath`` puts tests/ on the path); ``hsm_config``
is an :class:`hsm.HsmConfig` for it (inline mode; use
``dataclasses.replace(hsm_config, mode="threaded", sessions=8)`` for variants); ``fault_shim``
gives a FaultShim (slow HSM / device errors) per test.

SOFTHSM2_CONF is read by SoftHSMv2 once per process, at ``C_Initialize``. Everything in-process
should therefore use this one token. A test that needs a token of its own must use it in a
*subprocess* (a server process: pass ``hsm_token.env()`` / write ``[hsm.env] SOFTHSM2_CONF``) or
make sure no pool and no admin call holds the module at the same time (the module is finalised
when the last pool/admin user releases it, and re-initialised with the new env on next use).
Processes other than this one may open the same token concurrently (SoftHSM's file store is
shared), e.g. a server started by a test with ``hsm_token.conf_path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.faultshim import FaultShim
from support.hsm_keys import DEMO_KEYS, KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL

from hsm import HsmConfig, admin
from hsm.softhsm import ProvisionedToken, provision


@pytest.fixture(scope="session")
def hsm_token(tmp_path_factory: pytest.TempPathFactory) -> ProvisionedToken:
    """A provisioned SoftHSMv2 token with demo keys, health key and the known-material key."""
    token = provision(tmp_path_factory.mktemp("softhsm"), "xksproxy-test")
    cfg = token.hsm_config()
    existing = {k.label for k in admin.list_keys(cfg)}
    for label, usage in DEMO_KEYS.items():
        if label not in existing:
            admin.create_key(cfg, label, usage)
    admin.ensure_health_key(cfg)
    if KNOWN_KEY_LABEL not in existing:
        admin.import_test_key(cfg, KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL)
    return token


@pytest.fixture(scope="session")
def hsm_config(hsm_token: ProvisionedToken) -> HsmConfig:
    """HsmConfig for ``hsm_token`` (name "softhsm-0", inline mode, 4 sessions)."""
    return hsm_token.hsm_config()


@pytest.fixture
def fault_shim(tmp_path: Path) -> Iterator[FaultShim]:
    """A fault-injection shim (tests/support/faultshim.py) with its control file in tmp_path:
    ``fault_shim.hsm_config(hsm_config)`` for in-process pools, ``.module_path`` + ``.env()``
    for a server's [[hsm]] table; ``fault_shim.set("device_error" | "delay" | "ok", ...)``."""
    shim = FaultShim.create(tmp_path)
    yield shim
    shim.set("ok")


# -- nothing left behind in /tmp (issue 17 item 14) ------------------------------------------------
_TMP_PATTERN = "xksproxy-*"
_tmp_before: set[str] = set()


def _tmp_entries() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob(_TMP_PATTERN)}


def pytest_sessionstart(session: pytest.Session) -> None:
    _tmp_before.update(_tmp_entries())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run that left new ``/tmp/xksproxy-*`` entries (lock files, shim caches, state):
    they pile up on every developer machine and CI runner (45 lock files after one run, once).
    Runtime files belong in the state/token directory or ``$XDG_RUNTIME_DIR``, test files in
    ``tmp_path``. Another test run on the same machine at the same time could be blamed for its
    own entries: the message lists them, so that is quick to tell."""
    left = sorted(_tmp_entries() - _tmp_before)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "the test run left these behind in the temp directory: " + ", ".join(left)
    if reporter is not None:
        reporter.write_sep("=", "leftover temp files", red=True)
        reporter.write_line(message)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
