"""The four XKS operations as data: the one table every wing reads.

Why pure data in the bottom layer: the router (service/), the request and audit logs and the
metrics (observe/) must agree on what an operation is called and what it does to a key, and
observe/ may not import the service.  Each row says what the URI calls the operation, what the
XKS API calls it, whether the URI names an external key, which key usage the HSM will demand
and how the audit trail classes it.  The service binds each row to its parser and handler in
:mod:`xksproxy.service.dispatch`; nothing here imports the HSM or the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AuditKind = Literal["health", "describe", "crypto"]
"""``health``: no key; ``describe``: reads a key's attributes; ``crypto``: uses the key."""


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """One XKS operation (spec section 4)."""

    name: str
    """The last URI segment: ``.../health`` or ``.../keys/<id>/<name>``."""
    api_name: str
    """The XKS API name (GetHealthStatus, GetKeyMetadata, Encrypt, Decrypt)."""
    takes_key: bool
    """The URI names an external key (``.../keys/<externalKeyId>/<name>``)."""
    key_usage: str | None
    """The usage the HSM must allow (``ENCRYPT``/``DECRYPT``); None when no key is used.

    An operation that uses the key also needs the key to be enabled (a disabled key may still be
    described by GetKeyMetadata)."""
    audit_kind: AuditKind

    @property
    def uses_key(self) -> bool:
        """Whether the HSM does cryptography with the key (then a disabled key is refused)."""
        return self.key_usage is not None


HEALTH = OperationSpec("health", "GetHealthStatus", False, None, "health")
METADATA = OperationSpec("metadata", "GetKeyMetadata", True, None, "describe")
ENCRYPT = OperationSpec("encrypt", "Encrypt", True, "ENCRYPT", "crypto")
DECRYPT = OperationSpec("decrypt", "Decrypt", True, "DECRYPT", "crypto")

OPERATIONS: dict[str, OperationSpec] = {op.name: op for op in (HEALTH, METADATA, ENCRYPT, DECRYPT)}
"""Every operation by its URI name (the router's table)."""
