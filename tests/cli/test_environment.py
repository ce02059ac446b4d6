"""The environment-variable registry is the one list: README, ``--help`` and the code agree.

Why: variable names used to be spelled in a dozen modules while the docs listed a different set.
Now :mod:`xksproxy.environment` is the registry, and these tests fail when a doc, the help text
or a module names a variable the registry does not know (or documents one differently).
"""

from __future__ import annotations

import re
from pathlib import Path

from xksproxy import environment
from xksproxy.admin.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"XKSPROXY_[A-Z0-9_]*[A-Z0-9]")
TABLE = re.compile(r"<!-- environment-table:.*?-->\n(.*?)<!-- /environment-table -->", re.DOTALL)
ROW = re.compile(r"^\| `(XKSPROXY_[A-Z0-9_]+)` \| (.*) \|$")

OPERATOR = {v.name: v.doc for v in environment.REGISTRY if v.audience == "operator"}
REGISTERED = {v.name for v in environment.REGISTRY}


def _readme_rows() -> dict[str, str]:
    match = TABLE.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md has no environment-table block"
    rows = {}
    for line in match.group(1).splitlines():
        row = ROW.match(line)
        if row:
            rows[row.group(1)] = row.group(2).replace("\\|", "|")
    return rows


def test_readme_table_is_the_registry() -> None:
    assert _readme_rows() == OPERATOR


def test_help_lists_exactly_the_operator_variables() -> None:
    text = build_parser().format_help()
    assert environment.operator_help() in text
    assert set(NAME.findall(text)) == set(OPERATOR)


def test_registry_names_are_unique_and_well_formed() -> None:
    names = [v.name for v in environment.REGISTRY]
    assert len(names) == len(set(names))
    assert all(NAME.fullmatch(n) for n in names)


def _scanned_files() -> list[Path]:
    """Shipped code and operator docs (kmsemu/ once it exists)."""
    files: list[Path] = []
    for package in ("xksproxy", "hsm", "sigv4", "kmsemu"):
        files += sorted((ROOT / package).rglob("*.py"))
    files += [ROOT / "README.md", ROOT / "deploy" / "OPERATIONS.md"]
    files += sorted(p for p in (ROOT / "conf").rglob("*") if p.is_file())
    return files


def test_every_variable_named_in_code_or_docs_is_registered() -> None:
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in _scanned_files()
        for name in NAME.findall(path.read_text(encoding="utf-8"))
        if name not in REGISTERED
    }
    assert not unknown, "not in xksproxy/environment.py:\n" + "\n".join(sorted(unknown))


def test_hsm_spells_its_variable_as_the_registry_does() -> None:
    """hsm/ cannot import xksproxy, so it spells its one variable itself: the same name."""
    source = (ROOT / "hsm" / "module.py").read_text(encoding="utf-8")
    assert f'"{environment.PKCS11_SERIALIZE.name}"' in source
