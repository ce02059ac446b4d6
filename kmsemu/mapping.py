"""What KMS tells its caller when a proxy call fails: one table per kind of KMS operation.

The same proxy failure means different things depending on who asked. A 401 from the proxy is
``XksProxyIncorrectAuthenticationCredentialException`` for CreateCustomKeyStore, the
ConnectionErrorCode ``INVALID_CREDENTIALS`` for ConnectCustomKeyStore, and a
``KMSInvalidStateException`` naming the cause for Encrypt. Keeping the three tables side by side
makes the differences reviewable and unit-testable without a proxy.
"""

from __future__ import annotations

from kmsemu.protocol import KmsError
from kmsemu.xksclient import (
    XksErrorResponse,
    XksFailure,
    XksInvalidResponse,
    XksTimeout,
    XksTlsError,
    XksUnreachable,
)


def connection_error_code(failure: XksFailure) -> str:
    """The ConnectionErrorCode a failed GetHealthStatus leaves on the key store."""
    if isinstance(failure, XksErrorResponse):
        if failure.status == 401 or failure.error_name == "AuthenticationFailedException":
            return "INVALID_CREDENTIALS"
        if failure.status == 403 or failure.error_name == "AccessDeniedException":
            return "XKS_PROXY_ACCESS_DENIED"
        if failure.error_name == "InvalidUriPathException" or failure.status == 404:
            return "XKS_PROXY_INVALID_CONFIGURATION"
        return "XKS_PROXY_INVALID_RESPONSE"
    if isinstance(failure, XksTimeout):
        return "XKS_PROXY_TIMED_OUT"
    if isinstance(failure, XksTlsError):
        return "XKS_PROXY_INVALID_TLS_CONFIGURATION"
    if isinstance(failure, XksUnreachable):
        return "XKS_PROXY_NOT_REACHABLE"
    return "XKS_PROXY_INVALID_RESPONSE"


def key_store_admin_error(failure: XksFailure) -> KmsError:
    """What CreateCustomKeyStore / UpdateCustomKeyStore raise when the proxy check fails."""
    if isinstance(failure, XksErrorResponse):
        if failure.status == 401 or failure.error_name == "AuthenticationFailedException":
            return KmsError(
                "XksProxyIncorrectAuthenticationCredentialException",
                f"The proxy rejected the XksProxyAuthenticationCredential ({failure.error_name}).",
            )
        if failure.status == 404 or failure.error_name == "InvalidUriPathException":
            return KmsError(
                "XksProxyInvalidConfigurationException",
                f"The proxy does not serve XksProxyUriPath ({failure.error_name}).",
            )
        return KmsError(
            "XksProxyInvalidResponseException",
            f"The proxy's GetHealthStatus failed: {failure}.",
        )
    if isinstance(failure, XksInvalidResponse):
        return KmsError(
            "XksProxyInvalidResponseException", f"The proxy's answer is not valid: {failure}."
        )
    return KmsError(
        "XksProxyUriUnreachableException",
        f"KMS cannot communicate with the external key store proxy: {failure}.",
    )


def crypto_error(failure: XksFailure, *, decrypting: bool) -> KmsError:
    """The exception a cryptographic operation (or CreateKey's metadata call) raises.

    KMS reports every failure of the proxy or of the connection to it as
    ``KMSInvalidStateException`` with a message that says which, except two that it passes on as
    their own kind: a proxy's InvalidCiphertextException on decrypt (the caller's ciphertext or
    encryption context is wrong) and a proxy's DependencyTimeoutException (its HSM was slow).
    """
    if isinstance(failure, XksErrorResponse):
        if decrypting and failure.error_name == "InvalidCiphertextException":
            return KmsError(
                "InvalidCiphertextException",
                "The ciphertext, its encryption context or the key does not match.",
            )
        if failure.error_name == "DependencyTimeoutException":
            return KmsError(
                "DependencyTimeoutException",
                "The external key manager behind the proxy did not answer in time.",
            )
        return KmsError(
            "KMSInvalidStateException",
            f"The external key store proxy rejected the request with {failure.error_name} "
            f"(HTTP {failure.status}).",
        )
    if isinstance(failure, XksTimeout):
        return KmsError(
            "KMSInvalidStateException",
            f"The external key store proxy did not respond in time: {failure}.",
        )
    if isinstance(failure, XksTlsError):
        return KmsError(
            "KMSInvalidStateException",
            f"The TLS connection to the external key store proxy failed: {failure}.",
        )
    if isinstance(failure, XksUnreachable):
        return KmsError(
            "KMSInvalidStateException",
            f"The external key store proxy is not reachable: {failure}.",
        )
    return KmsError(
        "KMSInvalidStateException",
        f"The external key store proxy returned an invalid response: {failure}.",
    )
