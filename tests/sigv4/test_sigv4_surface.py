"""sigv4/ beyond its exports (tests/test_public_surface.py): the docstring names what exists."""

from __future__ import annotations

import sigv4


def test_docstring_names_only_what_exists() -> None:
    """The package docstring's examples call exported names (it once named a missing one)."""
    doc = sigv4.__doc__ or ""
    assert "credentials_for" not in doc
    for name in ("verify", "sign", "SigV4Error"):
        assert name in doc and name in sigv4.__all__
