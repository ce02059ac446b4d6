"""Domain errors of the HSM layer.

The service maps each class to one XKS error in one place, so the classes encode *what the caller
should do*, not which CKR code came back: a tampered ciphertext (client error, 400) must never look
like a device fault (500), and an outage must fail fast (HsmUnavailable) instead of hanging.
Messages are safe to log: they name labels and CKR symbols, never data, PINs or key material.
"""

from __future__ import annotations


class HsmError(Exception):
    """Base class; ``str(err)`` is a short, safe message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeyNotFound(HsmError):
    """No usable key: unknown label, ambiguous label, or not a 32-byte AES secret key."""


class KeyUsageNotPermitted(HsmError):
    """The key exists but its CKA_ENCRYPT / CKA_DECRYPT attribute forbids the operation."""


class InvalidCiphertext(HsmError):
    """Authentication failed: wrong key, IV, AAD, tag or ciphertext (or a malformed length)."""


class SessionTimeout(HsmError):
    """No session became free, or the HSM did not answer, before the caller's deadline."""


class HsmUnavailable(HsmError):
    """The module is down or being re-initialised: fail fast, recovery runs in the background."""


class HsmFailure(HsmError):
    """Anything else the module reported (carries the CKR symbol when there is one)."""

    def __init__(self, message: str, rv: int | None = None) -> None:
        super().__init__(message)
        self.rv = rv
