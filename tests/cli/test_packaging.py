"""Packaging facts: every runtime dependency is used, and the config loader stays cheap to import.

Why: starlette was declared for months while no code imported it, and ``import xksproxy.config``
loaded python-pkcs11's C extension (~230 ms) for CLI commands that never touch an HSM.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("sigv4", "hsm", "xksproxy", "kmsemu")  # kmsemu/ counts once it exists

#: Distribution name -> the module it is imported as, where the two differ.
IMPORT_NAME = {"python-pkcs11": "pkcs11"}
#: Dependencies that no shipped module imports, each with the reason it is still needed.
#: (uvloop, which granian and hypercorn also select by name, is imported by
#: xksproxy/runtime/server.py for the hypercorn worker, so it is not listed.)
USED_WITHOUT_IMPORT: dict[str, str] = {
    "sniffio": "httpcore imports it on every request of kmsemu's client; when it is missing that "
    "is a failed import (a sys.path scan) per call",
}
#: Allowed unimported only until the package that will import it exists.
PENDING_IMPORTER = {"starlette": "kmsemu"}


def _runtime_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]]


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def test_every_runtime_dependency_is_imported_or_explained() -> None:
    imported = _imported_top_levels()
    unused = []
    for dist in _runtime_dependencies():
        module = IMPORT_NAME.get(dist, dist).replace("-", "_")
        if module in imported or dist in USED_WITHOUT_IMPORT:
            continue
        importer = PENDING_IMPORTER.get(dist)
        if importer is not None and not (ROOT / importer).exists():
            continue
        unused.append(dist)
    assert not unused, f"runtime dependencies no shipped code imports: {unused}"


def test_explanations_are_not_stale() -> None:
    """A dependency that is imported after all needs no excuse (keep the lists honest)."""
    imported = _imported_top_levels()
    deps = set(_runtime_dependencies())
    for dist in USED_WITHOUT_IMPORT:
        assert dist in deps, f"{dist} is no longer a dependency"
        assert dist.replace("-", "_") not in imported, f"{dist} is imported: drop its reason"
    for dist in PENDING_IMPORTER:
        assert dist in deps, f"{dist} is no longer a dependency"


def _loads(module: str, probe: str) -> bool:
    code = f"import sys, {module}; sys.exit({probe!r} in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 1


def test_environment_registry_imports_nothing_heavy() -> None:
    assert not _loads("xksproxy.environment", "pkcs11")
    assert not _loads("xksproxy.environment", "hsm")


def test_config_loader_does_not_load_pkcs11() -> None:
    assert not _loads("xksproxy.config", "pkcs11._pkcs11")
    assert not _loads("xksproxy.admin.cli", "pkcs11._pkcs11")
