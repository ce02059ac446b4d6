"""Verification of an AWS SigV4 (AWS4-HMAC-SHA256) Authorization header for one request.

Checks run cheapest-first and each failure raises its own :class:`~sigv4.errors.SigV4Error`
subclass, so the service can log the cause while answering 401 with a message that is safe to show.
The final comparison is constant-time. The hot path (a well-formed request from a known signer)
costs one SHA-256 of the body, one SHA-256 of the canonical request and one HMAC with a cached
signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sigv4 import canonical
from sigv4._bounded import remember
from sigv4.credentials import Credential
from sigv4.errors import (
    ContentHashMismatch,
    CredentialDateMismatch,
    DuplicateAuthorization,
    InvalidScope,
    MalformedAuthorization,
    MalformedDate,
    MissingAuthorization,
    MissingDate,
    MissingSignedHeader,
    RegionNotAccepted,
    RequestExpired,
    SignatureMismatch,
    UnknownAccessKey,
    safe_fragment,
)
from sigv4.keys import signing_mac

ALGORITHM = "AWS4-HMAC-SHA256"
_PREFIX = ALGORITHM + " "
_TERMINATOR = "aws4_request"
_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")
_MAX_AUTH_LEN = 4096
_MAX_CACHED_HEAD = 1024  # caches hold attacker-chosen keys: bound their memory too

_CACHE_MAX = 1024
_signed_headers_cache: dict[str, tuple[str, ...]] = {}
_date_cache: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class Verified:
    """Which credential authenticated the request, and under which scope."""

    access_key_id: str
    region: str
    date: str  # credential scope date, YYYYMMDD
    credential: Credential  # which of the credentials with this id matched (rotation)


def verify(
    *,
    method: str,
    path: str | bytes,
    query: str | bytes,
    headers: Sequence[tuple[str | bytes, str | bytes]],
    body: bytes,
    lookup: Callable[[str], Sequence[Credential]],
    now: float,
    service: str = "kms-xks-proxy",
    regions: Collection[str] | None = None,
    window_s: float = 300.0,
) -> Verified:
    """Verify the request's SigV4 signature and return the credential that produced it.

    ``path`` and ``query`` are as received on the wire (still percent-encoded). ``headers`` may be
    ASGI-style lower-case byte pairs; on HTTP/2 ``:authority`` stands in for ``host``.
    ``regions`` None or empty accepts any region. Raises a :class:`SigV4Error` subclass.
    """
    hv = _collect(headers)

    # 1. Authorization header.
    auth_values = hv.get("authorization")
    if not auth_values:
        raise MissingAuthorization()
    if len(auth_values) > 1:
        raise DuplicateAuthorization()
    (akid, scope, date, region, signed, signed_str), signature = _authorization(
        _text(auth_values[0]), service
    )

    # 2. Region.
    if regions and region not in regions:
        raise RegionNotAccepted(f"region {safe_fragment(region)!r} is not accepted")

    # 3. Date and clock window.
    date_values = hv.get("x-amz-date")
    if not date_values:
        raise MissingDate()
    if len(date_values) > 1:
        raise MalformedDate("more than one x-amz-date header")
    amz_date = _text(date_values[0]).strip()
    stamp = _parse_amz_date(amz_date)
    if amz_date[:8] != date:
        raise CredentialDateMismatch()
    skew = now - stamp
    if skew > window_s or -skew > window_s:
        raise RequestExpired(
            f"x-amz-date is {math.ceil(abs(skew))} s from the server clock (limit {window_s:g} s)"
        )

    # 4. Who claims to have signed.
    creds = tuple(lookup(akid))  # iterated twice below; also tolerates a generator
    if not creds:
        raise UnknownAccessKey(f"unknown access key id {safe_fragment(akid, 32)!r}")

    # 5. Canonical headers: every signed header must be present.
    lines = []
    for name in signed:
        values = hv.get(name)
        if values is None and name == "host":
            values = hv.get(":authority")
        if values is None:
            raise MissingSignedHeader(
                f"signed header {safe_fragment(name)!r} is not in the request"
            )
        lines.append(f"{name}:{canonical.header_value(values)}\n")
    canonical_headers = "".join(lines)

    # 6. Body hash, checked against x-amz-content-sha256 when the client sent one.
    # botocore puts the header's value (not its own hash) in the canonical request, so a client
    # that sent upper-case hex signed upper-case hex: compare case-insensitively, sign as sent.
    # UNSIGNED-PAYLOAD is refused: the body must be authenticated.
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = hv.get("x-amz-content-sha256")
    if claimed is not None:
        claimed_hash = _text(claimed[0]).strip() if len(claimed) == 1 else ""
        if claimed_hash.lower() != body_hash:
            raise ContentHashMismatch()
        body_hash = claimed_hash

    # 7. Signature over each canonical form a legitimate signer may have produced.
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    head = f"{method.upper()}\n"
    tail = f"\n{canonical_headers}\n{signed_str}\n{body_hash}"
    sts_head = f"{ALGORITHM}\n{amz_date}\n{scope}\n"
    given = bytes.fromhex(signature)
    macs = [signing_mac(c.secret, date, region, service) for c in creds]
    for cpath in canonical.path_candidates(path):
        for cquery in canonical.query_candidates(query):
            creq = f"{head}{cpath}\n{cquery}{tail}".encode("utf-8", "surrogatepass")
            sts = sts_head + hashlib.sha256(creq).hexdigest()
            msg = sts.encode("utf-8", "surrogatepass")
            for cred, template in zip(creds, macs, strict=True):
                mac = template.copy()
                mac.update(msg)
                if hmac.compare_digest(mac.digest(), given):
                    return Verified(akid, region, date, cred)
    raise SignatureMismatch()


def _collect(
    headers: Sequence[tuple[str | bytes, str | bytes]],
) -> dict[str, list[str | bytes]]:
    """Group headers by lower-case name, keeping every value in arrival order.

    Values stay as given (decoded later with :func:`_text`, only for the few headers we use).
    """
    hv: dict[str, list[str | bytes]] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower() if isinstance(name, bytes) else name.lower()
        lst = hv.get(key)
        if lst is None:
            hv[key] = [value]
        else:
            lst.append(value)
    return hv


def _text(value: str | bytes) -> str:
    """Header value as str. Bytes are decoded as latin-1 so each wire byte maps to one character,
    matching how Python HTTP clients put str header values on the wire."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


_Parsed = tuple[str, str, str, str, tuple[str, ...], str]
_auth_cache: dict[tuple[str, str], _Parsed] = {}
_SIG_SEP = "Signature="


def _authorization(value: str, service: str) -> tuple[_Parsed, str]:
    """Parse the header, reusing earlier work for the part before the signature.

    A client repeats ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., `` for every request
    of the day; only the signature changes. Only successful parses are cached, per service.
    """
    head, sep, signature = value.rpartition(_SIG_SEP)
    if sep and len(signature) == 64 and _HEX.issuperset(signature):
        hit = _auth_cache.get((head, service))
        if hit is not None:
            return hit, signature
    parsed, signature = _parse_authorization(value, service)
    if sep and len(head) <= _MAX_CACHED_HEAD and signature == value[len(head) + len(sep) :]:
        remember(_auth_cache, (head, service), parsed, _CACHE_MAX)
    return parsed, signature


def _parse_authorization(value: str, service: str) -> tuple[_Parsed, str]:
    """Split the header into ((akid, scope, date, region, names, SignedHeaders), signature)."""
    if len(value) > _MAX_AUTH_LEN:
        raise MalformedAuthorization("Authorization header is too long")
    value = value.strip()
    if not value.startswith(_PREFIX):
        raise MalformedAuthorization("Authorization must use the AWS4-HMAC-SHA256 algorithm")
    fields: dict[str, str] = {}
    for part in value[len(_PREFIX) :].split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key in fields:
            raise MalformedAuthorization(
                "Authorization must have Credential, SignedHeaders and Signature, once each"
            )
        fields[key] = val
    try:
        credential = fields["Credential"]
        signed_str = fields["SignedHeaders"]
        signature = fields["Signature"]
    except KeyError:
        raise MalformedAuthorization(
            "Authorization must have Credential, SignedHeaders and Signature, once each"
        ) from None
    if len(fields) != 3:
        raise MalformedAuthorization("Authorization has unexpected components")

    parts = credential.split("/")
    if len(parts) != 5 or not parts[0] or not parts[2]:
        raise MalformedAuthorization(
            "Credential must be <access key id>/<date>/<region>/<service>/aws4_request"
        )
    akid, date, region, svc, terminator = parts
    if len(date) != 8 or not _DIGITS.issuperset(date):
        raise MalformedAuthorization("Credential date must be YYYYMMDD")
    if svc != service:
        raise InvalidScope(
            f"credential scope service {safe_fragment(svc)!r} is not {safe_fragment(service)!r}"
        )
    if terminator != _TERMINATOR:
        raise InvalidScope("credential scope must end with aws4_request")

    if len(signature) != 64 or not _HEX.issuperset(signature):
        raise MalformedAuthorization("Signature must be 64 lower-case hex digits")
    scope = credential[len(akid) + 1 :]
    return (akid, scope, date, region, _signed_headers(signed_str), signed_str), signature


def _signed_headers(value: str) -> tuple[str, ...]:
    """Parse and check SignedHeaders; results are cached because clients repeat the same list."""
    hit = _signed_headers_cache.get(value)
    if hit is not None:
        return hit
    names = tuple(value.split(";"))
    if any(not n or n != n.lower() or n != n.strip() or n.startswith(":") for n in names):
        raise MalformedAuthorization(
            "SignedHeaders must be lower-case header names separated by ';'"
        )
    if len(set(names)) != len(names):
        raise MalformedAuthorization("SignedHeaders lists a header twice")
    if "host" not in names or "x-amz-date" not in names:
        raise MalformedAuthorization("SignedHeaders must include host and x-amz-date")
    if len(value) <= _MAX_CACHED_HEAD:
        remember(_signed_headers_cache, value, names, _CACHE_MAX)
    return names


def _parse_amz_date(value: str) -> float:
    """``YYYYMMDDTHHMMSSZ`` -> POSIX seconds, or MalformedDate. Cached: clients repeat values."""
    hit = _date_cache.get(value)
    if hit is not None:
        return hit
    if (
        len(value) != 16
        or value[8] != "T"
        or value[15] != "Z"
        or not _DIGITS.issuperset(value[:8])
        or not _DIGITS.issuperset(value[9:15])
    ):
        raise MalformedDate("x-amz-date must be YYYYMMDDTHHMMSSZ")
    try:
        stamp = datetime(
            int(value[0:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[9:11]),
            int(value[11:13]),
            int(value[13:15]),
            tzinfo=UTC,
        ).timestamp()
    except ValueError:
        raise MalformedDate("x-amz-date is not a valid date and time") from None
    remember(_date_cache, value, stamp, _CACHE_MAX)
    return stamp
