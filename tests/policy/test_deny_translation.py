"""``[[keystore.deny]]`` rules translated to Cedar decide exactly as the old evaluator did.

The oracle below is the old ``xksproxy.keys.policy.first_match`` (fnmatch globs, every named
field must match, a missing field is the empty string, first match in order names the rule),
kept here verbatim as the specification the translation must reproduce.
"""

from __future__ import annotations

import itertools
import logging
from fnmatch import fnmatchcase
from functools import cache

import pytest

from xksproxy.authz import PolicyError, compile_policy
from xksproxy.authz.legacy import FIELD_ATTRIBUTES
from xksproxy.config import DENY_FIELDS, ConfigError, DenyRule, load_config
from xksproxy.keys.policy import PolicyDenied, StorePolicy
from xksproxy.keys.resolver import KeyRef
from xksproxy.xks import operations
from xksproxy.xks.protocol import RequestMetadata


def _old_first_match(rules: list[DenyRule], meta: RequestMetadata, key_id: str) -> str | None:
    values = {
        "principal": meta.aws_principal_arn or "",
        "operation": meta.kms_operation,
        "key_arn": meta.kms_key_arn or "",
        "via_service": meta.kms_via_service or "",
        "source_vpc": meta.aws_source_vpc or "",
        "source_vpce": meta.aws_source_vpce or "",
        "key_id": key_id,
    }
    for rule in rules:
        if all(fnmatchcase(values[f], p) for f, p in rule.fields.items()):
            return rule.name
    return None


RULE_SETS: dict[str, list[DenyRule]] = {
    "other-account": [DenyRule("other-account", {"principal": "arn:aws:iam::999999999999:*"})],
    "root": [DenyRule("no-root", {"principal": "arn:aws:iam::*:root"})],
    "and": [DenyRule("no-ebs-decrypt", {"operation": "Decrypt", "via_service": "ebs"})],
    "order": [
        DenyRule("first", {"key_id": "demo*"}),
        DenyRule("second", {"key_id": "*"}),
    ],
    "missing-is-empty": [DenyRule("no-via", {"via_service": ""})],
    "star-matches-missing": [DenyRule("any-via", {"via_service": "*"})],
    "vpc": [DenyRule("outside-vpc", {"source_vpc": "vpc-bad*", "source_vpce": "*"})],
    "literal-specials": [
        DenyRule('odd "name"', {"key_arn": 'arn:aws:kms:*:key/a"b\\c', "operation": "Enc*pt"})
    ],
    "case": [DenyRule("case", {"operation": "encrypt"})],
    "all-fields": [
        DenyRule(
            "all",
            {
                "principal": "arn:aws:iam::111122223333:role/*",
                "operation": "*Data*",
                "key_arn": "arn:aws:kms:eu-west-1:*",
                "via_service": "rds*",
                "source_vpc": "vpc-1*",
                "source_vpce": "vpce-*",
                "key_id": "*only",
            },
        )
    ],
}

REQUESTS: dict[str, tuple[RequestMetadata, str]] = {
    "plain": (RequestMetadata("r", "Encrypt", "arn:aws:iam::111122223333:role/App"), "demo"),
    "root": (RequestMetadata("r", "Decrypt", "arn:aws:iam::111122223333:root"), "k"),
    "other-account": (RequestMetadata("r", "Encrypt", "arn:aws:iam::999999999999:user/x"), "k"),
    "ebs-decrypt": (
        RequestMetadata("r", "Decrypt", "arn:aws:iam::1:role/a", "arn:aws:kms:x", "ebs"),
        "k",
    ),
    "ebs-encrypt": (RequestMetadata("r", "Encrypt", None, None, "ebs"), "k"),
    "nothing-optional": (RequestMetadata("r", "Decrypt"), "demo-decrypt-only"),
    "vpc": (RequestMetadata("r", "Decrypt", "p", None, None, "vpc-bad1", "vpce-1"), "k"),
    "vpc-no-vpce": (RequestMetadata("r", "Decrypt", "p", None, None, "vpc-bad1"), "k"),
    "specials": (
        RequestMetadata("r", "Encrypt", "p", 'arn:aws:kms:eu:key/a"b\\c'),
        "k",
    ),
    "specials-near": (RequestMetadata("r", "Encrypt", "p", 'arn:aws:kms:eu:key/a"b\\\\c'), "k"),
    "rich": (
        RequestMetadata(
            "r",
            "GenerateDataKey",
            "arn:aws:iam::111122223333:role/Db",
            "arn:aws:kms:eu-west-1:111122223333:key/1",
            "rds.amazonaws.com",
            "vpc-123",
            "vpce-9",
        ),
        "demo-encrypt-only",
    ),
}


@cache
def _policy(rule_set: str) -> StorePolicy:
    rules = RULE_SETS[rule_set]
    return StorePolicy(compile_policy(None, [(r.name, r.fields) for r in rules]), "demo")


@pytest.mark.parametrize(("rule_set", "request_name"), list(itertools.product(RULE_SETS, REQUESTS)))
def test_translated_rules_decide_as_before(rule_set, request_name):
    meta, key_id = REQUESTS[request_name]
    expected = _old_first_match(RULE_SETS[rule_set], meta, key_id)
    key = KeyRef("demo", key_id, "softhsm-0", key_id)
    try:
        _policy(rule_set).check(key, operations.ENCRYPT, meta, "eu-west-1")
        got = None
    except PolicyDenied as denied:
        got = denied.policy_id
        assert denied.status == 403 and denied.error_name == "AccessDeniedException"
        assert got not in denied.body().decode()  # the caller is not told which rule
    assert got == expected


def test_field_names_have_one_translation():
    assert set(FIELD_ATTRIBUTES) == DENY_FIELDS


def test_question_mark_and_brackets_are_refused_with_the_option_named():
    with pytest.raises(PolicyError) as info:
        compile_policy(None, [("ok", {"key_id": "*"}), ("q", {"principal": "arn:?"})])
    assert info.value.option == "deny[1].principal" and "Cedar" in info.value.message


def test_config_translates_with_a_warning(tmp_path, caplog):
    from service.service_helpers import write_config

    deny = '[[keystore.deny]]\nname = "no-root"\nprincipal = "*:root"\n'
    path = write_config(tmp_path, keystores=_store(deny))
    with caplog.at_level(logging.WARNING, logger="xksproxy.config"):
        cfg = load_config(path)
    assert cfg.keystores[0].policy is not None
    assert any(
        "deprecated" in r.getMessage() and "policy =" in r.getMessage() for r in caplog.records
    )
    bad = write_config(
        tmp_path, keystores=_store('[[keystore.deny]]\nname = "q"\nprincipal = "a?"\n')
    )
    with pytest.raises(ConfigError, match=r"deny\[0\]\.principal"):
        load_config(bad)


def _store(extra: str) -> str:
    from service.service_helpers import AKID

    return f"""
[[keystore]]
name = "demo"
path_prefix = "/demo"
keys = ["demo"]
{extra}
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo-1.secret"
"""
