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

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.faultshim import FaultShim
from support.hsm_keys import DEMO_KEYS, KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL

from hsm import HsmConfig, admin
from hsm.softhsm import ProvisionedToken, provision

# No load balancer routes to the servers tests start: they stop at SIGTERM without the drain grace
# ([server] drain_grace_s, 10 s by default). Tests of the drain set their own (tests/fleet).
os.environ.setdefault("XKSPROXY_DRAIN_GRACE_S", "0")


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
