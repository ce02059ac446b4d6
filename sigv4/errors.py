"""SigV4 verification errors: one type per cause.

Why one type per cause: the service maps all of them to the same 401 answer, but logs, metrics and
tests need to tell a clock problem from a wrong secret without parsing messages. Every ``message``
is built only from fixed text plus sanitised, length-capped fragments of what the *caller* sent,
so it is safe to hand back to that caller: printable ASCII, shorter than 512 characters, and never
a secret or the signature we expected.
"""

from __future__ import annotations

_MAX_MESSAGE = 500
_MAX_FRAGMENT = 64


def safe_fragment(value: object, limit: int = _MAX_FRAGMENT) -> str:
    """Return ``value`` reduced to printable ASCII and at most ``limit`` characters.

    Used when an error message quotes something the caller sent (a region, a scope part), so a
    hostile header cannot inject control characters or huge text into our answer or our logs.
    """
    text = str(value)
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text[: limit + 1])
    if len(cleaned) > limit:
        cleaned = cleaned[:limit] + "..."
    return cleaned


class SigV4Error(Exception):
    """Base class: the request is not authenticated. ``message`` is safe to return to the caller."""

    default_message = "request signature could not be verified"

    def __init__(self, message: str | None = None) -> None:
        text = safe_fragment(message or self.default_message, _MAX_MESSAGE)
        super().__init__(text)
        self.message = text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class MissingAuthorization(SigV4Error):
    """No Authorization header at all."""

    default_message = "missing Authorization header"


class MalformedAuthorization(SigV4Error):
    """The Authorization header is present but is not a well-formed AWS4-HMAC-SHA256 header."""

    default_message = "malformed Authorization header"


class DuplicateAuthorization(MalformedAuthorization):
    """More than one Authorization header: ambiguous, so refused (a kind of malformed header)."""

    default_message = "more than one Authorization header"


class UnknownAccessKey(SigV4Error):
    """The access key id in the credential scope is not configured for this key store."""

    default_message = "unknown access key id"


class InvalidScope(SigV4Error):
    """The credential scope names another service or lacks the ``aws4_request`` terminator."""

    default_message = "invalid credential scope"


class RegionNotAccepted(SigV4Error):
    """The credential scope's region is not one this key store accepts."""

    default_message = "region not accepted"


class CredentialDateMismatch(SigV4Error):
    """The credential scope date differs from the date part of ``x-amz-date``."""

    default_message = "credential scope date does not match x-amz-date"


class MissingDate(SigV4Error):
    """No ``x-amz-date`` header."""

    default_message = "missing x-amz-date header"


class MalformedDate(SigV4Error):
    """``x-amz-date`` is not a valid ``YYYYMMDDTHHMMSSZ`` timestamp (or appears twice)."""

    default_message = "malformed x-amz-date header"


class RequestExpired(SigV4Error):
    """``x-amz-date`` is too far from our clock, in either direction."""

    default_message = "x-amz-date is outside the accepted clock window"


class MissingSignedHeader(SigV4Error):
    """A header listed in SignedHeaders is not in the request."""

    default_message = "a signed header is missing from the request"


class ContentHashMismatch(SigV4Error):
    """``x-amz-content-sha256`` is present and is not the SHA-256 of the body we received."""

    default_message = "x-amz-content-sha256 does not match the request body"


class SignatureMismatch(SigV4Error):
    """Everything parsed, but no configured secret for this access key id yields the signature."""

    default_message = "signature does not match"
