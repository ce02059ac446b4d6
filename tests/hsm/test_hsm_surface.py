"""The public surface of hsm/: exports pinned to ARCHITECTURE.md, cheap imports, the pool seam."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import hsm
from hsm import CryptoPool, HsmConfig, HsmPool, limits

ROOT = Path(__file__).resolve().parents[2]


def documented_exports(package: str) -> list[str]:
    """The names ARCHITECTURE.md lists after "Exports (`<package>.__all__`...):" in its section."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split(f"\n## {package}/", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"Exports \(`{package}\.__all__`[^)]*\):(.*?)\.\s", section, re.DOTALL)
    assert found, f'ARCHITECTURE.md section "{package}/" lists no exports'
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", found.group(1))


def test_all_matches_architecture_md() -> None:
    assert sorted(hsm.__all__) == sorted(documented_exports("hsm"))
    assert len(set(hsm.__all__)) == len(hsm.__all__)
    for name in hsm.__all__:
        assert hasattr(hsm, name), name


def test_py_typed_marker_is_present() -> None:
    assert (Path(hsm.__file__).parent / "py.typed").is_file()


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
