"""Pool start-up: a rejected PIN fails at once with what to fix, and is never retried."""

import dataclasses
import logging

import pytest

from hsm import HsmPool
from hsm.errors import HsmFailure
from hsm.softhsm import provision


async def test_wrong_pin_fails_once_and_says_what_to_fix(tmp_path, fault_shim, caplog):
    # A token of its own (a failed login must not touch the shared one), reached through the
    # shim's private copy of the module so this process logs in afresh.
    token = provision(tmp_path / "state", token_label="pin-test")
    base = dataclasses.replace(token.hsm_config(), pin="0000-not-the-pin")
    pool = HsmPool(fault_shim.hsm_config(base))
    caplog.set_level(logging.WARNING, logger="hsm")
    with pytest.raises(HsmFailure) as info:
        await pool.start()
    assert "wrong user PIN" in str(info.value)
    assert "0000-not-the-pin" not in str(info.value)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_start_lock_lives_with_the_token_not_in_tmp(hsm_config, monkeypatch, tmp_path):
    """Issue 17 item 14: one lock file per token used to pile up in /tmp (45 after one run)."""
    import os
    import tempfile

    from hsm.startup import lock_path

    conf_dir = os.path.dirname(hsm_config.env["SOFTHSM2_CONF"])
    assert os.path.dirname(lock_path(hsm_config)) == conf_dir
    # no SoftHSMv2 configuration to sit beside: the per-user runtime directory, else tmp
    bare = dataclasses.replace(hsm_config, env={})
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    service_dir, user_dir = tmp_path / "service", tmp_path / "user"
    service_dir.mkdir()
    user_dir.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{service_dir}:{tmp_path}")  # systemd unit
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(user_dir))
    assert os.path.dirname(lock_path(bare)) == str(service_dir)
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert os.path.dirname(lock_path(bare)) == str(user_dir)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert os.path.dirname(lock_path(bare)) == tempfile.gettempdir()
