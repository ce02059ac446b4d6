"""Fixtures for the transport tests (helpers live in transport_support so tests can import them)."""

from transport_support import serve_proc  # noqa: F401  (pytest fixture)
