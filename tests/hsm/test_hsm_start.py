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
