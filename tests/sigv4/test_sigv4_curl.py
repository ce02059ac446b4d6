"""curl --aws-sigv4 against a tiny loopback HTTP server that feeds what it receives to verify().

curl is the third independent signer named by the XKS spec; unlike the Python signers it goes
through a real socket, so this also checks that we verify what arrives on the wire (header case,
Host with port, curl's own Content-Type) rather than what a client library thinks it sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sigv4_testlib import lookup_for

import sigv4

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")

CRED = sigv4.generate_credential()


class _VerifyingHandler(BaseHTTPRequestHandler):
    """Answers 200 with the verified identity, or 401 with the error class and message."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        path, _, query = self.path.partition("?")
        try:
            v = sigv4.verify(
                method=self.command,
                path=path,
                query=query,
                headers=list(self.headers.items()),
                body=body,
                lookup=lookup_for(CRED),
                now=time.time(),
                regions={"eu-west-1"},
            )
            status, answer = 200, {"akid": v.access_key_id, "region": v.region}
        except sigv4.SigV4Error as exc:
            status, answer = 401, {"error": type(exc).__name__, "message": exc.message}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VerifyingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _curl(url: str, *extra: str, region: str = "eu-west-1", user: str | None = None) -> dict:
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--http1.1",
        "--aws-sigv4",
        f"aws:amz:{region}:kms-xks-proxy",
        "--user",
        user or f"{CRED.access_key_id}:{CRED.secret}",
        *extra,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)
    return json.loads(out.stdout)


BODY = '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"1"}}'


def test_curl_signed_post_verifies(server_url):
    answer = _curl(server_url + "/demo/kms/xks/v1/health", "-d", BODY)
    assert answer == {"akid": CRED.access_key_id, "region": "eu-west-1"}


def test_curl_with_json_content_type_verifies(server_url):
    answer = _curl(
        server_url + "/a-b_C/9/kms/xks/v1/keys/Key.id-_1/encrypt",
        "-H",
        "Content-Type: application/json",
        "-d",
        BODY,
    )
    assert answer["akid"] == CRED.access_key_id


def test_curl_empty_body_verifies(server_url):
    answer = _curl(server_url + "/kms/xks/v1/health", "-X", "POST")
    assert answer["region"] == "eu-west-1"


def test_curl_with_wrong_secret_is_a_signature_mismatch(server_url):
    wrong = f"{CRED.access_key_id}:{'x' * 44}"
    answer = _curl(server_url + "/kms/xks/v1/health", "-d", BODY, user=wrong)
    assert answer["error"] == "SignatureMismatch"
    assert "x" * 44 not in answer["message"]


def test_curl_from_another_region_is_refused(server_url):
    answer = _curl(server_url + "/kms/xks/v1/health", "-d", BODY, region="us-west-2")
    assert answer["error"] == "RegionNotAccepted"


@pytest.mark.parametrize(
    "path",
    ["/p//q/kms/xks/v1/health", "/kms/xks/v1/keys/a..b/metadata", "/kms/xks/v1/keys/_-./decrypt"],
)
def test_curl_odd_but_legal_paths_verify(server_url, path):
    answer = _curl(server_url + path, "--path-as-is", "-d", BODY)
    assert answer.get("akid") == CRED.access_key_id, answer
