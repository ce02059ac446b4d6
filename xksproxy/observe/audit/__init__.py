"""Tamper-evident audit log: one HMAC-chained JSON line per request.

This package's modules, one job each:

- :mod:`.chain` — the rules writer and verifier share: allow-listed fields, canonical bytes,
  record MAC, head MAC, file names, key text;
- :mod:`.writer` — :class:`AuditLog`, the background multi-process writer (why the log has this
  shape — keyed chain, one chain for many processes, batches, rotation, the head — is told
  there), and :func:`append_event`, the one way another process puts an event on the chain;
- :mod:`.verify` — :func:`verify_files`, which names the first record where the chain breaks;
- :mod:`.cli` — :func:`main_verify` and :func:`main_acknowledge`, ``xksproxy audit verify`` /
  ``acknowledge``: key and file lookup, output and exit status;
- :mod:`.anchor` — HSM checkpoints of the chain's tip (rollback detection) and the worker-side
  scheduler that starts the checkpoint process;
- :mod:`.wiring` — :func:`install`, one record per finished request of an app.

This module only re-exports the names callers use.
"""

from __future__ import annotations

from xksproxy.observe.audit.chain import (
    FIELDS,
    GENESIS,
    HEAD_BYTES,
    alarm_path,
    compute_mac,
    head_path,
    lock_path,
    log_files,
    parse_key_text,
)
from xksproxy.observe.audit.cli import (
    load_key_from_config,
    main_acknowledge,
    main_checkpoint,
    main_verify,
)
from xksproxy.observe.audit.verify import VerifyResult, verify_files
from xksproxy.observe.audit.wiring import install
from xksproxy.observe.audit.writer import BATCH_INTERVAL_S, AuditLog, append_event

__all__ = [
    "BATCH_INTERVAL_S",
    "FIELDS",
    "GENESIS",
    "HEAD_BYTES",
    "AuditLog",
    "VerifyResult",
    "alarm_path",
    "append_event",
    "compute_mac",
    "head_path",
    "install",
    "load_key_from_config",
    "lock_path",
    "log_files",
    "main_acknowledge",
    "main_checkpoint",
    "main_verify",
    "parse_key_text",
    "verify_files",
]
