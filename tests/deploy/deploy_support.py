"""Helpers for the deployment-artifact tests: a real `xksproxy serve` started the way a unit,
an image or a pod starts it, and plain-stdlib HTTPS calls to it (TLS not verified: the embedded
certificate is self-signed; what is tested is the path, not the certificate)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sysconfig
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import procs

REPO = procs.REPO
DEPLOY = REPO / "deploy"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
STARTUP_LIMIT_S = 60.0


KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SYSTEM_PYTHON = Path("/usr/bin/python3")
SOURCE_PACKAGES = ("xksproxy", "hsm", "sigv4")


def make_runtime(prefix: Path) -> Path:
    """An install like the image's ``/opt/xksproxy``: a venv on Debian's own Python 3.11 at
    ``prefix/venv`` with an ``xksproxy`` console script, the project source copied to
    ``prefix/src``; every file root-owned and read-only for anyone else. Returns the script.

    Why not this checkout's .venv: its interpreter may live where another user cannot reach it
    (pyenv under /root here). The third-party packages are not reinstalled (no network, no
    minutes of pip): the venv reads the checkout venv's site-packages through a ``.pth`` line,
    which is not processed as a site directory, so its editable hook for this checkout stays
    off and ``xksproxy`` is imported from the copy."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} missing: the image's Debian Python cannot be reproduced")
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if version != "(3, 11)":
        pytest.skip(f"{SYSTEM_PYTHON} is {version}, not Debian 12's 3.11")
    venv, src = prefix / "venv", prefix / "src"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    for name in SOURCE_PACKAGES:
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    site = next(venv.glob("lib/python3*/site-packages"))
    deps = sysconfig.get_paths()["purelib"]  # the checkout venv's site-packages (this process)
    (site / "xksproxy-image.pth").write_text(f"{src}\n{deps}\n")
    script = venv / "bin" / "xksproxy"
    # What pip writes for [project.scripts]; the __main__ guard matters: granian's workers are
    # spawned processes that re-import the main script.
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom xksproxy.admin.cli import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    for p in [prefix, *prefix.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() or p == script else 0o644)
    return script


def unverified_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """GET ``url``; (status, body) for any HTTP answer (4xx/5xx included)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=unverified_tls()) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:  # it holds the connection: close it rather than leave it to the GC
            return err.code, err.read()


def set_metrics_bind(state_dir: Path, bind: str) -> None:
    """Point the embedded config's metrics listener away from the shared default port."""
    config = state_dir / "xksproxy.toml"
    text = config.read_text()
    assert 'bind = "127.0.0.1:9464"' in text
    config.write_text(text.replace('bind = "127.0.0.1:9464"', f'bind = "{bind}"'))


@dataclass
class Proxy:
    proc: subprocess.Popen[str]
    out: procs.StdoutLines
    url: str  # from the "listening on" line

    def output(self) -> str:
        return "\n".join(self.out.all)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start(argv: Sequence[str], env: Mapping[str, str], *, cwd: Path = REPO) -> Proxy:
    """Start ``argv`` (some form of `xksproxy serve`) and wait for its ``listening on`` line.

    Fails the test with the output so far if the line does not come; the caller stops the
    returned proxy in a ``finally``."""
    proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = procs.StdoutLines(proc.stdout)
    try:
        line = out.wait_for("xksproxy: listening on", STARTUP_LIMIT_S)
    except (TimeoutError, EOFError) as exc:
        Proxy(proc, out, "").stop()
        pytest.fail(f"{exc}; output:\n" + "\n".join(out.all)[-4000:])
    url = re.search(r"listening on (\S+)", line)
    assert url, line
    return Proxy(proc, out, url.group(1))


def encrypt_decrypt(base_url: str, state_dir: Path, plaintext: bytes = b"deploy test") -> None:
    """A SigV4-signed Encrypt then Decrypt with the demo key through ``base_url``: the whole path
    (TLS, auth, HSM) works, not just /ping."""
    import sigv4

    console = json.loads((state_dir / "kms-console.json").read_text())
    cred = console["XksProxyAuthenticationCredential"]
    credential = sigv4.Credential(cred["AccessKeyId"], cred["RawSecretAccessKey"])
    prefix = console["XksProxyUriPath"]
    host = base_url.split("://", 1)[1]

    def call(op: str, body: dict) -> dict:
        meta = {
            "awsPrincipalArn": "arn:aws:iam::123456789012:user/deploy",
            "kmsKeyArn": KEY_ARN,
            "kmsOperation": op.capitalize(),
            "kmsRequestId": str(uuid.uuid4()),
        }
        data = json.dumps({"requestMetadata": meta, **body}).encode()
        path = f"{prefix}/keys/demo/{op}"
        headers = {"Content-Type": "application/json"}
        headers |= sigv4.sign(
            method="POST",
            host=host,
            path=path,
            headers=headers,
            body=data,
            credential=credential,
            region="us-east-1",
        )
        req = urllib.request.Request(base_url + path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10, context=unverified_tls()) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{op}: HTTP {err.code} {err.read()!r}") from None

    b64 = base64.b64encode(plaintext).decode()
    enc = call("encrypt", {"plaintext": b64, "encryptionAlgorithm": "AES_GCM"})
    dec = call(
        "decrypt",
        {
            k: enc[k]
            for k in (
                "ciphertext",
                "initializationVector",
                "authenticationTag",
                "ciphertextMetadata",
            )
        }
        | {"encryptionAlgorithm": "AES_GCM"},
    )
    assert dec["plaintext"] == b64
