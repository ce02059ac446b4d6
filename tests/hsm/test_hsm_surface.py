"""hsm/ beyond its exports (tests/test_public_surface.py): cheap imports, the pool seam, limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hsm import CryptoPool, HsmConfig, HsmPool, limits

ROOT = Path(__file__).resolve().parents[2]


def test_importing_config_types_loads_no_pkcs11() -> None:
    """CLI commands that never touch the HSM must not pay for (or depend on) python-pkcs11."""
    script = (
        "import sys, hsm, hsm.limits, xksproxy.config\n"
        "from hsm import HsmPool\n"
        "loaded = sorted(m for m in sys.modules if m == 'pkcs11' or m.startswith('pkcs11.'))\n"
        "assert 'pkcs11._pkcs11' not in sys.modules, loaded\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_hsm_pool_is_a_crypto_pool(hsm_config: HsmConfig) -> None:
    """mypy checks the structure (hsm/pool.py); this checks the runtime-checkable Protocol."""
    pool: CryptoPool = HsmPool(hsm_config)
    assert isinstance(pool, CryptoPool)


def test_framed_aad_limit_is_the_largest_caller_aad_plus_its_framing() -> None:
    caller_aad, metadata = 2**16 - 1, 2**8 - 1
    assert limits.MAX_FRAMED_AAD_BYTES == 2 + caller_aad + 1 + metadata == 65793
    assert limits.IV_LENGTHS == (12, 16) and limits.IV_BYTES in limits.IV_LENGTHS
    assert limits.TAG_BYTES == 16
