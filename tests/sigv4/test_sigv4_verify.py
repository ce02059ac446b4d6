"""verify(): what passes, and the precise error type for each way a request can be wrong."""

import hashlib

import pytest
from sigv4_testlib import (
    BODY,
    CRED,
    NOW,
    PATH,
    botocore_headers,
    do_verify,
    get_header,
    replace_header,
)

import sigv4
from sigv4 import Credential

OTHER = Credential("BKIAEXAMPLEEXAMPLE23", "x" * 44)


def test_botocore_signed_request_verifies_and_names_the_credential():
    v = do_verify(botocore_headers())
    assert (v.access_key_id, v.region, v.date) == (CRED.access_key_id, "us-east-1", "20260921")
    assert v.credential == CRED
    assert CRED.secret not in repr(v)


def test_asgi_style_lower_case_byte_headers_verify():
    raw = [(k.lower().encode(), v.encode()) for k, v in botocore_headers()]
    assert do_verify(raw, path=PATH.encode()).access_key_id == CRED.access_key_id


def test_http2_authority_stands_in_for_host():
    headers = [(":authority" if k == "Host" else k, v) for k, v in botocore_headers()]
    assert do_verify(headers).region == "us-east-1"


def test_rotation_tries_each_secret_for_the_same_access_key_id():
    new = Credential(CRED.access_key_id, "n" * 50)
    old_signed = botocore_headers(credential=CRED)
    new_signed = botocore_headers(credential=new)
    assert do_verify(old_signed, creds=[new, CRED]).credential == CRED
    assert do_verify(new_signed, creds=[new, CRED]).credential == new


def test_regions_restrict_the_scope():
    headers = botocore_headers(region="eu-west-3")
    assert do_verify(headers, regions={"eu-west-3", "us-east-1"}).region == "eu-west-3"
    assert do_verify(headers, regions=frozenset()).region == "eu-west-3"
    with pytest.raises(sigv4.RegionNotAccepted, match="eu-west-3"):
        do_verify(headers, regions={"us-east-1"})


@pytest.mark.parametrize("delta", [-299, -1, 0, 1, 299, 300, -300])
def test_clock_window_accepts_up_to_five_minutes_either_way(delta):
    headers = botocore_headers(now=NOW + delta)
    do_verify(headers, now=NOW)


@pytest.mark.parametrize("delta", [-301, 301, -86400, 3600])
def test_clock_window_rejects_beyond_five_minutes_either_way(delta):
    headers = botocore_headers(now=NOW + delta)
    with pytest.raises(sigv4.RequestExpired):
        do_verify(headers, now=NOW)


def test_clock_window_is_configurable():
    headers = botocore_headers(now=NOW - 61)
    with pytest.raises(sigv4.RequestExpired):
        do_verify(headers, now=NOW, window_s=60)
    do_verify(headers, now=NOW, window_s=61)


def test_missing_authorization():
    headers = [(k, v) for k, v in botocore_headers() if k != "Authorization"]
    with pytest.raises(sigv4.MissingAuthorization):
        do_verify(headers)


def test_duplicated_authorization_is_refused_even_if_both_are_valid():
    headers = botocore_headers()
    headers.append(("authorization", get_header(headers, "Authorization")))
    with pytest.raises(sigv4.DuplicateAuthorization):
        do_verify(headers)
    assert issubclass(sigv4.DuplicateAuthorization, sigv4.MalformedAuthorization)


def _auth_variant(old: str, new: str):
    headers = botocore_headers()
    auth = get_header(headers, "Authorization")
    assert old in auth
    return replace_header(headers, "Authorization", auth.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA512 "),
        ("AWS4-HMAC-SHA256 ", "Basic "),
        ("Credential=", "Credentials="),
        (", SignedHeaders=", ", Signed="),
        (", Signature=", ", SignedHeaders=host;x-amz-date, Signature="),
        ("/us-east-1/", "/us-east-1/extra/"),
        ("/20260921/", "/2026092/"),
        ("/20260921/", "/2026-9-21/"),
        ("/us-east-1/", "//"),
        ("SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;x-amz-date"),
        ("SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;host"),
        (
            "SignedHeaders=content-type;host;x-amz-date",
            "SignedHeaders=Content-Type;host;x-amz-date",
        ),
        ("SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=host;host;x-amz-date"),
        ("SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=;host;x-amz-date"),
        ("Signature=", "Signature=ab"),
        ("Signature=", "Signature=0"),
    ],
)
def test_malformed_authorization(old, new):
    with pytest.raises(sigv4.MalformedAuthorization):
        do_verify(_auth_variant(old, new))


def test_uppercase_signature_is_malformed():
    headers = botocore_headers()
    auth = get_header(headers, "Authorization")
    head, sig = auth.rsplit("Signature=", 1)
    with pytest.raises(sigv4.MalformedAuthorization):
        do_verify(replace_header(headers, "Authorization", head + "Signature=" + sig.upper()))


@pytest.mark.parametrize(
    ("old", "new"),
    [("/kms-xks-proxy/", "/kms/"), ("/kms-xks-proxy/", "/s3/"), ("/aws4_request", "/aws5_request")],
)
def test_wrong_service_or_terminator(old, new):
    with pytest.raises(sigv4.InvalidScope):
        do_verify(_auth_variant(old, new))


def test_other_service_name_can_be_configured():
    headers = botocore_headers()
    with pytest.raises(sigv4.InvalidScope):
        do_verify(headers, service="kms")


def test_unknown_access_key_id():
    with pytest.raises(sigv4.UnknownAccessKey):
        do_verify(botocore_headers(), creds=[OTHER])


def test_credential_date_must_match_x_amz_date():
    headers = botocore_headers()
    # A date header one day later (and a clock that agrees) still fails: the scope says 20260921.
    with pytest.raises(sigv4.CredentialDateMismatch):
        do_verify(replace_header(headers, "X-Amz-Date", "20260922T120000Z"), now=NOW + 86400)


def test_missing_x_amz_date():
    headers = [(k, v) for k, v in botocore_headers() if k != "X-Amz-Date"]
    with pytest.raises(sigv4.MissingDate):
        do_verify(headers)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "20260921",
        "20260921T120000",
        "2026-09-21T12:00:00Z",
        "20261321T120000Z",
        "20260931T120000Z",
        "20260921T250000Z",
        "20260921t120000z",
        "Mon, 21 Sep 2026",
    ],
)
def test_malformed_x_amz_date(value):
    with pytest.raises(sigv4.MalformedDate):
        do_verify(replace_header(botocore_headers(), "X-Amz-Date", value))


def test_duplicated_x_amz_date_is_malformed():
    headers = botocore_headers()
    headers.append(("x-amz-date", get_header(headers, "X-Amz-Date")))
    with pytest.raises(sigv4.MalformedDate):
        do_verify(headers)


def test_signed_header_absent_from_request():
    headers = [(k, v) for k, v in botocore_headers() if k != "Content-Type"]
    with pytest.raises(sigv4.MissingSignedHeader, match="content-type"):
        do_verify(headers)
    no_host = [(k, v) for k, v in botocore_headers() if k != "Host"]
    with pytest.raises(sigv4.MissingSignedHeader, match="host"):
        do_verify(no_host)


def test_wrong_content_sha256_is_refused_signed_or_not():
    good = hashlib.sha256(BODY).hexdigest()
    signed = botocore_headers(
        headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": good}
    )
    assert "x-amz-content-sha256" in get_header(signed, "Authorization")
    do_verify(signed)
    with pytest.raises(sigv4.ContentHashMismatch):
        do_verify(signed, body=BODY + b" ")
    unsigned = [*botocore_headers(), ("x-amz-content-sha256", "0" * 64)]
    with pytest.raises(sigv4.ContentHashMismatch):
        do_verify(unsigned)
    unsigned_payload = [*botocore_headers(), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]
    with pytest.raises(sigv4.ContentHashMismatch):
        do_verify(unsigned_payload)


def test_signature_mismatch_for_wrong_secret_body_path_method_or_query():
    headers = botocore_headers()
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(headers, creds=[Credential(CRED.access_key_id, "w" * 44)])
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(headers, body=BODY[:-1])
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(headers, path=PATH.replace("encrypt", "decrypt"))
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(headers, method="PUT")
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(headers, query="a=b")


def test_security_token_and_extra_headers_are_honoured_when_signed():
    headers = botocore_headers(
        headers={
            "Content-Type": "application/json",
            "X-Amz-Security-Token": "tok/en+==",
            "X-Custom": "  a   b  ",
        }
    )
    auth = get_header(headers, "Authorization")
    assert "x-amz-security-token" in auth and "x-custom" in auth
    do_verify(headers)
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(replace_header(headers, "X-Amz-Security-Token", "tok/en+=="[:-1]))
    # Whitespace folding: the signer folded "  a   b  " to "a b"; a proxy re-spacing it is fine.
    do_verify(replace_header(headers, "X-Custom", "a \t b"))


def test_repeated_headers_are_joined_with_commas():
    from sigv4 import sign

    signed = sign(
        method="POST",
        host="h",
        path=PATH,
        headers={"X-Multi": "one,two"},
        body=BODY,
        credential=CRED,
        region="us-east-1",
        now=NOW,
    )
    headers = [("Host", "h"), ("X-Multi", "one"), ("x-multi", "  two "), *signed.items()]
    do_verify(headers)


def test_unsigned_extra_headers_do_not_matter():
    headers = [*botocore_headers(), ("User-Agent", "anything"), ("X-Forwarded-For", "10.0.0.1")]
    do_verify(headers)


def test_query_string_canonicalisation_is_sorted_and_encoded():
    headers = botocore_headers(query="b=2&a=1&a=0&c=x%2Fy")
    do_verify(headers, query="b=2&a=1&a=0&c=x%2Fy")
    with pytest.raises(sigv4.SignatureMismatch):
        do_verify(headers, query="b=2&a=1&a=0&c=x%2Fz")


@pytest.mark.parametrize(
    "path",
    [
        "/kms/xks/v1/health",
        "/a-b_c/D9/kms/xks/v1/keys/Key.id-_9/metadata",
        "/p/kms/xks/v1/keys/a.b/decrypt",
        "/deep/prefix/x/kms/xks/v1/keys/K/encrypt",
    ],
)
def test_xks_path_charset_round_trips(path):
    do_verify(botocore_headers(path=path), path=path)


def test_error_messages_are_safe_to_return():
    hostile = "\x00\x1b[31m" + "r" * 2000 + "\u2603"
    headers = botocore_headers(region=hostile)
    cases = [
        lambda: do_verify(headers, regions={"us-east-1"}),
        lambda: do_verify(botocore_headers(), creds=[Credential(CRED.access_key_id, "w" * 44)]),
        lambda: do_verify(botocore_headers(), now=NOW + 10_000),
        lambda: do_verify(replace_header(botocore_headers(), "Authorization", hostile)),
    ]
    for case in cases:
        with pytest.raises(sigv4.SigV4Error) as exc:
            case()
        msg = exc.value.message
        assert 0 < len(msg) < 512
        assert all(0x20 <= ord(ch) <= 0x7E for ch in msg)
        assert CRED.secret not in msg and "w" * 44 not in msg
        assert str(exc.value) == msg


def test_signature_mismatch_message_never_contains_the_expected_signature():
    from sigv4 import sign

    headers = botocore_headers()
    good_sig = get_header(headers, "Authorization").rsplit("=", 1)[1]
    body = BODY + b"x"
    expected = sign(
        method="POST",
        host="xks.example.com",
        path=PATH,
        headers={"Content-Type": "application/json"},
        body=body,
        credential=CRED,
        region="us-east-1",
        now=NOW,
    )["Authorization"]
    with pytest.raises(sigv4.SignatureMismatch) as exc:
        do_verify(headers, body=body)
    assert expected.rsplit("=", 1)[1] not in repr(exc.value)
    assert good_sig not in repr(exc.value)


def test_upper_case_content_sha256_is_accepted_as_signed():
    upper = hashlib.sha256(BODY).hexdigest().upper()
    signed = botocore_headers(
        headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": upper}
    )
    do_verify(signed)
    with pytest.raises(sigv4.ContentHashMismatch):
        do_verify(signed, body=b"")


def test_expired_message_states_the_skew_without_rounding_it_into_the_window():
    headers = botocore_headers(now=NOW)
    with pytest.raises(sigv4.RequestExpired) as info:
        do_verify(headers, now=NOW + 300.4)
    assert "301 s from the server clock (limit 300 s)" in info.value.message
