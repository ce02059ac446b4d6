"""Tamper-evident audit log: one HMAC-chained JSON line per request.

Why this shape:

- **Keyed chain.** Every record carries ``seq`` (1, 2, 3, ... across files), ``prev`` (the MAC of
  the record before it; 64 zeros for the very first) and ``mac`` = HMAC-SHA256(key, canonical JSON
  of every other field). Without the key nobody can edit, insert, delete or reorder a record and
  repair the chain; :func:`verify_files` names the first record where it breaks.
- **One chain, many processes.** All worker processes append to the *same* file. A writer takes an
  exclusive ``flock`` on ``<file>.lock``, finds the chain tip, appends its batch with one ``write``
  and releases the lock. It keeps the file open and remembers the tip, its inode, size and mtime
  after its own write; under the lock, when the path's inode, size or mtime differ (another
  worker appended, someone rotated or truncated it) it re-opens and re-reads the tip from the end
  of the file. So the chain is always resumed from the last record on disk, never from a stale
  memory (restarts are trivial), and a worker writing alone pays one ``stat`` per batch instead
  of open + tail read + parse + close.
- **Batches on a short timer.** The writer thread drains everything queued, writes it, then
  sleeps :data:`BATCH_INTERVAL_S` before the next batch (records arriving meanwhile only append
  to the queue; the first record after an idle spell is written at once). Under load that is one
  lock, one ``write`` and one head update per batch instead of per record, and the writer thread
  wakes ~100 times a second instead of once per request (each wake-up took the GIL from the event
  loop). **Crash safety:** what a crash (kill -9, power loss) can lose is what is still in memory:
  the records of the last ``BATCH_INTERVAL_S`` (plus anything queued behind a slow disk), as for
  any queued record before. A write torn by the crash leaves a partial last line that verify
  reports by file and line; the next batch never glues onto it (it starts on a new line). No
  ``fsync`` per batch, as before: a power loss can also lose what the kernel had not written back.
- **Rotation keeps the chain.** When the file would grow beyond ``rotate_bytes`` the writer (still
  under the lock) renames it to ``<stem>-<UTC time><suffix>`` and starts a new file whose first
  record names the previous file (``prevFile``) and chains to its last MAC.
- **Truncation.** A chain alone cannot show that the *last* records were cut off, so after every
  batch the writer also overwrites ``<file>.head`` with the tip (seq, mac) under its own MAC;
  the verifier checks the current file still contains that tip. The head is rewritten in place
  (one ``pwrite`` of a space-padded record of fixed size, :data:`HEAD_BYTES`), not by temp file +
  rename: replacing a file by rename makes ext4 allocate and flush it at once (``auto_da_alloc``),
  measured here at 100-400 µs per batch, against ~2 µs in place. A reader racing a write may see
  a half-written head, so the verifier re-reads a head that does not parse or match its MAC
  before it reports it.
- **Never blocks a request.** :meth:`AuditLog.record` only puts a dict on a bounded queue; a
  background thread does all disk I/O. When the queue is full the record is *dropped* and
  counted, the next record written carries ``droppedBefore`` = how many were lost (so the loss
  itself is on the chain), and ``on_drop`` is called (metrics). Serving KMS wins over auditing a
  burst that the disk cannot absorb; the gap stays visible and signed.
- **Allow-list.** Only the fields in :data:`FIELDS` are written, so plaintext, AAD, secrets or
  headers cannot reach the file even by mistake.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from xksproxy.observe.audit.chain import FIELDS, GENESIS, HEAD_BYTES, head_mac, head_path, lock_path
from xksproxy.observe.batchwriter import BatchWriter

log = logging.getLogger("xksproxy.audit")

#: One audit record as a JSON object (str keys, JSON-scalar values).
Record = dict[str, Any]
#: (seq, mac) of the last record of a file.
Tip = tuple[int, str]

_TAIL_CHUNK = 16384
#: Pause between two batches of the writer thread (see "Batches on a short timer" above).
BATCH_INTERVAL_S = 0.01
#: Most records one batch (one lock, one write) holds.
BATCH_MAX = 1000

_SCALARS = frozenset({str, int, float, bool})


def _clean(value: object) -> object:
    """Keep JSON scalars; anything else becomes its ``str`` (never a nested structure)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


_second_cache: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """UTC time with milliseconds, e.g. 2026-11-23T15:01:02.345Z (formatting cached per second:
    this runs once per request on the event loop)."""
    global _second_cache
    now = time.time()
    sec = int(now)
    if _second_cache[0] != sec:
        _second_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_second_cache[1]}.{int((now - sec) * 1000):03d}Z"


def _read_tail(fd: int) -> Record | None:
    """Return the last complete, parseable record of the open file, or None if there is none."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    buf = b""
    pos = size
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        lines = buf.rstrip(b"\n").split(b"\n")
        # The first element may be a partial line unless we have read back to the file start.
        candidates = lines if pos == 0 else lines[1:]
        for raw in reversed(candidates):
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(raw)
                if isinstance(rec, dict) and "mac" in rec and "seq" in rec:
                    return dict(rec)
        if len(candidates) > 0 and pos > 0 and len(buf) > 4 * 1024 * 1024:
            break
    return None


def _tip_of(rec: Record | None) -> Tip | None:
    return (int(rec["seq"]), str(rec["mac"])) if rec is not None else None


class AuditLog:
    """Background, multi-process-safe writer of the chained audit file.

    ``record()`` is safe to call from the event loop: it never touches the disk. The queue and
    its thread are a :class:`~xksproxy.observe.batchwriter.BatchWriter`; this class owns what a
    batch becomes on disk.
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        rotate_bytes: int = 0,
        *,
        queue_size: int = 10000,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if len(key) < 32:
            raise ValueError("audit key must hold at least 32 bytes of key material")
        self.path = Path(path)
        self._key = key
        self.rotate_bytes = rotate_bytes
        self._queue: BatchWriter[Record] = BatchWriter(
            self._write_batch,
            name="xksproxy-audit",
            max_queued=queue_size,
            pause_s=BATCH_INTERVAL_S,
            batch_max=BATCH_MAX,
            on_drop=on_drop,
            on_error=self._write_failed,
            on_close=self._forget_file,
        )
        self.written_total = 0
        self.last_seq = 0  # chain position after our last batch (exported as a metric)
        self._lock_fd: int | None = None
        # The open log file and what we know about it after our own last write (writer thread).
        self._fd = -1
        self._file_id: tuple[int, int, int, int] | None = None  # dev, ino, size, mtime_ns
        self._tip: Tip | None = None  # (seq, mac) of the last record in that file

    def __repr__(self) -> str:  # never show the key
        return f"AuditLog(path={str(self.path)!r}, rotate_bytes={self.rotate_bytes})"

    @property
    def dropped_total(self) -> int:
        return self._queue.dropped_total

    # -- producer side -------------------------------------------------------------------------
    def start(self) -> None:
        """Create the directory (0700) and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        self._queue.start()

    def record(self, fields: Mapping[str, object]) -> None:
        """Queue one request's record; drop it (counted) if the queue is full."""
        rec: Record = {"time": now_iso()}
        for k in FIELDS:
            v = fields.get(k)
            if v is not None:
                rec[k] = v if type(v) in _SCALARS else _clean(v)
        self._queue.put(rec)

    def enqueue_clean(self, rec: Record) -> None:
        """Queue a record that already holds only :data:`FIELDS` with JSON-scalar values (the
        request observer builds it in that form, without a second dict)."""
        self._queue.put(rec)

    def close(self, timeout: float = 5.0) -> None:
        """Flush everything queued and stop the writer thread."""
        self._queue.close(timeout)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is on disk (tests and shutdown)."""
        self._queue.flush(timeout)

    # -- writer thread ---------------------------------------------------------------------------
    def _write_failed(self, n: int) -> None:
        """Keep the writer alive; the log line never holds record content."""
        log.exception("audit: writing %d record(s) to %s failed", n, self.path)
        self._forget_file()  # start from the disk again next time

    def _forget_file(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._file_id, self._tip = -1, None, None

    def _open_current(self) -> tuple[Tip | None, int, bool]:
        """Under the lock: make ``self._fd`` the file at ``self.path``; return (tip, size,
        whether the file is exactly as our last write left it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and self._fd >= 0 and self._file_id is not None:
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self._file_id:
                return self._tip, st.st_size, True  # nobody else wrote since our last batch
            if (st.st_dev, st.st_ino) == self._file_id[:2]:
                rec = _read_tail(self._fd)  # same file, another worker appended (or truncated)
                return _tip_of(rec), st.st_size, False
        self._forget_file()  # first batch, or the file was rotated/removed by someone else
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        return _tip_of(_read_tail(self._fd)), os.fstat(self._fd).st_size, False

    def _write_batch(self, batch: list[Record], dropped: int) -> None:
        """Writer thread: append ``batch`` to the chain under the lock, then rewrite the head."""
        if self._lock_fd is None:
            raise RuntimeError("audit log not started")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            tip, size, clean = self._open_current()
            prev_file: str | None = None
            if self.rotate_bytes and size >= self.rotate_bytes and tip is not None:
                self._forget_file()
                rotated = self._rotated_name()
                os.replace(self.path, rotated)
                prev_file = rotated.name
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                size, clean = 0, True
            prev = tip[1] if tip else GENESIS
            seq = tip[0] if tip else 0
            lines = []
            key = self._key
            for rec in batch:
                seq += 1
                rec["seq"] = seq
                rec["prev"] = prev
                if prev_file is not None:
                    rec["prevFile"] = prev_file
                    prev_file = None
                if dropped:
                    rec["droppedBefore"] = dropped
                    dropped = 0
                # rec has no "mac" yet: these are exactly the bytes verify hashes
                body = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)
                prev = hmac.digest(key, body, "sha256").hex()
                lines.append(body[:-1] + b',"mac":"' + prev.encode() + b'"}')
            lines.append(b"")
            data = b"\n".join(lines)
            if size and not clean and os.pread(self._fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # never glue a record onto a torn line
            if os.write(self._fd, data) != len(data):  # disk full: re-read the tip next time
                self._forget_file()
                raise OSError(f"short write to {self.path}")
            st = os.fstat(self._fd)
            self._file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            self._tip = (seq, prev)
            self.written_total += len(batch)
            self.last_seq = seq
            self._write_head(seq, prev)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _rotated_name(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        stem, suffix = self.path.stem, self.path.suffix
        candidate = self.path.with_name(f"{stem}-{stamp}{suffix}")
        n = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{stem}-{stamp}-{n}{suffix}")
            n += 1
        return candidate

    def _write_head(self, seq: int, mac: str) -> None:
        head = {
            "file": self.path.name,
            "seq": seq,
            "mac": mac,
            "headMac": head_mac(self._key, self.path.name, seq, mac),
        }
        data = orjson.dumps(head).ljust(HEAD_BYTES - 1) + b"\n"
        # Opened per batch (O_CREAT re-creates a deleted head at once); no O_TRUNC, no rename.
        fd = os.open(head_path(self.path), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, 0)
            if os.fstat(fd).st_size > len(data):  # an older, longer head record
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
