"""The key resolver: (key store, external key id, operation[, version]) -> :class:`KeyRef`.

Why one place: which HSM object an external key id means is a rule of the key store (``keys``,
the ``"*"`` wildcard that never admits the health test key, ``key_labels``, ``disabled_keys``)
and of the key's lifecycle (versions, state); handlers never see a label they did not get from
here, and nothing else in the proxy knows how labels are made (:func:`version_label`).

Rules (in order):

1. an id not allowed by ``keys`` (explicitly, or ``"*"``: any valid id except the health test
   key's label), or an id/label containing ``#`` (version objects are never named directly) ->
   404 KeyNotFoundException, without asking the HSM;
2. the base label is ``key_labels[id]``, else the id itself; the backend is the store's ``hsm``;
3. the key's lifecycle document (:mod:`xksproxy.keys.custody_doc`, read from the HSM through the
   :data:`CustodySource` and cached per label for at most ``ttl_s`` <= 5 s) gives its versions
   and its effective state (:func:`xksproxy.keys.lifecycle.effective_state`); no document means
   version 0, active.  The state maps through :data:`xksproxy.keys.lifecycle.ANSWERS`:
   destroyed -> 404; pre-active / suspended / pending destruction -> ``DISABLED`` and
   Encrypt/Decrypt 400 InvalidStateException; deactivated / compromised -> ``ENABLED``,
   usage DECRYPT only, Encrypt 400 InvalidKeyUsageException;
4. an id in ``disabled_keys`` is ``DISABLED`` whatever its state (Encrypt/Decrypt -> 400
   InvalidStateException);
5. the version: Encrypt takes the newest *active* version, Decrypt the one its
   ``ciphertextMetadata`` names (``version=``; absent metadata = version 0) -- a version the key
   does not have -> 400 InvalidCiphertextException without an HSM decrypt (the document is
   re-read first if the cached one is older than ``REFRESH_MIN_AGE_S``: right after a rotation
   another worker may already have written that version) -- and GetKeyMetadata the newest.
   Version ``n`` lives in the HSM object :func:`version_label` ``(label, n)``.

So a transition made with ``xksproxy keys ...`` is in force on every worker of every proxy within
``ttl_s``, with no restart and no reload signal, and no HSM call per request for it.

**HSM members** (several HSMs behind one key store, high availability): ``KeyRef.backend``
names the *backend* (today the ``[[hsm]]`` name), not a member: the pool for a backend is a
``hsm.interface.CryptoPool`` that chooses a member below that seam.

The resolver's rules are immutable and built per key store with the table (a reload builds new
ones, with an empty cache).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from xksproxy.config import KeystoreConfig, valid_key_id
from xksproxy.keys import lifecycle
from xksproxy.keys.custody_doc import CustodyDocument, DocumentError, parse_document
from xksproxy.xks.errors import (
    InternalException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    InvalidStateException,
    KeyNotFoundException,
    XksError,
)
from xksproxy.xks.operations import OperationSpec

KeyStatus = Literal["ENABLED", "DISABLED"]
"""A key's state as the resolver knows it (GetKeyMetadata's ``keyStatus`` values)."""

CustodySource = Callable[[str, str, float], Awaitable[bytes | None]]
"""``(backend, label, deadline) -> the key's companion document or None`` (the app wires it to
``CryptoPool.custody`` of the backend's pool; the resolver itself stays HSM-agnostic)."""

MAX_STATE_CACHE_S: Final = 5.0
"""The longest a key's lifecycle state may be cached (a CLI change is in force within it)."""

REFRESH_MIN_AGE_S: Final = 0.5
"""A Decrypt naming a version the cached document lacks re-reads it if the entry is this old."""

VERSION_SEPARATOR: Final = "#"
"""Separates a label from its version suffix; never valid in an external key id."""


def version_label(label: str, version: int) -> str:
    """The HSM object holding ``version`` of the key whose version-0 label is ``label``."""
    return label if version == 0 else f"{label}{VERSION_SEPARATOR}v{version}"


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
    """The HSM object's label on that backend (of :attr:`version`)."""
    version: int = 0
    """The key version this operation uses (Encrypt writes it into the metadata)."""
    status: KeyStatus = "ENABLED"
    state: str = "active"
    """The lifecycle state (:data:`xksproxy.keys.lifecycle.STATES`), for policy and audit."""

    @property
    def enabled(self) -> bool:
        return self.status == "ENABLED"

    @property
    def decrypt_only(self) -> bool:
        """GetKeyMetadata reports ``keyUsage`` DECRYPT only (deactivated, compromised)."""
        return lifecycle.ANSWERS[self.state].decrypt_only


@dataclass(frozen=True, slots=True)
class _View:
    """What the hot path needs of a document, computed once when it is read (not per request)."""

    doc: CustodyDocument | None
    state: str
    """The stored state (the effective one too unless ``dated``)."""
    dated: bool
    """Activation or expiry date set: the effective state depends on the clock."""
    versions: frozenset[int]
    encrypt_version: int | None
    newest: int

    @staticmethod
    def of(doc: CustodyDocument) -> _View:
        active = doc.newest_active
        return _View(
            doc,
            doc.state,
            doc.activation_date is not None or doc.expiry_date is not None,
            frozenset(v.version for v in doc.versions),
            None if active is None else active.version,
            doc.newest.version,
        )


_DEFAULT_VIEW: Final = _View(None, "active", False, frozenset({0}), 0, 0)
"""A key without a lifecycle document: version 0, active."""
_CACHE_MAX: Final = 10000
_OUTCOME_ERRORS: dict[str, type[XksError]] = {
    "InvalidStateException": InvalidStateException,
    "InvalidKeyUsageException": InvalidKeyUsageException,
    "KeyNotFoundException": KeyNotFoundException,
}


class KeyResolver:
    """The key rules of one ``[[keystore]]``, with its keys' lifecycle state cache."""

    __slots__ = (
        "_cache",
        "_clock",
        "_config",
        "_custody",
        "_health_key_label",
        "_ttl_s",
        "_wildcard",
        "backend",
    )

    def __init__(
        self,
        config: KeystoreConfig,
        health_key_labels: Mapping[str, str],
        custody: CustodySource | None = None,
        *,
        ttl_s: float = MAX_STATE_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``health_key_labels``: each backend's health test key label (never a KMS key);
        ``custody``: where lifecycle documents come from (None: every key is version 0, active,
        e.g. for unit tests of the store rules)."""
        if not 0 <= ttl_s <= MAX_STATE_CACHE_S:
            raise ValueError(f"the state cache TTL must be 0..{MAX_STATE_CACHE_S} s")
        self._config = config
        self.backend = config.hsm
        """The backend this store's keys live on (GetHealthStatus reports on it)."""
        self._health_key_label = health_key_labels[self.backend]
        self._wildcard = "*" in config.keys
        self._custody = custody
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, _View]] = {}

    async def lookup(
        self, key_id: str, operation: OperationSpec, *, version: int | None = None, deadline: float
    ) -> KeyRef:
        """:meth:`resolve` with the key's lifecycle document (cached, else read from the HSM)."""
        label = self._label(key_id)
        if self._custody is None:
            return self._apply(key_id, label, operation, version, _DEFAULT_VIEW, None)
        view = await self._view(label, deadline)
        if operation.key_usage == "DECRYPT" and (version or 0) not in view.versions:
            # Ciphertext from a version this worker has not seen yet: another worker or proxy
            # may already encrypt with a version rotated in less than a TTL ago.  Read again
            # (at most once per REFRESH_MIN_AGE_S per key, so bogus metadata cannot make every
            # request an HSM read) before refusing.
            view = await self._view(label, deadline, max_age=REFRESH_MIN_AGE_S)
        return self._apply(key_id, label, operation, version, view, None)

    def resolve(
        self,
        key_id: str,
        operation: OperationSpec,
        *,
        version: int | None = None,
        document: CustodyDocument | None = None,
        now: datetime | None = None,
    ) -> KeyRef:
        """The key ``key_id`` names for ``operation``, or the XKS error that refuses it.

        ``version``: the key version a Decrypt's ``ciphertextMetadata`` names (None: absent);
        ``document``: the key's lifecycle document (None: version 0, active); ``now``: the time
        its dates are compared with (default: the current time).
        """
        label = self._label(key_id)
        view = _DEFAULT_VIEW if document is None else _View.of(document)
        return self._apply(key_id, label, operation, version, view, now)

    def _apply(
        self,
        key_id: str,
        label: str,
        operation: OperationSpec,
        version: int | None,
        view: _View,
        now: datetime | None,
    ) -> KeyRef:
        state = view.state
        if view.dated:  # only a document with dates needs the clock
            assert view.doc is not None
            state = lifecycle.effective_state(view.doc, now or datetime.now(UTC))
        answer = lifecycle.ANSWERS[state]
        if answer.key_status is None:
            raise KeyNotFoundException(f"external key {key_id} was destroyed")
        status: KeyStatus = answer.key_status
        if key_id in self._config.disabled_keys:
            status = "DISABLED"
            if operation.uses_key:
                raise InvalidStateException(f"external key {key_id} is disabled")
        usage = operation.key_usage
        if usage == "DECRYPT":
            if answer.decrypt != "ok":
                raise _OUTCOME_ERRORS[answer.decrypt](f"external key {key_id} is {state}")
            number = 0 if version is None else version
            if number not in view.versions:
                raise InvalidCiphertextException(
                    "ciphertextMetadata names a key version this key does not have"
                )
        elif usage == "ENCRYPT":
            if answer.encrypt != "ok":
                raise _OUTCOME_ERRORS[answer.encrypt](f"external key {key_id} is {state}")
            if view.encrypt_version is None:  # not reachable through the CLI; refuse, never guess
                raise InvalidStateException(f"external key {key_id} has no active version")
            number = view.encrypt_version
        else:
            number = view.newest
        return KeyRef(
            self._config.name,
            key_id,
            self.backend,
            label if number == 0 else version_label(label, number),
            number,
            status,
            state,
        )

    async def _view(self, label: str, deadline: float, max_age: float | None = None) -> _View:
        """The key's view from the cache, or read from the HSM when the entry expired (or, with
        ``max_age``, is older than that)."""
        assert self._custody is not None
        now = self._clock()
        cached = self._cache.get(label)
        if cached is not None:
            expires = cached[0]
            if max_age is not None:  # the entry was loaded at expires - ttl
                expires = min(expires, expires - self._ttl_s + max_age)
            if now < expires:
                return cached[1]
        try:
            raw = await self._custody(self.backend, label, deadline)
        except Exception:
            # A read that failed (e.g. a document being replaced: two objects for a moment) keeps
            # the previous document for at most one more TTL; without one the error stands.
            if cached is not None and now < cached[0] + self._ttl_s:
                return cached[1]
            raise
        try:
            view = _DEFAULT_VIEW if raw is None else _View.of(parse_document(raw, label))
        except DocumentError as exc:
            # The detail (label, offending value) is for the operator's log, where the app
            # writes the cause of every 500; the caller learns only that the key is unusable.
            raise InternalException("the key's lifecycle object in the HSM is not valid") from exc
        if self._ttl_s > 0:
            if len(self._cache) >= _CACHE_MAX:  # a wildcard store may see any number of ids
                self._cache = {k: v for k, v in self._cache.items() if now < v[0]}
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
            self._cache[label] = (now + self._ttl_s, view)
        return view

    def _label(self, key_id: str) -> str:
        label = self._config.key_labels.get(key_id, key_id)
        if VERSION_SEPARATOR in key_id or VERSION_SEPARATOR in label:
            raise KeyNotFoundException(
                f"external key {key_id} is not in key store {self._config.name}"
            )
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
