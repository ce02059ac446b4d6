"""Key custody against a real ``xksproxy serve --workers 2`` on the SoftHSMv2 token, driven by
the ``xksproxy keys`` CLI in separate processes and called by botocore-signed requests.

One server for the module (keys of its own on the suite's token, so other tests never see these
states); each test uses its own key.  Waiting for a change is a bounded poll, never a sleep-then-
assert on a duration.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support import procs

from hsm import admin
from sigv4 import generate_credential
from xksproxy.xks.framing import hsm_aad

KEYS = ("custody-rot", "custody-state", "custody-gone")
MATERIAL = bytes(range(100, 132))  # custody-rot's version 0: known, to build pre-version ciphertext
POLL_S = 20.0  # bound for a change to be seen (the contract: state_cache_s <= 5; shared machine)


class Proxy:
    def __init__(self, config: Path, base: str, cred) -> None:
        self.config, self.base, self.cred = config, base, cred

    def call(self, key: str, op: str, doc: dict) -> tuple[int, dict]:
        """One request on a fresh connection (so the two workers both get some)."""
        body = json.dumps(doc).encode()
        url = f"{self.base}/custody/kms/xks/v1/keys/{key}/{op}"
        req = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(
            Credentials(self.cred.access_key_id, self.cred.secret), "kms-xks-proxy", "us-east-1"
        ).add_auth(req)
        http = urllib.request.Request(url, data=body, headers=dict(req.headers), method="POST")
        try:
            with urllib.request.urlopen(http, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def meta(self, op: str) -> dict:
        return {
            "awsPrincipalArn": "arn:aws:iam::123456789012:user/Op",
            "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/c0ffee",
            "kmsOperation": op,
            "kmsRequestId": str(uuid.uuid4()),
        }

    def metadata(self, key: str) -> tuple[int, dict]:
        return self.call(key, "metadata", {"requestMetadata": self.meta("DescribeKey")})

    def encrypt(self, key: str, plaintext: bytes) -> tuple[int, dict]:
        doc = {
            "requestMetadata": self.meta("Encrypt"),
            "plaintext": base64.b64encode(plaintext).decode(),
            "encryptionAlgorithm": "AES_GCM",
        }
        return self.call(key, "encrypt", doc)

    def decrypt(self, key: str, sealed: dict) -> tuple[int, dict]:
        doc = {"requestMetadata": self.meta("Decrypt"), "encryptionAlgorithm": "AES_GCM"}
        for name in ("ciphertext", "initializationVector", "authenticationTag"):
            doc[name] = sealed[name]
        if sealed.get("ciphertextMetadata") is not None:
            doc["ciphertextMetadata"] = sealed["ciphertextMetadata"]
        return self.call(key, "decrypt", doc)

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        return procs.run_cli("keys", *args, "--config", str(self.config))

    def until(self, check, what: str, *, times: int = 8):
        """Poll ``check()`` until it holds ``times`` times in a row (fresh connections)."""
        deadline = time.monotonic() + POLL_S
        streak, last = 0, None
        while time.monotonic() < deadline:
            ok, last = check()
            streak = streak + 1 if ok else 0
            if streak >= times:
                return last
            time.sleep(0.05)
        pytest.fail(f"{what} not seen within {POLL_S} s; last answer: {last}")


def _config(directory: Path, token, port: int, cred) -> Path:
    secrets = directory / "secrets"
    secrets.mkdir(parents=True)
    for name, value in (("s", cred.secret), ("audit.key", "q" * 48)):
        (secrets / name).write_text(value + "\n")
        os.chmod(secrets / name, 0o600)
    path = directory / "xksproxy.toml"
    path.write_text(f"""
[server]
bind = "127.0.0.1:{port}"
plain_http = true
workers = 2
[metrics]
bind = ""
[custody]
# below the 5 s maximum only to keep the test short; the bound itself is a resolver unit test
state_cache_s = 2
[audit]
file = "audit/audit.log"
key = "file:secrets/audit.key"
[[hsm]]
name = "softhsm-0"
module = "{token.module_path}"
token_label = "{token.token_label}"
pin = "file:{token.user_pin_file}"
[hsm.env]
SOFTHSM2_CONF = "{token.conf_path}"
[[keystore]]
name = "custody"
path_prefix = "/custody"
hsm = "softhsm-0"
keys = {json.dumps(list(KEYS))}
[[keystore.credentials]]
access_key_id = "{cred.access_key_id}"
secret = "file:secrets/s"
""")
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def proxy(hsm_token, hsm_config, tmp_path_factory):
    admin.import_test_key(hsm_config, "custody-rot", MATERIAL)
    for label in KEYS[1:]:
        admin.create_key(hsm_config, label, "encrypt-decrypt")
    cred = generate_credential()
    port = procs.free_port()
    config = _config(tmp_path_factory.mktemp("custody-live"), hsm_token, port, cred)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xksproxy", "serve", "--config", str(config), "--workers", "2"],
        env=procs.product_env(drop=["XKSPROXY_CONFIG"]),
        cwd=procs.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = procs.StdoutLines(proc.stdout)
    try:
        try:
            out.wait_for("xksproxy: listening on", 60)
        except (TimeoutError, EOFError) as exc:
            pytest.fail(f"{exc}:\n" + "\n".join(out.all[-40:]))
        yield Proxy(config, f"http://127.0.0.1:{port}", cred)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for label in {k.label for k in admin.list_keys(hsm_config)}:
            if label.split("#")[0] in KEYS:
                admin.delete_key(hsm_config, label)
    _verify_audit_chain(config)


def test_cli_state_change_reaches_every_worker(proxy):
    key = "custody-state"
    status, doc = proxy.metadata(key)
    assert status == 200 and doc["keyStatus"] == "ENABLED"
    r = proxy.keys("suspend", key, "--reason", "incident 42")
    assert r.returncode == 0, r.stderr
    assert "active -> suspended" in r.stdout
    proxy.until(lambda: _status_is(proxy, key, "DISABLED"), "DISABLED after suspend")
    status, doc = proxy.encrypt(key, b"refused")
    assert status == 400 and doc["errorName"] == "InvalidStateException"

    refused = proxy.keys("suspend", key)
    assert refused.returncode == 1
    assert "allowed from suspended: resume" in refused.stderr

    assert proxy.keys("resume", key, "--reason", "incident closed").returncode == 0
    proxy.until(lambda: _status_is(proxy, key, "ENABLED"), "ENABLED after resume")
    shown = json.loads(proxy.keys("show", key, "--json").stdout)
    assert shown["state"] == "active" and shown["key_status"] == "ENABLED"
    assert [(h["command"], h["reason"]) for h in shown["history"]][-2:] == [
        ("suspend", "incident 42"),
        ("resume", "incident closed"),
    ]


def _status_is(proxy: Proxy, key: str, wanted: str):
    status, doc = proxy.metadata(key)
    return status == 200 and doc.get("keyStatus") == wanted, (status, doc)


def _version_of(sealed: dict) -> int:
    meta = base64.b64decode(sealed["ciphertextMetadata"])
    return int.from_bytes(meta[1:], "big")


def test_five_versions_interleaved_with_rotations_all_decrypt(proxy):
    key = "custody-rot"
    # Ciphertext from before versions existed: with no metadata at all (made with the known
    # material, framed with an empty metadata) and with today's `01 00`.
    aesgcm, iv = AESGCM(MATERIAL), os.urandom(12)
    sealed_raw = aesgcm.encrypt(iv, b"no metadata", hsm_aad(None, None))
    legacy = {
        "ciphertext": base64.b64encode(sealed_raw[:-16]).decode(),
        "initializationVector": base64.b64encode(iv).decode(),
        "authenticationTag": base64.b64encode(sealed_raw[-16:]).decode(),
    }
    written: list[tuple[dict, bytes]] = []
    for version in range(5):
        if version:
            r = proxy.keys("rotate", key, "--reason", f"test rotation {version}")
            assert r.returncode == 0, r.stderr
            assert f"rotated to version {version}" in r.stdout

        def encrypt_with(v=version):
            status, doc = proxy.encrypt(key, f"under v{v}".encode())
            return status == 200 and _version_of(doc) == v, doc

        sealed = proxy.until(encrypt_with, f"Encrypt using version {version}", times=4)
        if version == 0:
            assert base64.b64decode(sealed["ciphertextMetadata"]) == b"\x01\x00"
        written.append((sealed, f"under v{version}".encode()))

    for sealed, plaintext in [*written, (legacy, b"no metadata")]:
        status, doc = proxy.decrypt(key, sealed)
        assert status == 200, doc
        assert base64.b64decode(doc["plaintext"]) == plaintext

    listed = json.loads(proxy.keys("versions", key, "--json").stdout)
    assert [(v["version"], v["state"]) for v in listed] == [
        (0, "retired"),
        (1, "retired"),
        (2, "retired"),
        (3, "retired"),
        (4, "active"),
    ]
    # A tampered version byte (a version the key does not have) is InvalidCiphertext.
    tampered = dict(written[2][0])
    tampered["ciphertextMetadata"] = base64.b64encode(b"\x01\x09").decode()
    status, doc = proxy.decrypt(key, tampered)
    assert status == 400 and doc["errorName"] == "InvalidCiphertextException"


def test_scheduled_destruction_removes_every_version_then_404(proxy, hsm_config):
    key = "custody-gone"
    assert proxy.keys("rotate", key).returncode == 0
    short = proxy.keys("schedule-destruction", key, "--days", "3")
    assert short.returncode == 2 and "7..30" in short.stderr
    r = proxy.keys("schedule-destruction", key, "--days", "0", "--i-understand", "--reason", "t")
    assert r.returncode == 0, r.stderr
    proxy.until(lambda: _status_is(proxy, key, "DISABLED"), "DISABLED while pending destruction")
    due = proxy.keys("destroy-due", "--json")
    assert due.returncode == 0, due.stderr
    assert key in json.loads(due.stdout)["destroyed"]
    labels = {k.label for k in admin.list_keys(hsm_config)}
    assert not {label for label in labels if label.startswith(key)}

    def gone():
        answers = [proxy.metadata(key), proxy.encrypt(key, b"gone")]
        return all(s == 404 and d["errorName"] == "KeyNotFoundException" for s, d in answers), (
            answers
        )

    proxy.until(gone, "404 after destruction")

    events = [(r.get("event"), r.get("keyId")) for r in _audit_records(proxy.config)]
    assert ("keys-schedule-destruction", key) in events and ("keys-destroy", key) in events


def _audit_records(config: Path) -> list[dict]:
    """The audit file's records (a line the running server is writing right now is skipped)."""
    from xksproxy.config import load_config

    records = []
    for line in load_config(config).audit.file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _verify_audit_chain(config: Path) -> None:
    """After the server stopped: the CLI's and the workers' records form one intact chain."""
    from xksproxy.config import load_config
    from xksproxy.observe.audit import verify_files

    cfg = load_config(config)
    result = verify_files([cfg.audit.file], cfg.audit.key)
    assert result.ok, result.message


def test_maintenance_commands_exit_0_when_nothing_is_due(proxy):
    # what the systemd timer / CronJob run (deploy/): a cryptoperiod not yet reached
    r = proxy.keys("set-cryptoperiod", "custody-state", "--days", "90", "--reason", "policy")
    assert r.returncode == 0, r.stderr
    rotated = proxy.keys("rotate-due", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert "custody-state" not in [k["id"] for k in json.loads(rotated.stdout)["rotated"]]
    destroyed = proxy.keys("destroy-due", "--json")
    assert destroyed.returncode == 0, destroyed.stderr
    assert "custody-state" not in json.loads(destroyed.stdout)["destroyed"]
    shown = json.loads(proxy.keys("show", "custody-state", "--json").stdout)
    assert shown["rotate_after_days"] == 90
