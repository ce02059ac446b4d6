"""Config loading: the reference file loads, and each mistake gets a message naming the option."""

import shutil
from pathlib import Path

import pytest
from service_helpers import PIN, SECRET, write_config, write_secret

from xksproxy.config import ConfigError, load_config

REFERENCE = Path(__file__).resolve().parents[2] / "conf" / "xksproxy.toml"


def test_reference_config_loads_with_documented_defaults(tmp_path):
    shutil.copy(REFERENCE, tmp_path / "xksproxy.toml")
    write_secret(tmp_path / "secrets" / "user.pin", PIN)
    write_secret(tmp_path / "secrets" / "demo-1.secret", SECRET)
    write_secret(tmp_path / "secrets" / "audit.key", "k" * 32)
    (tmp_path / "softhsm2.conf").write_text("directories.tokendir = /nonexistent\n")
    cfg = load_config(tmp_path / "xksproxy.toml", env={})
    assert cfg.server.bind == "127.0.0.1:8443" and cfg.server.max_body_bytes == 262144
    assert cfg.server.request_deadline_ms == 150 and cfg.server.workers == 0
    assert cfg.tls.cert_file == tmp_path / "tls" / "server.crt"
    assert cfg.tls.client_ca_file is None
    assert cfg.audit.file == tmp_path / "audit" / "xksproxy-audit.log"
    assert cfg.health.interval_s == 10 and cfg.health.fleet_size == 1
    (hsm,) = cfg.hsms
    assert hsm.pin == PIN and hsm.sessions == 4 and hsm.max_plaintext_bytes == 65536
    assert hsm.env["SOFTHSM2_CONF"] == str(tmp_path / "softhsm2.conf")
    assert cfg.hsm_models == {"softhsm-0": "SoftHSMv2"}
    (store,) = cfg.keystores
    assert store.path_prefix == "/demo" and store.uri_path == "/demo/kms/xks/v1"
    assert store.credentials[0].secret == SECRET
    assert SECRET not in repr(cfg) and PIN not in repr(cfg.hsms)


def test_env_overrides(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(
        path,
        env={
            "XKSPROXY_BIND": "[::1]:9000",
            "XKSPROXY_WORKERS": "3",
            "XKSPROXY_PLAIN_HTTP": "no",
            "XKSPROXY_SERVER": "hypercorn",
        },
    )
    assert (cfg.server.bind, cfg.server.workers, cfg.server.plain_http, cfg.server.server) == (
        "[::1]:9000",
        3,
        False,
        "hypercorn",
    )
    with pytest.raises(ConfigError, match="XKSPROXY_WORKERS"):
        load_config(path, env={"XKSPROXY_WORKERS": "many"})


def test_env_secret_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_XKS_PIN", "9999")
    cfg = load_config(write_config(tmp_path, pin_ref="env:TEST_XKS_PIN"), env={})
    assert cfg.hsms[0].pin == "9999"


def test_world_readable_secret_file_is_refused_naming_option_and_file(tmp_path):
    path = write_config(tmp_path)
    secret_file = tmp_path / "secrets" / "demo-1.secret"
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = info.value.message
    assert msg.startswith("keystore[0].credentials[0].secret: ")
    assert str(secret_file) in msg and "chmod 600" in msg
    assert SECRET not in msg


BAD = [
    ({"pin_ref": "1234"}, "hsm[0].pin: literal secrets are refused"),
    ({"pin_ref": "env:XKS_SURELY_UNSET_VAR"}, "hsm[0].pin: environment variable"),
    ({"pin_ref": "file:secrets/missing"}, "hsm[0].pin: file"),
    ({"extra": "[health]\ninterval_s = 45"}, "health.interval_s"),
    ({"extra": "[server]\nbogus = 1"}, None),  # duplicate [server] table -> TOML error
    ({"extra": "[logging]\nlevel = 'loud'"}, "logging.level"),
    ({"extra": "[metrics]\nbind = 'nope'"}, "metrics.bind"),
    ({"extra": "[healthz]\nx = 1"}, "healthz: unknown option"),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='demo'\n"
            "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
            "secret='file:secrets/demo-1.secret'"
        },
        "keystore[0].path_prefix",
    ),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='/a'\nhsm='nope'\n"
            "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
            "secret='file:secrets/demo-1.secret'"
        },
        "keystore[0].hsm: no [[hsm]]",
    ),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='/a'\n"
            "[[keystore.credentials]]\naccess_key_id='short'\n"
            "secret='file:secrets/demo-1.secret'"
        },
        "keystore[0].credentials[0].access_key_id",
    ),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='/a'\n"
            "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
            "secret='file:secrets/user.pin'"
        },
        "keystore[0].credentials[0].secret",
    ),
    ({"keystores": "[[keystore]]\nname='a'\npath_prefix='/a'\n"}, "keystore[0].credentials"),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='/a'\nkeys=['xks-health-test']\n"
            "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
            "secret='file:secrets/demo-1.secret'"
        },
        "health test key",
    ),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='/a'\n"
            "[[keystore.deny]]\nname='r'\nprincipal_arn='*'\n"
            "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
            "secret='file:secrets/demo-1.secret'"
        },
        "keystore[0].deny[0].principal_arn",
    ),
    (
        {
            "keystores": (
                "[[keystore]]\nname='a'\npath_prefix='/a'\n"
                "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
                "secret='file:secrets/demo-1.secret'\n"
            )
            * 2
        },
        "keystore[1].name: duplicate",
    ),
    (
        {
            "keystores": "[[keystore]]\nname='a'\npath_prefix='/" + "p" * 120 + "'\n"
            "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
            "secret='file:secrets/demo-1.secret'"
        },
        "128",
    ),
]


@pytest.mark.parametrize("kwargs,expected", BAD)
def test_mistakes_name_the_option(tmp_path, kwargs, expected):
    path = write_config(tmp_path, **kwargs)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    if expected:
        assert expected in info.value.message
    assert PIN not in info.value.message and SECRET not in info.value.message


def test_duplicate_prefix_is_refused(tmp_path):
    store = (
        "[[keystore]]\nname='{n}'\npath_prefix='/same'\n"
        "[[keystore.credentials]]\naccess_key_id='AKIAEXAMPLEEXAMPLE23'\n"
        "secret='file:secrets/demo-1.secret'\n"
    )
    path = write_config(tmp_path, keystores=store.format(n="a") + store.format(n="b"))
    with pytest.raises(ConfigError, match=r"keystore\[1\].path_prefix: '/same' already used"):
        load_config(path, env={})
