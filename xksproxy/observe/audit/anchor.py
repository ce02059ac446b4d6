"""Anchor the audit chain in the HSM: signed checkpoints that a rollback cannot undo.

Why: the record MACs and the head prove that nobody *edited* the files, but log and head
restored together from an older copy are a shorter chain that still verifies. A checkpoint —
``(seq, MAC of record seq, file, time)`` MACed by a key that never leaves the HSM, stored as a
token object (:mod:`hsm.audit_anchor`) — is outside the files: ``audit verify`` requires the
files to hold record ``seq`` with exactly that MAC, so a rollback beyond the newest checkpoint
fails, unless whoever rolled back also holds the token's user PIN.

Cost: one HSM session and two HMACs per checkpoint (every ``[audit] checkpoint_interval_s``),
never per record: the per-record MACs stay in software with the ``[audit] key``. The workers
never call PKCS#11 for this: a worker's writer thread starts ``python -m
xksproxy.observe.audit.anchor CONFIG`` (a fresh process; PKCS#11 initialised there) when the
newest checkpoint is older than the interval, and at most one runs at a time host-wide (a
non-blocking ``flock`` on ``<file>.checkpoint.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xksproxy.observe.audit.chain import checkpoint_lock_path, lock_path, log_files, stamp_path

if TYPE_CHECKING:
    from hsm.types import HsmConfig
    from xksproxy.config import Config

PREFIX = b"xksproxy-audit-checkpoint|v1|"


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    mac: str
    file: str
    time: str
    valid: bool  # its HSM MAC verified

    def payload(self) -> bytes:
        return PREFIX + f"{self.seq:020d}|{self.mac}|{self.file}|{self.time}".encode()

    @classmethod
    def parse(cls, payload: bytes, valid: bool) -> Checkpoint | None:
        if not payload.startswith(PREFIX):
            return None
        try:
            seq, mac, file, when = payload[len(PREFIX) :].decode("ascii").split("|", 3)
            return cls(int(seq), mac, file, when, valid)
        except ValueError:
            return None


def _anchor(cfg: Config) -> tuple[HsmConfig, str]:
    a = cfg.audit
    if a.anchor_hsm is None:
        raise ValueError("[audit] anchor_hsm is not set: the chain has no HSM anchor")
    hsm_cfg = next(h for h in cfg.hsms if h.name == a.anchor_hsm)
    return hsm_cfg, a.anchor_key_label


def ensure_key(cfg: Config) -> bool:
    """Generate the anchor key inside the HSM unless it exists (True: created)."""
    from hsm import audit_anchor

    hsm_cfg, label = _anchor(cfg)
    return audit_anchor.ensure_key(hsm_cfg, label)


def newest(cfg: Config) -> Checkpoint | None:
    """The newest checkpoint on the token (by seq), valid or not; None when there is none."""
    from hsm import audit_anchor

    hsm_cfg, label = _anchor(cfg)
    found = [
        cp
        for payload, good in audit_anchor.read_checkpoints(hsm_cfg, label)
        if (cp := Checkpoint.parse(payload, good)) is not None
    ]
    return max(found, key=lambda c: (c.seq, c.valid), default=None)


class Rollback(Exception):
    """The files end before the newest checkpoint: refuse to anchor a shorter chain."""


def write(cfg: Config) -> Checkpoint | None:
    """Checkpoint the live log's tip (under the audit lock, so it is a whole record).

    Returns the checkpoint, or None when the log is empty. Raises :class:`Rollback` when the
    tip is older than the newest checkpoint: anchoring it would hide the rollback."""
    from hsm import audit_anchor
    from xksproxy.observe.audit.writer import now_iso

    path = cfg.audit.file
    if path is None:
        raise ValueError("[audit] file is empty: the audit log is disabled")
    hsm_cfg, label = _anchor(cfg)
    before = newest(cfg)
    tip = _locked_tip(path)
    if tip is None:
        return None
    cp = Checkpoint(int(tip["seq"]), str(tip["mac"]), path.name, now_iso(), True)
    if before is not None and before.valid:
        problem = None
        if cp.seq < before.seq:
            problem = (
                f"{path} ends at seq {cp.seq}, before the HSM checkpoint of {before.time} "
                f"(seq {before.seq}): the log was rolled back or cut"
            )
        elif _record_mac(path, before.seq) not in (None, before.mac):
            problem = (
                f"record seq {before.seq} is not the one the HSM checkpoint of {before.time} "
                "anchors: the log was rolled back and written again"
            )
        if problem is not None:
            _record_rollback(cfg, before, problem)
            raise Rollback(problem)
    if before is not None and before.seq == cp.seq and before.mac == cp.mac:
        return before  # nothing new since the last checkpoint
    audit_anchor.write_checkpoint(hsm_cfg, cp.payload(), label)
    stamp = stamp_path(path)
    stamp.touch(mode=0o600)
    os.utime(stamp)
    return cp


def _locked_tip(path: Path) -> dict[str, Any] | None:
    """The last whole record of the live log, read under the writers' lock (not held longer:
    the HSM work happens after it is released)."""
    from xksproxy.observe.audit.writer import _read_tail

    lock_fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return _read_tail(fd)
        finally:
            os.close(fd)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def _record_mac(path: Path, seq: int) -> str | None:
    """The MAC of record ``seq`` in the live log or its rotated files (None: not found)."""
    import mmap

    import orjson

    needle = f'"seq":{seq},'.encode()
    for f in sorted(log_files(path), reverse=True):
        with f.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                continue
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                at = m.find(needle)
                if at < 0:
                    continue
                start = m.rfind(b"\n", 0, at) + 1
                end = m.find(b"\n", at)
                line = m[start : end if end >= 0 else len(m)]
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            rec = orjson.loads(line)
            if int(rec["seq"]) == seq:
                return str(rec["mac"])
    return None


def _record_rollback(cfg: Config, before: Checkpoint, problem: str) -> None:
    """A rollback is a cut: a signed gap on the chain and the alarm (workers refuse)."""
    from xksproxy.observe.audit.writer import AuditLog, gap_record

    assert cfg.audit.file is not None and cfg.audit.key is not None
    writer = AuditLog(cfg.audit.file, cfg.audit.key)
    try:
        writer.record_gap(
            gap_record("rolled-back", lost_tip=(before.seq, before.mac), detail=problem)
        )
    finally:
        writer.close()


class Scheduler:
    """In a worker: start the checkpoint process when the newest checkpoint is older than the
    interval (checked after a batch; cheap: one ``stat``)."""

    def __init__(self, config_path: Path, audit_file: Path, interval_s: float) -> None:
        self._config_path = config_path
        self._stamp = stamp_path(audit_file)
        self._interval_s = interval_s
        self._child: subprocess.Popen[bytes] | None = None
        self._next_check = 0.0

    def after_batch(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + min(5.0, self._interval_s)
        if self._child is not None:
            if self._child.poll() is None:
                return
            self._child = None
        try:
            age = time.time() - self._stamp.stat().st_mtime
        except FileNotFoundError:
            age = float("inf")
        if age < self._interval_s:
            return
        self._next_check = now + self._interval_s  # one attempt per interval, even if it fails
        self._child = subprocess.Popen(
            [sys.executable, "-m", "xksproxy.observe.audit.anchor", str(self._config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )

    def close(self) -> None:
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(10)


def main(argv: list[str]) -> int:
    """``python -m xksproxy.observe.audit.anchor CONFIG``: one checkpoint, unless another
    process is writing one right now (then exit 0 at once)."""
    import logging

    from xksproxy.config import load_config

    log = logging.getLogger("xksproxy.audit")
    cfg = load_config(Path(argv[0]))
    assert cfg.audit.file is not None
    lock = checkpoint_lock_path(cfg.audit.file)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        try:
            write(cfg)
        except Rollback as exc:
            log.error("audit: ROLLBACK: %s", exc)
            print(f"xksproxy: audit: ROLLBACK: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"xksproxy: audit: checkpoint failed: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
