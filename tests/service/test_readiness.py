"""GET/HEAD /ready: what a load balancer's health check sees (app in-process, MemoryPool HSM)."""

from __future__ import annotations

import httpx
import pytest
from service_helpers import write_config

from hsm.errors import HsmUnavailable
from hsm.testing import MemoryPool
from xksproxy.config import ConfigError, load_config
from xksproxy.service.app import XksApp
from xksproxy.service.readiness import Drain

HOST = "xks.example.com"


@pytest.fixture
def pool() -> MemoryPool:
    return MemoryPool("softhsm-0")


@pytest.fixture
def app(tmp_path, pool) -> XksApp:
    app = XksApp(load_config(write_config(tmp_path), env={}), pool_factory=lambda cfg: pool)
    app.observers.clear()
    return app


async def _get(app: XksApp, path: str = "/ready", method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        return await http.request(method, path)


async def test_ready_before_start_is_503_starting(app):
    resp = await _get(app)
    assert resp.status_code == 503
    assert resp.json() == {"ready": False, "reason": "starting: HSM pools not open yet"}
    assert (await _get(app, "/ping")).status_code == 200  # liveness is not readiness


async def test_ready_after_start_is_200_and_head_has_no_body(app):
    await app.startup()
    try:
        resp = await _get(app)
        assert resp.status_code == 200 and resp.json() == {"ready": True}
        assert "connection" not in resp.headers
        head = await _get(app, method="HEAD")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(b'{"ready":true}'))
    finally:
        await app.shutdown()


async def test_ready_refuses_other_methods(app):
    resp = await _get(app, method="POST")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"


async def test_ready_is_503_naming_the_hsm_when_its_probe_fails(app, pool):
    await app.startup()
    try:
        pool.fail("probe", HsmUnavailable("token gone"))
        await app.health.probe_all()
        resp = await _get(app)
        assert resp.status_code == 503
        reason = resp.json()["reason"]
        assert reason.startswith("key store ") and "HSM softhsm-0 is UNAVAILABLE" in reason
        assert "token gone" not in reason  # HSM error text stays in the service log
        pool.fail("probe", None)
        await app.health.probe_all()
        assert (await _get(app)).status_code == 200
    finally:
        await app.shutdown()


async def test_drain_flag_file_turns_ready_503_and_closes_http11_connections(app, tmp_path):
    flag = tmp_path / "draining"
    app.drain = Drain(str(flag))
    await app.startup()
    try:
        assert (await _get(app)).status_code == 200
        flag.touch()  # what the launcher does on SIGTERM
        resp = await _get(app)
        assert resp.status_code == 503
        assert resp.json() == {"ready": False, "reason": "draining: the proxy is shutting down"}
        assert resp.headers["connection"] == "close"
        flag.unlink()  # a drain is never undone
        assert (await _get(app)).status_code == 503
    finally:
        await app.shutdown()


def test_drain_grace_is_validated(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text()
    for value, ok in (("0", True), ("2.5", True), ("301", False), ("-1", False), ('"x"', False)):
        path.write_text(text.replace("[server]\n", f"[server]\ndrain_grace_s = {value}\n", 1))
        if ok:
            assert load_config(path, env={}).server.drain_grace_s == float(value)
        else:
            with pytest.raises(ConfigError, match=r"server\.drain_grace_s"):
                load_config(path, env={})


def test_drain_grace_env_override(tmp_path):
    path = write_config(tmp_path)
    assert load_config(path, env={"XKSPROXY_DRAIN_GRACE_S": "1.5"}).server.drain_grace_s == 1.5
    for bad in ("x", "-1", "301"):
        with pytest.raises(ConfigError, match="XKSPROXY_DRAIN_GRACE_S"):
            load_config(path, env={"XKSPROXY_DRAIN_GRACE_S": bad})


def test_metrics_bind_env_override(tmp_path):
    path = write_config(tmp_path)
    assert load_config(path, env={"XKSPROXY_METRICS_BIND": ""}).metrics.bind is None
    cfg = load_config(path, env={"XKSPROXY_METRICS_BIND": "127.0.0.1:9555"})
    assert cfg.metrics.bind == "127.0.0.1:9555"
    with pytest.raises(ConfigError, match="XKSPROXY_METRICS_BIND"):
        load_config(path, env={"XKSPROXY_METRICS_BIND": "nonsense"})
