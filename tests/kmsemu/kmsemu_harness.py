"""Start real ``xksproxy`` and ``kmsemu`` processes for tests/kmsemu (no product imports).

A proxy is a copy of a template ``xksproxy init`` state dir with its absolute paths rewritten
(as tests/cli does), its metrics listener off (parallel proxies and teammates' servers must not
fight over the default metrics port) and a generous request deadline (shared CI machines are
slow). An emulator gets its own state dir and trusts the proxy's self-signed certificate.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from support.procs import REPO, StdoutLines, free_port, product_env

START_TIMEOUT_S = 60


@dataclass
class Proc:
    """A product process with its stdout lines; stderr goes to a file in the test's tmp dir."""

    popen: subprocess.Popen[str]
    lines: StdoutLines
    stderr_path: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start(args: list[str], stderr_path: Path, ready: str) -> Proc:
    """``python ARGS`` from the checkout; returns once a stdout line contains ``ready``."""
    err = stderr_path.open("w")
    popen = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=product_env(drop=["XKSPROXY_CONFIG", "XKSPROXY_STATE_DIR", "KMSEMU_STATE_DIR"]),
        cwd=REPO,
    )
    err.close()
    proc = Proc(popen, StdoutLines(popen.stdout), stderr_path)
    try:
        proc.lines.wait_for(ready, START_TIMEOUT_S)
    except (TimeoutError, EOFError):
        proc.stop()
        raise AssertionError(
            f"{args[:3]} did not print {ready!r}:\n{stderr_path.read_text()[-3000:]}"
        ) from None
    return proc


@dataclass
class Proxy:
    state_dir: Path
    url: str
    proc: Proc
    uri_path: str
    credential: dict[str, str]

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "tls" / "server.crt"

    def log_records(self) -> list[dict[str, Any]]:
        """The proxy's JSON request-log lines read so far (its stdout)."""
        out = []
        for line in list(self.proc.lines.all):
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


@dataclass
class Emulator:
    state_dir: Path
    url: str
    proc: Proc
    credentials: dict[str, str] = field(default_factory=dict)

    def client(self, **overrides: str) -> Any:
        """A boto3 KMS client for this emulator (no SDK retries: tests see the first answer)."""
        args = {
            "endpoint_url": self.url,
            "region_name": "us-east-1",
            "aws_access_key_id": self.credentials["AccessKeyId"],
            "aws_secret_access_key": self.credentials["SecretAccessKey"],
        }
        args.update(overrides)
        return boto3.client(
            "kms", config=Config(retries={"max_attempts": 1}, connect_timeout=5), **args
        )


def start_proxy(template: Path, where: Path) -> Proxy:
    """A copy of the template state dir served on a free loopback port (HTTPS, one worker)."""
    state = where / "proxy"
    shutil.copytree(template, state, symlinks=True)
    for name in ("softhsm2.conf", "xksproxy.toml"):
        f = state / name
        f.write_text(f.read_text().replace(str(template), str(state)))
    config = state / "xksproxy.toml"
    text = re.sub(r'(?m)^bind = "127\.0\.0\.1:9464"$', 'bind = ""', config.read_text())
    text = re.sub(r"(?m)^request_deadline_ms = \d+$", "request_deadline_ms = 1000", text)
    config.write_text(text)
    port = free_port()
    proc = start(
        [
            "-m",
            "xksproxy",
            "serve",
            "--state-dir",
            str(state),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
        ],
        where / "proxy.stderr",
        "xksproxy: listening on",
    )
    console = json.loads((state / "kms-console.json").read_text())
    return Proxy(
        state,
        f"https://127.0.0.1:{port}",
        proc,
        console["XksProxyUriPath"],
        console["XksProxyAuthenticationCredential"],
    )


def start_emulator(state_dir: Path, ca_file: Path, *extra: str) -> Emulator:
    port = free_port()
    proc = start(
        [
            "-m",
            "kmsemu",
            "--bind",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state_dir),
            "--proxy-ca-file",
            str(ca_file),
            *extra,
        ],
        state_dir.parent / f"{state_dir.name}.stderr",
        "kmsemu: listening on",
    )
    creds = json.loads((state_dir / "credentials.json").read_text())
    return Emulator(state_dir, f"http://127.0.0.1:{port}", proc, creds)


def create_store(kms: Any, proxy: Proxy, name: str, endpoint: str | None = None) -> str:
    return str(
        kms.create_custom_key_store(
            CustomKeyStoreName=name,
            CustomKeyStoreType="EXTERNAL_KEY_STORE",
            XksProxyUriEndpoint=endpoint or proxy.url,
            XksProxyUriPath=proxy.uri_path,
            XksProxyConnectivity="PUBLIC_ENDPOINT",
            XksProxyAuthenticationCredential=proxy.credential,
        )["CustomKeyStoreId"]
    )
