"""AWS Signature Version 4 for XKS: verify what KMS sends, sign what our clients send.

No HTTP framework, no HSM, no xksproxy import: a pure function of the request's parts, so the
service, the load generators and the tests all share one implementation.

Verifying (in an ASGI app; ``scope["headers"]`` can be passed as is)::

    try:
        who = verify(method="POST", path=scope["raw_path"], query=scope["query_string"],
                     headers=scope["headers"], body=body, lookup=store.credentials_for,
                     now=time.time(), regions=store.regions)
    except SigV4Error as exc:
        answer_401(exc.message)        # safe to send back; type(exc) names the cause for logs

Signing (clients; send the returned headers plus Host and every header you passed)::

    extra = sign(method="POST", host="xks.example.com:8443", path="/demo/kms/xks/v1/health",
                 headers={"Content-Type": "application/json"}, body=body,
                 credential=cred, region="us-east-1")
"""

from sigv4.credentials import (
    Credential,
    generate_credential,
    validate_access_key_id,
    validate_secret,
)
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
    SigV4Error,
    UnknownAccessKey,
)
from sigv4.signer import sign
from sigv4.verifier import Verified, verify

__all__ = [
    "ContentHashMismatch",
    "Credential",
    "CredentialDateMismatch",
    "DuplicateAuthorization",
    "InvalidScope",
    "MalformedAuthorization",
    "MalformedDate",
    "MissingAuthorization",
    "MissingDate",
    "MissingSignedHeader",
    "RegionNotAccepted",
    "RequestExpired",
    "SigV4Error",
    "SignatureMismatch",
    "UnknownAccessKey",
    "Verified",
    "generate_credential",
    "sign",
    "validate_access_key_id",
    "validate_secret",
    "verify",
]
