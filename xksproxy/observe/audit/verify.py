"""Verify an audit chain spread over files: name the first record where it breaks.

Reports edited records (MAC wrong), inserted or reordered ones (``prev``/``seq`` out of line) and
deleted ones (``seq`` gap, ``prev`` mismatch, or the head's newest record missing) by file and
line. A live writer rewrites the head in place, so a head that does not parse or match its MAC
is re-read before it is reported.
"""

from __future__ import annotations

import contextlib
import hmac
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from xksproxy.observe.audit.chain import GENESIS, compute_mac, head_mac, head_path


@dataclass
class VerifyResult:
    ok: bool
    records: int
    message: str  # first problem found (file:line: what) or a summary
    notes: list[str]


class _Broken(Exception):
    pass


def _load_lines(path: Path) -> list[tuple[int, bytes]]:
    with path.open("rb") as fh:
        return [(i, line.rstrip(b"\n")) for i, line in enumerate(fh, start=1)]


def _first_seq(lines: list[tuple[int, bytes]]) -> int:
    for _, raw in lines:
        with contextlib.suppress(Exception):
            return int(orjson.loads(raw)["seq"])
    return sys.maxsize


def verify_files(files: Iterable[Path | str], key: bytes) -> VerifyResult:
    """Check one chain spread over ``files`` (any order; sorted by their first ``seq``).

    Reports the first record that was edited (MAC wrong), inserted/reordered (``prev`` or ``seq``
    out of line), deleted (``seq`` gap / ``prev`` mismatch / head not found) by file and line.
    """
    notes: list[str] = []
    loaded: list[tuple[Path, list[tuple[int, bytes]]]] = []
    for f in files:
        p = Path(f)
        if p.name.endswith((".head", ".lock")) or p.name.endswith(".tmp"):
            notes.append(f"{p}: skipped (not a log file)")
            continue
        loaded.append((p, _load_lines(p)))
    loaded.sort(key=lambda item: _first_seq(item[1]))
    count = 0
    prev_mac: str | None = None
    prev_seq: int | None = None
    prev_name: str | None = None
    try:
        for path, lines in loaded:
            first_in_file = True
            for lineno, raw in lines:
                where = f"{path}:{lineno}"
                if not raw.strip():
                    raise _Broken(f"{where}: empty or torn line")
                try:
                    rec = orjson.loads(raw)
                    seq = int(rec["seq"])
                    mac = str(rec["mac"])
                    prev = str(rec["prev"])
                except Exception as exc:
                    raise _Broken(f"{where}: not an audit record ({type(exc).__name__})") from None
                if not hmac.compare_digest(compute_mac(key, rec), mac):
                    raise _Broken(f"{where}: record seq {seq} was edited (MAC does not match)")
                if prev_mac is None:
                    if prev != GENESIS or seq != 1:
                        if first_in_file and "prevFile" in rec:
                            notes.append(
                                f"{where}: chain continues from {rec['prevFile']} (not given)"
                            )
                        else:
                            raise _Broken(
                                f"{where}: record seq {seq} does not start the chain "
                                "(records before it were deleted)"
                            )
                else:
                    assert prev_seq is not None
                    if seq != prev_seq + 1 or prev != prev_mac:
                        if seq > prev_seq + 1:
                            what = f"expected seq {prev_seq + 1}: records were deleted or reordered"
                        elif seq <= prev_seq:
                            what = "out of order: it was inserted or moved here"
                        else:
                            what = "it does not chain to the record before it (inserted/replaced)"
                        raise _Broken(f"{where}: record seq {seq}: {what}")
                    if first_in_file and rec.get("prevFile") not in (None, prev_name):
                        notes.append(f"{where}: names previous file {rec['prevFile']}")
                prev_mac, prev_seq = mac, seq
                first_in_file = False
                count += 1
            prev_name = path.name
        if loaded:
            _check_head(loaded[-1][0], loaded[-1][1], key, notes)
    except _Broken as exc:
        return VerifyResult(False, count, str(exc), notes)
    return VerifyResult(True, count, f"OK: {count} records, chain intact", notes)


def _check_head(path: Path, lines: list[tuple[int, bytes]], key: bytes, notes: list[str]) -> None:
    """The head file beside the newest log names the last record written: it must be there."""
    hp = head_path(path)
    if not hp.exists():
        notes.append(f"{path}: no {hp.name} beside it; truncation of the newest records unchecked")
        return
    for attempt in range(3):  # a live writer rewrites the head in place: re-read a torn one
        if attempt:
            time.sleep(0.05)
        try:
            head = orjson.loads(hp.read_bytes())
            seq, mac, name = int(head["seq"]), str(head["mac"]), str(head["file"])
            good = hmac.compare_digest(head_mac(key, name, seq, mac), str(head["headMac"]))
        except Exception:
            good = None
        if good:
            break
    if good is None:
        raise _Broken(f"{hp}: unreadable head record") from None
    if not good:
        raise _Broken(f"{hp}: head record was edited (MAC does not match)")
    if name != path.name:
        notes.append(f"{hp}: describes {name}, not {path.name}; truncation unchecked")
        return
    last_seq = 0
    for _, raw in lines:
        with contextlib.suppress(Exception):
            rec = orjson.loads(raw)
            if int(rec["seq"]) == seq:
                if rec["mac"] != mac:
                    raise _Broken(f"{path}: record seq {seq} differs from the head record")
                return
            last_seq = max(last_seq, int(rec["seq"]))
    raise _Broken(
        f"{path}:{len(lines) + 1}: records after seq {last_seq} were deleted "
        f"(the head says seq {seq} was written)"
    )
