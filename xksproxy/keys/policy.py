"""Secondary authorization: per-key-store deny rules on request metadata.

A rule matches when *every* field it names matches the request (shell-style globs via
``fnmatch.fnmatchcase``, case-sensitive).  Rules are evaluated in order; the first match denies
with 403 AccessDeniedException and the request log records the rule's name.  A field the request
does not carry (e.g. no ``kmsViaService``) is treated as the empty string, so ``"*"`` matches it
and any non-empty literal does not.
GetHealthStatus is never subject to policy (the caller does not call :func:`check`).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from xksproxy.config import DenyRule
from xksproxy.xks.errors import AccessDeniedException
from xksproxy.xks.protocol import RequestMetadata


def _field_values(meta: RequestMetadata, key_id: str) -> dict[str, str]:
    return {
        "principal": meta.aws_principal_arn or "",
        "operation": meta.kms_operation,
        "key_arn": meta.kms_key_arn or "",
        "via_service": meta.kms_via_service or "",
        "source_vpc": meta.aws_source_vpc or "",
        "source_vpce": meta.aws_source_vpce or "",
        "key_id": key_id,
    }


def first_match(rules: list[DenyRule], meta: RequestMetadata, key_id: str) -> DenyRule | None:
    """The first rule matching this request, or ``None``."""
    if not rules:
        return None
    values = _field_values(meta, key_id)
    for rule in rules:
        if all(fnmatchcase(values[f], pattern) for f, pattern in rule.fields.items()):
            return rule
    return None


class PolicyDenied(AccessDeniedException):
    """AccessDenied that remembers which rule denied (for the request log, not the caller)."""

    def __init__(self, rule: DenyRule) -> None:
        super().__init__(f"denied by key store policy rule {rule.name}")
        self.rule_name = rule.name


def check(rules: list[DenyRule], meta: RequestMetadata, key_id: str) -> None:
    """Raise :class:`PolicyDenied` if a deny rule matches."""
    rule = first_match(rules, meta, key_id)
    if rule is not None:
        raise PolicyDenied(rule)
