"""The real service through both servers: SigV4-signed XKS calls over HTTP/2 and HTTP/1.1.

SigV4 signs the ``host`` header; over HTTP/2 the server must hand the app the ``:authority`` as
host, or every signature would fail. One embedded state dir (``xksproxy init``) for the module.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from transport_support import REPO, Served, serve_env

import sigv4

REGION = "us-east-1"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    d = tmp_path_factory.mktemp("real") / "state"
    r = subprocess.run(
        [sys.executable, "-m", "xksproxy", "init", "--state-dir", str(d)],
        cwd=REPO,
        env=serve_env(probe=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    console = json.loads((d / "kms-console.json").read_text())
    cred = console["XksProxyAuthenticationCredential"]
    return {
        "dir": d,
        "config": d / "xksproxy.toml",
        "uri": console["XksProxyUriPath"],
        "cred": sigv4.Credential(cred["AccessKeyId"], cred["RawSecretAccessKey"]),
    }


def _meta(op: str) -> dict:
    return {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/transport-test",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/test",
        "kmsOperation": op,
        "kmsRequestId": str(uuid.uuid4()),
    }


def call(client: httpx.Client, base: str, state, path: str, body: dict) -> httpx.Response:
    raw = json.dumps(body).encode()
    host = base.split("://", 1)[1]
    headers = {"content-type": "application/json"}
    headers.update(
        sigv4.sign(
            method="POST",
            host=host,
            path=state["uri"] + path,
            headers=headers,
            body=raw,
            credential=state["cred"],
            region=REGION,
        )
    )
    return client.post(base + state["uri"] + path, content=raw, headers=headers)


def round_trip(client: httpx.Client, base: str, state) -> None:
    h = call(client, base, state, "/health", {"requestMetadata": _meta("KmsHealthCheck")})
    assert h.status_code == 200, h.text
    m = call(client, base, state, "/keys/demo/metadata", {"requestMetadata": _meta("DescribeKey")})
    assert m.status_code == 200, m.text
    assert m.json()["keyStatus"] == "ENABLED"
    pt = b"k" * 32
    aad = base64.b64encode(b"a" * 64).decode()
    e = call(
        client,
        base,
        state,
        "/keys/demo/encrypt",
        {
            "requestMetadata": _meta("Encrypt"),
            "plaintext": base64.b64encode(pt).decode(),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": aad,
            "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
        },
    )
    assert e.status_code == 200, e.text
    enc = e.json()
    dec_body = {
        "requestMetadata": _meta("Decrypt"),
        "ciphertext": enc["ciphertext"],
        "initializationVector": enc["initializationVector"],
        "authenticationTag": enc["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": aad,
    }
    if "ciphertextMetadata" in enc:
        dec_body["ciphertextMetadata"] = enc["ciphertextMetadata"]
    d = call(client, base, state, "/keys/demo/decrypt", dec_body)
    assert d.status_code == 200, d.text
    assert base64.b64decode(d.json()["plaintext"]) == pt
    # A wrong signature never passes, on either protocol.
    bad = client.post(
        base + state["uri"] + "/health",
        content=b"{}",
        headers={"authorization": "AWS4-HMAC-SHA256 Credential=x"},
    )
    assert bad.status_code == 401


def _serve(state, tmp_path, *args: str, env: dict[str, str] | None = None) -> Served:
    """``xksproxy serve`` of the module's state dir on a free loopback port."""
    return Served(
        ["--config", str(state["config"]), "--bind", "127.0.0.1:0", *args],
        serve_env(probe=False, extra=env),
        tmp_path,
    )


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
def test_signed_calls_over_h2_and_h11(state, tmp_path, server):
    s = _serve(state, tmp_path, "--server", server, "--workers", "2")
    try:
        ctx = ssl.create_default_context(cafile=str(state["dir"] / "tls/server.crt"))
        for http2 in (True, False):
            with httpx.Client(verify=ctx, http2=http2, timeout=20) as c:
                round_trip(c, s.url, state)
                r = c.get(s.url + "/ping")
                assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("proto", ["--http2", "--http1.1"])
def test_curl_aws_sigv4(state, tmp_path, proto):
    s = _serve(state, tmp_path, "--workers", "1")
    try:
        port = s.url.rsplit(":", 1)[1]
        body = json.dumps({"requestMetadata": _meta("KmsHealthCheck")})
        r = subprocess.run(
            [
                "curl",
                "-sS",
                proto,
                "--cacert",
                str(state["dir"] / "tls/server.crt"),
                "--aws-sigv4",
                f"aws:amz:{REGION}:kms-xks-proxy",
                "--user",
                f"{state['cred'].access_key_id}:{state['cred'].secret}",
                "-H",
                "content-type: application/json",
                "-d",
                body,
                "-w",
                "\n%{http_code} %{http_version}",
                f"https://localhost:{port}{state['uri']}/health",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        status, version = r.stdout.rsplit("\n", 1)[1].split()
        assert status == "200", r.stdout + r.stderr
        assert version == ("2" if proto == "--http2" else "1.1")
    finally:
        s.stop()


def test_mtls_through_the_real_app(state, tmp_path):
    from transport_pki import CA

    ca, other = CA("kms client CA"), CA("other CA")
    ca_file = ca.write(tmp_path / "client-ca.pem")
    good = ca.issue(tmp_path / "good", f"cks.kms.{REGION}.amazonaws.com")
    foreign = other.issue(tmp_path / "foreign", f"cks.kms.{REGION}.amazonaws.com")
    cfg = state["dir"] / "xksproxy-mtls.toml"
    text = state["config"].read_text()
    assert 'client_ca_file = ""' in text
    cfg.write_text(text.replace('client_ca_file = ""', f'client_ca_file = "{ca_file}"'))
    s = Served(
        ["--config", str(cfg), "--bind", "127.0.0.1:0", "--workers", "1"],
        serve_env(probe=False),
        tmp_path,
    )
    try:
        for cert, expect_ok in ((good, True), (foreign, False)):
            ctx = ssl.create_default_context(cafile=str(state["dir"] / "tls/server.crt"))
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
            with httpx.Client(verify=ctx, http2=True, timeout=20) as c:
                if expect_ok:
                    round_trip(c, s.url, state)
                else:
                    with pytest.raises(httpx.TransportError):
                        call(c, s.url, state, "/health", {"requestMetadata": _meta("x")})
    finally:
        s.stop()
    assert any(
        "tls_client_refused" in line and "unable to get local issuer" in line
        for line in s.all_stdout
    )


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
def test_sighup_reloads_workers_without_respawn(state, tmp_path, server):
    import signal
    import time

    s = _serve(state, tmp_path, "--server", server, "--workers", "2")
    try:
        reloaded: set[int] = set()
        for i in range(300):  # waiting for both workers' log lines (an event, not a duration)
            if i % 10 == 0:  # again each second: the 2nd worker may still be starting its reloader
                s.proc.send_signal(signal.SIGHUP)
            for line in list(s.all_stdout):
                if '"configuration reloaded"' in line:
                    reloaded.add(json.loads(line)["pid"])
            if len(reloaded) == 2:
                break
            time.sleep(0.1)
        assert len(reloaded) == 2
        ctx = ssl.create_default_context(cafile=str(state["dir"] / "tls/server.crt"))
        with httpx.Client(verify=ctx, timeout=20) as c:
            round_trip(c, s.url, state)
    finally:
        assert s.stop() == 0


def _workers(launcher: int) -> list[int]:
    """The launcher's worker processes (its children but multiprocessing's resource tracker)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [
        int(c)
        for c in children
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # zombie = exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
def test_workers_end_when_the_launcher_is_killed(state, tmp_path, server):
    """kill -9 of `serve` (OOM killer, a crashed supervisor) must not leave workers answering
    on the port with a configuration nobody can reload any more."""
    # A launcher killed by SIGKILL cannot remove its reload trigger file and metrics directory:
    # give it the test's own temp directory, so nothing is left in /tmp.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    s = _serve(
        state, tmp_path, "--server", server, "--workers", "2", "--plain-http",
        env={"TMPDIR": str(tmp)},
    )  # fmt: skip
    workers = _workers(s.proc.pid)
    try:
        assert len(workers) == 2, workers
        assert httpx.get(s.url + "/ping").status_code == 200
        s.proc.kill()
        s.proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived their launcher"
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/ping", timeout=2)
    finally:
        for w in workers:  # never leave an orphan holding the token for later tests
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        s.stop()


def test_sigterm_to_one_hypercorn_worker_is_a_graceful_stop(state, tmp_path):
    """hypercorn installs no signal handler in workers that share a shutdown event: a SIGTERM
    (an operator, or the lifeline after the launcher died) used to kill the worker outright.
    It must stop gracefully (exit status 0) and be replaced."""
    s = _serve(state, tmp_path, "--server", "hypercorn", "--workers", "1", "--plain-http")
    try:
        (worker,) = _workers(s.proc.pid)
        os.kill(worker, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while f"worker {worker} exited" not in s.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"hypercorn worker {worker} exited (0)" in s.stderr(), s.stderr()[-2000:]
    finally:
        s.stop()
