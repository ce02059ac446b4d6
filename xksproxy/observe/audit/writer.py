"""Tamper-evident audit log: one HMAC-chained JSON line per request.

Why this shape:

- **Keyed chain.** Every record carries ``seq`` (1, 2, 3, ... across files), ``prev`` (the MAC of
  the record before it; 64 zeros for the very first) and ``mac`` = HMAC-SHA256(key, canonical JSON
  of every other field). Without the key nobody can edit, insert, delete or reorder a record and
  repair the chain; :func:`verify_files` names the first record where it breaks.
- **One chain, many processes.** All worker processes append to the *same* file. A writer takes an
  exclusive ``flock`` on ``<file>.lock``, appends its batch with one ``write`` and releases the
  lock. It keeps the file open and remembers, after its own write, the tip (seq, mac), the inode
  and the size it left. Under the lock it tells *other legitimate writers* from a *cut*:

  - same inode, same size and mtime: nobody else wrote; continue from the tip in memory (one
    ``stat`` per batch when writing alone);
  - same inode, larger: another writer appended — but only if the bytes just before the size this
    writer left still end with its own tip's MAC (one ``pread``); then it re-reads the tip from
    the end of the file;
  - another inode whose first record names, as ``prevFile``, the file this writer still holds
    open (and that file still ends with its tip): another writer rotated;
  - anything else — shorter, missing, replaced by another inode, rewritten below the tip — is a
    **cut**: the writer never repairs it silently. It appends a ``gap`` record
    (:func:`gap_record`: reason, the first seq not on disk, the newest record it had itself
    written and found gone) that chains to what *is* on disk, raises ``<file>.alarm`` (every
    worker watches it and, with ``[audit] refuse_on_gap``, refuses Encrypt/Decrypt until
    ``xksproxy audit acknowledge``), counts it (``xksproxy_audit_gaps_total``) and logs an error.

  A writer without memory (a restart, the ``acknowledge`` command, another process appending an
  event) resumes from the last record on disk, but first compares it with ``<file>.head``: a head
  naming a newer record than the file holds is a cut as well (``cut-before-start``).
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
- **Write errors are never silent.** A batch that cannot be written (ENOSPC, EIO) is cut back to
  the size before the write (no torn line), every record in it is counted
  (``xksproxy_audit_lost_total``) and kept pending with the queue drops it carried; the writer
  reports itself failing (:attr:`AuditLog.integrity_ok` false: the request path refuses
  Encrypt/Decrypt at once, without touching the disk), and the first batch that can be written
  again starts with a ``gap`` record ``write-failed`` with ``lostCount`` — which raises the alarm
  like a cut.
- **Retention.** With ``[audit] keep_files`` N > 0, a rotation deletes the oldest rotated files
  beyond N and writes a ``retire`` record naming the newest file deleted and the first seq kept,
  so a strict verify can tell retention from files that went missing.
- **Never blocks a request; never lets an Encrypt/Decrypt succeed unrecorded.** The request
  path only appends the finished :class:`~xksproxy.observe.requestlog.RequestContext` (the
  request's one event) to a bounded queue: no dict, no serialisation, no disk. The writer thread
  turns each context into its record (the ``request_record`` function the wiring passes: only
  :data:`FIELDS`), serialises it once (``orjson``, sorted keys: the canonical bytes), MACs it and
  writes the batch. A successful Encrypt or Decrypt is handed over **before its answer is
  sent** (:meth:`AuditLog.hand_off`); when the queue is full the request *fails* (429
  ThrottlingException, ``xksproxy_throttled_total{reason="audit_backlog"}``) instead of
  succeeding without a record. Why fail rather than wait: the queue holds
  :data:`QUEUE_SIZE` records (seconds of traffic), so it is only full when the disk has
  stalled for seconds; a wait within the request deadline (at most a few hundred ms) would not
  drain it, and waiting on the event loop would stall every other request. KMS retries a
  throttled call. Every other record (health, metadata, failed requests) is queued after the
  answer and, when the queue is full, *dropped* and counted: the next record written carries
  ``droppedBefore`` = how many were lost (so the loss itself is on the chain), and ``on_drop``
  is called (metrics). What a hand-over cannot cover is what the process loses after it (a
  crash, a failed write): that is on the chain as a gap, as described above.
- **Allow-list.** Only the fields in :data:`FIELDS` are written, so plaintext, AAD, secrets or
  headers cannot reach the file even by mistake.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from xksproxy.observe.audit.chain import (
    ACK,
    CHAIN_FIELDS,
    FIELDS,
    GAP,
    GENESIS,
    HEAD_BYTES,
    RETIRE,
    RecordMac,
    alarm_path,
    head_mac,
    head_path,
    lock_path,
    log_files,
)
from xksproxy.observe.batchwriter import BatchWriter
from xksproxy.observe.requestlog import RequestContext

log = logging.getLogger("xksproxy.audit")

#: One audit record as a JSON object (str keys, JSON-scalar values).
Record = dict[str, Any]
#: What the queue holds: a finished request (made into its record on the writer thread) or a
#: record already built (tests, :meth:`AuditLog.record`).
Queued = Record | RequestContext
#: (seq, mac) of the last record of a file.
Tip = tuple[int, str]

_TAIL_CHUNK = 16384
#: Pause between two batches of the writer thread (see "Batches on a short timer" above).
BATCH_INTERVAL_S = 0.01
#: Most records one batch (one lock, one write) holds.
BATCH_MAX = 1000
#: Records a worker's queue holds (seconds of traffic) before it refuses Encrypt/Decrypt.
QUEUE_SIZE = 10000

_SCALARS = frozenset({str, int, float, bool})


def _clean(value: object) -> object:
    """Keep JSON scalars; anything else becomes its ``str`` (never a nested structure)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


_second_cache: tuple[int, str] = (-1, "")


def iso_time(now: float) -> str:
    """``now`` (``time.time()``) as UTC with milliseconds, e.g. 2026-11-23T15:01:02.345Z
    (the formatting of the second is cached: this runs once per record)."""
    global _second_cache
    sec = int(now)
    cache = _second_cache
    if cache[0] != sec:
        cache = _second_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cache[1]}.{int((now - sec) * 1000):03d}Z"


def now_iso() -> str:
    """The current UTC time as :func:`iso_time` writes it."""
    return iso_time(time.time())


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


#: The one ``write`` of a batch (a module attribute so a test can make it fail like ENOSPC).
_write_fd: Callable[[int, bytes], int] = os.write


def _read_head_line(fd: int) -> Record | None:
    """The first record of the open file (what chain it continues), or None."""
    raw = os.pread(fd, _TAIL_CHUNK, 0).split(b"\n", 1)[0]
    with contextlib.suppress(orjson.JSONDecodeError):
        rec = orjson.loads(raw)
        if isinstance(rec, dict) and "seq" in rec and "prev" in rec:
            return dict(rec)
    return None


def _ends_with_tip(fd: int, size: int, mac: str) -> bool:
    """Whether the file's bytes just before ``size`` are the end of the record with ``mac``."""
    if size == 0:
        return True  # nothing of ours was in the file: whatever is there now, others wrote
    tail = f',"mac":"{mac}"}}\n'.encode()
    if size < len(tail):
        return False
    return os.pread(fd, len(tail), size - len(tail)) == tail


def _gap_after_last_ack(path: Path) -> bool:
    """Whether the live log holds a gap record after its last ack (a byte search, no parse)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    return data.rfind(b'"event":"gap"') > data.rfind(b'"event":"ack"')


def gap_record(
    reason: str,
    *,
    lost_tip: Tip | None = None,
    lost_count: int = 0,
    detail: str | None = None,
) -> Record:
    """The fields of a ``gap`` event (seq/prev/lostFromSeq are filled in when it is written).

    ``lost_tip`` is the newest record this writer had written (or the head named) and found
    gone; ``lost_count`` how many records could not be written at all.
    """
    rec: Record = {"time": now_iso(), "event": GAP, "gapReason": reason, "worker": os.getpid()}
    if lost_tip is not None:
        rec["lostTipSeq"], rec["lostTipMac"] = lost_tip
    if lost_count:
        rec["lostCount"] = lost_count
    if detail:
        rec["detail"] = detail
    return rec


_EVENT_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
_EVENT_FIELD = re.compile(r"[a-zA-Z][a-zA-Z0-9]{0,39}")
#: Kinds only the writer itself (gap, retire) or ``audit acknowledge`` (ack) may write.
_RESERVED_KINDS = frozenset({GAP, RETIRE, ACK})
MAX_EVENT_TEXT = 1024


def event_record(kind: str, fields: Mapping[str, object], *, reserved: bool = False) -> Record:
    """Check and build an event record (see :meth:`AuditLog.append_event`); ``reserved`` lets
    this package write its own kinds (ack)."""
    if not _EVENT_KIND.fullmatch(kind) or (kind in _RESERVED_KINDS and not reserved):
        raise ValueError(f"audit event kind {kind!r}: use a-z, 0-9 and '-', not gap/retire/ack")
    rec: Record = {"time": now_iso(), "event": kind, "worker": os.getpid()}
    for name, value in fields.items():
        if not _EVENT_FIELD.fullmatch(name) or name in CHAIN_FIELDS or name == "time":
            raise ValueError(f"audit event field {name!r}: a camelCase name, not a chain field")
        if value is None:
            continue
        if isinstance(value, str):
            if len(value) > MAX_EVENT_TEXT or any(not " " <= ch <= "~" for ch in value):
                raise ValueError(f"audit event field {name!r}: at most 1024 printable ASCII")
        elif not isinstance(value, bool | int | float):
            raise ValueError(f"audit event field {name!r}: str, int, float or bool only")
        rec[name] = value
    return rec


class AuditLog:
    """Background, multi-process-safe writer of the chained audit file.

    ``record()``, :meth:`enqueue_request` and :meth:`hand_off` are safe to call from the event
    loop: they never touch the disk. The queue and
    its thread are a :class:`~xksproxy.observe.batchwriter.BatchWriter`; this class owns what a
    batch becomes on disk. :meth:`append_event` writes one event at once, from any process (the
    ``acknowledge`` command, key lifecycle transitions).
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        rotate_bytes: int = 0,
        *,
        queue_size: int = QUEUE_SIZE,
        keep_files: int = 0,
        on_drop: Callable[[int], None] | None = None,
        on_gap: Callable[[str], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
        on_batch: Callable[[], None] | None = None,
        request_record: Callable[[RequestContext], Record] | None = None,
    ) -> None:
        if len(key) < 32:
            raise ValueError("audit key must hold at least 32 bytes of key material")
        self.path = Path(path)
        self._key = key
        self._mac = RecordMac(key)
        self.rotate_bytes = rotate_bytes
        self.keep_files = keep_files
        self._request_record = request_record  # a finished request -> its record (writer thread)
        self._queue: BatchWriter[Queued] = BatchWriter(
            self._write_batch,
            name="xksproxy-audit",
            max_queued=queue_size,
            pause_s=BATCH_INTERVAL_S,
            batch_max=BATCH_MAX,
            on_drop=on_drop,
            on_error=self._write_failed,
            on_close=self._forget_file,
        )
        self._on_gap = on_gap
        self._on_lost = on_lost
        self._on_batch = on_batch  # after each written batch, outside the lock (checkpoints)
        self.written_total = 0
        self.last_seq = 0  # chain position after our last batch (exported as a metric)
        self.lost_total = 0  # records that could not be written (counted, carried onto the chain)
        self.gaps_total = 0  # gaps this process detected and recorded
        self._lock_fd: int | None = None
        self._thread_lock = threading.Lock()  # flock does not exclude two threads of one process
        # The open log file and what we know about it after our own last write (writer thread).
        self._fd = -1
        self._file_id: tuple[int, int, int, int] | None = None  # dev, ino, size, mtime_ns
        self._tip: Tip | None = None  # (seq, mac) of the last record in that file
        self._start: Record | None = None  # first record of that file (what it continues)
        self._remembers = False  # True once this writer has written or verified a tip
        # What the next written batch must carry (kept across failed writes).
        self._pending_gaps: list[Record] = []
        self._lost_pending = 0
        self._dropped_carry = 0
        self._alarm_unwritten = False
        self._alarm_seq = 0
        self._head_checked = False
        # Refusal state, read by the request path without touching the disk.
        self.writer_ok = True
        self._alarm = False
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __repr__(self) -> str:  # never show the key
        return f"AuditLog(path={str(self.path)!r}, rotate_bytes={self.rotate_bytes})"

    @property
    def dropped_total(self) -> int:
        return self._queue.dropped_total

    @property
    def integrity_ok(self) -> bool:
        """False while a gap is unacknowledged (``<file>.alarm``) or the writer is failing.

        A plain attribute read: the request path calls it for every Encrypt/Decrypt."""
        return self.writer_ok and not self._alarm and not self._alarm_unwritten

    # -- producer side -------------------------------------------------------------------------
    def start(self, *, watch_interval_s: float = 0.25) -> None:
        """Create the directory (0700), start the writer thread and the alarm watcher."""
        self._open_lock()
        self._alarm = alarm_path(self.path).exists()
        self._queue.start()
        if self._watcher is None and watch_interval_s > 0:
            self._watch_stop.clear()
            self._watcher = threading.Thread(
                target=self._watch,
                args=(watch_interval_s,),
                name="xksproxy-audit-watch",
                daemon=True,
            )
            self._watcher.start()

    def _open_lock(self) -> None:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)

    def _watch(self, interval_s: float) -> None:
        """Every ``interval_s``: is an alarm raised (by any process) or acknowledged?"""
        alarm = alarm_path(self.path)
        while not self._watch_stop.wait(interval_s):
            self._alarm = alarm.exists()

    def record(self, fields: Mapping[str, object]) -> None:
        """Queue one request's record; drop it (counted) if the queue is full."""
        rec: Record = {"time": now_iso()}
        for k in FIELDS:
            v = fields.get(k)
            if v is not None:
                rec[k] = v if type(v) in _SCALARS else _clean(v)
        self._queue.put(rec)

    def enqueue_request(self, ctx: RequestContext) -> None:
        """Queue a finished request (its record is built on the writer thread); dropped and
        counted (``droppedBefore``) when the queue is full. Not for Encrypt/Decrypt answered
        200: those go through :meth:`hand_off` before the answer."""
        self._queue.put(ctx)

    def hand_off(self, ctx: RequestContext) -> bool:
        """Queue a request whose answer must not go out unrecorded; False when the queue is
        full (then the caller fails the request; nothing is counted, the failed request's own
        record is)."""
        return self._queue.offer(ctx)

    def append_event(self, kind: str, fields: Mapping[str, object]) -> int:
        """Write one event record now (any thread, any process) and return its ``seq``.

        ``kind`` is a-z/0-9/'-' (``gap``, ``retire``, ``ack`` are reserved); ``fields`` are
        camelCase names with str (printable ASCII, at most 1024), int, float or bool values —
        never a secret. Raises ``ValueError`` for a bad kind or field and ``OSError`` when the
        record cannot be written (then nothing is on the chain). A cut this writer finds on the
        way is recorded first, as for a batch.
        """
        rec = event_record(kind, fields)
        self._open_lock()
        self._write_batch([rec], 0)
        return int(rec["seq"])

    def record_gap(self, gap: Record) -> None:
        """Put a gap found outside the writer (an HSM checkpoint the files no longer match) on
        the chain now and raise the alarm; ``gap`` comes from :func:`gap_record`."""
        self._open_lock()
        self._pending_gaps.append(gap)
        self._write_batch([], 0)

    def acknowledge(self, reason: str, operator: str) -> int | None:
        """Write an ``ack`` record for every gap so far and lift the alarm (under the lock).

        Returns the ack's seq, or None when no alarm is raised (nothing written)."""
        self._open_lock()
        assert self._lock_fd is not None
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                alarm = alarm_path(self.path)
                if not alarm.exists() and not _gap_after_last_ack(self.path):
                    return None
                try:
                    raised = orjson.loads(alarm.read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    raised = {}  # removed by hand: the gap on the chain still needs its ack
                fields = {"reason": reason, "operator": operator}
                if isinstance(raised.get("gapSeq"), int):
                    fields["alarmGapSeq"] = raised["gapSeq"]
                rec = event_record(ACK, fields, reserved=True)
                self._write_locked([rec], 0)  # acknowledges every gap before it on the chain
                alarm.unlink(missing_ok=True)
                self._alarm = False
                return int(rec["seq"])
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self, timeout: float = 5.0) -> None:
        """Flush everything queued and stop the writer thread and the watcher."""
        self._queue.close(timeout)
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None
        with self._thread_lock:
            self._forget_file()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is on disk (tests and shutdown)."""
        self._queue.flush(timeout)

    # -- writer thread ---------------------------------------------------------------------------
    def _write_failed(self, n: int) -> None:
        """Keep the writer alive; the log line never holds record content."""
        log.exception("audit: writing %d record(s) to %s failed; counted as lost", n, self.path)

    def _forget_file(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._file_id, self._tip, self._start = -1, None, None, None

    def _remember(self) -> None:
        st = os.fstat(self._fd)
        self._file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self._remembers = True

    def _reopen(self) -> None:
        """Open the file at the path (created if missing) and read its tip and first record."""
        self._forget_file()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._tip = _tip_of(_read_tail(self._fd))
        self._start = _read_head_line(self._fd)
        self._remember()  # the tip just read belongs to this size: checked from here on

    def _cut(self, reason: str, detail: str) -> None:
        """The file is not what this writer left: record a gap, never continue silently."""
        lost_tip = self._tip
        start = self._start
        self._reopen()
        if self._tip is None and start is not None and "seq" in start:
            # Nothing of the lost file is left: chain the gap to what the lost file continued.
            self._tip = (int(start["seq"]) - 1, str(start["prev"]))
            if "prevFile" in start:
                self._start = {"prevFile": start["prevFile"]}
        self._pending_gaps.append(gap_record(reason, lost_tip=lost_tip, detail=detail))

    def _open_current(self) -> int:
        """Under the lock: make ``self._fd``/``self._tip`` the chain at ``self.path``, recording
        a gap when the file was cut; return the file's size."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if not self._remembers or self._file_id is None or self._tip is None:
            self._reopen()
            if not self._head_checked:
                self._head_checked = True
                self._check_head_at_start()
            return os.fstat(self._fd).st_size
        dev, ino, size, mtime = self._file_id
        if st is None:
            self._cut("missing", f"{self.path.name} is gone (had {size} bytes)")
        elif (st.st_dev, st.st_ino) == (dev, ino):
            if (st.st_size, st.st_mtime_ns) == (size, mtime):
                return size  # nobody else wrote since our last batch
            if st.st_size >= size and _ends_with_tip(self._fd, size, self._tip[1]):
                self._tip = _tip_of(_read_tail(self._fd))  # another writer appended
                self._remember()
            else:
                self._cut("truncated", f"{self.path.name} has {st.st_size} bytes, had {size}")
        elif self._rotated_by_another(size):
            self._reopen()
        else:
            self._replaced()
        assert self._fd >= 0
        return os.fstat(self._fd).st_size

    def _replaced(self) -> None:
        """Another file sits at the path. If another writer re-created it after finding it
        gone, its first record is that gap: ours is the same loss (not recorded twice when that
        gap covers our tip)."""
        assert self._tip is not None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            first = _read_head_line(fd)
        finally:
            os.close(fd)
        if first is None or first.get("event") != GAP:
            self._cut("replaced", f"{self.path.name} is another file than the one written")
            return
        lost_from, gap_seq = first.get("lostFromSeq"), int(first["seq"])
        if isinstance(lost_from, int) and lost_from <= self._tip[0] < gap_seq:
            self._reopen()  # already on the chain, by the writer that found it first
            return
        self._cut("missing", f"{self.path.name} was re-created by another writer after a cut")

    def _rotated_by_another(self, size: int) -> bool:
        """Another writer rotated: the new file's first record names, as ``prevFile``, the file
        we still hold open, and that file still ends with our tip."""
        assert self._tip is not None and self._file_id is not None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            first = _read_head_line(fd)
        finally:
            os.close(fd)
        if first is None or "prevFile" not in first:
            return False
        try:
            old = os.stat(self.path.with_name(str(first["prevFile"])))
        except (OSError, ValueError):
            return False
        return (old.st_dev, old.st_ino) == self._file_id[:2] and _ends_with_tip(
            self._fd, size, self._tip[1]
        )

    def _check_head_at_start(self) -> None:
        """A writer without memory: the head may name a newer record than the file holds."""
        try:
            head = orjson.loads(head_path(self.path).read_bytes())
            seq, mac, name = int(head["seq"]), str(head["mac"]), str(head["file"])
            good = hmac.compare_digest(head_mac(self._key, name, seq, mac), str(head["headMac"]))
        except (OSError, ValueError, KeyError, TypeError):
            return  # no head (first start) or an unreadable one: verify reports the latter
        if not good or name != self.path.name:
            return
        have = self._tip[0] if self._tip else 0
        if seq > have:
            self._pending_gaps.append(
                gap_record(
                    "cut-before-start",
                    lost_tip=(seq, mac),
                    detail=f"the head names seq {seq}, the file ends at seq {have}",
                )
            )

    def _records(self, batch: list[Queued]) -> tuple[list[Record], int]:
        """The batch as records (requests made into theirs, before the lock is taken) and how
        many could not be made (counted as dropped: the loss is on the chain)."""
        records: list[Record] = []
        failed = 0
        make = self._request_record
        for item in batch:
            if isinstance(item, dict):
                records.append(item)
            elif make is None:
                failed += 1  # enqueue_request without request_record: a wiring bug
            else:
                try:
                    records.append(make(item))
                except Exception:
                    if not failed:  # the first one's traceback says what to fix
                        log.exception("audit: a request record could not be built")
                    failed += 1
        if failed:
            log.error("audit: %d request record(s) could not be built; counted as dropped", failed)
            if self._queue.on_drop is not None:
                with contextlib.suppress(Exception):  # as BatchWriter.put: metrics never fail
                    self._queue.on_drop(failed)
        return records, failed

    def _write_batch(self, batch: list[Queued], dropped: int) -> None:
        """Writer thread: append ``batch`` to the chain under the lock, then rewrite the head."""
        if self._lock_fd is None:
            raise RuntimeError("audit log not started")
        records, failed = self._records(batch)
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._write_locked(records, dropped + failed)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        if self._on_batch is not None:
            try:
                self._on_batch()
            except Exception:
                log.exception("audit: after-batch hook failed")

    def _write_locked(self, batch: list[Record], dropped: int) -> None:
        dropped += self._dropped_carry
        self._dropped_carry = 0
        try:
            size = self._open_current()
            self._append(batch, dropped, size)
        except OSError:
            # Nothing of this batch is on the chain: count it, carry it, refuse until written.
            self._dropped_carry += dropped
            self._lost_pending += len(batch)
            self.lost_total += len(batch)
            self.writer_ok = False
            if self._on_lost is not None:
                with contextlib.suppress(Exception):
                    self._on_lost(len(batch))
            raise
        self.writer_ok = True
        self._raise_alarm_if_needed()

    def _append(self, batch: list[Record], dropped: int, size: int) -> None:
        assert self._fd >= 0
        prev_file: str | None = None
        retire: Record | None = None
        if self.rotate_bytes and size >= self.rotate_bytes and self._tip is not None:
            self._forget_file_keep_tip()
            rotated = self._rotated_name()
            os.replace(self.path, rotated)
            prev_file = rotated.name
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            size = 0
            retire = self._retire_old_files()
        elif size == 0 and self._start is not None and "prevFile" in self._start:
            prev_file = str(self._start["prevFile"])  # the gap restarts a lost rotated file
        tip = self._tip
        prev = tip[1] if tip else GENESIS
        seq = tip[0] if tip else 0
        gaps = list(self._pending_gaps)
        if self._lost_pending:
            gaps.append(gap_record("write-failed", lost_count=self._lost_pending))
        events = gaps + ([retire] if retire is not None else [])
        lines = []
        mac_of = self._mac.of_bytes
        first = True
        for rec in events + batch:
            if "event" in rec:  # a gap retried after a failed write: set afresh
                for name in CHAIN_FIELDS - {"event"}:
                    rec.pop(name, None)
            if rec.get("event") == GAP:
                rec["lostFromSeq"] = seq + 1
                seq = max(seq, int(rec.get("lostTipSeq", 0)))
            seq += 1
            rec["seq"] = seq
            rec["prev"] = prev
            if first and prev_file is not None:
                rec["prevFile"] = prev_file
            if dropped and rec.get("event") is None:
                rec["droppedBefore"] = dropped
                dropped = 0
            first = False
            # rec has no "mac" yet: these are exactly the bytes verify hashes
            body = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)
            prev = mac_of(body)
            lines.append(body[:-1] + b',"mac":"' + prev.encode() + b'"}')
        if dropped:  # a batch of events only: the drops wait for the next request record
            self._dropped_carry += dropped
        lines.append(b"")
        data = b"\n".join(lines)
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # never glue a record onto a torn line
        try:
            written = _write_fd(self._fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no torn line: the batch is lost as a whole
            raise
        self._remember()
        self._tip = (seq, prev)
        if self._start is None or size == 0:
            self._start = _read_head_line(self._fd)
        if gaps:
            self.gaps_total += len(gaps)
            gap_seqs = [int(g["seq"]) for g in gaps]
            self._pending_gaps = []
            self._lost_pending = 0
            self._alarm_unwritten = True
            self._alarm_seq = max(gap_seqs)
            for g in gaps:
                log.error(
                    "audit: GAP in the audit chain of %s (%s): recorded as seq %s; %s",
                    self.path,
                    g["gapReason"],
                    g["seq"],
                    "records were lost; Encrypt/Decrypt are refused until "
                    "'xksproxy audit acknowledge --reason TEXT' (with [audit] refuse_on_gap)",
                )
                if self._on_gap is not None:
                    with contextlib.suppress(Exception):
                        self._on_gap(str(g["gapReason"]))
        self.written_total += len(batch)
        self.last_seq = seq
        self._write_head(seq, prev)

    def _forget_file_keep_tip(self) -> None:
        tip = self._tip
        self._forget_file()
        self._tip = tip

    def _raise_alarm_if_needed(self) -> None:
        """Write ``<file>.alarm`` (atomically) for the gaps just recorded; retried each batch."""
        if not self._alarm_unwritten:
            return
        alarm = alarm_path(self.path)
        tmp = alarm.with_name(alarm.name + ".tmp")
        body = orjson.dumps({"gapSeq": self._alarm_seq, "time": now_iso(), "pid": os.getpid()})
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, alarm)
        except OSError:
            log.error("audit: cannot write %s; this worker refuses until it can", alarm)
            return
        self._alarm = True
        self._alarm_unwritten = False

    def _retire_old_files(self) -> Record | None:
        """Delete the oldest rotated files beyond ``keep_files``; the record that says so."""
        if self.keep_files <= 0:
            return None
        rotated = [p for p in log_files(self.path) if p != self.path]
        excess = len(rotated) - self.keep_files
        if excess <= 0:
            return None
        kept = rotated[excess]
        fd = os.open(kept, os.O_RDONLY)
        try:
            first = _read_head_line(fd)
        finally:
            os.close(fd)
        for old in rotated[:excess]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        rec: Record = {
            "time": now_iso(),
            "event": RETIRE,
            "retiredFiles": excess,
            "retiredThrough": rotated[excess - 1].name,
            "keptFrom": kept.name,
            "worker": os.getpid(),
        }
        if first is not None:
            rec["keptFromSeq"] = int(first["seq"])
        return rec

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


def append_event(path: Path, key: bytes, kind: str, fields: Mapping[str, object]) -> int:
    """Append one event record to the audit chain at ``path`` from any process; its ``seq``.

    The public way for another process (e.g. ``xksproxy keys ...`` lifecycle transitions) to put
    a record on the chain the workers write: same lock, same cut detection. See
    :meth:`AuditLog.append_event` for what ``kind`` and ``fields`` may hold.
    """
    writer = AuditLog(path, key)
    try:
        return writer.append_event(kind, fields)
    finally:
        writer.close()
