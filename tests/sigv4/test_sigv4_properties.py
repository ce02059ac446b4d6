"""Property tests: requests signed by independent signers verify; any single-byte change to a
signed part of the request is rejected with the error type that names the cause; sign() agrees
with botocore byte for byte."""

from __future__ import annotations

import datetime
import re
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sigv4_testlib import (
    NOW,
    botocore_headers,
    do_verify,
    get_header,
    replace_header,
    requests_auth_headers,
)

import sigv4
from sigv4 import Credential

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

AKID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
SECRET_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
PREFIX_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
KEYID_CHARS = PREFIX_CHARS + "."
HEADER_VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " "

credentials = st.builds(
    Credential,
    st.text(AKID_CHARS, min_size=20, max_size=30),
    st.text(SECRET_CHARS, min_size=43, max_size=64),
)
regions = st.from_regex(r"\A[a-z]{2,3}-[a-z]{4,9}-[1-9]\Z")
prefixes = st.lists(st.text(PREFIX_CHARS, min_size=1, max_size=12), max_size=4).map(
    lambda segs: "".join("/" + s for s in segs)
)
# "." and ".." cannot reach a key through any HTTP client (URL normalisation removes them).
key_ids = st.text(KEYID_CHARS, min_size=1, max_size=40).filter(lambda k: k not in (".", ".."))
operations = st.one_of(
    st.just("health"),
    st.tuples(key_ids, st.sampled_from(["metadata", "encrypt", "decrypt"])).map(
        lambda t: f"keys/{t[0]}/{t[1]}"
    ),
)
paths = st.builds(lambda p, op: f"{p}/kms/xks/v1/{op}", prefixes, operations)
bodies = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda n, r: r.randbytes(n), st.integers(0, 65536), st.randoms(use_true_random=False)
    ),
)
header_names = st.from_regex(r"\Ax-[a-z0-9-]{1,16}\Z").filter(
    lambda n: n not in ("x-amz-date", "x-amzn-trace-id", "x-amz-content-sha256")
)
header_values = st.text(HEADER_VALUE_CHARS, min_size=1, max_size=40)
extra_headers = st.dictionaries(header_names, header_values, max_size=4)


def _fold(v: str) -> str:
    return " ".join(v.split())


@FAST
@given(cred=credentials, region=regions, path=paths, body=bodies, extra=extra_headers)
def test_botocore_signed_requests_verify(cred, region, path, body, extra):
    headers = {"Content-Type": "application/json", **extra}
    signed = botocore_headers(path=path, headers=headers, body=body, credential=cred, region=region)
    v = do_verify(signed, path=path, body=body, creds=[cred], regions={region})
    assert (v.access_key_id, v.region) == (cred.access_key_id, region)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cred=credentials, region=regions, path=paths, body=bodies)
def test_aws_requests_auth_signed_requests_verify(cred, region, path, body):
    signed, now = requests_auth_headers(path=path, body=body, credential=cred, region=region)
    v = do_verify(signed, path=path, body=body, creds=[cred], now=now, regions=[region])
    assert v.credential == cred


def _expected_for_date(original: str, flipped: str, now: float) -> type[sigv4.SigV4Error]:
    """Independent statement of which check a changed x-amz-date must trip."""
    if not re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", flipped):
        return sigv4.MalformedDate
    try:
        when = datetime.datetime.strptime(flipped, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return sigv4.MalformedDate
    if flipped[:8] != original[:8]:
        return sigv4.CredentialDateMismatch
    if abs(when.timestamp() - now) > 300:
        return sigv4.RequestExpired
    return sigv4.SignatureMismatch


def _flip(text: str, index: int, xor: int) -> str:
    raw = bytearray(text.encode("latin-1"))
    raw[index % len(raw)] ^= xor
    return raw.decode("latin-1")


@FAST
@given(
    cred=credentials,
    region=regions,
    path=paths,
    body=st.binary(min_size=1, max_size=4096),
    extra=extra_headers,
    part=st.sampled_from(["body", "path", "date", "signature", "akid", "header"]),
    index=st.integers(0, 10_000),
    xor=st.integers(1, 255),
)
def test_any_single_byte_change_is_rejected_with_the_right_error(
    cred, region, path, body, extra, part, index, xor
):
    headers = {"Content-Type": "application/json", **extra}
    signed = botocore_headers(path=path, headers=headers, body=body, credential=cred, region=region)
    auth = get_header(signed, "Authorization")
    kwargs = {"path": path, "body": body, "creds": [cred]}
    expected: type[sigv4.SigV4Error] = sigv4.SignatureMismatch
    if part == "body":
        raw = bytearray(body)
        raw[index % len(raw)] ^= xor
        kwargs["body"] = bytes(raw)
    elif part == "path":
        raw = bytearray(path.encode())
        raw[index % len(raw)] ^= xor
        kwargs["path"] = bytes(raw)
    elif part == "date":
        original = get_header(signed, "X-Amz-Date")
        flipped = _flip(original, index, xor)
        expected = _expected_for_date(original, flipped, NOW)
        signed = replace_header(signed, "X-Amz-Date", flipped)
    elif part == "signature":
        head, sig = auth.split("Signature=")
        new_sig = _flip(sig, index, xor)
        if not re.fullmatch(r"[0-9a-f]{64}", new_sig):
            expected = sigv4.MalformedAuthorization
        signed = replace_header(signed, "Authorization", head + "Signature=" + new_sig)
    elif part == "akid":
        head, rest = auth.split("Credential=")
        pos = index % len(cred.access_key_id)
        new_char = chr(ord(rest[pos]) ^ xor)
        rest = rest[:pos] + new_char + rest[pos + 1 :]
        expected = sigv4.MalformedAuthorization if new_char in "/," else sigv4.UnknownAccessKey
        signed = replace_header(signed, "Authorization", head + "Credential=" + rest)
    else:
        names = ["Content-Type", "Host", *extra]
        name = names[index % len(names)]
        original = get_header(signed, name)
        flipped = _flip(original, index // len(names), xor)
        assume(_fold(flipped) != _fold(original))
        signed = replace_header(signed, name, flipped)
    with pytest.raises(expected):
        do_verify(signed, **kwargs)


@settings(max_examples=20, deadline=None)
@given(
    cred=credentials,
    region=regions,
    path=paths,
    body=st.binary(min_size=1, max_size=512),
    index=st.integers(0, 10_000),
    xor=st.integers(1, 255),
)
def test_aws_requests_auth_body_change_trips_its_content_hash(cred, region, path, body, index, xor):
    signed, now = requests_auth_headers(path=path, body=body, credential=cred, region=region)
    raw = bytearray(body)
    raw[index % len(raw)] ^= xor
    with pytest.raises(sigv4.ContentHashMismatch):
        do_verify(signed, path=path, body=bytes(raw), creds=[cred], now=now)


queries = st.lists(
    st.tuples(st.from_regex(r"\A[a-z0-9]{1,6}\Z"), st.from_regex(r"\A[a-z0-9]{0,6}\Z")),
    max_size=4,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


@FAST
@given(
    cred=credentials,
    region=regions,
    path=paths,
    query=queries,
    body=st.binary(max_size=1024),
    extra=extra_headers,
    # botocore derives Host from the URL and drops the default port: use a non-default one.
    host=st.builds(
        lambda name, port: f"{name}:{port}" if port else name,
        st.from_regex(r"\A[a-z0-9-]{1,20}(\.[a-z0-9-]{1,10}){0,3}\Z"),
        st.one_of(st.none(), st.integers(1024, 65535)),
    ),
    now=st.integers(1_000_000_000, 4_000_000_000),
)
def test_sign_is_identical_to_botocore(cred, region, path, query, body, extra, host, now):
    headers = {"Content-Type": "application/json", **extra}
    ours = sigv4.sign(
        method="POST",
        host=host,
        path=path,
        query=query,
        headers=headers,
        body=body,
        credential=cred,
        region=region,
        now=float(now),
    )
    theirs = botocore_headers(
        host=host,
        path=path,
        query=query,
        headers=headers,
        body=body,
        credential=cred,
        region=region,
        now=float(now),
    )
    assert ours == {
        "Authorization": get_header(theirs, "Authorization"),
        "X-Amz-Date": get_header(theirs, "X-Amz-Date"),
    }
    sent = [*headers.items(), ("Host", host), *ours.items()]
    do_verify(sent, path=path, query=query, body=body, creds=[cred], now=float(now))


def test_sign_defaults_to_the_current_time():
    cred = sigv4.generate_credential()
    out = sigv4.sign(
        method="POST",
        host="h",
        path="/kms/xks/v1/health",
        headers=None,
        body=b"{}",
        credential=cred,
        region="us-east-1",
    )
    sent = [("Host", "h"), *out.items()]
    do_verify(sent, path="/kms/xks/v1/health", body=b"{}", creds=[cred], now=time.time())
