"""Reloader: watches the config and its secret files; refuses invalid files with the reason."""

from __future__ import annotations

import logging
import os

import sigv4
from xksproxy.config import load_config
from xksproxy.runtime.reload import Reloader, describe_changes


def test_secret_file_change_is_picked_up(config_path, state, caplog):
    applied = []
    current = load_config(config_path)
    r = Reloader(config_path, current, applied.append)
    assert r.check() is None  # nothing changed
    secret_file = state / "secrets" / "demo-1.secret"
    new_secret = sigv4.generate_credential().secret
    secret_file.write_text(new_secret + "\n")
    with caplog.at_level(logging.INFO, logger="xksproxy.reload"):
        assert r.check() is True
    assert applied[-1].keystores[0].credentials[0].secret == new_secret
    record = next(rec for rec in caplog.records if rec.getMessage() == "configuration reloaded")
    assert record.fields["keystores"] == {
        "demo": {"secretsChanged": [current.keystores[0].credentials[0].access_key_id]}
    }
    assert new_secret not in str(record.fields)


def test_invalid_secret_mode_is_refused_and_named(config_path, state, caplog):
    applied = []
    r = Reloader(config_path, load_config(config_path), applied.append)
    secret_file = state / "secrets" / "demo-1.secret"
    os.chmod(secret_file, 0o644)
    with caplog.at_level(logging.ERROR, logger="xksproxy.reload"):
        assert r.check() is False
    assert applied == []
    assert str(secret_file) in r.last_error and "chmod 600" in r.last_error
    assert any("reload refused" in rec.getMessage() for rec in caplog.records)
    assert secret_file.read_text().strip() not in caplog.text


def test_describe_changes_names_credentials_only(config_path, state):
    from xksproxy.admin import credentials_ops

    before = load_config(config_path)
    _, cred = credentials_ops.add(config_path, "demo")
    after = load_config(config_path)
    assert describe_changes(before, after) == {"demo": {"credentialsAdded": [cred.access_key_id]}}


def test_logging_changes_are_reported_as_needing_a_restart(config_path, caplog):
    """Issue 17 item 7: a changed [logging] section used to be "reloaded" without effect."""
    from ops_config import set_option

    r = Reloader(config_path, load_config(config_path), lambda new: None)
    set_option(config_path, "logging", "level", '"debug"')
    set_option(config_path, "logging", "request_log", "false")
    with caplog.at_level(logging.INFO, logger="xksproxy.reload"):
        assert r.check() is True
    reloaded = next(rec for rec in caplog.records if rec.getMessage() == "configuration reloaded")
    assert "logging" in reloaded.fields["needsRestart"]
    warning = next(rec for rec in caplog.records if rec.levelno == logging.WARNING)
    assert "after a restart" in warning.getMessage()
    assert "logging" in warning.fields["sections"]
