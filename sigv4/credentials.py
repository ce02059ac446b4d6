"""SigV4 credentials for XKS: the pair KMS is configured with, plus validation and generation.

The XKS specification fixes the shapes: access key id 20-30 characters of ``A-Z2-7`` and secret
43-64 characters of ``a-zA-Z0-9+/=``. The config loader calls the validators so a typo is reported
at start-up with a precise message rather than as a stream of 401s later. Messages never echo the
secret, only its length or the position of an offending character.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

AKID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
SECRET_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_AKID_SET = frozenset(AKID_ALPHABET)
AKID_MIN, AKID_MAX = 20, 30
SECRET_MIN, SECRET_MAX = 43, 64


@dataclass(frozen=True)
class Credential:
    """One access key id and its secret. ``repr``/``str`` never show the secret."""

    access_key_id: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return f"Credential(access_key_id={self.access_key_id!r})"


def validate_access_key_id(s: str) -> None:
    """Raise ValueError unless ``s`` is 20-30 characters of ``A-Z`` and ``2-7``."""
    if not isinstance(s, str):
        raise ValueError("access key id must be a string")
    if not AKID_MIN <= len(s) <= AKID_MAX:
        raise ValueError(
            f"access key id must be {AKID_MIN}-{AKID_MAX} characters long, got {len(s)}"
        )
    for i, ch in enumerate(s):
        if ch not in _AKID_SET:
            raise ValueError(
                f"access key id may contain only A-Z and 2-7; character {i + 1} is not allowed"
            )


def validate_secret(s: str) -> None:
    """Raise ValueError unless ``s`` is 43-64 characters of ``a-zA-Z0-9+/=``.

    The message gives the length or the position of a bad character, never the character itself:
    the value is a secret.
    """
    if not isinstance(s, str):
        raise ValueError("secret must be a string")
    if not SECRET_MIN <= len(s) <= SECRET_MAX:
        raise ValueError(f"secret must be {SECRET_MIN}-{SECRET_MAX} characters long, got {len(s)}")
    for i, ch in enumerate(s):
        if ch not in SECRET_ALPHABET:
            raise ValueError(
                f"secret may contain only a-z, A-Z, 0-9, '+', '/' and '='; "
                f"character {i + 1} is not allowed"
            )


def generate_credential() -> Credential:
    """Return a fresh random credential that passes both validators.

    Access key id: 20 characters drawn from ``A-Z2-7`` (100 bits). Secret: base64 of 33 random
    bytes, i.e. 44 characters without padding (264 bits).
    """
    akid = "".join(secrets.choice(AKID_ALPHABET) for _ in range(AKID_MIN))
    secret = base64.b64encode(secrets.token_bytes(33)).decode("ascii")
    return Credential(access_key_id=akid, secret=secret)
