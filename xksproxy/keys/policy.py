"""Secondary authorization: a key store's Cedar policy decides each key operation.

The policy (a Cedar file per key store, ``[keystore] policy``, plus deprecated
``[[keystore.deny]]`` rules translated to ``forbid`` policies) is compiled once per (re)load by
:mod:`xksproxy.authz`; this module turns one request into a Cedar request (the model is
:mod:`xksproxy.authz.model`) and answers 403 AccessDeniedException when Cedar says Deny.

Where it runs (``xksproxy.service.dispatch``): after the key resolver, so the decision can see
the key's state, and before the before-dispatch hooks (quotas) and the HSM.  So an unknown key
is 404 and a key whose state refuses the operation is 400 whoever asks; the policy decides only
requests that would otherwise reach the HSM (and GetKeyMetadata).  GetHealthStatus never gets
here.

Cost: a store without a policy has ``store.policy is None`` and makes no cedarpy call at all.
Decisions are cached by the request's attributes (everything the Cedar request contains) in a
bounded LRU per :class:`StorePolicy`; a reload builds a new one, so the cache starts empty.

The caller's message never names the policy (it would tell a caller how to get around it); the
request log and the audit log do (``RequestContext.deny_rule``: the ``@id`` annotation of the
first forbid that matched, else its Cedar id ``policy<N>``; :data:`DEFAULT_DENY` when no permit
matched).
"""

from __future__ import annotations

from functools import lru_cache

from xksproxy.authz import CompiledPolicy, model
from xksproxy.keys.resolver import KeyRef
from xksproxy.xks.errors import AccessDeniedException
from xksproxy.xks.operations import OperationSpec
from xksproxy.xks.protocol import RequestMetadata

CACHE_SIZE = 4096
"""Decisions kept per key store (distinct principal/key/operation/VPC/... combinations)."""

DEFAULT_DENY = "default-deny"
"""What the logs name when Cedar denied because no ``permit`` matched."""

CALLER_MESSAGE = "access denied by the key store's authorization policy"


class PolicyDenied(AccessDeniedException):
    """AccessDenied that remembers which policy decided (for the logs, not the caller)."""

    def __init__(self, policy_id: str) -> None:
        super().__init__(CALLER_MESSAGE)
        self.policy_id = policy_id


def key_state(key: KeyRef) -> str:
    """The key state the policy sees (``context.keyState``): the lifecycle state
    (:data:`xksproxy.keys.lifecycle.STATES`, e.g. "active", "suspended", "compromised"), so a
    policy can tell a compromised key from a suspended one, which KMS's ENABLED/DISABLED cannot."""
    return key.state


class StorePolicy:
    """One key store's compiled policy plus its decision cache."""

    __slots__ = ("_decide", "_is_authorized", "compiled", "store")

    def __init__(self, compiled: CompiledPolicy, store: str, *, cache_size: int = CACHE_SIZE):
        import cedarpy  # already loaded by compiling the policy

        self._is_authorized = cedarpy.is_authorized
        self.compiled = compiled
        self.store = store
        self._decide = lru_cache(maxsize=cache_size)(self._evaluate)

    def check(
        self, key: KeyRef, operation: OperationSpec, meta: RequestMetadata, region: str | None
    ) -> None:
        """Raise :class:`PolicyDenied` unless the policy permits this request."""
        denied_by = self._decide(
            operation.api_name,
            meta.kms_operation,
            meta.aws_principal_arn or "",
            key.key_id,
            meta.kms_key_arn or "",
            meta.kms_via_service or "",
            meta.aws_source_vpc or "",
            meta.aws_source_vpce or "",
            region or "",
            key_state(key),
            self.store,
        )
        if denied_by is not None:
            raise PolicyDenied(denied_by)

    def _evaluate(self, action: str, *context: str) -> str | None:
        """Cedar's answer: None when allowed, else the id of the policy that decided."""
        result = self._is_authorized(
            model.request(action, *context), self.compiled.policy_set, self.compiled.entities
        )
        if result.allowed:
            return None
        return self.compiled.name(result.diagnostics.reasons) or DEFAULT_DENY

    def cache_info(self) -> tuple[int, int, int]:
        """(hits, misses, current size) of the decision cache."""
        info = self._decide.cache_info()
        return info.hits, info.misses, info.currsize
