"""Backend/member configuration: old configs unchanged, members grouped, bad groupings refused."""

from __future__ import annotations

import pytest
from service.service_helpers import AKID, write_config

from xksproxy.config import ConfigError, load_config


def _member(name: str, backend: str | None, **extra: str) -> str:
    lines = [f'[[hsm]]\nname = "{name}"', 'module = "/usr/lib/softhsm/libsofthsm2.so"',
             'pin = "file:secrets/user.pin"']  # fmt: skip
    if backend:
        lines.append(f'backend = "{backend}"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _store(hsm: str) -> str:
    return f'''
[[keystore]]
name = "demo"
path_prefix = "/demo"
hsm = "{hsm}"
keys = ["demo"]
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo-1.secret"
'''


def test_plain_hsm_is_a_one_member_backend(tmp_path) -> None:
    cfg = load_config(write_config(tmp_path))
    assert cfg.backends == {"softhsm-0": ["softhsm-0"]}
    assert [h.name for h in cfg.members("softhsm-0")] == ["softhsm-0"]
    assert cfg.backend_of("softhsm-0") == "softhsm-0"


def test_members_grouped_by_backend_and_named_by_the_store(tmp_path) -> None:
    hsms = _member("a", "main") + _member("b", "main", so_pin='"file:secrets/user.pin"')
    cfg = load_config(write_config(tmp_path, hsm_table=hsms, keystores=_store("main")))
    assert cfg.backends == {"main": ["a", "b"]}
    assert cfg.keystores[0].hsm == "main"
    assert cfg.backend_of("b") == "main"
    assert cfg.so_pin_refs == {"b": "file:secrets/user.pin"}


@pytest.mark.parametrize(
    ("hsms", "store", "message"),
    [
        (_member("a", "main") + _member("b", "main"), "a", "no [[hsm]] backend named 'a'"),
        (_member("a", "b") + _member("b", "c"), "c", "is also the name of [[hsm]] 'b'"),
        (
            _member("a", "main") + _member("b", "main", health_key_label='"other"'),
            "main",
            "differ in health_key_label",
        ),
        (_member("a", "main", so_pin='"1234"'), "main", "so_pin: must be a secret reference"),
    ],
)
def test_bad_groupings_are_refused(tmp_path, hsms: str, store: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write_config(tmp_path, hsm_table=hsms, keystores=_store(store)))
