"""Fixtures for the custody tests: an in-process app on a MemoryPool (the lifecycle documents
live in the pool, as they live in the HSM for the real one), and a client for it."""

from __future__ import annotations

import httpx
import pytest
from custody_http import HOST, Client, write_config

from hsm.testing import MemoryPool


@pytest.fixture
def pool() -> MemoryPool:
    p = MemoryPool("mem")
    p.add_key("k")
    p.add_key("d")
    return p


@pytest.fixture
async def app(tmp_path, pool):
    from xksproxy.config import load_config
    from xksproxy.service.app import XksApp

    application = XksApp(load_config(write_config(tmp_path), env={}), pool_factory=lambda c: pool)
    application.observers.clear()  # no request log on stdout
    await application.startup()
    try:
        yield application
    finally:
        await application.shutdown()


@pytest.fixture
async def client(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        yield Client(http)
