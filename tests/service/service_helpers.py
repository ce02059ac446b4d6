"""Shared helpers for the service tests: a config directory with secrets, and request bodies."""

from __future__ import annotations

import base64
import os
from pathlib import Path

AKID = "AKIAEXAMPLEEXAMPLE23"
SECRET = "S" * 20 + "ecretSecretSecretSecretSecret/+="  # 52 chars, a-zA-Z0-9+/=
AKID2 = "AKIAOTHERSTORE234567"
SECRET2 = "O" * 44
PIN = "1234"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_secret(path: Path, value: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    os.chmod(path, mode)


def write_config(
    directory: Path,
    *,
    hsm_table: str | None = None,
    pin_ref: str = "file:secrets/user.pin",
    extra: str = "",
    keystores: str | None = None,
) -> Path:
    """A complete, valid config in ``directory``; pieces can be replaced to break it."""
    write_secret(directory / "secrets" / "user.pin", PIN)
    write_secret(directory / "secrets" / "demo-1.secret", SECRET)
    write_secret(directory / "secrets" / "other.secret", SECRET2)
    write_secret(directory / "secrets" / "audit.key", "k" * 40)
    if hsm_table is None:
        hsm_table = f'''
[[hsm]]
name = "softhsm-0"
model = "SoftHSMv2"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "xksproxy"
pin = "{pin_ref}"
'''
    if keystores is None:
        keystores = f'''
[[keystore]]
name = "demo"
path_prefix = "/demo"
hsm = "softhsm-0"
keys = ["demo", "demo-encrypt-only", "demo-decrypt-only", "demo-no-usage"]
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo-1.secret"
'''
    text = f"""
[server]
plain_http = true
[audit]
file = ""
{extra}
{hsm_table}
{keystores}
"""
    path = directory / "xksproxy.toml"
    path.write_text(text)
    return path


def metadata(op: str = "Encrypt") -> dict:
    return {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:key/1234",
        "kmsOperation": op,
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    }
