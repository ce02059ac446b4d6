"""The public surfaces of the library packages: exports pinned to ARCHITECTURE.md, typed packages.

Why: docstrings and docs drifted from code before (sigv4's docstring named a function that did
not exist). Each package's section in ARCHITECTURE.md lists its exports as
"Exports (`<package>.__all__`, ...): `A`, `B`, ...", and this test holds code and docs together.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def documented_exports(package: str) -> list[str]:
    """The names ARCHITECTURE.md lists after "Exports (`<package>.__all__`...):" in its section."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split(f"\n## {package}/", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"Exports \(`{package}\.__all__`[^)]*\):(.*?)\.\s", section, re.DOTALL)
    assert found, f'ARCHITECTURE.md section "{package}/" lists no exports'
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", found.group(1))


@pytest.mark.parametrize("package", ["sigv4", "hsm"])
def test_all_matches_architecture_md(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(documented_exports(package))
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("package", ["sigv4", "hsm", "xksproxy", "kmsemu"])
def test_py_typed_marker_is_present(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert (Path(module.__file__).parent / "py.typed").is_file()
