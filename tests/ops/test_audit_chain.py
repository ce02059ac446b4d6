"""Audit log: chained records survive rotation and restarts; any tampering is reported."""

from __future__ import annotations

import hmac
import multiprocessing
from pathlib import Path

import orjson
import pytest

from xksproxy.observe.audit import AuditLog, main_verify, verify_files

KEY = bytes(range(32))


def _rec(i: int) -> dict:
    return {
        "kmsRequestId": f"req-{i}",
        "kmsOperation": "Encrypt",
        "principal": "arn:aws:iam::111122223333:user/alice",
        "keystore": "demo",
        "keyId": "demo",
        "outcome": "ok",
        "status": 200,
        "latencyMs": 1.25,
        "token": "softhsm-0",
    }


def _write(path: Path, n: int, *, start: int = 0, rotate: int = 0) -> None:
    log = AuditLog(path, KEY, rotate)
    log.start()
    for i in range(start, start + n):
        log.record(_rec(i))
    log.close()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.suffix == ".log")


def test_clean_log_verifies_and_resumes_after_restart(tmp_path, capsys):
    path = tmp_path / "audit" / "xksproxy-audit.log"
    _write(path, 20)
    _write(path, 5, start=20)  # a "restart": new writer resumes the chain from disk
    res = verify_files([path], KEY)
    assert res.ok, res.message
    assert res.records == 25
    assert main_verify([str(path)], key=KEY) == 0
    assert "25 records" in capsys.readouterr().out
    assert (path.stat().st_mode & 0o077) == 0


def test_each_mac_is_hmac_sha256_of_the_sorted_record_chained_by_prev(tmp_path):
    """The documented format, checked with the standard library's one-shot HMAC (not the
    writer's own code): mac = HMAC-SHA256(key, the record without "mac", keys sorted, compact
    JSON), and each record's prev is the mac before it (the first: 64 zeros)."""
    path = tmp_path / "a-audit.log"
    _write(path, 3)
    prev = "0" * 64
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        mac = rec.pop("mac")
        body = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)
        assert mac == hmac.digest(KEY, body, "sha256").hex()
        assert rec["prev"] == prev
        prev = mac


def test_only_allowed_fields_are_written(tmp_path):
    path = tmp_path / "a-audit.log"
    log = AuditLog(path, KEY)
    log.start()
    log.record(
        {
            **_rec(0),
            "plaintext": "SECRET-PLAINTEXT",
            "aad": "SECRET-AAD",
            "authorization": "AWS4-HMAC-SHA256 Credential=...",
        }
    )
    log.close()
    text = path.read_text()
    assert "SECRET" not in text and "AWS4-HMAC" not in text
    assert "SECRET" not in repr(log) and KEY.hex() not in repr(log)


@pytest.mark.parametrize(
    "attack", ["edit", "delete", "insert", "swap", "delete_first", "delete_last", "duplicate"]
)
def test_tampering_is_reported_with_file_and_line(tmp_path, attack, capsys):
    path = tmp_path / "xksproxy-audit.log"
    _write(path, 10)
    lines = path.read_bytes().splitlines(keepends=True)
    if attack == "edit":
        rec = orjson.loads(lines[4])
        rec["principal"] = "arn:aws:iam::111122223333:user/mallory"
        lines[4] = orjson.dumps(rec) + b"\n"
    elif attack == "delete":
        del lines[4]
    elif attack == "insert":
        lines.insert(4, lines[7])
    elif attack == "swap":
        lines[4], lines[5] = lines[5], lines[4]
    elif attack == "delete_first":
        del lines[0]
    elif attack == "delete_last":
        del lines[-1]
    elif attack == "duplicate":
        lines.insert(5, lines[4])
    path.write_bytes(b"".join(lines))
    res = verify_files([path], KEY)
    assert not res.ok
    assert str(path) in res.message
    assert main_verify([str(path)], key=KEY) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out
    expected_line = {
        "edit": 5,
        "delete": 5,
        "insert": 5,
        "swap": 5,
        "delete_first": 1,
        "delete_last": 10,
        "duplicate": 6,
    }[attack]
    assert f"{path}:{expected_line}:" in res.message


def test_wrong_key_is_rejected(tmp_path):
    path = tmp_path / "xksproxy-audit.log"
    _write(path, 3)
    assert not verify_files([path], bytes(32)).ok


def test_rotation_keeps_the_chain(tmp_path):
    path = tmp_path / "xksproxy-audit.log"
    for batch in range(6):  # separate writers so each batch may rotate
        _write(path, 10, start=batch * 10, rotate=1500)
    files = _files(path)
    assert len(files) >= 3
    res = verify_files(files, KEY)
    assert res.ok, res.message
    assert res.records == 60
    # every rotated file's successor names it and chains to its last MAC
    newest = orjson.loads(path.read_bytes().splitlines()[0])
    assert newest.get("prevFile") in {f.name for f in files}
    # deleting a whole rotated file in the middle breaks the chain
    middle = sorted(files, key=lambda f: orjson.loads(f.read_bytes().splitlines()[0])["seq"])[1]
    rest = [f for f in files if f != middle]
    assert not verify_files(rest, KEY).ok


def _worker(path: str, idx: int) -> None:
    _write(Path(path), 200, start=idx * 1000)


def test_several_processes_share_one_unbroken_chain(tmp_path):
    path = tmp_path / "xksproxy-audit.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    res = verify_files([path], KEY)
    assert res.ok, res.message
    assert res.records == 800


def test_full_queue_drops_are_counted_and_signed(tmp_path):
    path = tmp_path / "xksproxy-audit.log"
    drops: list[int] = []
    log = AuditLog(path, KEY, queue_size=5, on_drop=drops.append)
    # not started: the queue fills up and further records are dropped, never blocking
    for i in range(8):
        log.record(_rec(i))
    assert log.dropped_total == 3 and sum(drops) == 3
    log.start()
    log.record(_rec(99))
    log.close()
    recs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(recs) == 6
    assert any(r.get("droppedBefore") == 3 for r in recs)
    assert verify_files([path], KEY).ok
