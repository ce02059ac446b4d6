"""SigV4 authentication as seen from outside: every failure is 401 AuthenticationFailedException."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from conformance_helpers import (
    Cred,
    assert_json_error,
    assert_ok,
    botocore_headers,
    encrypt_body,
    health_body,
    metadata_body,
    secret_marker,
)

AUTH = "AuthenticationFailedException"


def utc_now() -> dt.datetime:
    # botocore's get_current_datetime() returns a naive UTC datetime.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@pytest.mark.parametrize("op", ["health", "metadata", "encrypt"])
def test_no_authorization_header(boto, stores, op):
    s = stores["demo"]
    path = s.health_path if op == "health" else s.key_path("demo", op)
    body = {
        "health": health_body(),
        "metadata": metadata_body(),
        "encrypt": encrypt_body(secret_marker("pt")),
    }[op]
    r = boto.raw("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert_json_error(r, 401, AUTH)


def test_no_authorization_curl(curl, stores):
    s = stores["demo"]
    assert_json_error(curl.post(s.health_path, health_body(), None), 401, AUTH)


def test_wrong_secret_curl(curl, stores):
    s = stores["demo"]
    bad = Cred(s.creds[0].akid, "A" * 43 + "=")
    assert_json_error(curl.post(s.key_path("demo", "metadata"), metadata_body(), bad), 401, AUTH)


def test_wrong_secret_requests(req, stores):
    s = stores["demo"]
    bad = Cred(s.creds[0].akid, s.creds[1].secret)
    assert_json_error(req.post(s.health_path, health_body(), bad), 401, AUTH)


def tamper_signature(headers, body):
    auth = headers["Authorization"]
    last = auth[-1]
    headers["Authorization"] = auth[:-1] + ("0" if last != "0" else "1")
    return headers, body


def tamper_body(headers, body):
    return headers, body.replace(b"DescribeKey", b"DescribeKeZ")


def drop_date(headers, body):
    return {k: v for k, v in headers.items() if k.lower() != "x-amz-date"}, body


def change_content_type(headers, body):
    headers["Content-Type"] = "application/json; charset=utf-8"
    return headers, body


def duplicate_authorization(headers, body):
    headers["Authorization"] = headers["Authorization"] + ", " + headers["Authorization"]
    return headers, body


def garbage_authorization(headers, body):
    headers["Authorization"] = "AWS4-HMAC-SHA256 nonsense"
    return headers, body


def basic_authorization(headers, body):
    headers["Authorization"] = "Basic dXNlcjpwYXNz"
    return headers, body


@pytest.mark.parametrize(
    "mutate",
    [
        tamper_signature,
        tamper_body,
        drop_date,
        change_content_type,
        duplicate_authorization,
        garbage_authorization,
        basic_authorization,
    ],
    ids=lambda f: f.__name__,
)
def test_tampered_request(boto, stores, mutate):
    s = stores["demo"]
    r = boto.post(s.key_path("demo", "metadata"), metadata_body(), s.creds[0], mutate=mutate)
    assert_json_error(r, 401, AUTH)


def test_another_stores_credential(boto, stores):
    demo, second = stores["demo"], stores["second"]
    assert_json_error(
        boto.post(demo.key_path("demo", "metadata"), metadata_body(), second.creds[0]), 401, AUTH
    )
    assert_json_error(boto.post(second.health_path, health_body(), demo.creds[0]), 401, AUTH)


def test_unknown_access_key(boto, stores):
    s = stores["demo"]
    ghost = Cred("A" * 20, s.creds[0].secret)
    assert_json_error(boto.post(s.health_path, health_body(), ghost), 401, AUTH)


@pytest.mark.parametrize("service", ["kms", "kms-xks-proxyx", "s3"])
def test_wrong_service_in_scope(boto, stores, service):
    s = stores["demo"]
    assert_json_error(
        boto.post(s.health_path, health_body(), s.creds[0], service=service), 401, AUTH
    )


def test_any_region_accepted_when_unrestricted(boto, stores):
    s = stores["demo"]
    assert_ok(boto.post(s.health_path, health_body(), s.creds[0], region="eu-west-3"))


@pytest.mark.parametrize("minutes", [-4, 4])
def test_clock_skew_inside_window_accepted(boto, stores, minutes):
    s = stores["demo"]
    at = utc_now() + dt.timedelta(minutes=minutes)
    assert_ok(boto.post(s.key_path("demo", "metadata"), metadata_body(), s.creds[0], at=at))


@pytest.mark.parametrize("minutes", [-6, 6, -60 * 24, 60 * 24])
def test_clock_skew_outside_window_rejected(boto, stores, minutes):
    s = stores["demo"]
    at = utc_now() + dt.timedelta(minutes=minutes)
    assert_json_error(
        boto.post(s.key_path("demo", "metadata"), metadata_body(), s.creds[0], at=at), 401, AUTH
    )


def test_credential_date_must_match_amz_date(boto, stores):
    """Scope date from yesterday with today's X-Amz-Date: reject."""
    s = stores["demo"]
    url = boto.base_url + s.health_path
    data = json.dumps(health_body()).encode()
    headers = botocore_headers(url, data, s.creds[0])
    auth = headers["Authorization"]
    today = headers["X-Amz-Date"][:8]
    yesterday = (dt.datetime.strptime(today, "%Y%m%d") - dt.timedelta(days=1)).strftime("%Y%m%d")
    headers["Authorization"] = auth.replace(f"/{today}/", f"/{yesterday}/")
    assert_json_error(boto.raw("POST", s.health_path, data, headers), 401, AUTH)


def test_signature_for_other_path_rejected(boto, stores):
    """A signature is bound to the path: replaying it on another key's URI fails."""
    s = stores["demo"]
    data = json.dumps(metadata_body()).encode()
    headers = botocore_headers(boto.base_url + s.key_path("demo", "metadata"), data, s.creds[0])
    r = boto.raw("POST", s.key_path("demo-encrypt-only", "metadata"), data, headers)
    assert_json_error(r, 401, AUTH)


def test_auth_checked_before_key_lookup(boto, stores):
    """No oracle: an unauthenticated caller cannot learn which keys exist."""
    s = stores["demo"]
    r = boto.raw(
        "POST",
        s.key_path("nosuchkey", "metadata"),
        json.dumps(metadata_body()).encode(),
        {"Content-Type": "application/json"},
    )
    assert_json_error(r, 401, AUTH)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_restricted_regions_accept_listed(boto, stores, region):
    s = stores["regional"]
    assert_ok(boto.post(s.health_path, health_body(), s.creds[0], region=region))


@pytest.mark.parametrize("region", ["us-west-2", "eu-west-2", "us-east-1x"])
def test_restricted_regions_reject_others(boto, stores, region):
    s = stores["regional"]
    assert_json_error(boto.post(s.health_path, health_body(), s.creds[0], region=region), 401, AUTH)


def test_signed_content_sha256_header_must_match_body(boto, stores):
    """x-amz-content-sha256, when signed, must be the body's hash: a signer that trusts the
    header would let a different body through under a valid signature."""
    s = stores["demo"]
    body = json.dumps(metadata_body()).encode()
    good = {
        "Content-Type": "application/json",
        "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest(),
    }
    assert_ok(boto.post(s.key_path("demo", "metadata"), body, s.creds[0], headers=good))
    bad = dict(good, **{"X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()})
    assert_json_error(
        boto.post(s.key_path("demo", "metadata"), body, s.creds[0], headers=bad), 401, AUTH
    )
