"""Canonical-request building blocks, as AWS signers produce them for non-S3 services.

Signers disagree on the details, and we must accept what each of them sends:

* botocore ``SigV4Auth`` removes dot segments *and* collapses repeated slashes, then percent-encodes
  the (already encoded) wire path once more (``quote(path, safe="/~")``) - the "double encoding"
  AWS documents for every service except S3.
* aws-requests-auth encodes the wire path once more too, but does not normalise it.
* curl ``--aws-sigv4`` (7.88) signs the path exactly as it sends it.

For the XKS character set (``a-zA-Z0-9/-_`` in the prefix, ``A-Za-z0-9.-_`` in key ids) all three
coincide, so there is one candidate and verification costs one HMAC. Only odd paths (``%``
escapes, ``//``, ``.`` segments) produce more than one candidate; each candidate is a deterministic
function of the path we received and the signature still has to match it.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from sigv4._bounded import remember

_CACHE_MAX = 4096
_MAX_CACHED_LEN = 512  # caches hold attacker-chosen keys: bound their memory too

_path_cache: dict[str, tuple[str, ...]] = {}
_query_cache: dict[str, tuple[str, ...]] = {}


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 dot-segment removal plus slash collapsing, as botocore does for SigV4."""
    if not path:
        return "/"
    out: list[str] = []
    for seg in path.split("/"):
        if not seg or seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
        else:
            out.append(seg)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def botocore_path(path: str) -> str:
    """Canonical URI the way botocore computes it from a wire path (normalise, encode again)."""
    return quote(remove_dot_segments(path), safe="/~")


def path_candidates(path: str) -> tuple[str, ...]:
    """Canonical URIs a legitimate signer may have used for this wire path, most likely first."""
    hit = _path_cache.get(path)
    if hit is not None:
        return hit
    raw = path or "/"
    return _remember_distinct(
        _path_cache, path, (botocore_path(raw), quote(raw, safe="/-_.~"), raw)
    )


def aws_query(query: str) -> str:
    """AWS canonical query string: names and values URI-encoded, sorted by name then value."""
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append(
            (
                quote(unquote(name.replace("+", "%20")), safe="-_.~"),
                quote(unquote(value.replace("+", "%20")), safe="-_.~"),
            )
        )
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def botocore_query(query: str) -> str:
    """botocore's query form for a URL it signs: pairs sorted as sent, no re-encoding."""
    if not query:
        return ""
    pairs = [item.partition("=")[::2] for item in query.split("&")]
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def query_candidates(query: str) -> tuple[str, ...]:
    """Canonical query strings a legitimate signer may have used, most likely first."""
    if not query:
        return ("",)
    hit = _query_cache.get(query)
    if hit is not None:
        return hit
    return _remember_distinct(_query_cache, query, (aws_query(query), botocore_query(query), query))


def _remember_distinct(
    cache: dict[str, tuple[str, ...]], key: str, candidates: tuple[str, ...]
) -> tuple[str, ...]:
    """``candidates`` without repeats (order kept), cached under ``key`` unless it is long: the
    caches are keyed by caller input, so an attacker's huge paths must not fill memory."""
    result = tuple(dict.fromkeys(candidates))
    if len(key) <= _MAX_CACHED_LEN:
        remember(cache, key, result, _CACHE_MAX)
    return result


def header_value(values: list[str | bytes]) -> str:
    """Trim each value, fold inner whitespace runs to one space, join repeated headers with ','.

    Bytes are decoded as latin-1 (one character per wire byte), as Python HTTP clients encode.
    """
    if len(values) == 1:
        v = values[0]
        return " ".join((v.decode("latin-1") if isinstance(v, bytes) else v).split())
    return ",".join(
        " ".join((v.decode("latin-1") if isinstance(v, bytes) else v).split()) for v in values
    )
