"""What differs between the two PKCS#11 implementations we test (SoftHSMv2, openCryptoki's soft
token), and what must not. Each test pins one line of hsm/README.md, "Second implementation".

Runs in this process against both tokens (``pkcs11_impl``); the cross-process case uses a child
that gets the PIN on stdin.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeSensitive, AttributeTypeInvalid
from support.hsm_keys import KNOWN_KEY_LABEL
from support.ock_token import OckToken

from hsm import HsmConfig, HsmPool, _ck, admin, module
from hsm.errors import HsmFailure
from hsm.softhsm import DEFAULT_MODULE as SOFTHSM_MODULE

ROOT = Path(__file__).resolve().parents[2]


def is_softhsm(cfg: HsmConfig) -> bool:
    return cfg.module == SOFTHSM_MODULE


def session_state(mod: module.Module, handle: int) -> int:
    info = _ck.CK_SESSION_INFO()
    assert mod.functions.C_GetSessionInfo(handle, ctypes.byref(info)) == _ck.CKR_OK
    return int(info.state)


async def test_aes_gcm_support_decides_whether_a_pool_starts(
    pkcs11_impl: HsmConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """SoftHSMv2 has CKM_AES_GCM; openCryptoki 3.8's soft token has not: the pool refuses it at
    start, at once (not retried: no mechanism appears by waiting), naming the mechanism."""
    caplog.set_level(logging.WARNING, logger="hsm")
    pool = HsmPool(pkcs11_impl)
    if is_softhsm(pkcs11_impl):
        await pool.start()
        try:
            assert (await pool.probe()).ok
        finally:
            await pool.close()
        return
    with pytest.raises(HsmFailure, match=r"does not implement CKM_AES_GCM .*CKR_MECHANISM_INVALID"):
        await pool.start()
    assert pool.stats().state == "stopped"
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_both_initialise_with_os_locking_only_softhsm_is_serialised(
    pkcs11_impl: HsmConfig,
) -> None:
    """C_Initialize with CKF_OS_LOCKING_OK is accepted by both; only SoftHSMv2's calls are
    serialised (its C_Finalize race, hsm/module.py): openCryptoki reports manufacturer "IBM"."""
    mod = module.acquire(pkcs11_impl.module, pkcs11_impl.env)
    try:
        assert mod.serialize is is_softhsm(pkcs11_impl)
        assert mod.lib.manufacturer_id.strip() == ("SoftHSM" if is_softhsm(pkcs11_impl) else "IBM")
    finally:
        module.release(mod)


def test_login_is_per_token_in_a_process_and_rng_works(pkcs11_impl: HsmConfig) -> None:
    """Both: one C_Login serves every session of the process (a second one answers
    USER_ALREADY_LOGGED_IN), and C_GenerateRandom gives fresh bytes in any session."""
    cfg = pkcs11_impl
    mod = module.acquire(cfg.module, cfg.env)
    try:
        token = mod.find_token(cfg.token_label)
        first = mod.open_session(token, cfg.pin)
        second = token.open()
        try:
            assert session_state(mod, second.handle) == _ck.CKS_RO_USER_FUNCTIONS
            raw = cfg.pin.encode()
            rv = mod.functions.C_Login(second.handle, _ck.CKU_USER, raw, len(raw))
            assert rv == _ck.CKR_USER_ALREADY_LOGGED_IN
            a, b = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
            assert mod.functions.C_GenerateRandom(second.handle, a, 32) == _ck.CKR_OK
            assert mod.functions.C_GenerateRandom(first.handle, b, 32) == _ck.CKR_OK
            assert a.raw != b.raw and a.raw != bytes(32)
        finally:
            mod.functions.C_CloseSession(second.handle)
            mod.functions.C_CloseSession(first.handle)
    finally:
        module.release(mod)


CHILD = """
import ctypes, json, sys
from hsm import HsmConfig, _ck, admin, module
cfg = HsmConfig(**json.load(sys.stdin))
mod = module.acquire(cfg.module, cfg.env)
session = mod.find_token(cfg.token_label).open()
info = _ck.CK_SESSION_INFO()
mod.functions.C_GetSessionInfo(session.handle, ctypes.byref(info))
mod.functions.C_CloseSession(session.handle)
module.release(mod)
admin.create_key(cfg, sys.argv[1], "encrypt-decrypt")
print(json.dumps({"state_before_login": info.state}))
"""


def test_other_process_sees_no_login_but_its_new_key_is_visible_here(
    pkcs11_impl: HsmConfig,
) -> None:
    """Both: login state is per process (a child's fresh session is public while this process is
    logged in), and a key another process creates is found by this process's next search without
    re-initialising (SoftHSMv2 re-reads its token directory, openCryptoki shares an object index
    in shared memory): `xksproxy keys create` next to a running proxy needs no restart."""
    cfg = pkcs11_impl
    label = f"impl-xproc-{os.getpid()}"
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.open_session(mod.find_token(cfg.token_label), cfg.pin)
        try:
            fields = {
                "name": cfg.name,
                "module": cfg.module,
                "token_label": cfg.token_label,
                "pin": cfg.pin,
                "env": dict(cfg.env),
            }
            child = subprocess.run(
                [sys.executable, "-c", CHILD, label],
                input=json.dumps(fields),
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert child.returncode == 0, child.stderr[-2000:]
            assert json.loads(child.stdout.splitlines()[-1]) == {"state_before_login": 0}
            labels = {
                o[Attribute.LABEL]
                for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            }
            assert label in labels
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)
        admin.delete_key(cfg, label)


def test_created_keys_keep_their_template(pkcs11_impl: HsmConfig) -> None:
    """Both accept admin.create_key's template as given (token, private, sensitive, not
    extractable, usage flags, 32 bytes) and refuse to reveal CKA_VALUE."""
    cfg = pkcs11_impl
    label = f"impl-template-{os.getpid()}"
    admin.create_key(cfg, label, "decrypt")
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.open_session(mod.find_token(cfg.token_label), cfg.pin)
        try:
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            assert key[Attribute.TOKEN] and key[Attribute.PRIVATE] and key[Attribute.SENSITIVE]
            assert not key[Attribute.EXTRACTABLE] and not key[Attribute.ENCRYPT]
            assert key[Attribute.DECRYPT] and key[Attribute.VALUE_LEN] == 32
            with pytest.raises(AttributeSensitive):
                key[Attribute.VALUE]
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)
        admin.delete_key(cfg, label)


def test_opencryptoki_pins_are_at_most_8_bytes(ock_token: OckToken) -> None:
    """openCryptoki's soft token takes PINs of 4-8 bytes (SoftHSMv2: 4-255), so the
    provisioning makes 8-hex-digit PINs, and the factory SO PIN is replaced."""
    assert len(ock_token.user_pin) == 8 and len(ock_token.so_pin) == 8
    assert ock_token.so_pin != "87654321"


def test_opencryptoki_locks_the_user_pin_after_three_wrong_ones(ock_token: OckToken) -> None:
    """The reason hsm never retries a refused PIN (hsm/startup.py): on openCryptoki three wrong
    user PINs in a row lock it, after which even the right PIN gets CKR_PIN_LOCKED until the SO
    sets it again. (SoftHSMv2 does not lock.) The pool's message then says what to do."""
    cfg = ock_token.hsm_config()
    mod = module.acquire(cfg.module, cfg.env)
    try:
        token = mod.find_token(cfg.token_label)
        session = token.open()
        try:
            for _ in range(3):
                wrong = b"00000000"
                rv = mod.functions.C_Login(session.handle, _ck.CKU_USER, wrong, len(wrong))
                assert rv == _ck.CKR_PIN_INCORRECT
            with pytest.raises(HsmFailure, match=r"PIN_LOCKED.*reset it with the HSM's admin tool"):
                mod.login(session.handle, cfg.pin)
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)
        ock_token.unlock_user_pin()
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.open_session(mod.find_token(cfg.token_label), cfg.pin)
        mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)


def test_one_wrong_pin_is_forgiven_by_the_next_right_one(ock_token: OckToken) -> None:
    """openCryptoki counts wrong PINs but a correct login resets the count: one wrong PIN (the
    pool's hint: check the pin reference) followed by the right one leaves the token usable."""
    cfg = ock_token.hsm_config()
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.find_token(cfg.token_label).open()
        try:
            with pytest.raises(HsmFailure, match=r"PIN_INCORRECT.*wrong user PIN"):
                mod.login(session.handle, "00000000")
            mod.login(session.handle, cfg.pin)
            assert session_state(mod, session.handle) == _ck.CKS_RO_USER_FUNCTIONS
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)


def test_created_aes_key_has_value_len_only_where_the_token_derives_it(
    pkcs11_impl: HsmConfig,
) -> None:
    """C_CreateObject of an AES key without CKA_VALUE_LEN (as the spec asks): SoftHSMv2 derives
    it (32), openCryptoki 3.8 leaves it out (ATTRIBUTE_TYPE_INVALID), so hsm.keys would call
    the key "not a 32-byte AES key"; admin.import_test_key therefore adds it there."""
    cfg = pkcs11_impl
    label = f"impl-created-{os.getpid()}"
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.open_session(mod.find_token(cfg.token_label), cfg.pin, rw=True)
        try:
            key = session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: bytes(range(32)),
                    Attribute.LABEL: label,
                    Attribute.TOKEN: False,
                }
            )
            try:
                if is_softhsm(cfg):
                    assert key[Attribute.VALUE_LEN] == 32
                else:
                    with pytest.raises(AttributeTypeInvalid):
                        key[Attribute.VALUE_LEN]
            finally:
                key.destroy()
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)
    listed = {k.label: k.usage for k in admin.list_keys(cfg)}
    assert listed[KNOWN_KEY_LABEL] == {"ENCRYPT", "DECRYPT"}  # imported by tests/conftest.py


FD_SCRIPT = """
import asyncio, json, os, sys
from hsm import HsmConfig, HsmPool, admin, module
if sys.argv[1] == "stock":  # finalise on last release, as for any other module
    module._finalize_is_safe = lambda manufacturer_id: True
cfg = HsmConfig(**json.load(sys.stdin))
def alive(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
mine = []
for _ in range(3):
    admin.list_keys(cfg)
    mine += os.pipe()
async def main():
    try:
        await HsmPool(cfg).start()  # fails (no AES-GCM) and releases from a worker thread
    except Exception:
        pass
asyncio.run(main())
print(json.dumps(sorted({fd for fd in mine if not alive(fd)})))
"""


@pytest.mark.parametrize("variant", ["stock", "ours"])
def test_opencryptoki_finalize_closes_other_peoples_fds(ock_token: OckToken, variant: str) -> None:
    """openCryptoki 3.8: after a few initialise/finalise cycles, C_Finalize closes descriptors it
    recorded in an earlier cycle and which now belong to the application (in pytest it was the
    event loop's epoll fd). "stock" (finalise on release) loses fds; hsm never finalises an
    openCryptoki module ("ours"), so nothing is closed under the application. If "stock" ever
    stops losing fds, the workaround in hsm/module.py (_finalize_is_safe) can go."""
    cfg = ock_token.hsm_config()
    fields = {"name": cfg.name, "module": cfg.module, "token_label": cfg.token_label}
    child = subprocess.run(
        [sys.executable, "-c", FD_SCRIPT, variant],
        input=json.dumps({**fields, "pin": cfg.pin}),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.returncode == 0, child.stderr[-2000:]
    closed = json.loads(child.stdout.splitlines()[-1])
    assert bool(closed) is (variant == "stock"), closed


def test_opencryptoki_module_stays_initialised_after_its_last_release(
    ock_token: OckToken,
) -> None:
    """The workaround itself: the last release keeps an openCryptoki module registered (the next
    acquire reuses it, logged-in state included), where SoftHSMv2 is finalised."""
    cfg = ock_token.hsm_config()
    first = module.acquire(cfg.module, cfg.env)
    module.release(first)
    second = module.acquire(cfg.module, cfg.env)
    try:
        assert second is first and not first.finalize_safe
    finally:
        module.release(second)
