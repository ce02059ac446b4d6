"""mTLS: only a client certificate from the configured CA *and* with an allowed subject gets a
request through; every refusal happens before the app sees a request, and is logged with a reason.
"""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path

import httpx
import pytest
from transport_pki import CA, KMS_CN
from transport_support import Served, serve_env, write_config


def _client(
    server_cert: Path, cert: tuple[Path, Path] | None, *, tls12: bool = False, http2: bool = False
):
    ctx = ssl.create_default_context(cafile=str(server_cert))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(verify=ctx, http2=http2, timeout=10)


def attempt(url: str, server_cert: Path, cert, *, tls12: bool = False) -> int | str:
    """HTTP status, or the name of the error when the connection was refused/closed."""
    try:
        with _client(server_cert, cert, tls12=tls12) as c:
            return c.post(f"{url}/demo/kms/xks/v1/keys/k/metadata", content=b"{}").status_code
    except (httpx.TransportError, ssl.SSLError) as exc:
        return type(exc).__name__


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA("xks test client CA"), CA("some other CA")
    return {
        "dir": d,
        "ca_file": ca.write(d / "client-ca.pem"),
        "good": ca.issue(d / "good", KMS_CN),
        "other_ca": other.issue(d / "other-ca", KMS_CN),
        "other_region": ca.issue(d / "other-region", "cks.kms.eu-west-1.amazonaws.com"),
        "other_subject": ca.issue(d / "other-subject", "client.example.com"),
        "nested": ca.issue(d / "nested", "cks.kms.us-east-1.evil.amazonaws.com"),
        "expired": ca.issue(d / "expired", KMS_CN, expired=True),
    }


@pytest.fixture(scope="module")
def mtls_server(pki, tmp_path_factory):
    """Config default server (granian) + mTLS: the launcher must serve with hypercorn."""
    d = tmp_path_factory.mktemp("mtls")
    cfg = write_config(d, client_ca=pki["ca_file"], regions=["us-east-1"])
    log = d / "requests.log"
    s = Served(
        ["--config", str(cfg), "--bind", "127.0.0.1:0", "--workers", "1"],
        serve_env(probe=True, extra={"PROBE_LOG": str(log)}),
        d,
    )
    s.server_cert = d / "tls/server.crt"
    s.request_log = log
    yield s
    s.stop()


def _requests_seen(s) -> list[str]:
    return s.request_log.read_text().splitlines() if s.request_log.exists() else []


def _refusals(s) -> list[dict]:
    """Refusal records from the JSON service log (stdout of the workers)."""
    return [json.loads(line) for line in list(s.all_stdout) if "tls_client_refused" in line]


def test_mtls_switches_default_server_to_hypercorn(mtls_server):
    assert "serving with hypercorn" in mtls_server.stderr()


def test_good_client_certificate_passes(mtls_server, pki):
    before = len(_requests_seen(mtls_server))
    g = pki["good"]
    assert attempt(mtls_server.url, mtls_server.server_cert, (g.cert, g.key)) == 200
    assert len(_requests_seen(mtls_server)) == before + 1


def test_good_client_certificate_over_http2(mtls_server, pki):
    g = pki["good"]
    with _client(mtls_server.server_cert, (g.cert, g.key), http2=True) as c:
        r = c.post(f"{mtls_server.url}/demo/kms/xks/v1/health", content=b"{}")
    assert r.status_code == 200
    assert r.http_version == "HTTP/2"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other_ca", "unable to get local issuer"),
        ("expired", "expired"),
        ("other_region", "subject not allowed"),
        ("other_subject", "subject not allowed"),
        ("nested", "subject not allowed"),
        (None, "no client certificate"),
    ],
)
@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
def test_bad_or_absent_client_certificate_refused(mtls_server, pki, case, reason, tls12):
    before_req = _requests_seen(mtls_server)
    before_log = len(_refusals(mtls_server))
    cert = None if case is None else (pki[case].cert, pki[case].key)
    result = attempt(mtls_server.url, mtls_server.server_cert, cert, tls12=tls12)
    assert not isinstance(result, int), f"{case}: got HTTP {result}"
    # The app never saw a request.
    assert _requests_seen(mtls_server) == before_req
    # The refusal is logged with its reason (the server may log just after the client gave up).
    new = _wait_for_refusal(mtls_server, before_log)
    assert any(reason in r["reason"] for r in new), new


def _wait_for_refusal(s, before: int) -> list[dict]:
    """The server may write its log line just after the client saw the connection close."""
    for _ in range(200):
        new = _refusals(s)[before:]
        if new:
            return new
        time.sleep(0.05)
    return _refusals(s)[before:]


def test_explicit_subject_list(pki, tmp_path, serve_proc):
    cfg = write_config(tmp_path, client_ca=pki["ca_file"], subjects=["client.example.com"])
    s = serve_proc(cfg, "--server", "hypercorn", "--workers", "1")
    crt = tmp_path / "tls/server.crt"
    o = pki["other_subject"]
    g = pki["good"]
    assert attempt(s.url, crt, (o.cert, o.key)) == 200
    assert not isinstance(attempt(s.url, crt, (g.cert, g.key)), int)


def test_any_region_store_accepts_any_kms_region(pki, tmp_path, serve_proc):
    cfg = write_config(tmp_path, client_ca=pki["ca_file"], regions=[])
    s = serve_proc(cfg, "--workers", "1")
    crt = tmp_path / "tls/server.crt"
    r = pki["other_region"]
    n = pki["nested"]
    assert attempt(s.url, crt, (r.cert, r.key)) == 200
    assert not isinstance(attempt(s.url, crt, (n.cert, n.key)), int)


def test_explicit_granian_with_mtls_is_refused(pki, tmp_path):
    from transport_support import run_serve

    cfg = write_config(tmp_path, client_ca=pki["ca_file"])
    r = run_serve(
        ["--config", str(cfg), "--bind", "127.0.0.1:0", "--server", "granian"],
        serve_env(probe=True),
    )
    assert r.returncode == 2
    assert "hypercorn" in r.stderr and "allowed_client_subjects" in r.stderr
