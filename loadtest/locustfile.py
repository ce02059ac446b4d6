"""Locust scenario: the KMS call mix against any XKS proxy, each request freshly SigV4-signed.

Mix (weights): Encrypt 60 (32-byte data key, 64-byte AAD, CDIV), Decrypt 35 (of ciphertexts this
user made), GetKeyMetadata 4, GetHealthStatus 1. One keep-alive connection per user, as KMS does.

Target (command line or env): ``--host https://127.0.0.1:8443`` (or ``XKS_URL``), and either
``XKS_STATE_DIR=<state dir>`` (reads its kms-console.json) or ``XKS_URI_PATH``,
``XKS_ACCESS_KEY_ID``, ``XKS_SECRET``; optional ``XKS_KEY_ID`` (default ``demo``), ``XKS_REGION``.
Each has a command-line twin (``--xks-state-dir``, ``--xks-uri-path``, ``--xks-access-key-id``,
``--xks-secret``, ``--xks-key-id``, ``--xks-region``).
Rate: ``--xks-rate R`` spreads R requests/s over the users (constant throughput per user).

    XKS_STATE_DIR=~/.local/state/xksproxy locust -f loadtest/locustfile.py --headless \\
        --host https://127.0.0.1:8443 -u 20 -r 20 -t 60s --xks-rate 300

``python -m loadtest.slo`` wraps this with a p99 budget and an exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.xks_requests import (
    Target,
    decrypt_body,
    encrypt_body,
    health_body,
    metadata_body,
    signed_headers,
    target_from_env,
)

_target: Target | None = None


# Command-line equivalents of the XKS_* environment variables (the environment is preferred for
# the secret: a command line is visible to other local users).
_TARGET_OPTIONS = {
    "xks_state_dir": "XKS_STATE_DIR",
    "xks_uri_path": "XKS_URI_PATH",
    "xks_access_key_id": "XKS_ACCESS_KEY_ID",
    "xks_secret": "XKS_SECRET",
    "xks_key_id": "XKS_KEY_ID",
    "xks_region": "XKS_REGION",
}


@events.init_command_line_parser.add_listener
def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--xks-rate",
        type=float,
        default=0.0,
        help="total requests/s over all users (0: as fast as possible)",
    )
    for opt, env in _TARGET_OPTIONS.items():
        parser.add_argument("--" + opt.replace("_", "-"), default=None, help=f"same as ${env}")


@events.init.add_listener
def _configure(environment: Environment, **_kw: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    for opt, env in _TARGET_OPTIONS.items():
        value = getattr(opts, opt, None)
        if value:
            os.environ[env] = value
    rate = getattr(opts, "xks_rate", 0.0)
    users = getattr(opts, "num_users", None)
    if rate and users:
        XksUser.wait_time = constant_throughput(rate / users)


def target(host: str | None) -> Target:
    global _target
    if _target is None:
        _target = target_from_env(host)
    return _target


class XksUser(FastHttpUser):
    """One KMS connection: signs every request as KMS would (fresh timestamp, fresh request id)."""

    abstract = False
    insecure = True  # the embedded default is self-signed; TLS is still on

    def on_start(self) -> None:
        self.t = target(self.host)
        self.made: deque[dict] = deque(maxlen=64)
        self._encrypt()  # so the first Decrypt has something to open

    def _post(self, op: str, body: bytes, name: str) -> ResponseContextManager:
        path = self.t.path(op)
        return self.client.post(
            path,
            # locust annotates data as str | dict but documents and sends bytes unchanged, which
            # the signature needs (it covers these exact bytes).
            data=body,  # type: ignore[arg-type]
            headers=signed_headers(self.t, path, body),
            name=name,
            catch_response=True,
        )

    @task(60)
    def encrypt(self) -> None:
        self._encrypt()

    def _encrypt(self) -> None:
        with self._post("encrypt", encrypt_body(), "Encrypt") as r:
            if r.status_code == 200:
                self.made.append(json.loads(r.content))
                r.success()
            else:
                _fail(r)

    @task(35)
    def decrypt(self) -> None:
        if not self.made:
            return self._encrypt()
        enc = self.made[0]
        self.made.rotate(-1)
        with self._post("decrypt", decrypt_body(enc), "Decrypt") as r:
            _check(r)

    @task(4)
    def metadata(self) -> None:
        with self._post("metadata", metadata_body(), "GetKeyMetadata") as r:
            _check(r)

    @task(1)
    def health(self) -> None:
        with self._post("health", health_body(), "GetHealthStatus") as r:
            _check(r)


def _check(r: ResponseContextManager) -> None:
    if r.status_code == 200:
        r.success()
    else:
        _fail(r)


def _fail(r: ResponseContextManager) -> None:
    """Status and the XKS error body (or the connection error when there was no answer)."""
    detail = (r.text or "")[:200] if r.status_code else repr(getattr(r, "error", None))
    r.failure(f"{r.status_code} {detail}")
