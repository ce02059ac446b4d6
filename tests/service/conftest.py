"""Fixtures for the service tests: a real SoftHSMv2 token with the demo keys, and the app.

The token is the session-wide ``hsm_token`` (tests/conftest.py, a tmp dir, never
~/.local/state).  Each app test
gets its own config directory and its own app instance (own HSM pool), started and stopped
through the same startup/shutdown the ASGI lifespan uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from service_helpers import AKID, AKID2, SECRET, SECRET2, write_config

import sigv4

HOST = "xks.example.com"


@pytest.fixture(scope="session")
def service_token(hsm_token):
    """The suite-wide token (tests/conftest.py): SOFTHSM2_CONF is per process, so share it."""
    return hsm_token


def hsm_table(tok) -> str:
    return f'''
[[hsm]]
name = "softhsm-0"
model = "SoftHSMv2 test"
module = "{tok.module_path}"
token_label = "{tok.token_label}"
pin = "file:{tok.user_pin_file}"
[hsm.env]
SOFTHSM2_CONF = "{tok.conf_path}"
'''


STORES = f'''
[[keystore]]
name = "demo"
path_prefix = "/demo"
hsm = "softhsm-0"
keys = ["demo", "demo-encrypt-only", "demo-decrypt-only", "demo-no-usage", "missing-on-hsm",
        "known"]
disabled_keys = ["demo-decrypt-only"]
[keystore.key_labels]
known = "test-known-material"
[[keystore.deny]]
name = "no-root"
principal = "arn:aws:iam::*:root"
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo-1.secret"

[[keystore]]
name = "other"
path_prefix = "/other/tenant"
hsm = "softhsm-0"
keys = ["*"]
enabled = false
[[keystore.credentials]]
access_key_id = "{AKID2}"
secret = "file:secrets/other.secret"
'''


@dataclass
class Client:
    """Signs and sends XKS requests to the in-process app."""

    http: httpx.AsyncClient
    log: list[bytes]

    async def post(
        self,
        path: str,
        body: bytes,
        *,
        akid: str = AKID,
        secret: str = SECRET,
        region: str = "us-east-1",
        headers: dict | None = None,
    ) -> httpx.Response:
        hdrs = {"content-type": "application/json"}
        hdrs.update(
            sigv4.sign(
                method="POST",
                host=HOST,
                path=path,
                headers=hdrs,
                body=body,
                credential=sigv4.Credential(akid, secret),
                region=region,
            )
        )
        hdrs.update(headers or {})
        return await self.http.post(path, content=body, headers=hdrs)


@pytest.fixture
def config_path(tmp_path, service_token) -> Path:
    return write_config(tmp_path, hsm_table=hsm_table(service_token), keystores=STORES)


@pytest.fixture
async def app(config_path):
    from xksproxy.config import load_config
    from xksproxy.service.app import XksApp

    application = XksApp(load_config(config_path, env={}))
    await application.startup()
    try:
        yield application
    finally:
        await application.shutdown()


@pytest.fixture
async def client(app):
    from xksproxy.observe.requestlog import RequestLog

    lines: list[bytes] = []
    app.observers[:] = [RequestLog(sink=lines.append).observe]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        yield Client(http, lines)


__all__ = ["AKID2", "SECRET2"]
