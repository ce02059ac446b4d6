"""Canonical forms: the query string (sorted, encoded) and the path candidates per signer."""

import datetime
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from sigv4_testlib import CRED, NOW, SERVICE, do_verify

from sigv4.canonical import aws_query, path_candidates, remove_dot_segments


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("Param2=value2&Param1=value1", "Param1=value1&Param2=value2"),
        ("a=2&a=1&b", "a=1&a=2&b="),
        ("b=x+y&a=1%2F2~", "a=1%2F2~&b=x%20y"),
        ("k=%7e%2d%5F", "k=~-_"),
        ("sp ace=1", "sp%20ace=1"),
    ],
)
def test_aws_query_is_sorted_and_uri_encoded(raw, canonical):
    assert aws_query(raw) == canonical


def test_botocore_params_query_verifies_as_sent_on_the_wire():
    req = AWSRequest(
        method="POST",
        url="https://h/kms/xks/v1/health",
        params={"b": "x y", "a": "1/2~"},
        data=b"{}",
        headers={},
    )
    fake_now = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fake_now):
        SigV4Auth(Credentials(CRED.access_key_id, CRED.secret), SERVICE, "us-east-1").add_auth(req)
    wire = urlsplit(req.prepare().url)
    headers = [*req.headers.items(), ("Host", "h")]
    do_verify(headers, path=wire.path, query=wire.query, body=b"{}")


@pytest.mark.parametrize(
    ("path", "normalised"),
    [("/a/./b/../c", "/a/c"), ("//a//b/", "/a/b/"), ("/..", "/"), ("", "/"), ("/a/b", "/a/b")],
)
def test_dot_segments_and_repeated_slashes_are_removed_like_botocore(path, normalised):
    from botocore.utils import normalize_url_path

    assert remove_dot_segments(path) == normalised == normalize_url_path(path)


def test_xks_charset_paths_have_exactly_one_candidate():
    assert path_candidates("/a-B_9/kms/xks/v1/keys/K.e-y_/encrypt") == (
        "/a-B_9/kms/xks/v1/keys/K.e-y_/encrypt",
    )


def test_percent_escapes_yield_double_encoded_and_literal_candidates():
    assert path_candidates("/a%20b") == ("/a%2520b", "/a%20b")
