"""Round trips and typed errors against real tokens (both pool modes, every PKCS#11
implementation with AES-GCM: ``gcm_impl``)."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support.faultshim import FaultShim
from support.hsm_keys import KNOWN_KEY_LABEL, KNOWN_KEY_MATERIAL

from hsm import HsmConfig, HsmPool
from hsm.errors import InvalidCiphertext, KeyNotFound, KeyUsageNotPermitted
from hsm.softhsm import DEFAULT_MODULE as SOFTHSM_MODULE


def soon() -> float:
    return time.monotonic() + 5.0


@pytest.fixture(params=["inline", "threaded"])
async def pool(request: pytest.FixtureRequest, gcm_impl: HsmConfig, tmp_path):
    cfg = dataclasses.replace(gcm_impl, mode=request.param)
    if request.param == "threaded" and cfg.module == SOFTHSM_MODULE:
        # Through the (pass-through) shim: real worker threads. On SoftHSMv2 itself, whose calls
        # are serialised, "threaded" runs inline (see hsm/pool.py).
        cfg = FaultShim.create(tmp_path).hsm_config(cfg)
    p = HsmPool(cfg)
    await p.start()
    yield p
    await p.close()


async def test_round_trip_sizes(pool: HsmPool) -> None:
    for size in (1, 2, 15, 16, 17, 255, 4300, 4301, 65536):
        pt = os.urandom(size)
        for aad in (b"", b"a", os.urandom(8192), os.urandom(65535), os.urandom(65793)):
            r = await pool.encrypt("demo", pt, aad, deadline=soon())
            assert len(r.iv) == 12 and len(r.tag) == 16 and len(r.ciphertext) == size
            assert size < 16 or r.ciphertext != pt  # tiny inputs may collide by chance
            back = await pool.decrypt(
                "demo", iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=aad, deadline=soon()
            )
            assert back == pt


async def test_tampering_is_invalid_ciphertext(pool: HsmPool) -> None:
    pt, aad = os.urandom(100), b"context"
    r = await pool.encrypt("demo", pt, aad, deadline=soon())

    def flip(b: bytes) -> bytes:
        return bytes([b[0] ^ 1]) + b[1:]

    cases = {
        "iv": dict(iv=flip(r.iv), ciphertext=r.ciphertext, tag=r.tag, aad=aad),
        "ct": dict(iv=r.iv, ciphertext=flip(r.ciphertext), tag=r.tag, aad=aad),
        "tag": dict(iv=r.iv, ciphertext=r.ciphertext, tag=flip(r.tag), aad=aad),
        "aad": dict(iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=b"Context"),
        "no-aad": dict(iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=b""),
        "truncated": dict(iv=r.iv, ciphertext=r.ciphertext[:-1], tag=r.tag, aad=aad),
        "short-tag": dict(iv=r.iv, ciphertext=r.ciphertext, tag=r.tag[:12], aad=aad),
        "iv-13": dict(iv=r.iv + b"\0", ciphertext=r.ciphertext, tag=r.tag, aad=aad),
    }
    for name, kwargs in cases.items():
        with pytest.raises(InvalidCiphertext):
            await pool.decrypt("demo", deadline=soon(), **kwargs)
        assert pool.stats().state == "ready", name
    # still healthy afterwards
    assert (await pool.probe()).ok


async def test_16_byte_iv_from_cryptography_decrypts(pool: HsmPool) -> None:
    aesgcm = AESGCM(KNOWN_KEY_MATERIAL)
    for iv_len in (12, 16):
        iv = os.urandom(iv_len)
        pt, aad = os.urandom(4300), os.urandom(300)
        sealed = aesgcm.encrypt(iv, pt, aad)
        back = await pool.decrypt(
            KNOWN_KEY_LABEL,
            iv=iv,
            ciphertext=sealed[:-16],
            tag=sealed[-16:],
            aad=aad,
            deadline=soon(),
        )
        assert back == pt
    # and the HSM's output decrypts with cryptography (same key material)
    r = await pool.encrypt(KNOWN_KEY_LABEL, b"hello", b"aad", deadline=soon())
    assert aesgcm.decrypt(r.iv, r.ciphertext + r.tag, b"aad") == b"hello"


async def test_key_usage_and_lookup(pool: HsmPool) -> None:
    assert (await pool.key_info("demo", deadline=soon())).usage == {"ENCRYPT", "DECRYPT"}
    assert (await pool.key_info("demo-encrypt-only", deadline=soon())).usage == {"ENCRYPT"}
    assert (await pool.key_info("demo-decrypt-only", deadline=soon())).usage == {"DECRYPT"}
    assert (await pool.key_info("demo-no-usage", deadline=soon())).usage == frozenset()
    r = await pool.encrypt("demo-encrypt-only", b"x" * 10, b"", deadline=soon())
    with pytest.raises(KeyUsageNotPermitted):
        await pool.decrypt(
            "demo-encrypt-only",
            iv=r.iv,
            ciphertext=r.ciphertext,
            tag=r.tag,
            aad=b"",
            deadline=soon(),
        )
    for label in ("demo-decrypt-only", "demo-no-usage"):
        with pytest.raises(KeyUsageNotPermitted):
            await pool.encrypt(label, b"x", b"", deadline=soon())
    with pytest.raises(KeyNotFound, match="no secret key"):
        await pool.key_info("no-such-key", deadline=soon())


async def test_wrong_key_is_invalid_ciphertext(pool: HsmPool) -> None:
    r = await pool.encrypt("demo", b"secret", b"", deadline=soon())
    with pytest.raises(InvalidCiphertext):
        await pool.decrypt(
            KNOWN_KEY_LABEL, iv=r.iv, ciphertext=r.ciphertext, tag=r.tag, aad=b"", deadline=soon()
        )


async def test_probe_and_stats(pool: HsmPool) -> None:
    result = await pool.probe()
    assert result.ok and result.error is None and result.latency_s > 0
    st = pool.stats()
    assert st.state == "ready" and st.sessions == 4 and st.in_use == 0
    assert st.mode == pool.config.mode


def test_pin_never_in_repr(hsm_config: HsmConfig) -> None:
    assert hsm_config.pin not in repr(hsm_config)
    assert hsm_config.pin not in repr(HsmPool(hsm_config))


async def test_threaded_mode_runs_inline_on_softhsm(hsm_config: HsmConfig) -> None:
    pool = HsmPool(dataclasses.replace(hsm_config, mode="threaded"))
    await pool.start()
    try:
        assert pool.stats().mode == "inline"
        r = await pool.encrypt("demo", b"x", b"", deadline=soon())
        assert len(r.iv) == 12
    finally:
        await pool.close()
