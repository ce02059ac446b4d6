"""The XKS URI layout: ``[/<prefix>]/kms/xks/v1/...`` and its length limits (spec section 2).

The one home of the API root literal: routing, configuration checks, the KMS console file and
the start-up lines all build paths from :func:`base_path`.
"""

from __future__ import annotations

API_ROOT = "/kms/xks/v1"
"""What follows a key store's path prefix in every XKS URI."""

MAX_BASE_PATH_CHARS = 128
"""``[/<prefix>]/kms/xks/v1`` may be at most this long."""

MAX_URI_CHARS = 256
"""A whole request URI path may be at most this long."""


def base_path(prefix: str) -> str:
    """The ``XksProxyUriPath`` of a key store with this path prefix ("" for none)."""
    return prefix + API_ROOT
