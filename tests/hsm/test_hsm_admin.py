"""Provisioning, key administration, lifecycle and fork behaviour against real SoftHSMv2."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from support.hsm_keys import DEMO_KEYS, HEALTH_KEY_LABEL, KNOWN_KEY_LABEL

from hsm import HsmConfig, HsmPool, admin, module, startup
from hsm.errors import HsmFailure, HsmUnavailable, KeyNotFound
from hsm.softhsm import ProvisionedToken, provision

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_is_idempotent_and_private(tmp_path: Path) -> None:
    # Runs softhsm2-util only (no module load in this process): safe next to the session token.
    state = tmp_path / "state"
    first = provision(state, "tok-a")
    pin = first.user_pin()
    second = provision(state, "tok-a")
    assert second == first and second.user_pin() == pin
    assert len(pin) >= 16 and first.so_pin_file.read_text().strip() != pin
    assert _mode(state) == 0o700 and _mode(first.token_dir) == 0o700
    for f in (first.conf_path, first.user_pin_file, first.so_pin_file):
        assert _mode(f) == 0o600
    for p in first.token_dir.rglob("*"):
        assert _mode(p) == (0o700 if p.is_dir() else 0o600)
    assert f"directories.tokendir = {first.token_dir}" in first.conf_path.read_text()
    token_dirs = [p for p in first.token_dir.iterdir() if p.is_dir()]
    assert len(token_dirs) == 1  # the second call did not create another token
    assert pin not in repr(first) and pin not in repr(first.hsm_config())


def test_failed_token_init_does_not_carry_the_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """softhsm2-util takes the PINs in argv; a CalledProcessError would show them."""
    fake = tmp_path / "bin" / "softhsm2-util"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = --show-slots ] && exit 0\necho refused >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "state"
    with pytest.raises(subprocess.CalledProcessError) as info:
        provision(state, "tok-fail")
    pins = [(state / "secrets" / n).read_text().strip() for n in ("user.pin", "so.pin")]
    assert info.value.returncode == 3 and info.value.stderr == b"refused\n"
    assert info.value.__suppress_context__
    assert not any(pin in str(info.value) or pin in repr(info.value) for pin in pins)


def test_list_keys_reports_usage(pkcs11_impl: HsmConfig) -> None:
    listed = {k.label: k.usage for k in admin.list_keys(pkcs11_impl)}
    assert listed["demo"] == {"ENCRYPT", "DECRYPT"}
    assert listed["demo-encrypt-only"] == {"ENCRYPT"}
    assert listed["demo-decrypt-only"] == {"DECRYPT"}
    assert listed["demo-no-usage"] == frozenset()
    assert listed[HEALTH_KEY_LABEL] == {"ENCRYPT", "DECRYPT"}
    assert set(DEMO_KEYS) | {HEALTH_KEY_LABEL, KNOWN_KEY_LABEL} <= set(listed)


def test_created_keys_are_sensitive_non_extractable_token_objects(pkcs11_impl: HsmConfig) -> None:
    label = f"admin-created-{os.getpid()}"
    info = admin.create_key(pkcs11_impl, label, "encrypt")
    try:
        assert info.usage == {"ENCRYPT"}
        with pytest.raises(ValueError, match="already exists"):
            admin.create_key(pkcs11_impl, label)
        mod = module.acquire(pkcs11_impl.module, pkcs11_impl.env)
        try:
            session = mod.open_session(mod.find_token(pkcs11_impl.token_label), pkcs11_impl.pin)
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            assert key[Attribute.TOKEN] and key[Attribute.SENSITIVE]
            assert not key[Attribute.EXTRACTABLE]
            assert key[Attribute.ENCRYPT] and not key[Attribute.DECRYPT]
            assert key[Attribute.VALUE_LEN] == 32
            mod.functions.C_CloseSession(session.handle)
        finally:
            module.release(mod)
    finally:
        admin.delete_key(pkcs11_impl, label)
    assert label not in {k.label for k in admin.list_keys(pkcs11_impl)}
    with pytest.raises(KeyNotFound):
        admin.delete_key(pkcs11_impl, label)
    with pytest.raises(ValueError):
        admin.create_key(pkcs11_impl, "x", "sign-everything")


def test_ensure_health_key_is_idempotent(pkcs11_impl: HsmConfig) -> None:
    before = [k for k in admin.list_keys(pkcs11_impl) if k.label == HEALTH_KEY_LABEL]
    assert admin.ensure_health_key(pkcs11_impl).usage == {"ENCRYPT", "DECRYPT"}
    after = [k for k in admin.list_keys(pkcs11_impl) if k.label == HEALTH_KEY_LABEL]
    assert before == after and len(after) == 1


async def test_non_aes256_keys_are_refused(gcm_impl: HsmConfig) -> None:
    label = f"aes128-{os.getpid()}"
    mod = module.acquire(gcm_impl.module, gcm_impl.env)
    try:
        session = mod.open_session(mod.find_token(gcm_impl.token_label), gcm_impl.pin, rw=True)
        session.generate_key(KeyType.AES, 128, label=label, store=True)
        session.generate_key(KeyType.GENERIC_SECRET, 256, label=label + "-generic", store=True)
        mod.functions.C_CloseSession(session.handle)
        pool = HsmPool(gcm_impl)
        await pool.start()
        try:
            for bad in (label, label + "-generic"):
                with pytest.raises(KeyNotFound, match="not a 32-byte AES secret key"):
                    await pool.encrypt(bad, b"x", b"", deadline=time.monotonic() + 5)
        finally:
            await pool.close()
        assert label not in {k.label for k in admin.list_keys(gcm_impl)}
    finally:
        session = mod.open_session(mod.find_token(gcm_impl.token_label), gcm_impl.pin, rw=True)
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            if str(obj[Attribute.LABEL]).startswith(label):
                obj.destroy()
        mod.functions.C_CloseSession(session.handle)
        module.release(mod)


async def test_lifecycle_and_input_limits(gcm_impl: HsmConfig) -> None:
    pool = HsmPool(gcm_impl)
    with pytest.raises(HsmUnavailable, match="not started"):
        await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 1)
    await pool.start()
    with pytest.raises(RuntimeError):
        await pool.start()
    with pytest.raises(ValueError):
        await pool.encrypt(
            "demo", b"x" * (gcm_impl.max_plaintext_bytes + 1), b"", deadline=time.monotonic() + 1
        )
    with pytest.raises(ValueError):
        await pool.encrypt("demo", b"x", b"a" * 70000, deadline=time.monotonic() + 1)
    from hsm.errors import SessionTimeout

    with pytest.raises(SessionTimeout):
        await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() - 1)
    await pool.close()
    await pool.close()
    with pytest.raises(HsmUnavailable):
        await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 1)


async def test_wrong_pin_and_unknown_token(
    gcm_impl: HsmConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong PIN fails at once; an unknown token is retried (sibling workers may still be
    creating it) until the start-up budget, shortened here from 5 s, runs out."""
    monkeypatch.setattr(startup, "START_RETRY_S", 0.3)
    caplog.set_level(logging.WARNING, logger="hsm")
    with pytest.raises(HsmFailure, match="PIN_INCORRECT"):
        await HsmPool(dataclasses.replace(gcm_impl, pin="wrong-pin-0000")).start()
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    with pytest.raises(HsmUnavailable, match="no token"):
        await HsmPool(dataclasses.replace(gcm_impl, token_label="nope")).start()
    assert [r for r in caplog.records if "retrying" in r.getMessage()]


async def test_module_iv_source_never_returns_an_unchanged_iv(gcm_impl: HsmConfig) -> None:
    """SoftHSMv2 does not generate GCM IVs: iv_source="module" must fail, not leak a zero IV."""
    pool = HsmPool(dataclasses.replace(gcm_impl, iv_source="module"))
    await pool.start()
    try:
        with pytest.raises(HsmFailure, match="no IV"):
            await pool.encrypt("demo", b"x" * 32, b"", deadline=time.monotonic() + 5)
        assert not (await pool.probe()).ok
    finally:
        await pool.close()


def test_pool_after_fork(hsm_token: ProvisionedToken, hsm_config: HsmConfig) -> None:
    """A pool from the parent refuses to work in a child; a pool made in the child works."""
    script = r"""
import asyncio, os, sys, time
from hsm import HsmConfig, HsmPool
from hsm.errors import HsmUnavailable
from hsm.softhsm import provision
cfg = provision(sys.argv[1], sys.argv[2]).hsm_config()

async def use(pool):
    r = await pool.encrypt("demo", b"abc", b"", deadline=time.monotonic() + 5)
    return await pool.decrypt("demo", iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=b"",
                              deadline=time.monotonic() + 5)

async def parent():
    pool = HsmPool(cfg)
    await pool.start()
    assert await use(pool) == b"abc"
    pid = os.fork()
    if pid == 0:
        async def child():
            try:
                await use(pool)
                os._exit(10)
            except HsmUnavailable:
                pass
            fresh = HsmPool(cfg)
            await fresh.start()
            ok = await use(fresh) == b"abc"
            await fresh.close()
            os._exit(0 if ok else 11)
        asyncio.new_event_loop().run_until_complete(child())
    _, status = os.waitpid(pid, 0)
    assert await use(pool) == b"abc"  # the parent is unaffected
    await pool.close()
    print("child", os.waitstatus_to_exitcode(status))

asyncio.run(parent())
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(hsm_token.state_dir), hsm_token.token_label],
        env={**os.environ, **hsm_token.env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "child 0"


def test_two_threads_share_one_module(hsm_config: HsmConfig) -> None:
    """Pools in different threads (one event loop each) share the process's module."""
    results: list[bytes] = []

    def run() -> None:
        async def main() -> None:
            pool = HsmPool(hsm_config)
            await pool.start()
            r = await pool.encrypt("demo", b"shared", b"", deadline=time.monotonic() + 5)
            results.append(
                await pool.decrypt(
                    "demo",
                    iv=r.iv,
                    ciphertext=r.ciphertext,
                    tag=r.tag,
                    aad=b"",
                    deadline=time.monotonic() + 5,
                )
            )
            await pool.close()

        asyncio.run(main())

    import threading

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"shared", b"shared"]


async def test_pkcs11_lib_returns_the_shared_multithreaded_instance(hsm_config: HsmConfig) -> None:
    """pkcs11.lib(path) in the same process must not re-initialise under a running pool."""
    import pkcs11

    pool = HsmPool(hsm_config)
    await pool.start()
    try:
        lib = pkcs11.lib(hsm_config.module)
        assert lib.get_token(token_label=hsm_config.token_label).label == hsm_config.token_label
        r = await pool.encrypt("demo", b"still fine", b"", deadline=time.monotonic() + 5)
        assert len(r.tag) == 16 and pool.stats().session_replacements == 0
    finally:
        await pool.close()
