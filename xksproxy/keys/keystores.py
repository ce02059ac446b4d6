"""The key store table: URI path -> logical key store, and per-store key/credential rules.

A key store (tenant) owns its path prefix, credentials, regions, keys and policy.  Lookups on the
hot path are plain dict hits built once at start (or on reload).

Key resolution for an external key id, in order:
1. not allowed by ``keys`` (explicitly, or ``"*"`` which never admits the health test key)
   -> 404 KeyNotFoundException (the HSM is not asked);
2. store ``enabled = false`` -> 400 InvalidStateException (checked by the caller for every
   operation except GetHealthStatus);
3. id in ``disabled_keys`` -> GetKeyMetadata reports DISABLED, Encrypt/Decrypt answer 400
   InvalidStateException.

A credential of another store is simply unknown here, so SigV4 verification fails with 401.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sigv4 import Credential
from xksproxy.config import Config, KeystoreConfig, valid_key_id
from xksproxy.xks.errors import InvalidStateException, KeyNotFoundException
from xksproxy.xks.uri import base_path


@dataclass(eq=False)
class KeyStore:
    """Runtime view of one ``[[keystore]]``."""

    config: KeystoreConfig
    health_key_label: str
    _by_akid: dict[str, tuple[Credential, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_akid: dict[str, list[Credential]] = {}
        for cred in self.config.credentials:
            by_akid.setdefault(cred.access_key_id, []).append(cred)
        self._by_akid = {k: tuple(v) for k, v in by_akid.items()}
        self.name = self.config.name
        self.base_path = base_path(self.config.path_prefix)
        self.regions = self.config.regions or None
        self.hsm = self.config.hsm
        self._wildcard = "*" in self.config.keys

    def lookup(self, access_key_id: str) -> Sequence[Credential]:
        """Credentials with this access key id (the sigv4 ``lookup`` callback)."""
        return self._by_akid.get(access_key_id, ())

    def label_for(self, key_id: str) -> str:
        """HSM label for an allowed external key id, else KeyNotFoundException."""
        label = self.config.key_labels.get(key_id, key_id)
        if key_id in self.config.keys:
            return label
        if self._wildcard and label != self.health_key_label and valid_key_id(key_id):
            return label
        raise KeyNotFoundException(f"external key {key_id} is not in key store {self.name}")

    def is_disabled(self, key_id: str) -> bool:
        return key_id in self.config.disabled_keys

    def check_enabled(self) -> None:
        if not self.config.enabled:
            raise InvalidStateException(f"key store {self.name} is disabled")


class KeyStoreTable:
    """All key stores, indexed by their base path (:func:`xksproxy.xks.uri.base_path`)."""

    def __init__(self, config: Config) -> None:
        health_labels = {h.name: h.health_key_label for h in config.hsms}
        self.stores = [KeyStore(ks, health_labels[ks.hsm]) for ks in config.keystores]
        self.by_base_path = {s.base_path: s for s in self.stores}

    def for_base_path(self, base_path: str) -> KeyStore | None:
        return self.by_base_path.get(base_path)
