"""Faults injected while load is running: typed errors during the fault, recovery without restart.

Scenarios: every session closed from outside (C_CloseAllSessions via ctypes), the module finalised
from outside (C_Finalize via ctypes), and the fault shim failing every call with CKR_DEVICE_ERROR.
Each must give only typed HsmError failures during the fault, never a wrong result, and the pool
must serve again by itself afterwards.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.faultshim import FaultShim, token_slot_id

from hsm import HsmConfig, HsmPool, admin
from hsm.errors import HsmError, HsmUnavailable, KeyNotFound, SessionTimeout
from hsm.softhsm import ProvisionedToken

RECOVERY_LIMIT_S = 10.0  # generous bound for "recovers by itself" on a loaded 2-core machine


class Load:
    """Round trips from many tasks; every outcome is classified, wrong results are counted."""

    def __init__(self, pool: HsmPool, tasks: int = 8) -> None:
        self.pool = pool
        self.outcomes: Counter[str] = Counter()
        self.wrong = 0
        self.unexpected: list[BaseException] = []
        self.last_ok = 0.0
        self._stop = False
        self._paused = False
        self._busy = 0
        self._tasks = [asyncio.create_task(self._run()) for _ in range(tasks)]

    async def quiesce(self) -> None:
        """Hold every task outside the pool and wait until no call is in flight."""
        self._paused = True
        while self._busy or self.pool.stats().in_use:
            await asyncio.sleep(0.001)

    def resume(self) -> None:
        self._paused = False

    async def _run(self) -> None:
        while not self._stop:
            while self._paused and not self._stop:
                await asyncio.sleep(0.001)
            pt, aad = os.urandom(64), os.urandom(16)
            self._busy += 1
            try:
                r = await self.pool.encrypt("demo", pt, aad, deadline=time.monotonic() + 1)
                back = await self.pool.decrypt(
                    "demo",
                    iv=r.iv,
                    ciphertext=r.ciphertext,
                    tag=r.tag,
                    aad=aad,
                    deadline=time.monotonic() + 1,
                )
            except HsmError as exc:
                self.outcomes[type(exc).__name__] += 1
                await asyncio.sleep(0.005)
                continue
            except BaseException as exc:  # anything untyped is a bug
                self.unexpected.append(exc)
                return
            finally:
                self._busy -= 1
            if back != pt:
                self.wrong += 1
            else:
                self.outcomes["ok"] += 1
                self.last_ok = time.monotonic()
            await asyncio.sleep(0)

    async def wait_recovered(self, since: float) -> float:
        """Seconds from ``since`` until a round trip succeeded again."""
        limit = time.monotonic() + RECOVERY_LIMIT_S
        while self.last_ok <= since and time.monotonic() < limit:
            await asyncio.sleep(0.01)
        assert self.last_ok > since, f"no recovery; outcomes={dict(self.outcomes)}"
        return self.last_ok - since

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)
        assert not self.unexpected, self.unexpected[:3]
        assert self.wrong == 0
        assert set(self.outcomes) <= {"ok", "HsmUnavailable", "HsmFailure", "SessionTimeout"}, (
            self.outcomes
        )


async def _with_fault(
    cfg: HsmConfig, inject, clear=None, fault_s: float = 0.0, how: str = "thread"
) -> None:
    """Run load, inject the fault, check typed errors and recovery.

    ``how``: "thread" (from another thread, while calls are in flight: only for faults a module
    must survive, like the shim's device errors), "loop" (from the event-loop thread: between
    two calls of an inline pool), "quiesced" (load held outside the pool, no call in flight,
    then resumed into the fault: for worker threads, which a foreign C_CloseAllSessions or
    C_Finalize could otherwise hit mid-call, crashing SoftHSMv2 itself).
    """
    pool = HsmPool(cfg)
    await pool.start()
    try:
        load = Load(pool)
        await asyncio.sleep(0.3)
        assert load.outcomes["ok"] > 0
        if how == "loop":
            inject()
        elif how == "quiesced":
            await load.quiesce()
            inject()
            load.resume()
        else:
            await asyncio.to_thread(inject)
        if fault_s:
            await asyncio.sleep(fault_s)
            assert load.outcomes["ok"] >= 0
        fault_end = time.monotonic()
        if clear is not None:
            clear()
        took = await load.wait_recovered(fault_end)
        await load.stop()
        stats = pool.stats()
        assert stats.state == "ready"
        print(f"recovered {took:.3f}s after the fault; outcomes {dict(load.outcomes)}; {stats}")
        assert (await pool.probe()).ok
    finally:
        await pool.close()


@pytest.fixture
def isolated(hsm_config: HsmConfig, tmp_path: Path) -> tuple[HsmConfig, ctypes.CDLL]:
    """The session token through the shim, i.e. a private SoftHSMv2 instance of its own.

    Faults injected "from outside" then hit only this test's pool, never a pool another test may
    hold open in this process on the real module. The shim reports its own manufacturer, so its
    calls are not serialised and threaded mode uses real worker threads.
    """
    shim = FaultShim.create(tmp_path)
    return shim.hsm_config(hsm_config), ctypes.CDLL(shim.real_module_copy)


@pytest.mark.parametrize(("mode", "how"), [("inline", "loop"), ("threaded", "quiesced")])
async def test_sessions_closed_from_outside(
    isolated: tuple[HsmConfig, ctypes.CDLL], mode: str, how: str
) -> None:
    """C_CloseAllSessions behind the pool's back (which also logs the token out)."""
    cfg, lib = dataclasses.replace(isolated[0], mode=mode), isolated[1]
    slot = token_slot_id(cfg)

    def inject() -> None:
        assert lib.C_CloseAllSessions(ctypes.c_ulong(slot)) == 0

    await _with_fault(cfg, inject, how=how)


@pytest.mark.parametrize(
    ("mode", "serialise", "how"),
    [
        ("inline", "1", "loop"),
        ("threaded", "1", "loop"),  # as on SoftHSMv2 itself: serialised, so "threaded" runs inline
        ("threaded", "0", "quiesced"),  # real worker threads
    ],
)
async def test_module_finalised_from_outside(
    isolated: tuple[HsmConfig, ctypes.CDLL],
    mode: str,
    serialise: str,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C_Finalize behind the pool's back while load runs.

    PKCS#11 leaves C_Finalize concurrent with other calls undefined, and SoftHSMv2 really does
    crash then (it frees its managers under running calls). For SoftHSMv2 the pool serialises
    calls and runs even "threaded" inline, so a finalize from the loop thread always falls
    between two calls (forced on here: the shim is not recognised as SoftHSMv2).
    """
    monkeypatch.setenv("XKSPROXY_PKCS11_SERIALIZE", serialise)
    cfg, lib = dataclasses.replace(isolated[0], mode=mode), isolated[1]

    def inject() -> None:
        assert lib.C_Finalize(None) == 0

    await _with_fault(cfg, inject, how=how)


@pytest.mark.parametrize("fault_s", [0.5, pytest.param(2.0, marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["inline", "threaded"])
async def test_device_error_for_a_while(
    hsm_config: HsmConfig, tmp_path: Path, mode: str, fault_s: float
) -> None:
    """Every call fails with CKR_DEVICE_ERROR for ``fault_s`` seconds, under load."""
    shim = FaultShim.create(tmp_path)
    cfg = shim.hsm_config(hsm_config, mode=mode)
    await _with_fault(
        cfg, lambda: shim.set("device_error"), lambda: shim.set("ok"), fault_s=fault_s
    )


async def test_outage_fails_fast_with_hsm_unavailable(
    hsm_config: HsmConfig, tmp_path: Path
) -> None:
    shim = FaultShim.create(tmp_path)
    pool = HsmPool(shim.hsm_config(hsm_config))
    await pool.start()
    try:
        shim.set("device_error")
        await asyncio.sleep(0.1)
        with pytest.raises(HsmUnavailable):
            await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 1)
        assert pool.stats().state == "recovering"
        for _ in range(20):  # fail fast, every time, while the module is down
            with pytest.raises(HsmUnavailable, match="recovering"):
                await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 1)
        assert not (await pool.probe()).ok
        shim.set("ok")
        limit = time.monotonic() + RECOVERY_LIMIT_S
        while pool.stats().state != "ready" and time.monotonic() < limit:
            await asyncio.sleep(0.01)
        assert pool.stats().state == "ready" and pool.stats().recoveries == 1
        assert (await pool.probe()).ok
    finally:
        shim.set("ok")
        await pool.close()


async def test_slow_hsm_gives_session_timeout(hsm_config: HsmConfig, tmp_path: Path) -> None:
    shim = FaultShim.create(tmp_path)
    pool = HsmPool(shim.hsm_config(hsm_config, mode="threaded", sessions=1))
    await pool.start()
    try:
        shim.set("delay", delay_ms=300)
        await asyncio.sleep(0.1)
        slow = asyncio.create_task(pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 5))
        await asyncio.sleep(0.05)  # the only session is now busy
        with pytest.raises(SessionTimeout, match="no HSM session"):
            await pool.encrypt("demo", b"y", b"", deadline=time.monotonic() + 0.05)
        assert len((await slow).ciphertext) == 1
        with pytest.raises(SessionTimeout, match="did not answer"):
            await pool.encrypt("demo", b"z", b"", deadline=time.monotonic() + 0.1)
        shim.set("ok")
        await asyncio.sleep(0.6)  # let the abandoned call finish and free the session
        r = await pool.encrypt("demo", b"w", b"", deadline=time.monotonic() + 1)
        assert len(r.tag) == 16
        assert pool.stats().state == "ready"
    finally:
        shim.set("ok")
        await pool.close()


def test_key_deleted_or_replaced_by_another_process(
    hsm_token: ProvisionedToken, hsm_config: HsmConfig
) -> None:
    label = f"replaced-{os.getpid()}"
    admin.create_key(hsm_config, label)
    env = {**os.environ, **hsm_token.env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = (
        "import sys; from hsm import admin; from hsm.softhsm import provision; "
        "cfg = provision(sys.argv[1], sys.argv[2]).hsm_config(); "
        "getattr(admin, sys.argv[3])(cfg, sys.argv[4])"
    )

    def other(action: str) -> None:
        subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(hsm_token.state_dir),
                hsm_token.token_label,
                action,
                label,
            ],
            env=env,
            check=True,
        )

    async def main() -> None:
        pool = HsmPool(hsm_config)
        await pool.start()
        try:
            r = await pool.encrypt(label, b"old key", b"", deadline=time.monotonic() + 5)
            other("delete_key")
            with pytest.raises(KeyNotFound):
                await pool.encrypt(label, b"x", b"", deadline=time.monotonic() + 5)
            other("create_key")
            # the new key is used: the old ciphertext no longer authenticates
            with pytest.raises(HsmError) as err:
                await pool.decrypt(
                    label,
                    iv=r.iv,
                    ciphertext=r.ciphertext,
                    tag=r.tag,
                    aad=b"",
                    deadline=time.monotonic() + 5,
                )
            assert type(err.value).__name__ == "InvalidCiphertext"
            r2 = await pool.encrypt(label, b"new key", b"", deadline=time.monotonic() + 5)
            assert (
                await pool.decrypt(
                    label,
                    iv=r2.iv,
                    ciphertext=r2.ciphertext,
                    tag=r2.tag,
                    aad=b"",
                    deadline=time.monotonic() + 5,
                )
                == b"new key"
            )
        finally:
            await pool.close()
            admin.delete_key(hsm_config, label)

    asyncio.run(main())


async def test_inline_call_past_deadline_is_session_timeout(
    hsm_config: HsmConfig, tmp_path: Path
) -> None:
    shim = FaultShim.create(tmp_path)
    pool = HsmPool(shim.hsm_config(hsm_config, mode="inline"))
    await pool.start()
    try:
        shim.set("delay", delay_ms=100)
        await asyncio.sleep(0.1)
        with pytest.raises(SessionTimeout, match="did not answer"):
            await pool.encrypt("demo", b"x", b"", deadline=time.monotonic() + 0.05)
        shim.set("ok")
        await asyncio.sleep(0.1)
        assert (await pool.probe()).ok
    finally:
        shim.set("ok")
        await pool.close()


async def test_two_pools_on_one_module_both_recover(hsm_config: HsmConfig, tmp_path: Path) -> None:
    """One module re-initialisation serves every pool on it; none stays broken."""
    shim = FaultShim.create(tmp_path)
    pools = [HsmPool(shim.hsm_config(hsm_config, mode=m)) for m in ("inline", "threaded")]
    for p in pools:
        await p.start()
    try:
        shim.set("device_error")
        await asyncio.sleep(0.1)
        for p in pools:
            with pytest.raises(HsmUnavailable):
                await p.encrypt("demo", b"x", b"", deadline=time.monotonic() + 1)
        shim.set("ok")
        limit = time.monotonic() + RECOVERY_LIMIT_S
        while any(p.stats().state != "ready" for p in pools) and time.monotonic() < limit:
            await asyncio.sleep(0.01)
        for p in pools:
            r = await p.encrypt("demo", b"again", b"", deadline=time.monotonic() + 5)
            assert (
                await p.decrypt(
                    "demo",
                    iv=r.iv,
                    ciphertext=r.ciphertext,
                    tag=r.tag,
                    aad=b"",
                    deadline=time.monotonic() + 5,
                )
                == b"again"
            )
    finally:
        shim.set("ok")
        for p in pools:
            await p.close()
