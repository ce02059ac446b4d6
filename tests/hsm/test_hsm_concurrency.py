"""Concurrency: module initialisation under threads, and the pool under threads and tasks."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support.faultshim import FaultShim
from support.hsm_keys import KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL

from hsm import HsmConfig, HsmPool
from hsm.errors import InvalidCiphertext, KeyUsageNotPermitted
from hsm.softhsm import ProvisionedToken

ROOT = Path(__file__).resolve().parents[2]
STRESS = ROOT / "tests" / "support" / "hsm_stress.py"


def _stress(
    token: ProvisionedToken, init: str, threads: int, ops: int, timeout: float
) -> subprocess.CompletedProcess:
    env = {**os.environ, **token.env(), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(STRESS),
        "--init",
        init,
        "--threads",
        str(threads),
        "--ops",
        str(ops),
        "--token",
        token.token_label,
        "--pin-file",
        str(token.user_pin_file),
        "--key",
        "demo",
    ]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # the stock variant can also deadlock
        return subprocess.CompletedProcess(cmd, -1, exc.stdout or "", "timeout (deadlock)")


def test_os_locking_init_survives_threads(hsm_token: ProvisionedToken) -> None:
    """Short version: 8 threads on python-pkcs11 sessions, our initialisation, all correct."""
    fixed = _stress(hsm_token, "locking", threads=8, ops=200, timeout=120)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip() == "OK 1600"


@pytest.mark.slow
def test_stock_init_breaks_but_os_locking_init_survives(hsm_token: ProvisionedToken) -> None:
    """python-pkcs11's C_Initialize(NULL) + threads corrupts SoftHSMv2; our init does not."""
    fixed = _stress(hsm_token, "locking", threads=8, ops=2000, timeout=120)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip() == "OK 16000"

    stock_failed = False
    for _ in range(6):
        # ~1.5 s when it works; a hang (seen) counts as failure after 8 s
        stock = _stress(hsm_token, "stock", threads=8, ops=2000, timeout=8)
        if stock.returncode != 0:
            stock_failed = True
            break
    if not stock_failed:
        pytest.skip("stock initialisation happened not to crash in 6 runs (timing-dependent)")


async def _mixed_ops(pool: HsmPool, n: int, seed: int) -> None:
    """n mixed operations, each checked for the exact expected result."""
    reference = AESGCM(KNOWN_KEY_MATERIAL)
    for i in range(n):
        deadline = time.monotonic() + 30
        kind = (i + seed) % 5
        pt = os.urandom(1 + (i * 37 + seed) % 600)
        aad = os.urandom((i * 13) % 100)
        if kind == 0:
            r = await pool.encrypt("demo", pt, aad, deadline=deadline)
            back = await pool.decrypt(
                "demo", iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=aad, deadline=deadline
            )
            assert back == pt
        elif kind == 1:
            iv = os.urandom(16 if i % 2 else 12)
            sealed = reference.encrypt(iv, pt, aad)
            back = await pool.decrypt(
                KNOWN_KEY_LABEL,
                iv=iv,
                ciphertext=sealed[:-16],
                tag=sealed[-16:],
                aad=aad,
                deadline=deadline,
            )
            assert back == pt
        elif kind == 2:
            r = await pool.encrypt(KNOWN_KEY_LABEL, pt, aad, deadline=deadline)
            assert reference.decrypt(r.iv, r.ciphertext + r.tag, aad) == pt
        elif kind == 3:
            r = await pool.encrypt("demo", pt, aad, deadline=deadline)
            with pytest.raises(InvalidCiphertext):
                await pool.decrypt(
                    "demo",
                    iv=r.iv,
                    ciphertext=r.ciphertext,
                    tag=r.tag,
                    aad=aad + b"x",
                    deadline=deadline,
                )
        else:
            info = await pool.key_info("demo-encrypt-only", deadline=deadline)
            assert info.usage == {"ENCRYPT"}
            with pytest.raises(KeyUsageNotPermitted):
                await pool.encrypt("demo-decrypt-only", pt, aad, deadline=deadline)


def _config(hsm_config: HsmConfig, mode: str, tmp_path: Path, sessions: int) -> HsmConfig:
    """Inline on SoftHSMv2 itself; threaded through the pass-through shim, so that worker threads
    really call the module in parallel (on SoftHSMv2 directly, "threaded" runs inline)."""
    cfg = dataclasses.replace(hsm_config, mode=mode, sessions=sessions)
    return FaultShim.create(tmp_path).hsm_config(cfg) if mode == "threaded" else cfg


@pytest.mark.parametrize("ops", [200, pytest.param(2000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["inline", "threaded"])
def test_eight_threads_mixed_operations(
    hsm_config: HsmConfig, mode: str, ops: int, tmp_path: Path
) -> None:
    """8 threads, each with its own event loop and pool on the shared module, ``ops`` ops each."""
    cfg = _config(hsm_config, mode, tmp_path, sessions=2)
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        async def main() -> None:
            pool = HsmPool(cfg)
            await pool.start()
            try:
                assert pool.stats().mode == mode
                await _mixed_ops(pool, ops, seed)
            finally:
                await pool.close()

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


@pytest.mark.parametrize("mode", ["inline", "threaded"])
async def test_two_hundred_concurrent_tasks(
    hsm_config: HsmConfig, mode: str, tmp_path: Path
) -> None:
    pool = HsmPool(_config(hsm_config, mode, tmp_path, sessions=4))
    await pool.start()
    try:
        assert pool.stats().mode == mode
        await asyncio.gather(*(_mixed_ops(pool, 10, seed) for seed in range(200)))
        stats = pool.stats()
        assert stats.in_use == 0 and stats.waiting == 0 and stats.state == "ready"
    finally:
        await pool.close()


async def test_session_wait_observer_reports_queueing_in_the_calling_task(
    hsm_config: HsmConfig, tmp_path: Path
) -> None:
    """Threaded, one session, a slow HSM: the third caller queued behind two calls."""
    shim = FaultShim.create(tmp_path)
    pool = HsmPool(shim.hsm_config(hsm_config, mode="threaded", sessions=1))
    caller: contextvars.ContextVar[int] = contextvars.ContextVar("caller")
    waits: dict[int, float] = {}
    pool.set_session_wait_observer(lambda s: waits.__setitem__(caller.get(), s))
    await pool.start()
    try:
        shim.set("delay", delay_ms=100)
        await asyncio.sleep(0.1)

        async def call(i: int) -> None:
            caller.set(i)
            await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 5)

        # Queued in this order at (almost) the same moment: the first takes the session at once,
        # each later one waits for one more slow call. Ordering, not durations: a loaded machine
        # stretches every wait, but cannot reorder them.
        await asyncio.gather(*(call(i) for i in range(3)))
        assert sorted(waits) == [0, 1, 2]
        assert waits[0] < waits[1] < waits[2]
    finally:
        shim.set("ok")
        await pool.close()
