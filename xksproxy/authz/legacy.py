"""``[[keystore.deny]]`` rules as Cedar ``forbid`` policies (deprecated; kept working).

The old semantics, kept exactly (``tests/policy/test_deny_translation.py`` proves it against
the old ``fnmatch`` evaluation): a rule denies when *every* field it names matches, a field the
request does not carry is the empty string, patterns are case-sensitive globs, and the first
matching rule (in file order) is the one the logs name.

Globs: ``*`` (any run of characters, also empty) becomes Cedar ``like``'s ``*``; every other
character is literal.  ``?`` and ``[...]`` have no Cedar equivalent, so a rule using them is
refused at load (:func:`unsupported_glob`) with a message saying how to write it in Cedar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FIELD_ATTRIBUTES: Mapping[str, str] = {
    "principal": "awsPrincipalArn",
    "operation": "kmsOperation",
    "key_arn": "kmsKeyArn",
    "via_service": "kmsViaService",
    "source_vpc": "awsSourceVpc",
    "source_vpce": "awsSourceVpce",
    "key_id": "externalKeyId",
}
"""Deny-rule field -> the Cedar context attribute holding the same value."""

DEFAULT_PERMIT_ID = "default-permit"
"""The ``permit`` a store with deny rules but no policy file gets (deny rules only forbid)."""


def cedar_string(value: str) -> str:
    """``value`` as a Cedar string literal.

    The same text is a ``like`` pattern whose only wildcard is ``*`` and whose every other
    character is literal (``\\`` and ``\\"`` are escapes in both)."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch.isprintable() and ch != "\u2028" and ch != "\u2029":
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def unsupported_glob(pattern: str) -> str | None:
    """Why ``pattern`` cannot be translated, or None."""
    if "?" in pattern or "[" in pattern:
        return (
            "'?' and '[...]' globs have no Cedar equivalent; use '*' or write the rule as a "
            "Cedar forbid policy in the store's policy file"
        )
    return None


def forbid_policy(name: str, fields: Mapping[str, str]) -> str:
    """One deny rule as a Cedar ``forbid`` policy whose ``@id`` is the rule's name."""
    conditions = " && ".join(
        f"context.{FIELD_ATTRIBUTES[field]} like {cedar_string(pattern)}"
        for field, pattern in fields.items()
    )
    head = f"@id({cedar_string(name)})\nforbid (principal, action, resource)"
    return f"{head}\nwhen {{ {conditions} }};\n"


def translate(rules: Sequence[tuple[str, Mapping[str, str]]], *, with_permit: bool) -> str:
    """Cedar text for ``rules`` (name, fields), in order; ``with_permit`` adds the
    ``default-permit`` policy a store without a policy file needs (Cedar denies by default)."""
    parts = []
    if with_permit:
        parts.append(f'@id("{DEFAULT_PERMIT_ID}")\npermit (principal, action, resource);\n')
    parts += [forbid_policy(name, fields) for name, fields in rules]
    return "\n".join(parts)
