"""Property checks: any plaintext/AAD round-trips; any single-bit change is InvalidCiphertext."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm import HsmConfig, HsmPool
from hsm.errors import InvalidCiphertext


@pytest.fixture(scope="module")
def loop_and_pool(gcm_impl: HsmConfig):
    loop = asyncio.new_event_loop()
    pool = HsmPool(gcm_impl)
    loop.run_until_complete(pool.start())
    yield loop, pool
    loop.run_until_complete(pool.close())
    loop.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plaintext=st.binary(min_size=0, max_size=5000),
    aad=st.binary(max_size=300),
    field=st.sampled_from(["iv", "ciphertext", "tag", "aad"]),
    bit=st.integers(0, 10_000),
)
def test_round_trip_and_single_bit_tamper(
    loop_and_pool, plaintext: bytes, aad: bytes, field: str, bit: int
) -> None:
    loop, pool = loop_and_pool

    def run(coro):
        return loop.run_until_complete(coro)

    r = run(pool.encrypt("demo", plaintext, aad, deadline=time.monotonic() + 5))
    fields = {"iv": r.iv, "ciphertext": r.ciphertext, "tag": r.tag, "aad": aad}
    assert run(pool.decrypt("demo", deadline=time.monotonic() + 5, **fields)) == plaintext
    target = fields[field]
    if not target:
        return  # nothing to flip (empty plaintext or AAD)
    i = bit % (len(target) * 8)
    flipped = bytearray(target)
    flipped[i // 8] ^= 1 << (i % 8)
    fields[field] = bytes(flipped)
    with pytest.raises(InvalidCiphertext):
        run(pool.decrypt("demo", deadline=time.monotonic() + 5, **fields))
