"""A key store's quota is host-wide across 2 workers, and only that store is throttled."""

from __future__ import annotations

import asyncio
import time

import httpx
from ops_client import encrypt_body, signed
from ops_config import add_store, demo_credential, set_option
from ops_server import start

RATE, BURST = 10, 10


async def test_quota_is_host_wide_and_per_store(config_path):
    set_option(config_path, "metrics", "bind", '""')
    set_option(config_path, "logging", "request_log", "false")
    busy = add_store(config_path, "busy", "/busy", rate=RATE, burst=BURST)
    demo = demo_credential(config_path)
    srv = start(config_path, workers=2)
    try:
        counts: dict[str, dict[int, int]] = {"busy": {}, "demo": {}}

        async def client(store: str, cred, n: int) -> None:
            path = f"/{store}/kms/xks/v1/keys/demo/encrypt"
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
                for _ in range(n):
                    body = encrypt_body(b"pt-quota-93be")
                    r = await http.post(
                        path, content=body, headers=signed(path, body, cred, srv.host)
                    )
                    counts[store][r.status_code] = counts[store].get(r.status_code, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(
            *(client("busy", busy, 40) for _ in range(4)),
            *(client("demo", demo, 40) for _ in range(2)),
        )
        elapsed = time.monotonic() - t0
    finally:
        srv.stop()
    assert counts["demo"] == {200: 80}, counts
    assert set(counts["busy"]) <= {200, 429}, counts
    allowed = counts["busy"].get(200, 0)
    # host-wide: at most the burst plus rate x elapsed (each worker enforces half of each)
    assert BURST // 2 <= allowed <= BURST + RATE * elapsed + 2, (allowed, elapsed)
    assert counts["busy"].get(429, 0) > 0
