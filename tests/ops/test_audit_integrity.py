"""Audit trail hardening (issue 17, items 1, 3, 4): a cut chain is never repaired silently, a
verify is strict about what it cannot prove, and write failures are counted onto the chain.

The writer is driven directly (no server): the live, multi-worker version of the same attack is
``test_audit_gap_live.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from xksproxy.observe.audit import (
    AuditLog,
    alarm_path,
    append_event,
    head_path,
    log_files,
    main_verify,
    verify_files,
)
from xksproxy.observe.audit import chain as chain_mod
from xksproxy.observe.audit import writer as writer_mod

KEY = bytes(range(32))


def _rec(i: int) -> dict:
    return {"kmsRequestId": f"req-{i}", "kmsOperation": "Encrypt", "outcome": "ok", "status": 200}


def _records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _gaps(path: Path) -> list[dict]:
    return [r for r in _records(path) if r.get("event") == "gap"]


def _log(path: Path, **kw) -> AuditLog:
    log = AuditLog(path, KEY, **kw)
    log.start(watch_interval_s=0.02)
    return log


def _write(log: AuditLog, start: int, n: int) -> None:
    for i in range(start, start + n):
        log.record(_rec(i))
    log.flush()


def _wait(cond, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "xksproxy-audit.log"


def _cut_tail(path: Path, keep: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep]))  # same inode, shorter: what `truncate` does


@pytest.mark.parametrize("attack", ["truncate", "delete", "replace_with_older_copy"])
def test_running_writer_records_a_cut_as_a_gap_and_refuses_until_acknowledged(path, attack, capsys):
    gaps_seen: list[str] = []
    log = _log(path, on_gap=gaps_seen.append)
    try:
        _write(log, 0, 5)
        older = path.read_bytes()
        _write(log, 5, 5)  # seq 1-10 written and remembered
        assert log.integrity_ok
        if attack == "truncate":
            _cut_tail(path, 5)
        elif attack == "delete":
            path.unlink()
        else:
            tmp = path.with_name("copy.tmp")
            tmp.write_bytes(older)
            os.replace(tmp, path)  # another inode with the first 5 records
        _write(log, 10, 3)
        gaps = _gaps(path)
        assert len(gaps) == 1, _records(path)
        gap = gaps[0]
        reason = {"truncate": "truncated", "delete": "missing"}.get(attack, "replaced")
        assert gap["gapReason"] == reason
        assert gap["lostTipSeq"] == 10  # the newest record this writer wrote and found gone
        assert gap["seq"] == 11  # seqs of lost records are never reused
        assert gap["lostFromSeq"] == (1 if attack == "delete" else 6)
        assert gaps_seen == [reason]
        assert _records(path)[-1]["seq"] == 14  # the 3 new records follow the gap
        assert alarm_path(path).exists()
        assert not log.integrity_ok  # refuse Encrypt/Decrypt
        # verify: the gap is shown, and unacknowledged it fails the check
        res = verify_files([path], KEY)
        assert not res.ok and res.unacknowledged == 1, res.message
        assert f"GAP ({reason})" in res.gaps[0]
        assert main_verify([str(path)], key=KEY) == 1
        # the operator acknowledges; every writer watching the alarm resumes
        ack = AuditLog(path, KEY)
        assert ack.acknowledge("restored from backup, ticket 4711", "alice") == 15
        ack.close()
        assert not alarm_path(path).exists()
        assert _wait(lambda: log.integrity_ok)
        _write(log, 13, 2)
        res = verify_files([path], KEY)
        assert res.ok, res.message
        assert res.gaps and any("acknowledged by alice" in n for n in res.notes)
        assert main_verify([str(path)], key=KEY) == 0
        assert "ticket 4711" in capsys.readouterr().out
    finally:
        log.close()


def test_other_writers_appending_and_rotating_are_no_gap(path):
    a, b = _log(path, rotate_bytes=1500), _log(path, rotate_bytes=1500)
    try:
        for i in range(30):  # alternate: each sees the other's appends and rotations
            _write(a if i % 2 else b, i * 2, 2)
            if i == 10:
                append_event(path, KEY, "key-state", {"keyId": "demo", "toState": "disabled"})
    finally:
        a.close()
        b.close()
    files = log_files(path)
    assert len(files) >= 3
    assert not any(_gaps(f) for f in files)
    assert not alarm_path(path).exists()
    res = verify_files(files, KEY)
    assert res.ok, res.message
    assert res.records == 61
    events = [r for f in files for r in _records(f) if r.get("event") == "key-state"]
    assert events and events[0]["keyId"] == "demo"


def test_truncated_then_refilled_by_another_writer_is_still_a_cut(path):
    a, b = _log(path), _log(path)
    try:
        _write(a, 0, 6)
        _cut_tail(path, 2)
        _write(b, 6, 20)  # b has no memory: it starts from the head, which names seq 6
        assert [g["gapReason"] for g in _gaps(path)] == ["cut-before-start"]
        _write(a, 30, 1)  # a's bytes at its offset are not its tip any more, though larger
        assert [g["gapReason"] for g in _gaps(path)] == ["cut-before-start", "truncated"]
    finally:
        a.close()
        b.close()
    res = verify_files([path], KEY)
    assert not res.ok and res.unacknowledged == 2


def test_a_fresh_writer_finds_a_cut_made_while_nobody_wrote(path):
    log = _log(path)
    _write(log, 0, 8)
    log.close()
    _cut_tail(path, 3)
    seq = append_event(path, KEY, "operator-note", {"text": "after the cut"})
    gap = _gaps(path)[0]
    assert gap["gapReason"] == "cut-before-start" and gap["lostTipSeq"] == 8
    assert gap["lostFromSeq"] == 4 and gap["seq"] == 9 and seq == 10
    assert alarm_path(path).exists()


def test_events_are_checked_before_anything_is_written(path):
    for kind, fields in [
        ("gap", {}),  # the writer's own kinds
        ("ack", {}),
        ("Bad Kind", {}),
        ("note", {"seq": 3}),  # a chain field
        ("note", {"nested": {"a": 1}}),
        ("note", {"text": "line\nbreak"}),
    ]:
        with pytest.raises(ValueError):
            append_event(path, KEY, kind, fields)
    assert not path.exists() or path.read_bytes() == b""


def _fail_writes(monkeypatch, err: int = errno.ENOSPC) -> None:
    def failing(fd: int, data: bytes) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(writer_mod, "_write_fd", failing)


def test_write_errors_are_counted_carried_and_refused(path, monkeypatch):
    lost: list[int] = []
    drops: list[int] = []
    log = AuditLog(path, KEY, queue_size=3, on_lost=lost.append, on_drop=drops.append)
    for i in range(5):  # not started: 3 queued, 2 dropped (queue full)
        log.record(_rec(i))
    _fail_writes(monkeypatch)
    log.start(watch_interval_s=0.02)
    try:
        log.flush()
        assert log.lost_total == 3 and sum(lost) == 3
        assert not log.writer_ok and not log.integrity_ok  # the request path refuses at once
        assert not path.exists() or path.read_bytes() == b""  # nothing torn left behind
        monkeypatch.undo()  # the disk has room again
        _write(log, 10, 2)
        recs = _records(path)
        gap = recs[0]
        assert gap["event"] == "gap" and gap["gapReason"] == "write-failed"
        assert gap["lostCount"] == 3
        assert recs[1]["droppedBefore"] == 2  # the drops of the failed batch were not lost
        assert [r.get("kmsRequestId") for r in recs[1:]] == ["req-10", "req-11"]
        assert log.writer_ok and not log.integrity_ok  # written again, but the gap needs an ack
        res = verify_files([path], KEY)
        assert not res.ok and "3 records could not be written" in res.gaps[0]
    finally:
        log.close()


def test_enospc_on_a_small_tmpfs(tmp_path):
    """The real thing: a 1 MiB tmpfs fills up mid-batch; no torn line, every record counted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        path = mnt / "xksproxy-audit.log"
        log = _log(path)
        try:
            pad = "x" * 900
            sent = 0
            while log.lost_total == 0 and sent < 5000:
                for _ in range(50):
                    log.record({**_rec(sent), "principal": pad})
                    sent += 1
                log.flush()
            assert log.lost_total > 0 and not log.integrity_ok
            on_disk = [r for r in _records(path) if "kmsRequestId" in r]
            assert len(on_disk) + log.lost_total + log.dropped_total == sent
            assert path.read_bytes().endswith(b"\n")  # the failed batch was cut back whole
            _cut_tail(path, 10)  # an operator frees space by cutting the log: also a gap
            _write(log, 9000, 1)
            reasons = {g["gapReason"] for g in _gaps(path)}
            assert {"truncated", "write-failed"} <= reasons
        finally:
            log.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- strict verify (item 3) -----------------------------------------------------------------------


def _chain(path: Path, n: int, **kw) -> None:
    log = _log(path, **kw)
    for i in range(n):
        log.record(_rec(i))
        if kw.get("rotate_bytes"):
            log.flush()
    log.close()


def test_verify_is_strict_about_a_missing_head(path, capsys):
    _chain(path, 5)
    head_path(path).unlink()
    res = verify_files([path], KEY)
    assert not res.ok and "no xksproxy-audit.log.head" in res.message
    assert main_verify([str(path)], key=KEY) == 1
    assert main_verify([str(path)], key=KEY, allow_partial=True) == 0
    assert "--allow-partial" in capsys.readouterr().out


def test_verify_names_a_head_whose_record_mac_differs(path):
    """The head names a record that is in the file with another MAC (a rewritten record with a
    re-signed head): verify says so, not that records were deleted."""
    _chain(path, 5)
    head = orjson.loads(head_path(path).read_bytes())
    forged = "0" * len(head["mac"])
    head.update(mac=forged, headMac=chain_mod.head_mac(KEY, head["file"], head["seq"], forged))
    head_path(path).write_bytes(orjson.dumps(head))
    res = verify_files([path], KEY)
    assert not res.ok
    assert f"record seq {head['seq']} differs from the head record" in res.message


def test_verify_skips_every_side_file_a_glob_picks_up(path):
    _chain(path, 5)
    chain_mod.stamp_path(path).touch()  # an HSM checkpoint's stamp, as `*.log*` would match
    files = sorted(path.parent.glob(path.name + "*"))
    assert chain_mod.stamp_path(path) in files and head_path(path) in files
    assert verify_files(files, KEY).ok


def test_verify_is_strict_about_missing_earlier_files(path):
    _chain(path, 40, rotate_bytes=1200)
    files = log_files(path)
    assert len(files) >= 3
    assert verify_files(files, KEY).ok
    res = verify_files(files[1:], KEY)
    assert not res.ok and "earlier files missing" in res.message
    assert verify_files(files[1:], KEY, allow_partial=True).ok
    # the newest file left out: nothing shows the newest rotated file was not cut
    res = verify_files(files[:-1], KEY)
    assert not res.ok and ".head beside it" in res.message


def test_retention_keeps_files_and_says_what_it_deleted(path):
    _chain(path, 80, rotate_bytes=1200, keep_files=2)
    files = log_files(path)
    assert len(files) == 3  # two rotated + the live one
    res = verify_files(files, KEY)
    assert res.ok, res.message
    assert any("deleted by retention" in n for n in res.notes)
    retires = [r for f in files for r in _records(f) if r.get("event") == "retire"]
    assert retires and retires[-1]["retiredFiles"] >= 1


def test_verify_without_files_reads_the_configured_log(tmp_path, capsys):
    from xksproxy.admin import embedded

    state = tmp_path / "state"
    embedded.init(state)
    from xksproxy.config import load_config

    cfg = load_config(state / "xksproxy.toml")
    assert cfg.audit.refuse_on_gap and cfg.audit.keep_files == 16
    _chain_key = cfg.audit.key
    log = AuditLog(cfg.audit.file, _chain_key)
    log.start()
    _write(log, 0, 4)
    log.close()
    assert main_verify([], config_path=state / "xksproxy.toml", json_out=True) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["records"] == 4 and doc["files"] == [str(cfg.audit.file)]


def test_doctor_reports_an_unacknowledged_gap_and_the_disk_space(tmp_path):
    from xksproxy.admin import audit_doctor, doctor, embedded
    from xksproxy.config import load_config

    state = tmp_path / "state"
    embedded.init(state)
    config = state / "xksproxy.toml"
    cfg = load_config(config)
    log = AuditLog(cfg.audit.file, cfg.audit.key)
    log.start()
    _write(log, 0, 4)
    log.close()
    _cut_tail(cfg.audit.file, 2)
    append_event(cfg.audit.file, cfg.audit.key, "operator-note", {"text": "x"})  # finds the cut
    checks = {c.name: c for c in doctor.run_checks(config, hsm=False).checks}
    assert checks["audit integrity"].status == doctor.FAIL
    assert "acknowledge" in checks["audit integrity"].fix
    space = checks["audit disk space"]
    free = audit_doctor.free_bytes(cfg.audit.file.parent)
    warn_at = max(audit_doctor.DISK_WARN_BYTES, 2 * cfg.audit.rotate_bytes)
    assert space.status == (doctor.OK if free >= warn_at else doctor.WARN)
    assert "MiB free" in space.detail


def test_a_failed_write_after_others_appended_is_not_mistaken_for_a_cut(path, monkeypatch):
    a, b = _log(path), _log(path)
    try:
        _write(a, 0, 2)
        _write(b, 2, 2)
        _fail_writes(monkeypatch)
        _write(a, 4, 1)  # a re-read b's tip, then its write failed
        monkeypatch.undo()
        _write(b, 5, 2)
        _write(a, 7, 1)
        assert [g["gapReason"] for g in _gaps(path)] == ["write-failed"]
    finally:
        a.close()
        b.close()


def test_a_gap_whose_alarm_was_removed_by_hand_can_still_be_acknowledged(path):
    log = _log(path)
    try:
        _write(log, 0, 4)
        _cut_tail(path, 1)
        _write(log, 4, 1)
        alarm_path(path).unlink()  # lifts the refusal, but the gap stays unacknowledged
        assert _wait(lambda: log.integrity_ok)
        assert verify_files([path], KEY).unacknowledged == 1
        ack = AuditLog(path, KEY)
        assert ack.acknowledge("alarm removed during the incident", "bob") is not None
        assert ack.acknowledge("nothing left", "bob") is None  # idempotent: nothing to ack
        ack.close()
        assert verify_files([path], KEY).ok
    finally:
        log.close()


def test_a_request_record_that_cannot_be_built_is_a_counted_drop(path, caplog):
    """A bug in building one request's record loses that record, never the batch: it is counted
    on the chain (droppedBefore), in on_drop (the metric) and logged with its traceback."""
    import logging

    from xksproxy.observe.requestlog import RequestContext

    def record_of(ctx: RequestContext) -> dict:
        if ctx.kms_request_id == "bad":
            raise ValueError("no record for this one")
        return {"kmsRequestId": ctx.kms_request_id, "outcome": "ok"}

    drops: list[int] = []
    log = AuditLog(path, KEY, request_record=record_of, on_drop=drops.append)
    now = time.monotonic()
    for rid in ("good-1", "bad", "good-2"):
        log.enqueue_request(RequestContext(now, now + 1, kms_request_id=rid))
    with caplog.at_level(logging.ERROR, logger="xksproxy.audit"):
        log.start()
        try:
            log.flush()
        finally:
            log.close()
    recs = [r for r in _records(path) if "kmsRequestId" in r]
    assert [r["kmsRequestId"] for r in recs] == ["good-1", "good-2"]
    assert recs[0]["droppedBefore"] == 1 and drops == [1]
    assert "no record for this one" in caplog.text  # the traceback says what to fix
    assert verify_files([path], KEY).ok
