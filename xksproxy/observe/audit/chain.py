"""The audit chain's rules: the record allow-list, the canonical bytes a MAC covers, the head.

One home for what a writer produces and a verifier checks, so the two cannot drift apart: every
record carries ``seq``, ``prev`` (the MAC of the record before it; :data:`GENESIS` for the very
first) and ``mac`` = HMAC-SHA256(key, :func:`canonical` record). The ``<file>.head`` record names
the newest record under its own MAC (:func:`head_mac`). See :mod:`xksproxy.observe.audit` for
why the log has this shape.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

import orjson

GENESIS = "0" * 64
#: Request fields an audit record may hold (anything else is silently left out).
FIELDS = (
    "time",
    "kmsRequestId",
    "kmsOperation",
    "principal",
    "keystore",
    "keyId",
    "kmsKeyArn",
    "kmsViaService",
    "awsSourceVpc",
    "awsSourceVpce",
    "outcome",
    "errorName",
    "denyRule",
    "status",
    "latencyMs",
    "token",
    "worker",
    # key custody (issue 12): the key's lifecycle state on a request that used a key not
    # "active" (e.g. Decrypt with a compromised key), and `xksproxy keys` transitions.
    "keyState",
    "keyVersion",
    "event",
    "fromState",
    "toState",
    "reason",
    "operator",
)
#: Size of the space-padded head record (rewritten in place; longer only for very long names).
HEAD_BYTES = 512


def canonical(record: Mapping[str, object]) -> bytes:
    """The bytes the MAC covers: every field except ``mac``, keys sorted, compact JSON."""
    body = {k: v for k, v in record.items() if k != "mac"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


class RecordMac:
    """HMAC-SHA256 under one key for many records: the writer's and the verifier's MAC.

    Why an object: the key is set up once and the keyed state copied per record. Python's
    one-shot ``hmac.digest`` makes OpenSSL 3 fetch the digest and build a MAC context on every
    call, and in the audit writer thread, next to SoftHSMv2's OpenSSL calls, that cost 43 µs per
    record (cProfile of the writer under ``loadtest.profile_app``, 8,801 records); the copy
    costs a few µs. Not thread-safe: one per writer or verifier.
    """

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def of_bytes(self, body: bytes) -> str:
        """The MAC (hex) of ``body``, which must be :func:`canonical` bytes of a record."""
        m = self._keyed.copy()
        m.update(body)
        return m.hexdigest()

    def of_record(self, record: Mapping[str, object]) -> str:
        return self.of_bytes(canonical(record))


def compute_mac(key: bytes, record: Mapping[str, object]) -> str:
    """HMAC-SHA256 over the canonical record (which includes ``prev``, hence the chain)."""
    return RecordMac(key).of_record(record)


def head_mac(key: bytes, file_name: str, seq: int, mac: str) -> str:
    """The MAC of a head record naming record ``seq`` (with MAC ``mac``) of ``file_name``."""
    msg = f"xksproxy-audit-head|{file_name}|{seq}|{mac}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


#: Chain fields a writer adds: never taken from a caller's record or event.
CHAIN_FIELDS = frozenset({"seq", "prev", "mac", "prevFile", "droppedBefore", "event"})

#: ``event`` of a record that says records were lost (see :func:`gap_fields`).
GAP = "gap"
#: ``event`` of an operator's acknowledgement of the gaps up to ``ackSeq``.
ACK = "ack"
#: ``event`` of a rotation that deleted the oldest files (``[audit] keep_files``).
RETIRE = "retire"
#: Why a gap record was written (``gapReason``).
GAP_REASONS = frozenset(
    {
        "truncated",  # the file is shorter than what this writer wrote or verified
        "missing",  # the file this writer appended to is gone
        "replaced",  # another file (inode) sits at the path, and it is no rotation of ours
        "cut-before-start",  # at start: the head names records the file no longer holds
        "write-failed",  # records could not be written (ENOSPC, EIO): counted in lostCount
        "rolled-back",  # the files end before (or differ at) the newest HSM checkpoint
    }
)


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def alarm_path(path: Path) -> Path:
    """``<file>.alarm``: present while a gap is not acknowledged; every worker watches it."""
    return path.with_name(path.name + ".alarm")


def stamp_path(path: Path) -> Path:
    """``<file>.checkpoint``: its mtime is when the newest HSM checkpoint was written."""
    return path.with_name(path.name + ".checkpoint")


def checkpoint_lock_path(path: Path) -> Path:
    """``<file>.checkpoint.lock``: one checkpoint process at a time, host-wide."""
    return path.with_name(path.name + ".checkpoint.lock")


#: Every file the audit code keeps beside a log (the helpers above, and ``.tmp`` of atomic
#: rewrites): none of them is a log, whatever shell glob named it.
SIDE_FILE_SUFFIXES = (".head", ".lock", ".alarm", ".checkpoint", ".tmp")


def is_side_file(path: Path) -> bool:
    return path.name.endswith(SIDE_FILE_SUFFIXES)


def log_files(path: Path) -> list[Path]:
    """The live log ``path`` and its rotated files (``<stem>-<UTC time><suffix>``), as present."""
    found = [p for p in path.parent.glob(f"{path.stem}-*{path.suffix}") if p.is_file()]
    if path.exists():
        found.append(path)
    return sorted(found)


def parse_key_text(text: str) -> bytes:
    """The HMAC key is the key file's text (e.g. 64 hex characters) as UTF-8 bytes, exactly as
    ``config.py`` resolves ``[audit] key``."""
    return text.strip().encode("utf-8")
