"""verify() under hostile or unusual input: only SigV4Error ever escapes, caches stay bounded and
never let a cached parse skip a check, and the odd-but-legal paths each signer produces verify."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sigv4_testlib import (
    BODY,
    CRED,
    NOW,
    PATH,
    botocore_headers,
    do_verify,
    get_header,
    replace_header,
    requests_auth_headers,
)

import sigv4
from sigv4 import keys

text_or_bytes = st.one_of(st.text(max_size=80), st.binary(max_size=80))
header_lists = st.lists(st.tuples(text_or_bytes, text_or_bytes), max_size=8)
auth_like = st.builds(
    lambda a, b, c, d: (
        f"AWS4-HMAC-SHA256 Credential={a}/{b}/us-east-1/kms-xks-proxy/aws4_request, "
        f"SignedHeaders={c}, Signature={d}"
    ),
    st.text(max_size=30),
    st.text(max_size=10),
    st.text(max_size=40),
    st.text(max_size=70),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=header_lists,
    auth=st.one_of(auth_like, st.text(max_size=200)),
    date=st.one_of(st.just("20260921T120000Z"), st.text(max_size=20)),
    path=st.one_of(st.text(max_size=60), st.binary(max_size=60)),
    query=st.one_of(st.text(max_size=40), st.binary(max_size=40)),
    body=st.binary(max_size=200),
)
def test_garbage_only_ever_raises_sigv4_errors(extra, auth, date, path, query, body):
    headers = [("Host", "h"), ("X-Amz-Date", date), ("Authorization", auth), *extra]
    with pytest.raises(sigv4.SigV4Error) as exc:
        do_verify(headers, path=path, query=query, body=body)
    assert len(exc.value.message) < 512
    assert all(0x20 <= ord(ch) <= 0x7E for ch in exc.value.message)


def test_checks_still_run_when_the_authorization_prefix_is_cached():
    headers = botocore_headers(region="ap-south-1")
    do_verify(headers)  # caches the parsed prefix
    for _ in range(2):
        with pytest.raises(sigv4.RegionNotAccepted):
            do_verify(headers, regions={"us-east-1"})
        with pytest.raises(sigv4.InvalidScope):
            do_verify(headers, service="kms")
        with pytest.raises(sigv4.RequestExpired):
            do_verify(headers, now=NOW + 400)
        with pytest.raises(sigv4.UnknownAccessKey):
            do_verify(headers, creds=[])
    do_verify(headers)


def test_compact_authorization_without_spaces_verifies():
    headers = botocore_headers()
    auth = get_header(headers, "Authorization").replace(", ", ",")
    do_verify(replace_header(headers, "Authorization", auth))
    reordered = auth.split(" ", 1)[0] + " " + ",".join(reversed(auth.split(" ", 1)[1].split(",")))
    do_verify(replace_header(headers, "Authorization", reordered))


def test_lookup_may_return_any_iterable():
    v = sigv4.verify(
        method="POST",
        path=PATH,
        query="",
        headers=botocore_headers(),
        body=BODY,
        now=NOW,
        lookup=lambda akid: (c for c in [CRED] if c.access_key_id == akid),
    )
    assert v.credential == CRED


def test_signing_key_cache_is_bounded():
    for i in range(keys._CACHE_MAX + 50):
        keys.signing_key(CRED.secret, f"{20000101 + i}", "us-east-1", "kms-xks-proxy")
    assert len(keys._cache) <= keys._CACHE_MAX
    do_verify(botocore_headers())


@pytest.mark.parametrize(
    "path", ["/p//kms/xks/v1/health", "/p%20q/kms/xks/v1/health", "/p/./kms/xks/v1/health"]
)
def test_odd_paths_verify_as_each_signer_produced_them(path):
    do_verify(botocore_headers(path=path), path=path)
    signed, now = requests_auth_headers(path=path)
    do_verify(signed, path=path, now=now)
    # A differently spelled path is a different request.
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(botocore_headers(path=path), path=path.replace("/p", "/P"))


def test_paths_differing_only_in_dot_segments_do_not_share_a_literal_signature():
    # aws-requests-auth signs the literal path; the normalised path is a different request.
    signed, now = requests_auth_headers(path="/x//kms/xks/v1/health")
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(signed, path="/x/kms/xks/v1/health", now=now)


def test_concurrent_verification_from_threads_shares_the_caches_safely():
    import threading

    signed = [botocore_headers(now=NOW + i, region=f"r-{i % 7}") for i in range(40)]
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                for i, headers in enumerate(signed):
                    assert do_verify(headers, now=NOW).region == f"r-{i % 7}"
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
