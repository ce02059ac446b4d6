"""The Cedar request model: entity types, actions and context attributes (one home for each).

One Cedar request per GetKeyMetadata / Encrypt / Decrypt call (GetHealthStatus is never subject
to policy):

- principal ``Xks::Principal::"<awsPrincipalArn>"`` ("" when the request carries none);
- action ``Xks::Action::"<XKS operation>"`` — the XKS API name (``OperationSpec.api_name``);
  the KMS operation that caused it (``GenerateDataKey``, ``ReEncrypt`` ...) is
  ``context.kmsOperation``, because KMS's set of operations is open-ended and a schema action
  per KMS operation would refuse a new one;
- resource ``Xks::Key::"<external key id>"``;
- context: :data:`CONTEXT_ATTRIBUTES`, every one a String, "" when absent (so policies never
  need ``has``, and the old deny rules' "missing field = empty string" carries over).

The schema that says the same for Cedar's validator is ``xksproxy.cedarschema`` next to this
module (a copy for operators is ``conf/policies/xksproxy.cedarschema``; a test keeps them equal).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

NAMESPACE = "Xks"
PRINCIPAL_TYPE = f"{NAMESPACE}::Principal"
KEY_TYPE = f"{NAMESPACE}::Key"
ACTION_TYPE = f"{NAMESPACE}::Action"
ACTIONS = ("GetKeyMetadata", "Encrypt", "Decrypt")
"""The XKS operations a policy decides (the API names of ``xksproxy.xks.operations``)."""

CONTEXT_ATTRIBUTES = (
    "kmsOperation",
    "awsPrincipalArn",
    "externalKeyId",
    "kmsKeyArn",
    "kmsViaService",
    "awsSourceVpc",
    "awsSourceVpce",
    "region",
    "keyState",
    "keyStore",
)
"""The context record, in the order :func:`request` takes the values."""

SCHEMA_FILE = "xksproxy.cedarschema"


def schema_text() -> str:
    """The shipped Cedar schema (package data)."""
    return files("xksproxy.authz").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


@cache
def schema() -> Any:
    """The parsed schema handle (``cedarpy.Schema``), parsed once per process."""
    import cedarpy  # deferred: a proxy without policies never loads cedarpy

    return cedarpy.Schema.from_str(schema_text())


def request(action: str, *values: str) -> dict[str, Any]:
    """The Cedar request for ``action`` and the :data:`CONTEXT_ATTRIBUTES` ``values``."""
    context = dict(zip(CONTEXT_ATTRIBUTES, values, strict=True))
    return {
        "principal": {"type": PRINCIPAL_TYPE, "id": context["awsPrincipalArn"]},
        "action": {"type": ACTION_TYPE, "id": action},
        "resource": {"type": KEY_TYPE, "id": context["externalKeyId"]},
        "context": context,
    }
