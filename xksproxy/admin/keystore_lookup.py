"""Which key store an operator means by ``--keystore``: one rule for every command.

An operator names a store by its path prefix (``/demo``), its name (``demo``) or the URI path
KMS was given (``/demo/kms/xks/v1``). ``kms-config`` looks it up in a loaded
:class:`~xksproxy.config.Config`; ``credentials add|remove`` in the raw TOML they are about to
edit (the file may not even load yet). Both pass ``(name, path_prefix)`` pairs here, so the rule
and the error message cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from xksproxy.xks.uri import base_path


class KeystoreNotFound(LookupError):
    """No store matches; the message lists the stores there are."""


def keystore_index(stores: Sequence[tuple[str, str]], wanted: str) -> int:
    """Index of the first ``(name, path_prefix)`` that ``wanted`` names."""
    for i, (name, prefix) in enumerate(stores):
        if wanted in (prefix, name, base_path(prefix)):
            return i
    known = ", ".join(f"{name} ({prefix or '/'})" for name, prefix in stores)
    raise KeystoreNotFound(f"no key store with path prefix or name {wanted!r} (have: {known})")
