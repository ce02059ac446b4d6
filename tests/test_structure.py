"""The shape of the code base: package boundaries, wings and one home per rule (issue 11).

These are the checks a reviewer would otherwise repeat by hand on every change: they read the
source with ``ast`` (nothing is imported), so they are cheap and cannot be fooled by lazy imports.

- ``sigv4`` and ``hsm`` import nothing of ``xksproxy`` (or ``kmsemu``), nor each other.
- ``kmsemu`` talks to proxies over HTTP only: it imports ``sigv4`` and never ``xksproxy``/``hsm``.
- Inside ``xksproxy`` each wing imports only the wings below it (:data:`LAYERS`).
- The XKS API root literal lives in exactly one module.
- No class forwards attributes with ``__getattr__`` (a new pool method must not skip admission).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and any layer before it.
LAYERS: list[set[str]] = [
    {"environment", "bind", "fsutil", "xks", "authz"},
    {"config"},
    {"observe"},
    {"keys"},
    {"service"},
    {"runtime"},
    {"admin"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
TOP_LEVEL = {"__init__", "__main__"}  # the package's own entry files may import anything


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name ``path`` imports (top level, functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _wing_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "xksproxy" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("sigv4", ("xksproxy", "hsm", "kmsemu")),
        ("hsm", ("xksproxy", "sigv4", "kmsemu")),
        ("kmsemu", ("xksproxy", "hsm")),
    ],
)
def test_independent_packages_stay_independent(package, forbidden):
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ is not in this tree")
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _py_files(package)
        for line, name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert bad == []


def test_every_wing_is_ranked():
    wings = {p.stem for p in (ROOT / "xksproxy").glob("*.py")} - TOP_LEVEL
    wings |= {p.name for p in (ROOT / "xksproxy").iterdir() if (p / "__init__.py").exists()}
    assert wings - RANK.keys() == set(), "a new module or wing needs a place in LAYERS"


def test_wings_import_only_wings_below_them():
    bad = []
    for path in _py_files("xksproxy"):
        rel = path.relative_to(ROOT / "xksproxy")
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own in TOP_LEVEL:
            continue
        for line, name in _imports(path):
            other = _wing_of(name)
            if other is None or other not in RANK:
                continue
            if RANK[other] > RANK[own]:
                bad.append(f"xksproxy/{rel}:{line}: {own} imports {name} (a higher wing)")
    assert sorted(set(bad)) == []


def test_api_root_literal_has_one_home():
    homes = [
        str(path.relative_to(ROOT))
        for path in _py_files("xksproxy")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "/kms/xks/v1" in node.value
        and not _is_docstring_text(node.value)
    ]
    assert homes == ["xksproxy/xks/uri.py"]


def _is_docstring_text(value: str) -> bool:
    # Prose mentioning the path (docstrings, help texts) is not a second home for the rule.
    return " " in value.strip()


@pytest.mark.parametrize("package", ["sigv4", "hsm", "xksproxy", "kmsemu"])
def test_no_getattr_forwarding(package):
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ is not in this tree")
    bad = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _py_files(package)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "__getattr__"
    ]
    assert bad == []


def test_no_type_ignore_without_a_code():
    pattern = re.compile(r"#\s*type:\s*ignore(?!\[)")
    bad = [
        f"{path.relative_to(ROOT)}:{i}"
        for package in ("sigv4", "hsm", "xksproxy", "kmsemu", "loadtest")
        for path in _py_files(package)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert bad == []
