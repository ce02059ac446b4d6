"""The public surface of sigv4/: exports pinned to ARCHITECTURE.md, and a typed package."""

from __future__ import annotations

import re
from pathlib import Path

import sigv4

ROOT = Path(__file__).resolve().parents[2]


def documented_exports(package: str) -> list[str]:
    """The names ARCHITECTURE.md lists after "Exports (`<package>.__all__`...):" in its section."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split(f"\n## {package}/", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"Exports \(`{package}\.__all__`[^)]*\):(.*?)\.\s", section, re.DOTALL)
    assert found, f'ARCHITECTURE.md section "{package}/" lists no exports'
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", found.group(1))


def test_all_matches_architecture_md() -> None:
    assert sorted(sigv4.__all__) == sorted(documented_exports("sigv4"))
    assert len(set(sigv4.__all__)) == len(sigv4.__all__)
    for name in sigv4.__all__:
        assert hasattr(sigv4, name), name


def test_docstring_names_only_what_exists() -> None:
    """The package docstring's examples call exported names (it once named a missing one)."""
    doc = sigv4.__doc__ or ""
    assert "credentials_for" not in doc
    for name in ("verify", "sign", "SigV4Error"):
        assert name in doc and name in sigv4.__all__


def test_py_typed_marker_is_present() -> None:
    assert (Path(sigv4.__file__).parent / "py.typed").is_file()
