"""The launcher's plan: bind parsing, worker count, server choice under mTLS (no processes)."""

from __future__ import annotations

import os

import pytest
from transport_support import write_config

from xksproxy.bind import parse_bind
from xksproxy.config import ConfigError, load_config
from xksproxy.runtime.plan import plan
from xksproxy.runtime.tls import allowed_subject_patterns, subject_allowed


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_bind(bind, expected):
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8443", "::1:8443", "host:", ":80", "h:99999", "h:x"])
def test_parse_bind_rejects(bind):
    with pytest.raises(ValueError):
        parse_bind(bind)


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write_config(tmp_path))
    p = plan(cfg)
    assert (p.server, p.workers, p.plain_http) == ("granian", os.cpu_count(), False)
    assert p.url == "https://127.0.0.1:8443"
    assert p.stores == (("demo", "/demo/kms/xks/v1"),)
    p = plan(cfg, bind="[::1]:9000", server="hypercorn", workers=3, plain_http=True)
    assert (p.url, p.server, p.workers) == ("http://[::1]:9000", "hypercorn", 3)


def test_mtls_picks_hypercorn_and_refuses_explicit_granian(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    cfg = load_config(write_config(tmp_path, client_ca=ca, regions=["eu-west-1"]))
    p = plan(cfg)
    assert p.server == "hypercorn"
    assert p.allowed_subjects == ("cks.kms.eu-west-1.amazonaws.com",)
    assert any("hypercorn" in n for n in p.notes)
    with pytest.raises(ConfigError, match="allowed_client_subjects"):
        plan(cfg, server="granian")
    plain = plan(cfg, plain_http=True)
    assert plain.client_ca_file is None and plain.allowed_subjects == ()
    assert any("ignored with plain HTTP" in n for n in plain.notes)


def test_subject_patterns():
    assert allowed_subject_patterns([], [frozenset({"us-east-1"}), frozenset({"eu-west-1"})]) == (
        "cks.kms.eu-west-1.amazonaws.com",
        "cks.kms.us-east-1.amazonaws.com",
    )
    assert allowed_subject_patterns([], [frozenset({"us-east-1"}), frozenset()]) == (
        "cks.kms.*.amazonaws.com",
    )
    assert allowed_subject_patterns(["a.example"], [frozenset()]) == ("a.example",)
    star = ("cks.kms.*.amazonaws.com",)
    assert subject_allowed(["cks.kms.ap-south-2.amazonaws.com"], star)
    assert not subject_allowed(["cks.kms.a.b.amazonaws.com"], star)
    assert not subject_allowed(["xcks.kms.us-east-1.amazonaws.com"], star)
    assert not subject_allowed(["cks.kms.us-east-1.amazonaws.com.evil"], star)
    assert not subject_allowed([], star)
