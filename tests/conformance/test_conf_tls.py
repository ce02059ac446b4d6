"""TLS smoke tests against ``xksproxy serve`` without --plain-http (init's self-signed pair)."""

from __future__ import annotations

import socket
import ssl
import warnings

import httpx
import pytest
from conformance_helpers import (
    BotocoreClient,
    CurlClient,
    assert_ok,
    decrypt_body,
    encrypt_body,
    health_body,
    metadata_body,
    secret_marker,
    unb64,
)


@pytest.fixture(scope="module")
def cert(state):
    path = state.path / "tls" / "server.crt"
    assert path.exists(), f"init wrote no {path}"
    return path


def trust(cert) -> ssl.SSLContext:
    """Verify the server against init's self-signed certificate (SAN 127.0.0.1)."""
    return ssl.create_default_context(cafile=str(cert))


def roundtrip_botocore(server, stores, cert, http2: bool) -> None:
    """Health, encrypt with CDIV, decrypt over TLS on the expected HTTP version."""
    client = BotocoreClient(server.base_url, verify=trust(cert), http2=http2)
    try:
        s = stores["demo"]
        r = client.post(s.health_path, health_body(), s.creds[0])
        assert_ok(r)
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1"), r.http_version
        pt = secret_marker("pt")
        enc = assert_ok(
            client.post(s.key_path("demo", "encrypt"), encrypt_body(pt, cdiv=True), s.creds[0])
        )
        dec = assert_ok(client.post(s.key_path("demo", "decrypt"), decrypt_body(enc), s.creds[0]))
        assert unb64(dec["plaintext"]) == pt
    finally:
        client.close()


@pytest.mark.parametrize("http2", [False, True])
def test_tls_roundtrip_botocore(tls_server, stores, cert, http2):
    roundtrip_botocore(tls_server, stores, cert, http2)


def test_tls_curl_verifies_generated_certificate(tls_server, stores, cert):
    s = stores["demo"]
    r = CurlClient(tls_server.base_url, cacert=cert).post(s.health_path, health_body(), s.creds[0])
    assert_ok(r)


def test_tls_ping(tls_server, cert):
    r = httpx.get(tls_server.base_url + "/ping", verify=trust(cert), timeout=10)
    assert r.status_code == 200


def handshake(host: str, port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection((host, port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname=host)


def test_tls_1_1_refused(tls_server):
    host, port = tls_server.host.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():  # deliberately offering deprecated versions
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        handshake(host, int(port), ctx).close()


@pytest.mark.parametrize(
    ("version", "ciphers"),
    [
        (ssl.TLSVersion.TLSv1_3, None),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384"),
    ],
)
def test_tls_spec_cipher_suites(tls_server, version, ciphers):
    """At least one spec suite per version the proxy speaks (TLS 1.3 and 1.2 both offered)."""
    host, port = tls_server.host.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    with handshake(host, int(port), ctx) as tls:
        name = tls.cipher()[0]
        if version is ssl.TLSVersion.TLSv1_3:
            assert name in {
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_AES_128_GCM_SHA256",
            }, name
        else:
            assert name in ciphers.split(":"), name


def test_tls_offers_a_spec_tls13_suite(tls_server):
    host, port = tls_server.host.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Python cannot restrict TLS 1.3 suites; OpenSSL's default order prefers AES-256-GCM, so a
    # server that supports the spec suites negotiates one of them.
    with handshake(host, int(port), ctx) as tls:
        assert tls.cipher()[0] in {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def test_tls_curl_http2(tls_server, stores, cert):
    s = stores["demo"]
    r = CurlClient(tls_server.base_url, cacert=cert).post(
        s.key_path("demo", "metadata"), metadata_body(), s.creds[0], extra_args=["--http2"]
    )
    assert_ok(r)
    assert r.http_version == "HTTP/2", r.http_version


def test_tls_plain_http_request_refused(tls_server, stores):
    """The TLS listener does not serve plain HTTP."""
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.base_url.replace("https://", "http://") + "/ping", timeout=5)


@pytest.mark.parametrize("http2", [False, True])
def test_tls_hypercorn_roundtrip(tls_hypercorn_server, stores, cert, http2):
    roundtrip_botocore(tls_hypercorn_server, stores, cert, http2)
