"""Helpers for the sigv4 tests: independent signers (botocore, aws-requests-auth) and a verifier
call with the defaults the tests share. Signing with *other people's* code is the point: our
verifier must accept what real clients produce."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from unittest import mock

import requests
from aws_requests_auth.aws_auth import AWSRequestsAuth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import sigv4
from sigv4 import Credential

SERVICE = "kms-xks-proxy"
HOST = "xks.example.com"
PATH = "/demo/kms/xks/v1/keys/demo/encrypt"
BODY = b'{"requestMetadata":{"kmsOperation":"Encrypt","kmsRequestId":"r-1"},"plaintext":"AA=="}'
CRED = Credential("AKIAEXAMPLEEXAMPLE23", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYabc=")
NOW = 1_790_000_000.0  # a fixed instant, so tests never depend on the wall clock


def botocore_headers(
    *,
    method: str = "POST",
    host: str = HOST,
    path: str = PATH,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: bytes = BODY,
    credential: Credential = CRED,
    region: str = "us-east-1",
    now: float = NOW,
) -> list[tuple[str, str]]:
    """Sign with botocore's SigV4Auth at ``now``; return the headers as a client would send them
    (botocore leaves Host to the HTTP client, so we add it as the client would)."""
    url = f"https://{host}{path}" + (f"?{query}" if query else "")
    if headers is None:
        headers = {"Content-Type": "application/json"}
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    fake_now = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fake_now):
        SigV4Auth(
            Credentials(credential.access_key_id, credential.secret), SERVICE, region
        ).add_auth(req)
    out = list(req.headers.items())
    if not any(k.lower() == "host" for k, _ in out):
        out.append(("Host", host))
    return out


def requests_auth_headers(
    *,
    host: str = HOST,
    path: str = PATH,
    body: bytes = BODY,
    credential: Credential = CRED,
    region: str = "us-east-1",
) -> tuple[list[tuple[str, str]], float]:
    """Sign with aws-requests-auth (it always uses the real clock); return headers and the time."""
    auth = AWSRequestsAuth(
        aws_access_key=credential.access_key_id,
        aws_secret_access_key=credential.secret,
        aws_host=host,
        aws_region=region,
        aws_service=SERVICE,
    )
    prepared = requests.Request(
        "POST", f"https://{host}{path}", data=body, headers={"Content-Type": "application/json"}
    ).prepare()
    prepared = auth(prepared)
    out = list(prepared.headers.items())
    out.append(("Host", host))
    return out, time.time()


def lookup_for(*creds: Credential):
    """A lookup callable over a fixed set of credentials (several may share an id)."""

    def lookup(akid: str) -> Sequence[Credential]:
        return [c for c in creds if c.access_key_id == akid]

    return lookup


def do_verify(
    headers,
    *,
    body: bytes = BODY,
    path: str | bytes = PATH,
    query: str = "",
    method: str = "POST",
    now: float = NOW,
    creds: Sequence[Credential] = (CRED,),
    **kw,
) -> sigv4.Verified:
    """verify() with the shared defaults."""
    return sigv4.verify(
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        lookup=lookup_for(*creds),
        now=now,
        **kw,
    )


def replace_header(headers, name: str, value: str) -> list[tuple[str, str]]:
    """Copy of ``headers`` with every ``name`` header (case-insensitive) replaced by one value."""
    out = [(k, v) for k, v in headers if k.lower() != name.lower()]
    out.append((name, value))
    return out


def get_header(headers, name: str) -> str:
    """The single value of ``name`` (case-insensitive)."""
    (value,) = [v for k, v in headers if k.lower() == name.lower()]
    return value
