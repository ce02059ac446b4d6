"""Fixtures for the KMS emulator tests: real processes, shared per module to keep the suite fast.

``xksproxy init`` runs once per session (``proxy_template``); each module gets one proxy, one
emulator, one connected key store and one KMS key on the proxy's ``demo`` key. Tests that must
stop or restart a process start their own (see kmsemu_harness).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kmsemu_harness import Emulator, Proxy, create_store, start_emulator, start_proxy
from support.procs import REPO, product_env


@pytest.fixture(scope="session")
def proxy_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kmsemu-proxy-template") / "state"
    done = subprocess.run(
        [sys.executable, "-m", "xksproxy", "init", "--state-dir", str(d)],
        env=product_env(drop=["XKSPROXY_CONFIG", "XKSPROXY_STATE_DIR"]),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def proxy(proxy_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    p = start_proxy(proxy_template, tmp_path_factory.mktemp("kmsemu-proxy"))
    yield p
    p.proc.stop()


@pytest.fixture(scope="module")
def emulator(proxy: Proxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    e = start_emulator(tmp_path_factory.mktemp("kmsemu-emu") / "state", proxy.ca_file)
    yield e
    e.proc.stop()


@pytest.fixture(scope="module")
def kms(emulator: Emulator) -> Any:
    return emulator.client()


@pytest.fixture(scope="module")
def key_store_id(kms: Any, proxy: Proxy) -> str:
    """The module's key store on the proxy, connected."""
    ks_id = create_store(kms, proxy, "kmsemu-tests")
    kms.connect_custom_key_store(CustomKeyStoreId=ks_id)
    return ks_id


@pytest.fixture(scope="module")
def xks_key(kms: Any, key_store_id: str) -> dict[str, Any]:
    """KeyMetadata of the module's KMS key on the proxy's ``demo`` key."""
    return dict(
        kms.create_key(
            Origin="EXTERNAL_KEY_STORE",
            CustomKeyStoreId=key_store_id,
            XksKeyId="demo",
            Description="kmsemu tests",
        )["KeyMetadata"]
    )


@pytest.fixture(scope="module")
def local_key(kms: Any) -> dict[str, Any]:
    """KeyMetadata of a plain AWS_KMS key (no external key store)."""
    return dict(kms.create_key(Description="kmsemu tests, local")["KeyMetadata"])
