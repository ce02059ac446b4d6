"""The key resolver: (key store, external key id, operation) -> :class:`KeyRef`.

Why one place: which HSM object an external key id means is a rule of the key store (``keys``,
the ``"*"`` wildcard that never admits the health test key, ``key_labels``, ``disabled_keys``),
and the next capabilities change exactly this rule.  Handlers never see a label they did not get
from here; nothing else in the proxy knows how labels are made.

Rules today (in order):

1. an id not allowed by ``keys`` (explicitly, or ``"*"``: any valid id except the health test
   key's label) -> 404 KeyNotFoundException, without asking the HSM;
2. the label is ``key_labels[id]``, else the id itself; the backend is the store's ``hsm``; the
   version is 0;
3. an id in ``disabled_keys`` is ``DISABLED``: GetKeyMetadata reports it, an operation that uses
   the key (``OperationSpec.uses_key``) -> 400 InvalidStateException.

What comes next, and where it plugs in (the signature is already shaped for it):

- **Key versions** (one external key -> several HSM objects, rotation).  ``resolve`` takes the
  operation and, for Decrypt, the version read from ``ciphertextMetadata``
  (:func:`xksproxy.xks.framing.peek_key_version`).  Encrypt will pick the newest *active*
  version, Decrypt the version the metadata names (also a retired one, so old ciphertext keeps
  decrypting), GetKeyMetadata the newest.  Each version's lifecycle state will be read from the
  HSM (an attribute on the object) and cached here for at most 5 s, so a state change takes
  effect within 5 s on every worker without an HSM call per request.  The HSM object of version
  ``n`` gets its label from this module only; ``KeyRef.version`` is what Encrypt writes into the
  metadata.
- **HSM members** (several HSMs behind one key store, high availability).  ``KeyRef.backend``
  names the *backend* (today the ``[[hsm]]`` name), not a member: the pool for a backend is a
  ``hsm.interface.CryptoPool`` that chooses a member below that seam, so the resolver, the
  handlers and admission stay as they are.

The resolver is immutable and built per key store with the table (a reload builds new ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from xksproxy.config import KeystoreConfig, valid_key_id
from xksproxy.xks.errors import InvalidStateException, KeyNotFoundException
from xksproxy.xks.operations import OperationSpec

KeyStatus = Literal["ENABLED", "DISABLED"]
"""A key's state as the resolver knows it (GetKeyMetadata's ``keyStatus`` values)."""


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One resolved key: what a handler may ask a pool to use, and nothing more."""

    keystore: str
    """The key store's name."""
    key_id: str
    """The external key id as KMS sent it."""
    backend: str
    """The backend whose pool holds the key (today the ``[[hsm]]`` name)."""
    label: str
    """The HSM object's label on that backend."""
    version: int = 0
    """The key version (0 until versions exist; see the module docstring)."""
    status: KeyStatus = "ENABLED"

    @property
    def enabled(self) -> bool:
        return self.status == "ENABLED"


class KeyResolver:
    """The key rules of one ``[[keystore]]``."""

    __slots__ = ("_config", "_health_key_label", "_wildcard", "backend")

    def __init__(self, config: KeystoreConfig, health_key_labels: Mapping[str, str]) -> None:
        """``health_key_labels``: each backend's health test key label (never a KMS key)."""
        self._config = config
        self.backend = config.hsm
        """The backend this store's keys live on (GetHealthStatus reports on it)."""
        self._health_key_label = health_key_labels[self.backend]
        self._wildcard = "*" in config.keys

    def resolve(
        self, key_id: str, operation: OperationSpec, *, version: int | None = None
    ) -> KeyRef:
        """The key ``key_id`` names for ``operation``, or the XKS error that refuses it.

        ``version`` is the key version a Decrypt's ``ciphertextMetadata`` names (None: newest /
        not given); there is one version today, so it does not change the answer yet.
        """
        label = self._label(key_id)
        status: KeyStatus = "DISABLED" if key_id in self._config.disabled_keys else "ENABLED"
        if status != "ENABLED" and operation.uses_key:
            raise InvalidStateException(f"external key {key_id} is disabled")
        return KeyRef(self._config.name, key_id, self.backend, label, 0, status)

    def _label(self, key_id: str) -> str:
        label = self._config.key_labels.get(key_id, key_id)
        if key_id in self._config.keys:
            return label
        if self._wildcard and label != self._health_key_label and valid_key_id(key_id):
            return label
        raise KeyNotFoundException(f"external key {key_id} is not in key store {self._config.name}")

    def serves_label(self, label: str) -> bool:
        """Whether some external key id of this store names the HSM object ``label``.

        For operators (``keys create`` says which stores can use a new key), so that the CLI
        does not re-implement the label rules.
        """
        if label in self._config.key_labels.values():
            return True
        if label in self._config.keys and label not in self._config.key_labels:
            return True
        return self._wildcard and label != self._health_key_label and valid_key_id(label)
