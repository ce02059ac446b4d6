"""An audit writer that cannot keep up: no Encrypt is answered 200 without its record.

A real app on a real SoftHSMv2 token, its audit queue made small and its disk stalled (the one
``write`` of a batch waits until the test lets it go): once the queue is full, Encrypt fails
with 429 ThrottlingException instead of succeeding unrecorded; every 200 is on the chain, the
refused requests are counted there (``droppedBefore``) and in the metrics, and the chain still
verifies.
"""

from __future__ import annotations

import os
import threading

import httpx
import orjson
import pytest
from ops_client import encrypt_body, signed
from ops_config import demo_credential, set_option

from xksproxy.config import load_config
from xksproxy.observe import audit, metrics
from xksproxy.observe.audit import main_verify
from xksproxy.observe.audit import writer as writer_mod

HOST = "xks.test"
ENCRYPT = "/demo/kms/xks/v1/keys/demo/encrypt"


@pytest.fixture
def stalled_disk(monkeypatch):
    """The audit writer's batch write blocks until the returned event is set."""
    release = threading.Event()

    def stalled(fd: int, data: bytes) -> int:
        release.wait(60)  # bounded: a failing test must not hang the suite
        return os.write(fd, data)

    monkeypatch.setattr(writer_mod, "_write_fd", stalled)
    try:
        yield release
    finally:
        release.set()


async def test_a_full_audit_queue_fails_encrypt_instead_of_losing_its_record(
    config_path, stalled_disk
):
    metrics.REGISTRY.reset()
    set_option(config_path, "server", "plain_http", "true")
    set_option(config_path, "logging", "request_log", "false")
    config = load_config(config_path)
    from xksproxy.service.app import XksApp

    app = XksApp(config)
    audit_log = audit.install(app, queue_size=4)
    assert audit_log is not None
    await app.startup()
    demo = demo_credential(config_path)
    answered: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}"
        ) as http:
            for _ in range(30):
                body = encrypt_body(b"backlog")
                request_id = orjson.loads(body)["requestMetadata"]["kmsRequestId"]
                headers = signed(ENCRYPT, body, demo, HOST)
                r = await http.post(ENCRYPT, content=body, headers=headers)
                assert r.status_code in (200, 429), r.text
                if r.status_code == 429:
                    assert r.json()["errorName"] == "ThrottlingException"
                answered[request_id] = r.status_code
    finally:
        stalled_disk.set()  # the disk catches up
        await app.shutdown()  # writes what is queued
    ok = {rid for rid, status in answered.items() if status == 200}
    refused = len(answered) - len(ok)
    # At most one stalled batch plus a full queue got through; the rest was refused.
    assert ok and refused >= 30 - 2 * 4
    recs = [orjson.loads(line) for line in config.audit.file.read_bytes().splitlines()]
    assert {r["kmsRequestId"] for r in recs if r["outcome"] == "ok"} == ok
    assert all(r["kmsOperation"] == "Encrypt" and r["status"] == 200 for r in recs)
    assert sum(r.get("droppedBefore", 0) for r in recs) == refused  # the refusals' own records
    assert main_verify([str(config.audit.file)], key=config.audit.key) == 0
    text = metrics.exposition(None, metrics.SloTracker())
    assert f'xksproxy_throttled_total{{keystore="demo",reason="audit_backlog"}} {refused}' in text
