"""The key store table: URI path -> logical key store, and per-store key/credential rules.

A key store (tenant) owns its path prefix, credentials, regions, keys and policy (its
:class:`~xksproxy.keys.policy.StorePolicy`, built with the table: once per load or reload).
Lookups on the hot path are plain dict hits built once at start (or on reload).

A store ``enabled = false`` -> 400 InvalidStateException (checked by the caller for every
operation except GetHealthStatus).  Which HSM object an external key id means is the store's
:class:`~xksproxy.keys.resolver.KeyResolver` (``store.resolver``), the only code that knows
labels.

A credential of another store is simply unknown here, so SigV4 verification fails with 401.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sigv4 import Credential
from xksproxy.config import Config, KeystoreConfig
from xksproxy.keys.policy import StorePolicy
from xksproxy.keys.resolver import CustodySource, KeyResolver
from xksproxy.xks.errors import InvalidStateException
from xksproxy.xks.uri import base_path


@dataclass(eq=False)
class KeyStore:
    """Runtime view of one ``[[keystore]]``."""

    config: KeystoreConfig
    resolver: KeyResolver
    _by_akid: dict[str, tuple[Credential, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_akid: dict[str, list[Credential]] = {}
        for cred in self.config.credentials:
            by_akid.setdefault(cred.access_key_id, []).append(cred)
        self._by_akid = {k: tuple(v) for k, v in by_akid.items()}
        self.name = self.config.name
        self.base_path = base_path(self.config.path_prefix)
        self.regions = self.config.regions or None
        compiled = self.config.policy
        self.policy = StorePolicy(compiled, self.name) if compiled is not None else None
        """The store's Cedar policy and decision cache; None: no policy (nothing to pay)."""

    def lookup(self, access_key_id: str) -> Sequence[Credential]:
        """Credentials with this access key id (the sigv4 ``lookup`` callback)."""
        return self._by_akid.get(access_key_id, ())

    def check_enabled(self) -> None:
        if not self.config.enabled:
            raise InvalidStateException(f"key store {self.name} is disabled")


def health_key_labels(config: Config) -> dict[str, str]:
    """Each backend's health test key label (never a KMS key), by backend name.

    A backend's members share one label (the config loader checks it); a store names a
    backend, so this is what :class:`KeyResolver` takes.
    """
    return {b: config.members(b)[0].health_key_label for b in config.backends}


class KeyStoreTable:
    """All key stores, indexed by their base path (:func:`xksproxy.xks.uri.base_path`)."""

    def __init__(self, config: Config, custody: CustodySource | None = None) -> None:
        """``custody``: where the resolvers read keys' lifecycle documents (the app's pools)."""
        health_labels = health_key_labels(config)
        ttl = config.custody.state_cache_s
        self.stores = [
            KeyStore(ks, KeyResolver(ks, health_labels, custody, ttl_s=ttl))
            for ks in config.keystores
        ]
        self.by_base_path = {s.base_path: s for s in self.stores}

    def for_base_path(self, base_path: str) -> KeyStore | None:
        return self.by_base_path.get(base_path)
