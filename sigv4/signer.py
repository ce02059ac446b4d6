"""SigV4 request signing, byte-for-byte what botocore's ``SigV4Auth`` produces.

Used by our load generators, tests and CLI. Matching botocore exactly (rather than writing "a"
correct signer) means a request we sign exercises the same canonical form KMS's own signer does.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from sigv4.canonical import botocore_path, botocore_query
from sigv4.credentials import Credential
from sigv4.keys import signing_key
from sigv4.verifier import ALGORITHM

# Headers botocore never signs (hop-by-hop, tracing, user agent).
UNSIGNED_HEADERS = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amz-date",
        "x-amzn-trace-id",
    }
)


def sign(
    *,
    method: str,
    host: str,
    path: str,
    query: str = "",
    headers: Mapping[str, str] | None,
    body: bytes,
    credential: Credential,
    region: str,
    service: str = "kms-xks-proxy",
    now: float | None = None,
) -> dict[str, str]:
    """Return ``{"Authorization": ..., "X-Amz-Date": ...}`` for the request.

    ``path``/``query`` are as they will be sent (already percent-encoded). Every header in
    ``headers`` except hop-by-hop/tracing ones is signed, so the caller must send them unchanged.
    If ``headers`` has ``X-Amz-Content-SHA256``, its value is used as the payload hash (botocore
    does the same). ``host`` is used unless ``headers`` carries its own Host.
    """
    stamp = time.gmtime(time.time() if now is None else now)
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", stamp)
    date = amz_date[:8]

    grouped: dict[str, list[str]] = {}
    payload_hash = None
    for name, value in (headers or {}).items():
        lname = name.lower()
        if lname == "date":
            raise ValueError("sign() uses X-Amz-Date; do not pass a Date header")
        if lname == "x-amz-content-sha256":
            payload_hash = value
        if lname not in UNSIGNED_HEADERS:
            grouped.setdefault(lname, []).append(value)
    grouped.setdefault("host", [host])
    grouped["x-amz-date"] = [amz_date]
    names = sorted(grouped)
    canonical_headers = "".join(
        f"{n}:{','.join(' '.join(v.split()) for v in grouped[n])}\n" for n in names
    )
    signed_headers = ";".join(names)
    if payload_hash is None:
        payload_hash = hashlib.sha256(body).hexdigest()

    creq = "\n".join(
        (
            method.upper(),
            botocore_path(path),
            botocore_query(query),
            canonical_headers,
            signed_headers,
            payload_hash,
        )
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    sts = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(creq.encode('utf-8')).hexdigest()}"
    key = signing_key(credential.secret, date, region, service)
    signature = hmac.digest(key, sts.encode("utf-8"), "sha256").hex()
    authorization = (
        f"{ALGORITHM} Credential={credential.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return {"Authorization": authorization, "X-Amz-Date": amz_date}
