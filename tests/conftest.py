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

Second PKCS#11 implementation: ``ock_token`` claims openCryptoki's system soft token for the
session (tests/support/ock_token.py says why it is system-wide and how it is left as found; the
fixture skips with the exact reason where it cannot be used). ``pkcs11_impl`` is an
``HsmConfig`` per implementation ("softhsm" = ``hsm_config``, "opencryptoki"), both with the demo
keys; ``gcm_impl`` is the same but skips an implementation whose token has no AES-GCM (the
proxy refuses such a token at start: tests/hsm/test_hsm_impls.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from support.faultshim import FaultShim
from support.hsm_keys import DEMO_KEYS, KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL
from support.ock_token import OckToken, Unavailable, claim

from hsm import HsmConfig, admin, module
from hsm.errors import HsmFailure
from hsm.softhsm import ProvisionedToken, provision

# No load balancer routes to the servers tests start: they stop at SIGTERM without the drain grace
# ([server] drain_grace_s, 10 s by default). Tests of the drain set their own (tests/fleet).
os.environ.setdefault("XKSPROXY_DRAIN_GRACE_S", "0")


def _populate(cfg: HsmConfig) -> None:
    """Demo keys, health key and the known-material key (each only if absent)."""
    existing = {k.label for k in admin.list_keys(cfg)}
    for label, usage in DEMO_KEYS.items():
        if label not in existing:
            admin.create_key(cfg, label, usage)
    admin.ensure_health_key(cfg)
    if KNOWN_KEY_LABEL not in existing:
        admin.import_test_key(cfg, KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL)


@pytest.fixture(scope="session")
def hsm_token(tmp_path_factory: pytest.TempPathFactory) -> ProvisionedToken:
    """A provisioned SoftHSMv2 token with demo keys, health key and the known-material key."""
    token = provision(tmp_path_factory.mktemp("softhsm"), "xksproxy-test")
    _populate(token.hsm_config())
    return token


@pytest.fixture(scope="session")
def hsm_config(hsm_token: ProvisionedToken) -> HsmConfig:
    """HsmConfig for ``hsm_token`` (name "softhsm-0", inline mode, 4 sessions)."""
    return hsm_token.hsm_config()


@pytest.fixture(scope="session")
def ock_token() -> Iterator[OckToken]:
    """openCryptoki's soft token, initialised for this session and put back as found after it."""
    try:
        token = claim()
    except Unavailable as exc:
        pytest.skip(f"openCryptoki soft token unavailable: {exc}")
    try:
        _populate(token.hsm_config())
        yield token
    finally:
        token.restore()


PKCS11_IMPLS = ("softhsm", "opencryptoki")


@pytest.fixture(scope="session", params=PKCS11_IMPLS)
def pkcs11_impl(request: pytest.FixtureRequest) -> HsmConfig:
    """An HsmConfig (demo keys, health key) per PKCS#11 implementation."""
    if request.param == "softhsm":
        return cast(HsmConfig, request.getfixturevalue("hsm_config"))
    return cast(OckToken, request.getfixturevalue("ock_token")).hsm_config()


def missing_aes_gcm(cfg: HsmConfig) -> str | None:
    """The product's own refusal message if ``cfg``'s token lacks AES-GCM, else None."""
    mod = module.acquire(cfg.module, cfg.env)
    try:
        mod.require_aes_gcm(mod.find_token(cfg.token_label))
    except HsmFailure as exc:
        return exc.message
    finally:
        module.release(mod)
    return None


@pytest.fixture(scope="session")
def gcm_impl(pkcs11_impl: HsmConfig) -> HsmConfig:
    """``pkcs11_impl``, skipped (with the module's own words) where the token has no AES-GCM."""
    reason = missing_aes_gcm(pkcs11_impl)
    if reason is not None:
        pytest.skip(f"{pkcs11_impl.name}: {reason}")
    return pkcs11_impl


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
    return {p.name for p in Path(tempfile.gettempdir()).glob(_TMP_PATTERN)}


_runtime_dir: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Also give the session (and every server it starts) a private ``$XDG_RUNTIME_DIR`` when
    the environment has none (CI, root shells): tokens without a directory of their own, such
    as openCryptoki's, keep their start-up lock there (hsm/startup.py), as on a login session,
    instead of in the temp directory. Removed at the end of the session."""
    _tmp_before.update(_tmp_entries())
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = tempfile.mkdtemp(prefix="pytest-runtime-")
        os.environ["XDG_RUNTIME_DIR"] = path
        _runtime_dir.append(path)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run that left new ``/tmp/xksproxy-*`` entries (lock files, shim caches, state):
    they pile up on every developer machine and CI runner (45 lock files after one run, once).
    Runtime files belong in the state/token directory or ``$XDG_RUNTIME_DIR``, test files in
    ``tmp_path``. Another test run on the same machine at the same time could be blamed for its
    own entries: the message lists them, so that is quick to tell."""
    for path in _runtime_dir:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("XDG_RUNTIME_DIR", None)
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
