"""AWS Signature Version 4 for XKS: verify what KMS sends, sign what our clients send.

No HTTP framework, no HSM, no xksproxy import: a pure function of the request's parts, so the
service, the load generators and the tests all share one implementation.
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
