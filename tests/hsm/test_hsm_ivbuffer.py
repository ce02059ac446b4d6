"""The per-session IV buffer (hsm/ivbuffer.py; the argument is in hsm/README.md, "IV buffer").

Unit tests drive :class:`IvBuffer` with a fake RNG that records every batch it wrote; the
integration tests count the real pool's ``C_GenerateRandom`` draws on SoftHSMv2 and check that
every Encrypt got its own IV, that everything decrypts, and that a replaced or recovered session
never hands out what its predecessor drew.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.faultshim import FaultShim, token_slot_id

from hsm import HsmConfig, HsmPool
from hsm.errors import HsmFailure, HsmUnavailable
from hsm.gcm import Gcm
from hsm.ivbuffer import IV_BATCH, IvBuffer
from hsm.limits import IV_BYTES

ROOT = Path(__file__).resolve().parents[2]


class FakeRng:
    """A ``draw`` for IvBuffer: writes fresh random bytes and keeps a copy of every batch."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.addresses: list[int] = []
        self.fail = False

    def __call__(self, addr: int, n: int) -> None:
        if self.fail:
            ctypes.memmove(addr, os.urandom(n), n // 2)  # a half-written batch, then the error
            raise OSError("RNG failed")
        data = os.urandom(n)
        ctypes.memmove(addr, data, n)
        self.batches.append(data)
        self.addresses.append(addr)


def slices(batch: bytes) -> list[bytes]:
    return [batch[i : i + IV_BYTES] for i in range(0, len(batch), IV_BYTES)]


# ---------------------------------------------------------------------------------- unit tests
def test_each_iv_of_a_batch_is_handed_out_once_in_one_draw() -> None:
    rng, ivs = FakeRng(), IvBuffer()
    taken = [ivs.take(rng) for _ in range(IV_BATCH)]
    assert len(rng.batches) == 1 and len(rng.batches[0]) == IV_BATCH * IV_BYTES == 768
    assert taken == slices(rng.batches[0])  # every slice, each once, nothing else
    assert ivs.remaining == 0


def test_refills_only_after_the_batch_is_exhausted() -> None:
    rng, ivs = FakeRng(), IvBuffer(batch=4)
    taken = [ivs.take(rng) for _ in range(9)]
    assert len(rng.batches) == 3  # 4 + 4 + 1
    assert taken == [iv for b in rng.batches for iv in slices(b)][:9]
    assert ivs.remaining == 3


def test_wipe_discards_and_zeroes_the_rest_of_the_batch() -> None:
    rng, ivs = FakeRng(), IvBuffer()
    first = [ivs.take(rng) for _ in range(3)]
    assert ivs.remaining == IV_BATCH - 3
    ivs.wipe()
    assert ivs.remaining == 0
    # The memory the RNG wrote into holds none of the undistributed IVs any more.
    assert ctypes.string_at(rng.addresses[0], IV_BATCH * IV_BYTES) == bytes(IV_BATCH * IV_BYTES)
    after = ivs.take(rng)
    assert len(rng.batches) == 2  # a fresh draw, not the old batch's 4th IV
    assert after == slices(rng.batches[1])[0]
    assert after not in slices(rng.batches[0])
    assert first == slices(rng.batches[0])[:3]


def test_a_failed_draw_hands_nothing_out_and_the_next_take_draws_afresh() -> None:
    rng, ivs = FakeRng(), IvBuffer()
    rng.fail = True
    with pytest.raises(OSError, match="RNG failed"):
        ivs.take(rng)
    assert ivs.remaining == 0
    rng.fail = False
    assert ivs.take(rng) == slices(rng.batches[0])[0]


def test_ivs_stay_distinct_over_many_draws() -> None:
    rng, ivs = FakeRng(), IvBuffer()
    n = 200 * IV_BATCH + 7
    taken = [ivs.take(rng) for _ in range(n)]
    assert len(rng.batches) == 201
    assert len(set(taken)) == n and all(len(iv) == IV_BYTES for iv in taken)


def test_a_batch_holds_at_least_one_iv() -> None:
    with pytest.raises(ValueError, match="at least one"):
        IvBuffer(batch=0)


def test_a_forked_child_never_hands_out_the_parents_buffered_ivs() -> None:
    """In a child the copied batch is wiped: the child draws anew, parent and child differ.

    Run in a fresh interpreter (no pytest threads to fork under)."""
    script = r"""
import ctypes, os, sys
from hsm.ivbuffer import IvBuffer
draws = []
def rng(addr, n):
    data = os.urandom(n)
    ctypes.memmove(addr, data, n)
    draws.append(data)
ivs = IvBuffer()
ivs.take(rng)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    left = ivs.remaining
    iv = ivs.take(rng)
    os.write(w, bytes([left, len(draws)]) + iv)
    os._exit(0)
os.close(w)
got = os.read(r, 64)
os.waitpid(pid, 0)
parent_next = ivs.take(rng)
parent_batch = {draws[0][i : i + 12] for i in range(0, len(draws[0]), 12)}
print(got[0], got[1], len(draws), got[2:] == parent_next, got[2:] in parent_batch)
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # child: 0 IVs left after fork, drew a 2nd batch; parent: still 1 draw; the child's IV is
    # not the parent's next one and comes from no batch the parent drew.
    assert out.stdout.split() == ["0", "2", "1", "False", "False"]


# ---------------------------------------------------------------------------------- on SoftHSMv2
class Draws:
    """Every C_GenerateRandom an IV buffer makes through :meth:`Gcm.random_into`, with its bytes."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.sessions: set[int] = set()  # the session handles that drew


@pytest.fixture
def draws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Draws]:
    record = Draws()
    real = Gcm.random_into

    def counting(self: Gcm, addr: int, n: int) -> None:
        real(self, addr, n)
        record.batches.append(ctypes.string_at(addr, n))
        record.sessions.add(self.handle)

    monkeypatch.setattr(Gcm, "random_into", counting)
    yield record


def soon() -> float:
    return time.monotonic() + 5.0


async def encrypt_all(pool: HsmPool, n: int) -> list[bytes]:
    """``n`` Encrypts; checks each decrypts to its plaintext; returns their IVs."""
    out = []
    for i in range(n):
        pt, aad = os.urandom(32), i.to_bytes(4, "big")
        r = await pool.encrypt("demo", pt, aad, deadline=soon())
        back = await pool.decrypt(
            "demo", iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=aad, deadline=soon()
        )
        assert back == pt
        out.append(r.iv)
    return out


@pytest.mark.parametrize("mode", ["inline", "threaded"])
async def test_many_encrypts_get_distinct_ivs_from_one_draw_per_batch(
    hsm_config: HsmConfig, tmp_path: Path, draws: Draws, mode: str
) -> None:
    cfg = dataclasses.replace(hsm_config, mode=mode, sessions=1)
    if mode == "threaded":  # real worker threads (SoftHSMv2 itself would run inline)
        cfg = FaultShim.create(tmp_path).hsm_config(cfg)
    pool = HsmPool(cfg)
    await pool.start()
    try:
        n = 3 * IV_BATCH + 5
        ivs = await encrypt_all(pool, n)
    finally:
        await pool.close()
    assert len(set(ivs)) == n
    assert len(draws.batches) == 4  # one C_GenerateRandom per 64 Encrypts, not one per Encrypt
    assert ivs == [iv for b in draws.batches for iv in slices(b)][:n]


async def test_concurrent_encrypts_on_several_sessions_never_share_an_iv(
    hsm_config: HsmConfig, tmp_path: Path, draws: Draws
) -> None:
    """Four sessions really in use at once (threaded mode through the shim, 1 ms per call, so
    no worker can take every job), each drawing its own batches: no IV is handed out twice."""
    shim = FaultShim.create(tmp_path)
    shim.set("delay", delay_ms=1)
    pool = HsmPool(shim.hsm_config(hsm_config, mode="threaded", sessions=4))
    await pool.start()
    try:
        results = await asyncio.gather(*(encrypt_all(pool, 40) for _ in range(8)))
    finally:
        await pool.close()
    ivs = [iv for r in results for iv in r]
    assert len(set(ivs)) == len(ivs) == 320
    assert len(draws.sessions) == 4  # every session drew its own batch


@pytest.fixture
def isolated(hsm_config: HsmConfig, tmp_path: Path) -> tuple[HsmConfig, ctypes.CDLL]:
    """The session token through the shim: a private SoftHSMv2 instance, so closing its
    sessions or finalising it from outside touches only this test's pool."""
    shim = FaultShim.create(tmp_path)
    return shim.hsm_config(hsm_config, sessions=1), ctypes.CDLL(shim.real_module_copy)


async def test_a_replaced_session_drops_the_ivs_its_predecessor_drew(
    isolated: tuple[HsmConfig, ctypes.CDLL], draws: Draws
) -> None:
    cfg, lib = isolated
    slot = token_slot_id(cfg)
    pool = HsmPool(cfg)
    await pool.start()
    try:
        before = await encrypt_all(pool, 5)
        assert len(draws.batches) == 1 and pool.stats().session_replacements == 0
        assert lib.C_CloseAllSessions(ctypes.c_ulong(slot)) == 0  # behind the pool's back
        after = await encrypt_all(pool, IV_BATCH // 2)
        assert pool.stats().session_replacements == 1
    finally:
        await pool.close()
    old_rest = set(slices(draws.batches[0])) - set(before)
    assert len(old_rest) == IV_BATCH - 5
    assert not old_rest & set(after)  # the old session's unused IVs are never handed out
    assert len(set(before + after)) == 5 + IV_BATCH // 2
    # All from the new session's first batch. (An attempt that failed on the dead session, or
    # on the key handles the log-out invalidated, used up its IV: it is never handed out again.)
    assert len(draws.batches) == 2 and set(after) <= set(slices(draws.batches[1]))


async def test_recovery_drops_every_sessions_buffered_ivs(
    isolated: tuple[HsmConfig, ctypes.CDLL], draws: Draws
) -> None:
    cfg, lib = isolated
    pool = HsmPool(cfg)
    await pool.start()
    try:
        before = await encrypt_all(pool, 5)
        assert lib.C_Finalize(None) == 0  # from the loop thread: between two calls
        with pytest.raises(HsmUnavailable):
            await pool.encrypt("demo", b"x", b"", deadline=soon())
        limit = time.monotonic() + 10
        while pool.stats().state != "ready" and time.monotonic() < limit:
            await asyncio.sleep(0.01)
        assert pool.stats().recoveries == 1
        after = await encrypt_all(pool, 10)
    finally:
        await pool.close()
    assert len(draws.batches) == 2  # the pre-fault batch was dropped, not used up
    assert not set(slices(draws.batches[0])) & set(after)
    assert set(after) <= set(slices(draws.batches[1]))
    assert len(set(before + after)) == 15


async def test_module_iv_source_makes_no_rng_draw(hsm_config: HsmConfig, draws: Draws) -> None:
    """iv_source = "module" is untouched by the buffer (and refused by SoftHSMv2, which makes
    no GCM IVs: tests/hsm/test_hsm_admin.py)."""
    pool = HsmPool(dataclasses.replace(hsm_config, iv_source="module"))
    await pool.start()
    try:
        with pytest.raises(HsmFailure, match="no IV"):
            await pool.encrypt("demo", b"x" * 32, b"", deadline=soon())
    finally:
        await pool.close()
    assert draws.batches == []
