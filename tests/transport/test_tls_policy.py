"""TLS policy on the KMS listener, checked from outside with `openssl s_client` (both servers)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from transport_pki import write_pem_pair
from transport_support import write_config

SERVERS = ["granian", "hypercorn"]


def s_client(url: str, *flags: str) -> tuple[int, str]:
    hostport = url.removeprefix("https://")
    r = subprocess.run(
        ["openssl", "s_client", "-connect", hostport, "-servername", "localhost", *flags],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


def negotiated(out: str) -> tuple[str, str]:
    """(protocol, cipher) from s_client's session summary; ("", "") when none was negotiated."""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("New, ") and ", Cipher is " in line:
            proto, cipher = line.removeprefix("New, ").split(", Cipher is ")
            return proto, cipher
    return "", ""


@pytest.fixture(scope="module", params=SERVERS)
def tls_server(request, tmp_path_factory):
    from transport_support import Served, serve_env

    d = tmp_path_factory.mktemp(f"tls-{request.param}")
    cfg = write_config(d)
    s = Served(
        [
            "--config",
            str(cfg),
            "--bind",
            "127.0.0.1:0",
            "--server",
            request.param,
            "--workers",
            "1",
        ],
        serve_env(probe=True),
        d,
    )
    yield s
    s.stop()


def test_tls12_allowed_with_aead_suite(tls_server):
    rc, out = s_client(tls_server.url, "-tls1_2")
    assert rc == 0, out
    proto, cipher = negotiated(out)
    assert proto == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


@pytest.mark.parametrize("suite", ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
def test_tls13_required_suites(tls_server, suite):
    rc, out = s_client(tls_server.url, "-tls1_3", "-ciphersuites", suite)
    assert rc == 0, out
    assert negotiated(out) == ("TLSv1.3", suite)


def test_ecdhe_ecdsa_aes256_gcm_sha384(tls_server):
    rc, out = s_client(tls_server.url, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
    assert rc == 0, out
    assert negotiated(out) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")


@pytest.mark.parametrize("flag", ["-tls1_1", "-tls1"])
def test_old_protocols_refused(tls_server, flag):
    # SECLEVEL=0 so that *our client* really offers the old protocol; the server must refuse.
    rc, out = s_client(tls_server.url, flag, "-cipher", "DEFAULT@SECLEVEL=0")
    assert rc != 0
    assert negotiated(out)[0] in ("", "(NONE)") or "Cipher is (NONE)" in out


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES256-SHA384",  # CBC, not AEAD
        "ECDHE-ECDSA-AES128-SHA",  # CBC + SHA-1
        "AES256-GCM-SHA384",  # AEAD but no forward secrecy (RSA key exchange)
        "AES256-SHA",  # neither
    ],
)
def test_non_aead_or_non_fs_suites_refused(tls_server, cipher):
    rc, out = s_client(tls_server.url, "-tls1_2", "-cipher", f"{cipher}@SECLEVEL=0")
    assert rc != 0
    assert negotiated(out)[1] in ("", "(NONE)")


def _rsa_pair(d: Path) -> tuple[Path, Path]:
    """An operator-supplied RSA certificate (the self-signed default is ECDSA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = write_pem_pair(d / "real", cert, key)
    return issued.cert, issued.key


@pytest.mark.parametrize("server", SERVERS)
def test_configured_rsa_certificate(tmp_path, serve_proc, server):
    cfg = write_config(tmp_path)
    c, k = _rsa_pair(tmp_path)
    text = cfg.read_text()
    text = text.replace('cert_file = "tls/server.crt"', f'cert_file = "{c}"')
    text = text.replace('key_file = "tls/server.key"', f'key_file = "{k}"')
    cfg.write_text(text)
    s = serve_proc(cfg, "--server", server, "--workers", "1")
    rc, out = s_client(s.url, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
    assert rc == 0, out
    assert negotiated(out) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")
    assert "CN = localhost" in out or "CN=localhost" in out


def test_traditional_key_format_named_for_granian_and_served_by_hypercorn(tmp_path, serve_proc):
    """granian reads only PKCS#8 keys: say so at start instead of failing in the workers."""
    from transport_support import run_serve, serve_env

    cfg = write_config(tmp_path)
    c, k = _rsa_pair(tmp_path)
    key = serialization.load_pem_private_key(k.read_bytes(), None)
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    text = cfg.read_text().replace('cert_file = "tls/server.crt"', f'cert_file = "{c}"')
    cfg.write_text(text.replace('key_file = "tls/server.key"', f'key_file = "{k}"'))
    r = run_serve(["--config", str(cfg), "--server", "granian"], serve_env(probe=True))
    assert r.returncode == 2
    assert "PKCS#8" in r.stderr and "openssl pkcs8" in r.stderr
    s = serve_proc(cfg, "--server", "hypercorn", "--workers", "1")
    rc, out = s_client(s.url, "-tls1_2")
    assert rc == 0, out
