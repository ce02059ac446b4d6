"""The service's binding of each XKS operation (:mod:`xksproxy.xks.operations`) to its parser
and handler: the one table the router reads.

Why a table of bindings instead of an if-chain: each row is typed end to end (its parser returns
exactly the request its handler takes), so no cast, assert or ``type: ignore`` is needed, and a
new operation is one new row.  A row runs steps 7-9 of the request (see
:mod:`xksproxy.service.app`) for its kind of operation:

- :class:`KeyOperation` (GetKeyMetadata, Encrypt, Decrypt): key id shape, store enabled, parse,
  the key resolver, the store's Cedar policy (it sees the resolved key's state), before-dispatch
  hooks, then the handler on the key's pool;
- :class:`HealthOperation` (GetHealthStatus): parse, before-dispatch hooks, the cached answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from hsm.interface import CryptoPool
from xksproxy.config import valid_key_id
from xksproxy.keys.keystores import KeyStore
from xksproxy.keys.resolver import KeyRef
from xksproxy.observe.requestlog import RequestContext
from xksproxy.service import handlers
from xksproxy.xks import operations
from xksproxy.xks.errors import ValidationException
from xksproxy.xks.framing import peek_key_version
from xksproxy.xks.operations import OperationSpec
from xksproxy.xks.protocol import (
    DecryptRequest,
    HealthRequest,
    RequestMetadata,
    parse_decrypt,
    parse_encrypt,
    parse_health,
    parse_key_metadata,
)


class HasMetadata(Protocol):
    @property
    def metadata(self) -> RequestMetadata: ...


R = TypeVar("R", bound=HasMetadata)
R_contra = TypeVar("R_contra", contravariant=True)

Parser = Callable[[dict[str, Any], int], R]
"""(body document, the backend's ``max_plaintext_bytes``) -> the typed request."""


class KeyHandler(Protocol[R_contra]):
    def __call__(
        self, pool: CryptoPool, key: KeyRef, req: R_contra, *, deadline: float
    ) -> Awaitable[dict[str, Any]]: ...


class Services(Protocol):
    """What a binding needs from the app (:class:`~xksproxy.service.app.XksApp` provides it)."""

    def max_plaintext_bytes(self, store: KeyStore) -> int:
        """The plaintext limit of the store's backend."""
        ...

    def run_before_dispatch(self, ctx: RequestContext) -> None:
        """Run the before-dispatch hooks (they may raise an ``XksError``)."""
        ...

    def pool(self, backend: str) -> CryptoPool:
        """The started pool of ``backend``; an unavailable HSM if the app was never started."""
        ...

    def health_answer(self, store: KeyStore) -> dict[str, Any]:
        """The cached GetHealthStatus answer for ``store``."""
        ...


class Binding(Protocol):
    """One row of the table."""

    @property
    def spec(self) -> OperationSpec: ...

    async def run(
        self,
        app: Services,
        store: KeyStore,
        key_id: str | None,
        doc: dict[str, Any],
        ctx: RequestContext,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class KeyOperation(Generic[R]):
    """An operation on one external key."""

    spec: OperationSpec
    parse: Parser[R]
    handler: KeyHandler[R]
    key_version: Callable[[R], int | None] | None = None
    """Where the request names a key version (Decrypt: its ``ciphertextMetadata``)."""

    async def run(
        self,
        app: Services,
        store: KeyStore,
        key_id: str | None,
        doc: dict[str, Any],
        ctx: RequestContext,
    ) -> dict[str, Any]:
        if key_id is None or not valid_key_id(key_id):
            raise ValidationException(
                "externalKeyId in the URI must be 1-128 characters of A-Za-z0-9._-"
            )
        store.check_enabled()
        req = self.parse(doc, app.max_plaintext_bytes(store))
        version = self.key_version(req) if self.key_version is not None else None
        key = await store.resolver.lookup(key_id, self.spec, version=version, deadline=ctx.deadline)
        if key.state != "active":
            ctx.extra["keyState"] = key.state  # audit: e.g. a Decrypt with a compromised key
        if store.policy is not None:
            store.policy.check(key, self.spec, req.metadata, ctx.region)
        app.run_before_dispatch(ctx)
        return await self.handler(app.pool(key.backend), key, req, deadline=ctx.deadline)


@dataclass(frozen=True, slots=True)
class HealthOperation:
    """GetHealthStatus: no key, no policy, answered from the health cache."""

    spec: OperationSpec
    parse: Parser[HealthRequest]

    async def run(
        self,
        app: Services,
        store: KeyStore,
        key_id: str | None,
        doc: dict[str, Any],
        ctx: RequestContext,
    ) -> dict[str, Any]:
        self.parse(doc, app.max_plaintext_bytes(store))
        app.run_before_dispatch(ctx)
        return app.health_answer(store)


def _decrypt_key_version(req: DecryptRequest) -> int | None:
    return peek_key_version(req.ciphertext_metadata)


_HEALTH: Binding = HealthOperation(operations.HEALTH, parse_health)
_METADATA: Binding = KeyOperation(
    operations.METADATA, parse_key_metadata, handlers.get_key_metadata
)
_ENCRYPT: Binding = KeyOperation(operations.ENCRYPT, parse_encrypt, handlers.encrypt)
_DECRYPT: Binding = KeyOperation(
    operations.DECRYPT, parse_decrypt, handlers.decrypt, _decrypt_key_version
)

BINDINGS: dict[str, Binding] = {b.spec.name: b for b in (_HEALTH, _METADATA, _ENCRYPT, _DECRYPT)}
"""Every operation by its URI name; the same keys as :data:`xksproxy.xks.operations.OPERATIONS`."""
