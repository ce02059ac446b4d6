"""MemberSet rules on in-memory members: spread, failover, no silent switch, drain, reinstate."""

from __future__ import annotations

import asyncio
import time

import pytest

from hsm.backend import MemberSet, is_device_fault
from hsm.errors import HsmFailure, HsmUnavailable, InvalidCiphertext, KeyNotFound, SessionTimeout
from hsm.testing import MemoryPool

KEY = bytes(range(32))


def _pair() -> tuple[MemberSet, MemoryPool, MemoryPool]:
    a, b = MemoryPool("a"), MemoryPool("b")
    for p in (a, b):
        p.add_key("k", material=KEY)
    return MemberSet("main", [("a", a), ("b", b)], reprobe_s=0.02), a, b


def _deadline() -> float:
    return time.monotonic() + 2.0


async def test_calls_spread_over_members() -> None:
    ms, a, b = _pair()
    await ms.start()
    try:
        for _ in range(10):
            await ms.encrypt("k", b"x", b"", deadline=_deadline())
        assert a.calls["encrypt"] == 5 and b.calls["encrypt"] == 5
    finally:
        await ms.close()


async def test_device_error_fails_over_and_member_comes_back_after_probe() -> None:
    ms, a, _b = _pair()
    await ms.start()
    try:
        a.fail("encrypt", HsmUnavailable("module down"))
        a.fail("probe", HsmUnavailable("module down"))
        for _ in range(6):  # every call succeeds: the failing member is retried elsewhere
            await ms.encrypt("k", b"x", b"", deadline=_deadline())
        states = {v.name: v for v in ms.views()}
        assert states["a"].state == "failed" and states["a"].failovers == 1
        assert a.calls["encrypt"] == 1  # taken out at once: never chosen again
        a.fail("encrypt", None)
        a.fail("probe", None)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if {v.name: v.state for v in ms.views()}["a"] == "active":
                break
        assert {v.name: v.state for v in ms.views()}["a"] == "active"
    finally:
        await ms.close()


async def test_answers_from_the_hsm_are_never_retried_elsewhere() -> None:
    ms, a, b = _pair()
    await ms.start()
    try:
        ct = await ms.encrypt("k", b"secret", b"", deadline=_deadline())
        for fault in (InvalidCiphertext("tag"), KeyNotFound("k")):
            a.fail("decrypt", fault)
            b.fail("decrypt", fault)
            with pytest.raises(type(fault)):
                await ms.decrypt(
                    "k",
                    iv=ct.iv,
                    ciphertext=ct.ciphertext,
                    tag=ct.tag,
                    aad=b"",
                    deadline=_deadline(),
                )
        assert a.calls["decrypt"] + b.calls["decrypt"] == 2  # one call each, no retry
        assert all(v.state == "active" for v in ms.views())
    finally:
        await ms.close()


async def test_drain_keeps_inflight_and_refuses_last_member() -> None:
    ms, a, b = _pair()
    await ms.start()
    try:
        a.delay("encrypt", 0.1)
        b.delay("encrypt", 0.1)
        inflight = [
            asyncio.create_task(ms.encrypt("k", b"x", b"", deadline=_deadline())) for _ in range(4)
        ]
        await asyncio.sleep(0.01)
        ms.drain("a")
        results = await asyncio.gather(*inflight)  # nothing in flight fails
        assert len(results) == 4
        before = a.calls["encrypt"]
        for _ in range(4):
            await ms.encrypt("k", b"x", b"", deadline=_deadline())
        assert a.calls["encrypt"] == before
        with pytest.raises(ValueError, match="last member"):
            ms.drain("b")
        assert (await ms.undrain("a")).ok
        assert {v.name: v.state for v in ms.views()} == {"a": "active", "b": "active"}
    finally:
        await ms.close()


async def test_undrain_needs_a_passing_probe() -> None:
    ms, a, _ = _pair()
    await ms.start()
    try:
        ms.drain("a")
        a.fail("probe", HsmUnavailable("still upgrading"))
        assert not (await ms.undrain("a")).ok
        assert {v.name: v.state for v in ms.views()}["a"] == "drained"
    finally:
        await ms.close()


async def test_member_that_cannot_start_is_out_until_it_can() -> None:
    ms, a, b = _pair()
    a.fail("start", HsmUnavailable("no token"))
    await ms.start()
    try:
        assert {v.name: v.state for v in ms.views()}["a"] == "failed"
        await ms.encrypt("k", b"x", b"", deadline=_deadline())
        assert b.calls["encrypt"] == 1
    finally:
        await ms.close()


def test_device_fault_classification() -> None:
    assert is_device_fault(HsmUnavailable("x"))
    assert is_device_fault(SessionTimeout("the HSM did not answer before the deadline"))
    assert not is_device_fault(SessionTimeout("no HSM session became free before the deadline"))
    assert is_device_fault(HsmFailure("C_Encrypt failed: CKR_DEVICE_ERROR", 0x30))
    assert not is_device_fault(HsmFailure("C_Encrypt failed: CKR_MECHANISM_INVALID", 0x70))
    assert not is_device_fault(InvalidCiphertext("tag"))
    # the HSM answered something we refuse (two lifecycle objects while one is replaced)
    assert not is_device_fault(HsmFailure("2 custody objects for key 'k'"))


async def test_member_metrics_count_calls_errors_failovers_and_state() -> None:
    from xksproxy.observe.metrics import REGISTRY
    from xksproxy.observe.metrics import members as member_metrics

    REGISTRY.reset()
    ms, a, _ = _pair()
    await ms.start()
    try:
        member_metrics.install({"main": ms})
        a.fail("encrypt", HsmUnavailable("down"))
        a.fail("probe", HsmUnavailable("down"))
        for _ in range(4):
            await ms.encrypt("k", b"x", b"", deadline=_deadline())
        snap = REGISTRY.snapshot()
        counters = {(n, tuple(map(tuple, lb))): v for n, lb, v in snap["counters"]}
        gauges = {(n, tuple(map(tuple, lb))): v for n, lb, v in snap["gauges"]}
        a_lb = (("backend", "main"), ("member", "a"))
        assert counters[("xksproxy_hsm_member_failovers_total", a_lb)] == 1
        assert counters[("xksproxy_hsm_member_errors_total", a_lb)] == 1
        b_calls = ("xksproxy_hsm_member_calls_total",
                   (("backend", "main"), ("member", "b"), ("operation", "encrypt")))  # fmt: skip
        assert counters[b_calls] == 4
        assert gauges[("xksproxy_hsm_member_state", (*a_lb, ("state", "failed")))] == 1.0
        assert any(n == "xksproxy_hsm_member_call_duration_seconds" for n, _, _ in snap["hists"])
    finally:
        await ms.close()
        REGISTRY.reset()


async def test_a_member_answering_wrongly_is_an_error_not_a_silent_switch() -> None:
    a, b = MemoryPool("a"), MemoryPool("b")
    a.add_key("k", material=KEY)
    b.add_key("k", material=bytes(32))  # drift: same label, other key material
    ms = MemberSet("main", [("a", a), ("b", b)])
    await ms.start()
    try:
        ct = await a.encrypt("k", b"only a can read this", b"", deadline=_deadline())
        outcomes = []
        for _ in range(4):
            try:
                await ms.decrypt(
                    "k", iv=ct.iv, ciphertext=ct.ciphertext, tag=ct.tag, aad=b"",
                    deadline=_deadline(),
                )  # fmt: skip
                outcomes.append("ok")
            except InvalidCiphertext:
                outcomes.append("InvalidCiphertext")
        assert sorted(outcomes) == ["InvalidCiphertext"] * 2 + ["ok"] * 2
        assert b.calls["decrypt"] == 2 and a.calls["decrypt"] == 2  # b's answers never retried
    finally:
        await ms.close()
