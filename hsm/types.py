"""Value types of the public ``hsm`` API (see ARCHITECTURE.md, section "hsm/")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from .limits import DEFAULT_MAX_PLAINTEXT_BYTES, MIN_MAX_PLAINTEXT_BYTES

USAGE_NAMES = ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE")
# Named usages for key creation (hsm.admin.create_key, `xksproxy keys create --usage`). Here, not
# in admin.py, so the CLI can offer the names without loading python-pkcs11.
USAGE_PRESETS: dict[str, frozenset[str]] = {
    "encrypt-decrypt": frozenset({"ENCRYPT", "DECRYPT"}),
    "encrypt": frozenset({"ENCRYPT"}),
    "decrypt": frozenset({"DECRYPT"}),
    "none": frozenset(),
}


@dataclass(frozen=True)
class HsmConfig:
    """One PKCS#11 token. ``pin`` is already resolved by the config loader and never shown."""

    name: str
    module: str
    token_label: str
    pin: str = field(repr=False)
    sessions: int = 4
    mode: Literal["inline", "threaded"] = "inline"
    iv_source: Literal["rng", "module"] = "rng"
    health_key_label: str = "xks-health-test"
    max_plaintext_bytes: int = DEFAULT_MAX_PLAINTEXT_BYTES
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError("sessions must be at least 1")
        if self.mode not in ("inline", "threaded"):
            raise ValueError(f"mode must be 'inline' or 'threaded', not {self.mode!r}")
        if self.iv_source not in ("rng", "module"):
            raise ValueError(f"iv_source must be 'rng' or 'module', not {self.iv_source!r}")
        if self.max_plaintext_bytes < MIN_MAX_PLAINTEXT_BYTES:
            raise ValueError(f"max_plaintext_bytes must be at least {MIN_MAX_PLAINTEXT_BYTES}")


@dataclass(frozen=True)
class KeyInfo:
    """A key as the service sees it: its label and what the HSM lets it do."""

    label: str
    usage: frozenset[str]


@dataclass(frozen=True)
class GcmResult:
    """AES-256-GCM output with the tag split off (16 bytes) and the 12-byte IV used."""

    iv: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    tag: bytes = field(repr=False)


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one health round trip; ``error`` is a safe message or None."""

    ok: bool
    latency_s: float
    error: str | None


@dataclass(frozen=True)
class PoolStats:
    """Snapshot of a pool for health output and metrics.

    ``mode`` is the effective mode: "threaded" runs inline on a module whose calls are serialised
    (SoftHSMv2). ``state``: "ready", "recovering" (module being re-initialised in the background;
    requests fail fast with HsmUnavailable) or "stopped" (before start / after close).
    """

    name: str
    mode: str
    state: str
    sessions: int
    in_use: int
    waiting: int
    recoveries: int = 0
    session_replacements: int = 0
    last_error: str | None = None
