"""Derivation of the SigV4 signing key, with a bounded cache.

The signing key depends only on (secret, date, region, service), so it changes once a day per
credential and region. Caching it turns each verification into one HMAC over the string to sign
(plus two SHA-256 over small inputs) instead of five HMACs. We cache a keyed HMAC object next to
the key: copying it skips the per-call key schedule (ipad/opad hashing), about half the cost of a
fresh ``hmac.digest`` on a short message.
"""

from __future__ import annotations

import hashlib
import hmac

from sigv4._bounded import remember

_CACHE_MAX = 1024
_cache: dict[tuple[str, str, str, str], tuple[bytes, hmac.HMAC]] = {}


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """HMAC chain AWS4<secret> -> date -> region -> service -> "aws4_request" (uncached)."""
    k = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("utf-8"), "sha256")
    k = hmac.digest(k, region.encode("utf-8", "surrogatepass"), "sha256")
    k = hmac.digest(k, service.encode("utf-8"), "sha256")
    return hmac.digest(k, b"aws4_request", "sha256")


def _entry(secret: str, date: str, region: str, service: str) -> tuple[bytes, hmac.HMAC]:
    ck = (secret, date, region, service)
    entry = _cache.get(ck)
    if entry is None:
        key = derive_signing_key(secret, date, region, service)
        entry = (key, hmac.new(key, digestmod=hashlib.sha256))
        # Oldest first: yesterday's keys are evicted before today's.
        remember(_cache, ck, entry, _CACHE_MAX)
    return entry


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Cached :func:`derive_signing_key`; the cache holds at most ``_CACHE_MAX`` keys."""
    return _entry(secret, date, region, service)[0]


def signing_mac(secret: str, date: str, region: str, service: str) -> hmac.HMAC:
    """A keyed HMAC-SHA256 object for the signing key: ``.copy()`` it, never update it in place."""
    return _entry(secret, date, region, service)[1]


def clear_cache() -> None:
    """Forget every cached signing key (tests, credential removal)."""
    _cache.clear()
