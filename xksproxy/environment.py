"""Every environment variable xksproxy reads, in one registry.

Why a registry: the names were spelled in a dozen modules and the docs listed a different set.
Code reads a variable through its entry here (``STATE_DIR.get()``), ``xksproxy --help`` and the
README's table are tested against :data:`REGISTRY`, and a new variable cannot appear without a
line that says who sets it and what it does.

``audience`` is "operator" for what an operator may set, "internal" for what the launcher hands
its worker processes (set by ``xksproxy serve``; never set these by hand).  ``hsm/`` cannot import
this package (it is independent of the service), so it spells ``XKSPROXY_PKCS11_SERIALIZE``
itself; the registry lists it and a test checks the two agree.

This module imports nothing of xksproxy: every layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable: its name, who sets it, and what it does."""

    name: str
    audience: Literal["operator", "internal"]
    doc: str

    def get(
        self, default: str | None = None, *, env: Mapping[str, str] | None = None
    ) -> str | None:
        """The variable's value in ``env`` (default: the process environment), or ``default``
        when unset (an empty value counts as set)."""
        return (os.environ if env is None else env).get(self.name, default)


CONFIG = EnvVar(
    "XKSPROXY_CONFIG", "operator", "configuration file for `serve` workers and `audit verify`"
)
STATE_DIR = EnvVar(
    "XKSPROXY_STATE_DIR", "operator", "default state directory (else ~/.local/state/xksproxy)"
)
BIND = EnvVar("XKSPROXY_BIND", "operator", "overrides [server] bind (HOST:PORT)")
WORKERS = EnvVar(
    "XKSPROXY_WORKERS",
    "operator",
    "overrides [server] workers; the launcher also exports the resolved count to its workers",
)
PLAIN_HTTP = EnvVar(
    "XKSPROXY_PLAIN_HTTP", "operator", "overrides [server] plain_http (1/true/yes/on, 0/false/...)"
)
DRAIN_GRACE_S = EnvVar(
    "XKSPROXY_DRAIN_GRACE_S",
    "operator",
    "overrides [server] drain_grace_s (seconds of drain after SIGTERM; 0 = none)",
)
METRICS_BIND = EnvVar(
    "XKSPROXY_METRICS_BIND",
    "operator",
    'overrides [metrics] bind (HOST:PORT; "" turns metrics off)',
)
SERVER = EnvVar("XKSPROXY_SERVER", "operator", "overrides [server] server (granian|hypercorn)")
AUDIT_KEY_FILE = EnvVar(
    "XKSPROXY_AUDIT_KEY_FILE", "operator", "audit HMAC key file for `audit verify`"
)
GRANIAN_INTERFACE = EnvVar(
    "XKSPROXY_GRANIAN_INTERFACE",
    "operator",
    "rsgi (default) or asgi: which granian interface serves the app (for comparisons)",
)
PKCS11_SERIALIZE = EnvVar(
    "XKSPROXY_PKCS11_SERIALIZE",
    "operator",
    "1/0: force or forbid serialised PKCS#11 calls (default: detected per module)",
)
APP_FACTORY = EnvVar(
    "XKSPROXY_APP_FACTORY", "internal", "ASGI/RSGI app factory the workers import (tests)"
)
LAUNCHER_PID = EnvVar(
    "XKSPROXY_LAUNCHER_PID", "internal", "pid of `serve`: workers stop when it is gone"
)
METRICS_DIR = EnvVar(
    "XKSPROXY_METRICS_DIR", "internal", "directory where workers leave metrics snapshots"
)
RELOAD_FILE = EnvVar(
    "XKSPROXY_RELOAD_FILE", "internal", "trigger file whose change makes workers reload"
)
DRAIN_FILE = EnvVar(
    "XKSPROXY_DRAIN_FILE", "internal", "flag file whose existence tells workers to drain"
)

REGISTRY: tuple[EnvVar, ...] = (
    CONFIG,
    STATE_DIR,
    BIND,
    WORKERS,
    PLAIN_HTTP,
    SERVER,
    DRAIN_GRACE_S,
    METRICS_BIND,
    AUDIT_KEY_FILE,
    GRANIAN_INTERFACE,
    PKCS11_SERIALIZE,
    APP_FACTORY,
    LAUNCHER_PID,
    METRICS_DIR,
    RELOAD_FILE,
    DRAIN_FILE,
)


def default_state_dir() -> Path:
    """``$XKSPROXY_STATE_DIR``, else ``~/.local/state/xksproxy`` (the XDG state-home convention)."""
    value = STATE_DIR.get()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".local" / "state" / "xksproxy"


DEFAULT_STATE_DIR_TEXT = "$XKSPROXY_STATE_DIR, else ~/.local/state/xksproxy"
"""How ``--help`` texts name the default state directory (one spelling)."""


def operator_help() -> str:
    """The operator variables as an ``--help`` epilog block."""
    width = max(len(v.name) for v in REGISTRY)
    lines = ["environment:"]
    lines += [f"  {v.name:<{width}}  {v.doc}" for v in REGISTRY if v.audience == "operator"]
    return "\n".join(lines)
