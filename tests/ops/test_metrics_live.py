"""Metrics scraped from a real 2-worker server during and after a load run match the client."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from ops_client import encrypt_body, signed
from ops_config import demo_credential, set_option
from ops_server import assert_clean_and_chained, start

from xksproxy.config import load_config

DEADLINE_S = 0.150


@pytest.fixture
def server(config_path):
    set_option(config_path, "metrics", "bind", '""')
    set_option(config_path, "audit", "rotate_bytes", "20000")
    srv = start(config_path, workers=2)
    yield srv
    srv.stop()


def parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def total(m: dict[str, float], prefix: str, *must: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix + "{") and all(x in k for x in must))


async def test_scraped_figures_match_client_counts(server, config_path, cli):
    cred = demo_credential(config_path)
    results: list[tuple[int, float]] = []
    scrapes: list[dict[str, float]] = []

    async def client(http, key: str, n: int) -> None:
        path = f"/demo/kms/xks/v1/keys/{key}/encrypt"
        for _ in range(n):
            body = encrypt_body(b"pt-metrics-7f3a9c")
            t0 = time.monotonic()
            r = await http.post(path, content=body, headers=signed(path, body, cred, server.host))
            results.append((r.status_code, time.monotonic() - t0))

    async def scraper(http, stop: asyncio.Event) -> None:
        while not stop.is_set():
            scrapes.append(parse((await http.get(server.metrics_url)).text))
            await asyncio.sleep(0.2)

    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as http,
        httpx.AsyncClient(timeout=10) as mhttp,
    ):
        stop = asyncio.Event()
        scrape_task = asyncio.create_task(scraper(mhttp, stop))
        await asyncio.gather(
            *(client(http, "demo", 60) for _ in range(4)), client(http, "no-such-key", 30)
        )
        stop.set()
        await scrape_task
        n = len(results)
        deadline = time.monotonic() + 10
        while True:  # workers publish every 0.5 s
            m = parse((await mhttp.get(server.metrics_url)).text)
            if total(m, "xksproxy_requests_total") >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)

    by_status = {code: sum(1 for s, _ in results if s == code) for code, _ in results}
    ok, not_found = by_status.get(200, 0), by_status.get(404, 0)
    # on a shared CI box a few requests may miss their deadline or be shed; counted either way
    assert set(by_status) <= {200, 404, 429, 503}, by_status
    assert ok >= 200 and not_found >= 25, by_status
    assert total(m, "xksproxy_requests_total", 'outcome="ThrottlingException"') == by_status.get(
        429, 0
    )
    assert total(
        m, "xksproxy_requests_total", 'outcome="DependencyTimeoutException"'
    ) == by_status.get(503, 0)
    assert total(m, "xksproxy_requests_total") == n
    assert total(m, "xksproxy_requests_total", 'outcome="ok"', 'keystore="demo"') == ok
    assert total(m, "xksproxy_errors_total", 'errorName="KeyNotFoundException"') == not_found
    # histograms: count == requests, +Inf bucket == count, buckets cumulative
    assert total(m, "xksproxy_request_duration_seconds_count") == n
    assert total(m, "xksproxy_request_duration_seconds_bucket", 'le="+Inf"') == n
    ok_buckets = [
        v
        for k, v in m.items()
        if k.startswith(
            'xksproxy_request_duration_seconds_bucket{keystore="demo",operation="encrypt",'
            'outcome="ok"'
        )
    ]
    assert ok_buckets == sorted(ok_buckets) and ok_buckets[-1] == ok
    # every 200 made one HSM call; a request whose HSM call returned past its deadline was
    # answered 503 yet still made that call
    hsm_calls = total(m, "xksproxy_hsm_call_duration_seconds_count", 'operation="encrypt"')
    assert ok <= hsm_calls <= ok + by_status.get(503, 0)
    # SLO figures agree with what the client saw
    assert total(m, "xksproxy_slo_requests_total") == n
    good = total(m, "xksproxy_slo_good_requests_total")
    client_fast = sum(1 for s, dt in results if s < 500 and dt <= DEADLINE_S)
    assert client_fast <= good <= n
    assert m["xksproxy_slo_within_budget_ratio"] == pytest.approx(good / n)
    burn = m['xksproxy_slo_error_budget_burn_rate{window="5m"}']
    assert burn == pytest.approx(((n - good) / n) / (1 - m["xksproxy_slo_objective"]))
    assert m["xksproxy_workers"] == 2
    assert m['xksproxy_hsm_sessions{token="softhsm-0"}'] == 8  # 4 per worker
    # scraped during the run: figures only ever grow
    seen = [total(s, "xksproxy_requests_total") for s in scrapes]
    assert len(seen) >= 2 and seen == sorted(seen)
    # the audit log of both workers: one chain over rotated files, one record per request
    server.stop()
    assert assert_clean_and_chained(server, config_path, [b"pt-metrics-7f3a9c"]) == n
    audit_dir = load_config(config_path).audit.file.parent
    assert len(list(audit_dir.glob("*.log"))) >= 3  # rotated at 20 kB
    everything = [str(p) for p in sorted(audit_dir.iterdir())]  # a shell glob: .head/.lock too
    r = cli("audit", "verify", *everything, "--config", str(config_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"OK: {n} records" in r.stdout
