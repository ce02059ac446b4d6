"""Policy files at load: schema validation with file and line, doctor, serve, the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest
from service.service_helpers import AKID, write_config
from support.procs import run_cli

from xksproxy.admin.doctor import FAIL, OK, WARN, run_checks
from xksproxy.authz import compile_policy, model
from xksproxy.config import ConfigError, load_config
from xksproxy.keys.keystores import KeyStoreTable

REPO = Path(__file__).resolve().parents[2]

GOOD = """// a comment; with a semicolon
@id("allow")
permit (principal, action, resource);
"""
UNKNOWN_ATTRIBUTE = (
    GOOD
    + """
@id("typo")
forbid (principal, action, resource)
when { context.sourceVpc == "vpc-1" };
"""
)
NOT_CEDAR = (
    GOOD + '\n@id("broken")\npermit (principal, action, resource) when { context.region == };\n'
)


def _config(tmp_path: Path, policy_text: str | None, extra: str = "") -> Path:
    policy = ""
    if policy_text is not None:
        (tmp_path / "policies").mkdir(exist_ok=True)
        (tmp_path / "policies" / "demo.cedar").write_text(policy_text)
        policy = 'policy = "policies/demo.cedar"'
    return write_config(
        tmp_path,
        keystores=f"""
[[keystore]]
name = "demo"
path_prefix = "/demo"
keys = ["demo"]
{policy}
{extra}
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo-1.secret"
""",
    )


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        (UNKNOWN_ATTRIBUTE, 5, "sourceVpc"),
        (NOT_CEDAR, 5, "not a valid Cedar policy"),
        (GOOD + '@id("allow")\npermit (principal, action, resource);\n', 4, "used twice"),
        ("permit (principal is Xks::User, action, resource);\n", 1, "Xks::User"),
    ],
)
def test_invalid_policy_is_refused_naming_file_and_line(tmp_path, text, line, what):
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith("keystore[0].policy: ")
    assert f"{tmp_path / 'policies' / 'demo.cedar'}:{line}:" in message and what in message


def test_missing_policy_file_is_a_config_error(tmp_path):
    path = _config(tmp_path, None, 'policy = "policies/absent.cedar"')
    with pytest.raises(ConfigError, match=r"keystore\[0\]\.policy: .*absent\.cedar: cannot read"):
        load_config(path)


def test_serve_refuses_an_invalid_policy_with_exit_2(tmp_path):
    path = _config(tmp_path, UNKNOWN_ATTRIBUTE)
    done = run_cli("serve", "--config", str(path), "--bind", "127.0.0.1:1", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "demo.cedar:5" in done.stderr and "sourceVpc" in done.stderr


def test_doctor_flags_an_invalid_policy_and_reports_a_valid_one(tmp_path):
    bad = run_checks(_config(tmp_path, UNKNOWN_ATTRIBUTE), hsm=False)
    row = next(c for c in bad.checks if c.name == "configuration")
    assert row.status == FAIL and "demo.cedar:5" in row.detail and bad.failed
    good = run_checks(_config(tmp_path, GOOD), hsm=False)
    row = next(c for c in good.checks if c.name == "policy demo")
    assert row.status == OK and "demo.cedar" in row.detail
    deny = '[[keystore.deny]]\nname = "no-root"\nprincipal = "*:root"\n'
    legacy = run_checks(_config(tmp_path, None, deny), hsm=False)
    row = next(c for c in legacy.checks if c.name == "policy demo")
    assert row.status == WARN and "deprecated" in row.detail


def test_a_store_without_policy_never_loads_cedar(tmp_path):
    import subprocess
    import sys

    path = _config(tmp_path, None)
    code = (
        "import sys\nfrom xksproxy.config import load_config\n"
        "from xksproxy.keys.keystores import KeyStoreTable\n"
        f"t = KeyStoreTable(load_config({str(path)!r}))\n"
        "assert t.stores[0].policy is None\nassert 'cedarpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_reload_builds_a_fresh_decision_cache(tmp_path):
    from xksproxy.keys.resolver import KeyRef
    from xksproxy.xks import operations
    from xksproxy.xks.protocol import RequestMetadata

    path = _config(tmp_path, GOOD)
    store = KeyStoreTable(load_config(path)).stores[0]
    meta = RequestMetadata("r", "Encrypt", "p")
    for _ in range(3):
        store.policy.check(
            KeyRef("demo", "demo", "softhsm-0", "demo"), operations.ENCRYPT, meta, "r"
        )
    assert store.policy.cache_info() == (2, 1, 1)
    again = KeyStoreTable(load_config(path)).stores[0]
    assert again.policy.cache_info() == (0, 0, 0)
    assert again.policy.compiled == store.policy.compiled  # equal source: reload sees no change


def test_shipped_schema_copy_and_sample_policy():
    shipped = (REPO / "conf" / "policies" / "xksproxy.cedarschema").read_text()
    assert shipped == model.schema_text(), "conf/policies/xksproxy.cedarschema is a copy"
    sample = compile_policy(REPO / "conf" / "policies" / "demo.cedar")
    assert "no-account-root" in sample.ids.values()
    conf = (REPO / "conf" / "xksproxy.toml").read_text()
    assert '# policy = "policies/demo.cedar"' in conf


def test_a_policy_id_clashing_with_a_deny_rule_name_is_refused(tmp_path):
    deny = '[[keystore.deny]]\nname = "allow"\nprincipal = "*:root"\n'
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, GOOD, deny))
    message = info.value.message
    assert "used twice" in message and "demo.cedar:2" in message and "deny" in message


def test_templates_are_refused_and_a_policy_without_permit_is_warned(tmp_path):
    template = GOOD + "\npermit (principal == ?principal, action, resource);\n"
    with pytest.raises(ConfigError, match=r"demo\.cedar:5: a template"):
        load_config(_config(tmp_path, template))
    report = run_checks(
        _config(tmp_path, '@id("x")\nforbid (principal, action, resource);\n'), hsm=False
    )
    row = next(c for c in report.checks if c.name == "policy demo")
    assert row.status == WARN and "every key operation is denied" in row.detail


def test_policy_sees_the_key_state(tmp_path):
    from xksproxy.keys.policy import PolicyDenied
    from xksproxy.keys.resolver import KeyRef
    from xksproxy.xks import operations
    from xksproxy.xks.protocol import RequestMetadata

    text = (
        GOOD
        + '@id("no-compromised")\nforbid (principal, action, resource)\n'
        + 'when { context.keyState == "compromised" };\n'
    )
    store = KeyStoreTable(load_config(_config(tmp_path, text))).stores[0]
    meta = RequestMetadata("r", "DescribeKey", "p")
    store.policy.check(KeyRef("demo", "demo", "h", "demo"), operations.METADATA, meta, "r")
    suspended = KeyRef("demo", "demo", "h", "demo", status="DISABLED", state="suspended")
    store.policy.check(suspended, operations.METADATA, meta, "r")  # only "compromised" is denied
    with pytest.raises(PolicyDenied) as info:
        compromised = KeyRef("demo", "demo", "h", "demo", state="compromised")
        store.policy.check(compromised, operations.METADATA, meta, "r")
    assert info.value.policy_id == "no-compromised"
