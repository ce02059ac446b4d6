"""An HTTP/1.1 answer sent before the request's body was read says ``Connection: close``.

Why a client cares: the server will not read a body it refused (too large, unknown path, wrong
method) and drops the connection after answering; a client that reused it would see its *next*
request fail with no answer at all (CI saw exactly that after an oversized-body test). The ASGI
app in-process here (hypercorn's path); tests/adversarial/test_adv_http.py checks granian's.
"""

from __future__ import annotations

import httpx
from service_helpers import write_config

from hsm.testing import MemoryPool
from xksproxy.config import load_config
from xksproxy.service.app import XksApp

HOST = "xks.example.com"


def _app(tmp_path) -> XksApp:
    pool = MemoryPool("softhsm-0")
    app = XksApp(load_config(write_config(tmp_path), env={}), pool_factory=lambda cfg: pool)
    app.observers.clear()
    return app


async def _send(app: XksApp, method: str, path: str, body: bytes | None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        return await http.request(method, path, content=body)


async def test_refused_before_reading_the_body_closes(tmp_path):
    app = _app(tmp_path)
    await app.startup()
    try:
        # over max_body_bytes by its declared length: refused before a byte is read
        big = await _send(app, "POST", "/nowhere/kms/xks/v1/health", b"x" * 300_000)
        assert big.status_code == 404 and big.headers["connection"] == "close"
        store = "/demo"
        over = await _send(app, "POST", f"{store}/kms/xks/v1/health", b"{" + b" " * 300_000)
        assert over.status_code == 400 and over.headers["connection"] == "close"
        assert over.json()["errorName"] == "ValidationException"
        wrong_method = await _send(app, "PUT", f"{store}/kms/xks/v1/health", b"{}")
        assert wrong_method.status_code == 405 and wrong_method.headers["connection"] == "close"
        # no body to leave behind, or the body was read: the connection stays open
        assert "connection" not in (await _send(app, "GET", "/ping", None)).headers
        empty = await _send(app, "GET", f"{store}/kms/xks/v1/health", None)
        assert empty.status_code == 405 and "connection" not in empty.headers
        unsigned = await _send(app, "POST", f"{store}/kms/xks/v1/health", b"{}")
        assert unsigned.status_code == 401 and "connection" not in unsigned.headers
    finally:
        await app.shutdown()
