"""AWS Signature Version 4 for XKS: verify what KMS sends, sign what our clients send.

No HTTP framework, no HSM, no xksproxy import: a pure function of the request's parts, so the
service, the load generators and the tests all share one implementation. The exports are pinned
to ARCHITECTURE.md, section "sigv4/" (tests/sigv4/test_sigv4_surface.py).

Verifying (in an ASGI app; ``scope["headers"]`` can be passed as is). ``lookup`` is any callable
from an access key id to the credentials with that id (empty when unknown); xksproxy passes its
key store's::

    def lookup(access_key_id: str) -> Sequence[Credential]: ...

    try:
        who = verify(method="POST", path=scope["raw_path"], query=scope["query_string"],
                     headers=scope["headers"], body=body, lookup=lookup,
                     now=time.time(), regions={"us-east-1"})
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
