"""The request path on the in-memory pool (hsm.testing.MemoryPool): the dispatch table, start-up
only in the lifespan, and admission around every pool method. Nothing here is about the HSM."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import httpx
import orjson
import pytest
from service_helpers import AKID, SECRET, b64, metadata, write_config

import sigv4
from hsm.errors import (
    HsmFailure,
    HsmUnavailable,
    InvalidCiphertext,
    KeyNotFound,
    SessionTimeout,
)
from hsm.interface import CryptoPool
from hsm.testing import MemoryPool
from xksproxy.config import load_config
from xksproxy.service import admission
from xksproxy.service.admission import Admission, GuardedPool
from xksproxy.service.app import XksApp
from xksproxy.service.dispatch import BINDINGS, HealthOperation, KeyOperation
from xksproxy.xks import errors
from xksproxy.xks.operations import OPERATIONS

HOST = "xks.example.com"
BASE = "/demo/kms/xks/v1"
ENC = f"{BASE}/keys/demo/encrypt"
DEC = f"{BASE}/keys/demo/decrypt"
META = f"{BASE}/keys/demo/metadata"
HEALTH = f"{BASE}/health"


def body(op: str = "Encrypt", **fields: object) -> bytes:
    return orjson.dumps({"requestMetadata": metadata(op), **fields})


ENC_BODY = body(plaintext=b64(b"k" * 32), encryptionAlgorithm="AES_GCM")


class Signer:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(self, path: str, data: bytes) -> httpx.Response:
        hdrs = {"content-type": "application/json"}
        hdrs.update(
            sigv4.sign(
                method="POST",
                host=HOST,
                path=path,
                headers=hdrs,
                body=data,
                credential=sigv4.Credential(AKID, SECRET),
                region="us-east-1",
            )
        )
        return await self.http.post(path, content=data, headers=hdrs)


@pytest.fixture
def pool() -> MemoryPool:
    p = MemoryPool("softhsm-0")
    for label in ("demo", "demo-encrypt-only", "demo-decrypt-only", "demo-no-usage"):
        usage = {
            "demo": {"ENCRYPT", "DECRYPT"},
            "demo-encrypt-only": {"ENCRYPT"},
            "demo-decrypt-only": {"DECRYPT"},
            "demo-no-usage": set(),
        }[label]
        p.add_key(label, usage)
    return p


@pytest.fixture
def memory_app(tmp_path, pool) -> XksApp:
    """An app whose pool factory hands out ``pool``; not started (tests start it or not)."""
    app = XksApp(load_config(write_config(tmp_path), env={}), pool_factory=lambda cfg: pool)
    app.observers.clear()  # no request log on stdout
    return app


@pytest.fixture
async def signer(memory_app):
    transport = httpx.ASGITransport(app=memory_app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        yield Signer(http)


# -- the table -------------------------------------------------------------------------------------


def test_dispatch_table_binds_every_operation_once():
    assert set(BINDINGS) == set(OPERATIONS)
    for name, binding in BINDINGS.items():
        assert binding.spec is OPERATIONS[name]
        assert isinstance(binding, KeyOperation) == binding.spec.takes_key
        assert isinstance(binding, HealthOperation) == (not binding.spec.takes_key)
    api = {name: (s.api_name, s.key_usage, s.audit_kind) for name, s in OPERATIONS.items()}
    assert api == {
        "health": ("GetHealthStatus", None, "health"),
        "metadata": ("GetKeyMetadata", None, "describe"),
        "encrypt": ("Encrypt", "ENCRYPT", "crypto"),
        "decrypt": ("Decrypt", "DECRYPT", "crypto"),
    }


# -- start-up only in the lifespan -----------------------------------------------------------------

_UNAVAILABLE = (500, "InternalException", "the HSM failed to process the request")


def _answer(resp: httpx.Response) -> tuple[int, str, str]:
    doc = resp.json()
    return resp.status_code, doc["errorName"], doc["errorMessage"]


async def test_never_started_app_answers_hsm_unavailable(memory_app, signer, pool):
    assert (
        errors.to_xks_error(HsmUnavailable("x")).body()
        == errors.InternalException(_UNAVAILABLE[2]).body()
    )  # the same answer the HsmUnavailable mapping gives
    assert _answer(await signer.post(ENC, ENC_BODY)) == _UNAVAILABLE
    assert _answer(await signer.post(META, body("DescribeKey"))) == _UNAVAILABLE
    resp = await signer.post(HEALTH, body("GetHealthStatus"))
    assert resp.status_code == 200
    doc = resp.json()
    assert [e["healthStatus"] for e in doc["ekmFleetDetails"]] == ["UNAVAILABLE"]
    assert {"xksProxyFleetSize", "xksProxyVendor", "xksProxyModel", "ekmVendor"} <= set(doc)
    # key rules still apply first, and nothing started the pool in the middle of a request
    resp = await signer.post(f"{BASE}/keys/not-listed/metadata", body("DescribeKey"))
    assert resp.json()["errorName"] == "KeyNotFoundException"
    assert pool.calls["start"] == 0 and not memory_app.pools


async def test_started_then_shut_down_app_answers_unavailable_again(memory_app, signer, pool):
    await memory_app.startup()
    try:
        resp = await signer.post(HEALTH, body("GetHealthStatus"))
        assert resp.json()["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
        assert (await signer.post(ENC, ENC_BODY)).status_code == 200
    finally:
        await memory_app.shutdown()
    assert _answer(await signer.post(ENC, ENC_BODY)) == _UNAVAILABLE
    resp = await signer.post(HEALTH, body("GetHealthStatus"))
    assert resp.json()["ekmFleetDetails"][0]["healthStatus"] == "UNAVAILABLE"
    assert pool.calls["start"] == 1


# -- the request path on the memory pool -----------------------------------------------------------


async def test_round_trip_and_key_rules_on_the_memory_pool(memory_app, signer, pool):
    await memory_app.startup()
    try:
        enc = (await signer.post(ENC, ENC_BODY)).json()
        dec_fields = {
            k: enc[k]
            for k in (
                "ciphertext",
                "initializationVector",
                "authenticationTag",
                "ciphertextMetadata",
            )
        }
        resp = await signer.post(DEC, body("Decrypt", encryptionAlgorithm="AES_GCM", **dec_fields))
        assert resp.json() == {"plaintext": b64(b"k" * 32)}
        resp = await signer.post(f"{BASE}/keys/demo-decrypt-only/encrypt", ENC_BODY)
        assert resp.json()["errorName"] == "InvalidKeyUsageException"
        resp = await signer.post(META, body("DescribeKey"))
        assert resp.json()["keyUsage"] == ["ENCRYPT", "DECRYPT"]
        assert pool.calls["encrypt"] == 2 and pool.calls["decrypt"] == 1  # refused ones count
    finally:
        await memory_app.shutdown()


@pytest.mark.parametrize(
    "fault,status,name",
    [
        (SessionTimeout("slow"), 503, "DependencyTimeoutException"),
        (HsmUnavailable("down"), 500, "InternalException"),
        (KeyNotFound("gone"), 404, "KeyNotFoundException"),
    ],
)
async def test_pool_faults_map_to_xks_errors(memory_app, signer, pool, fault, status, name):
    await memory_app.startup()
    try:
        pool.fail("encrypt", fault)
        resp = await signer.post(ENC, ENC_BODY)
        assert (resp.status_code, resp.json()["errorName"]) == (status, name)
        pool.fail("encrypt", None)
        assert (await signer.post(ENC, ENC_BODY)).status_code == 200
    finally:
        await memory_app.shutdown()


async def test_a_500_raised_as_an_xks_error_is_logged_with_its_cause(
    memory_app, signer, pool, caplog
):
    """The CDIV round-trip check failing is a 500 the handler raises as an XksError: the caller
    gets the fixed message, the operator's log gets the line and the HSM's cause."""
    await memory_app.startup()
    try:
        pool.fail("decrypt", HsmFailure("C_Decrypt failed: CKR_DEVICE_ERROR", 0x30))
        with caplog.at_level(logging.ERROR, logger="xksproxy.app"):
            resp = await signer.post(ENC, body(
                plaintext=b64(b"k" * 32), encryptionAlgorithm="AES_GCM",
                ciphertextDataIntegrityValueAlgorithm="SHA_256"))  # fmt: skip
        assert (resp.status_code, resp.json()["errorName"]) == (500, "InternalException")
        assert "CKR_DEVICE_ERROR" not in resp.text
        failed = [r for r in caplog.records if r.getMessage() == "request failed"]
        assert len(failed) == 1 and failed[0].exc_info is not None
        assert "CKR_DEVICE_ERROR" in caplog.text
    finally:
        await memory_app.shutdown()


# -- GuardedPool: every CryptoPool method explicit; the request's work admitted and measured -----


def _protocol_methods() -> list[str]:
    return sorted(
        name
        for name, member in vars(CryptoPool).items()
        if not name.startswith("_") and inspect.isfunction(member)
    )


def test_guarded_pool_defines_every_protocol_method_itself():
    assert "__getattr__" not in vars(GuardedPool)
    assert set(_protocol_methods()) <= set(vars(GuardedPool))
    assert set(_protocol_methods()) <= set(vars(MemoryPool))


async def test_guarded_pool_forwards_every_method(monkeypatch):
    measured: list[tuple[object, float, float]] = []
    monkeypatch.setattr(admission.metrics, "observe_hsm_op", lambda k, w, c: measured.append(k))
    inner = MemoryPool("m")
    inner.add_key("k")
    adm = Admission(10, initial_call_s=1.0)
    guarded = GuardedPool(inner, "m", adm)
    assert isinstance(guarded, CryptoPool)
    deadline = time.monotonic() + 5.0

    await guarded.start()
    info = await guarded.key_info("k", deadline=deadline)
    sealed = await guarded.encrypt("k", b"p", b"a", deadline=deadline)
    plain = await guarded.decrypt(
        "k", iv=sealed.iv, ciphertext=sealed.ciphertext, tag=sealed.tag, aad=b"a", deadline=deadline
    )
    probe = await guarded.probe()
    inner.set_document("k", b"{}")
    assert await guarded.custody("k", deadline=deadline) == b"{}"
    assert await guarded.custody("other", deadline=deadline) is None
    stats = guarded.stats()
    assert guarded.queue_state() == (4, 0, 0)
    await guarded.close()

    assert info.usage == {"ENCRYPT", "DECRYPT"} and plain == b"p" and probe.ok
    assert stats.state == "ready" and guarded.stats().state == "stopped"
    assert {k: inner.calls[k] for k in ("start", "key_info", "encrypt", "decrypt", "probe")} == {
        "start": 1,
        "key_info": 1,
        "encrypt": 1,
        "decrypt": 1,
        "probe": 1,
    }
    assert inner.calls["custody"] == 2
    # the three request operations were measured (and fed the admission estimate); probe and
    # the (cached, resolver-side) custody reads not
    assert len(measured) == 3 and adm.call_ewma_s < 1.0
    called = {"start", "key_info", "encrypt", "decrypt", "custody", "probe", "stats", "close"}
    assert called == set(_protocol_methods())  # this test covers every Protocol method


async def test_guarded_pool_refuses_before_calling_the_inner_pool(monkeypatch):
    monkeypatch.setattr(admission.metrics, "observe_throttled", lambda ctx, reason: None)
    inner = MemoryPool("m", sessions=1)
    inner.add_key("k")
    await inner.start()
    monkeypatch.setattr(inner, "queue_state", lambda: (1, 1, 50))  # a deep queue
    guarded = GuardedPool(inner, "m", Admission(10, initial_call_s=1.0))
    with pytest.raises(errors.ThrottlingException):
        await guarded.encrypt("k", b"p", b"", deadline=time.monotonic() + 0.2)
    assert inner.calls["encrypt"] == 0


# -- the double itself keeps HsmPool's observable contract ---------------------------------------


async def test_memory_pool_follows_the_pool_contract():
    pool = MemoryPool("m", sessions=1, max_plaintext_bytes=4300)
    pool.add_key("k", {"ENCRYPT", "DECRYPT"})
    deadline = time.monotonic() + 5.0
    with pytest.raises(HsmUnavailable):
        await pool.key_info("k", deadline=deadline)  # before start
    await pool.start()
    with pytest.raises(KeyNotFound):
        await pool.key_info("nope", deadline=deadline)
    with pytest.raises(ValueError):
        await pool.encrypt("k", b"x" * 4301, b"", deadline=deadline)
    sealed = await pool.encrypt("k", b"p", b"aad", deadline=deadline)
    assert len(sealed.iv) == 12 and len(sealed.tag) == 16
    with pytest.raises(InvalidCiphertext):
        await pool.decrypt(
            "k",
            iv=sealed.iv,
            ciphertext=sealed.ciphertext,
            tag=sealed.tag,
            aad=b"x",
            deadline=deadline,
        )
    pool.delay("decrypt", 10.0)  # longer than the deadline below: times out at the deadline
    with pytest.raises(SessionTimeout):
        await pool.decrypt(
            "k",
            iv=sealed.iv,
            ciphertext=sealed.ciphertext,
            tag=sealed.tag,
            aad=b"aad",
            deadline=time.monotonic() + 0.01,
        )
    assert pool.queue_state() == (1, 0, 0)  # the slot was given back
    pool.fail("probe", HsmUnavailable("down"))
    assert not (await pool.probe()).ok
    await pool.close()
    assert pool.stats().state == "stopped"


# -- the CDIV's verifying decrypt ----------------------------------------------------------------


async def test_an_admitted_request_is_not_refused_at_its_second_hsm_call(monkeypatch):
    """The session-queue gate charges a request once: an Encrypt's verifying decrypt is never
    refused after its encrypt was admitted (the encrypt's work would be thrown away), while a new
    request meeting the same queue is."""
    import contextvars

    from xksproxy.observe.requestlog import RequestContext

    monkeypatch.setattr(admission.metrics, "observe_throttled", lambda ctx, reason: None)
    inner = MemoryPool("m", sessions=1)
    inner.add_key("k")
    await inner.start()
    guarded = GuardedPool(inner, "m", Admission(10, initial_call_s=1.0))
    deadline = time.monotonic() + 0.2

    async def one_request(queue_before_check: bool) -> None:
        admission._REQUEST.set(RequestContext(time.monotonic(), deadline, operation="encrypt"))
        if queue_before_check:  # the queue is already deep when the request arrives
            monkeypatch.setattr(inner, "queue_state", lambda: (1, 1, 50))
        sealed = await guarded.encrypt("k", b"p", b"", deadline=deadline)
        monkeypatch.setattr(inner, "queue_state", lambda: (1, 1, 50))  # grew meanwhile
        plain = await guarded.decrypt(
            "k", iv=sealed.iv, ciphertext=sealed.ciphertext, tag=sealed.tag, aad=b"",
            deadline=deadline,
        )  # fmt: skip
        assert plain == b"p"

    await contextvars.copy_context().run(asyncio.create_task, one_request(False))
    assert inner.calls["decrypt"] == 1
    with pytest.raises(errors.ThrottlingException):
        await contextvars.copy_context().run(asyncio.create_task, one_request(True))
    assert inner.calls["encrypt"] == 1  # the second request was refused before any HSM work
