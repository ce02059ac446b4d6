"""XKS error types and the one place where domain errors become XKS errors.

Every failure the proxy reports to KMS is an :class:`XksError` subclass carrying the HTTP status,
the spec's ``errorName`` and a *safe* message.  KMS shows a useless generic error for any reply that
is not ``{"errorName": ..., "errorMessage": ...}``, so every failure path ends here.

Messages are sanitised at construction (printable ASCII 0x20-0x7e, under 512 characters) so a
caller can never smuggle control characters or unbounded text into a response or a log line.
Messages must never contain request values (plaintext, AAD, secrets): callers name *fields*, not
contents.

Domain mapping (:func:`to_xks_error`), decided from the public spec's error table:

- any ``sigv4.SigV4Error`` -> 401 AuthenticationFailedException (an unknown access key id and a
  wrong signature get the same message, :data:`CREDENTIAL_NOT_ACCEPTED`)
- ``hsm.errors.KeyNotFound`` -> 404 KeyNotFoundException
- ``hsm.errors.KeyUsageNotPermitted`` -> 400 InvalidKeyUsageException
- ``hsm.errors.InvalidCiphertext`` -> 400 InvalidCiphertextException
- ``hsm.errors.SessionTimeout`` -> 503 DependencyTimeoutException ("timed out while trying to
  access a dependency")
- ``hsm.errors.HsmUnavailable`` and ``HsmFailure`` -> 500 InternalException: the spec reserves
  503 for *timeouts*; "failure of the backing HSM" is listed under InternalException, and KMS
  then tells the customer it "cannot communicate with the external HSM", which is what happened.
- anything else -> 500 InternalException (the caller logs the traceback, never the request).
"""

from __future__ import annotations

from typing import ClassVar

import orjson

MAX_MESSAGE_CHARS = 511


def sanitise_message(message: str) -> str:
    """Return ``message`` reduced to printable ASCII and cut below 512 characters."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in message)
    if len(cleaned) > MAX_MESSAGE_CHARS:
        cleaned = cleaned[: MAX_MESSAGE_CHARS - 3] + "..."
    return cleaned


class XksError(Exception):
    """Base class: one subclass per XKS ``errorName``."""

    status: ClassVar[int] = 500
    error_name: ClassVar[str] = "InternalException"
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = sanitise_message(message if message is not None else self.default_message)
        super().__init__(self.message)

    def body(self) -> bytes:
        """The JSON response body KMS expects."""
        return orjson.dumps({"errorName": self.error_name, "errorMessage": self.message})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ValidationException(XksError):
    status = 400
    error_name = "ValidationException"
    default_message = "the request is invalid"


class InvalidStateException(XksError):
    status = 400
    error_name = "InvalidStateException"
    default_message = "the key or key store is disabled"


class InvalidCiphertextException(XksError):
    status = 400
    error_name = "InvalidCiphertextException"
    default_message = (
        "the ciphertext, initialization vector, additional authenticated data, "
        "authentication tag or ciphertext metadata is invalid"
    )


class InvalidKeyUsageException(XksError):
    status = 400
    error_name = "InvalidKeyUsageException"
    default_message = "the key does not support the requested operation"


class AuthenticationFailedException(XksError):
    status = 401
    error_name = "AuthenticationFailedException"
    default_message = "request authentication failed"


class AccessDeniedException(XksError):
    status = 403
    error_name = "AccessDeniedException"
    default_message = "the request was denied by the key store's policy"


class KeyNotFoundException(XksError):
    status = 404
    error_name = "KeyNotFoundException"
    default_message = "no such external key in this key store"


class InvalidUriPathException(XksError):
    status = 404
    error_name = "InvalidUriPathException"
    default_message = "the URI path is not valid"


class MethodNotAllowed(XksError):
    """405 for a non-POST on an API path.

    The spec mandates the status but names no errorName; we reuse ValidationException so the body
    still has the one shape KMS understands.
    """

    status = 405
    error_name = "ValidationException"
    default_message = "method not allowed: the XKS API accepts POST only"


class ThrottlingException(XksError):
    status = 429
    error_name = "ThrottlingException"
    default_message = "request rate too high"


class UnsupportedOperationException(XksError):
    status = 501
    error_name = "UnsupportedOperationException"
    default_message = "the requested operation or parameter is not supported"


class DependencyTimeoutException(XksError):
    status = 503
    error_name = "DependencyTimeoutException"
    default_message = "the HSM did not answer in time"


class InternalException(XksError):
    status = 500
    error_name = "InternalException"
    default_message = "internal error"


_DOMAIN_MAP: list[tuple[type[BaseException], type[XksError]]] | None = None


def _domain_map() -> list[tuple[type[BaseException], type[XksError]]]:
    """Build the domain-error table on first use.

    Deferred so importing this module (e.g. from the CLI) never pulls in PKCS#11 bindings.
    """
    global _DOMAIN_MAP
    if _DOMAIN_MAP is None:
        from hsm import errors as hsm_errors
        from sigv4 import SigV4Error

        _DOMAIN_MAP = [
            (SigV4Error, AuthenticationFailedException),
            (hsm_errors.KeyNotFound, KeyNotFoundException),
            (hsm_errors.KeyUsageNotPermitted, InvalidKeyUsageException),
            (hsm_errors.InvalidCiphertext, InvalidCiphertextException),
            (hsm_errors.SessionTimeout, DependencyTimeoutException),
            (hsm_errors.HsmUnavailable, InternalException),
            (hsm_errors.HsmFailure, InternalException),
            (hsm_errors.HsmError, InternalException),
        ]
    return _DOMAIN_MAP


_SAFE_DOMAIN_MESSAGES: dict[type[XksError], str] = {
    InternalException: "the HSM failed to process the request",
}

#: One answer for "no such access key id" and "wrong signature": distinct messages would let an
#: anonymous caller enumerate the configured access key ids. The request log keeps the cause
#: (``authFailure``).
CREDENTIAL_NOT_ACCEPTED = "the access key id or the signature is not valid for this key store"


def to_xks_error(exc: BaseException) -> XksError | None:
    """Map a sigv4/hsm domain error to its XKS error, or ``None`` if it is not one of them.

    SigV4 messages are documented as safe to return; HSM messages may carry module detail, so for
    internal failures we return a fixed message and let the caller log the cause.
    """
    if isinstance(exc, XksError):
        return exc
    for domain_type, xks_type in _domain_map():
        if isinstance(exc, domain_type):
            if xks_type is AuthenticationFailedException:
                from sigv4 import SignatureMismatch, UnknownAccessKey

                if isinstance(exc, (UnknownAccessKey, SignatureMismatch)):
                    return xks_type(CREDENTIAL_NOT_ACCEPTED)
                return xks_type(str(getattr(exc, "message", "")) or None)
            return xks_type(_SAFE_DOMAIN_MESSAGES.get(xks_type))
    return None
