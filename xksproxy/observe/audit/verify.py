"""Verify an audit chain spread over files: name the first record where it breaks.

Reports edited records (MAC wrong), inserted or reordered ones (``prev``/``seq`` out of line) and
deleted ones (``seq`` gap, ``prev`` mismatch, or the head's newest record missing) by file and
line. A live writer rewrites the head in place, so a head that does not parse or match its MAC
is re-read before it is reported.

**Strict by default.** A chain that does not start at seq 1 (leading files missing), a missing
head file, or a head that describes another file than the newest one given cannot prove the
chain is whole, so each is a failure with its reason; ``allow_partial`` turns them into notes
for an operator who knowingly checks a slice. Files deleted by retention (``[audit]
keep_files``) are not missing: the writer's signed ``retire`` record names them.

**Gaps.** A ``gap`` record is the writer's signed statement that records were lost (the file was
cut, replaced or could not be written). The chain may jump there — from the last record still
present to the gap, whose ``lostFromSeq`` names the first seq lost — and the gap is reported. An
``ack`` record later on the chain (``xksproxy audit acknowledge``) acknowledges every gap before
it: acknowledged gaps are notes, unacknowledged ones fail the verification.
"""

from __future__ import annotations

import contextlib
import hmac
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from xksproxy.observe.audit.chain import (
    ACK,
    GAP,
    GENESIS,
    RETIRE,
    RecordMac,
    head_mac,
    head_path,
    is_side_file,
)


@dataclass
class VerifyResult:
    ok: bool
    records: int
    message: str  # first problem found (file:line: what) or a summary
    notes: list[str]
    gaps: list[str] = field(default_factory=list)  # every gap found, as "file:line: what"
    unacknowledged: int = 0  # gaps with no ack record after them
    last_seq: int = 0


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


def _describe_gap(rec: dict[str, object], seq: int) -> str:
    reason = rec.get("gapReason", "?")
    parts = [f"GAP ({reason}) recorded as seq {seq}"]
    start = rec.get("lostFromSeq")
    if isinstance(start, int) and start < seq:
        parts.append(f"records seq {start}-{seq - 1} are lost")
    if isinstance(rec.get("lostTipSeq"), int):
        parts.append(f"newest lost record seq {rec['lostTipSeq']}")
    if isinstance(rec.get("lostCount"), int):
        parts.append(f"{rec['lostCount']} records could not be written")
    if rec.get("detail"):
        parts.append(str(rec["detail"]))
    return "; ".join(parts)


@dataclass(frozen=True)
class Anchor:
    """The newest HSM checkpoint: the files must hold record ``seq`` with MAC ``mac``."""

    seq: int
    mac: str
    time: str
    valid: bool = True  # its HSM MAC verified


def verify_files(
    files: Iterable[Path | str],
    key: bytes,
    *,
    allow_partial: bool = False,
    anchor: Anchor | None = None,
) -> VerifyResult:
    """Check one chain spread over ``files`` (any order; sorted by their first ``seq``).

    Reports the first record that was edited (MAC wrong), inserted/reordered (``prev`` or ``seq``
    out of line), deleted (``seq`` gap / ``prev`` mismatch / head not found) by file and line,
    every ``gap`` record, and (unless ``allow_partial``) a start or an end it cannot prove.
    """
    notes: list[str] = []
    gaps: list[str] = []
    pending_gaps = 0  # gaps since the last ack
    loaded: list[tuple[Path, list[tuple[int, bytes]]]] = []
    for f in files:
        p = Path(f)
        if is_side_file(p):
            notes.append(f"{p}: skipped (not a log file)")
            continue
        loaded.append((p, _load_lines(p)))
    loaded.sort(key=lambda item: _first_seq(item[1]))
    count = 0
    record_mac = RecordMac(key).of_record
    prev_mac: str | None = None
    prev_seq: int | None = None
    prev_name: str | None = None
    # A start that continues earlier files: accepted if a retire record explains it.
    partial_start: tuple[str, str, int] | None = None  # (where, prevFile, seq)
    retired: set[tuple[str, int]] = set()
    anchored = False
    try:
        if not loaded:
            raise _Broken("no audit log files to verify")
        if anchor is not None and not anchor.valid:
            raise _Broken(
                f"the newest HSM checkpoint (seq {anchor.seq}) has a wrong HSM MAC: forged"
            )
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
                if not hmac.compare_digest(record_mac(rec), mac):
                    raise _Broken(f"{where}: record seq {seq} was edited (MAC does not match)")
                event = rec.get("event")
                if event == GAP:
                    _check_gap(where, rec, seq, prev, prev_seq, prev_mac)
                    gaps.append(f"{where}: {_describe_gap(rec, seq)}")
                    pending_gaps += 1
                if prev_mac is None:
                    if event == GAP and prev == GENESIS:
                        pass  # the writer restarted the chain and said so
                    elif prev != GENESIS or seq != 1:
                        if first_in_file and "prevFile" in rec:
                            partial_start = (where, str(rec["prevFile"]), seq)
                        else:
                            raise _Broken(
                                f"{where}: record seq {seq} does not start the chain "
                                "(records before it were deleted)"
                            )
                elif event != GAP:
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
                if event == ACK:
                    if pending_gaps:
                        notes.append(
                            f"{where}: {pending_gaps} gap(s) acknowledged by "
                            f"{rec.get('operator', '?')}: {rec.get('reason', '')}"
                        )
                    pending_gaps = 0
                elif event == RETIRE and isinstance(rec.get("keptFromSeq"), int):
                    retired.add((str(rec.get("retiredThrough")), int(rec["keptFromSeq"])))
                if anchor is not None and seq == anchor.seq:
                    if not hmac.compare_digest(mac, anchor.mac):
                        raise _Broken(
                            f"{where}: record seq {seq} is not the one the HSM checkpoint of "
                            f"{anchor.time} anchors: the chain was rewritten"
                        )
                    anchored = True
                prev_mac, prev_seq = mac, seq
                first_in_file = False
                count += 1
            prev_name = path.name
        if anchor is not None and not anchored:
            last = prev_seq or 0
            if last < anchor.seq:
                raise _Broken(
                    f"ROLLBACK: the files end at seq {last}, but the HSM checkpoint of "
                    f"{anchor.time} anchors seq {anchor.seq}: records were rolled back or cut"
                )
            _partial(
                f"the HSM checkpoint's record seq {anchor.seq} is not in the files given",
                allow_partial,
                notes,
            )
        if partial_start is not None:
            where, prev_file, seq = partial_start
            if (prev_file, seq) in retired:
                notes.append(
                    f"{where}: starts after {prev_file}, deleted by retention (keep_files)"
                )
            else:
                _partial(
                    f"{where}: the chain continues from {prev_file}, which was not given "
                    "(earlier files missing)",
                    allow_partial,
                    notes,
                )
        _check_head(loaded[-1][0], loaded[-1][1], key, notes, allow_partial)
    except _Broken as exc:
        return VerifyResult(False, count, str(exc), notes, gaps, pending_gaps, prev_seq or 0)
    if pending_gaps:
        return VerifyResult(
            False,
            count,
            f"{pending_gaps} unacknowledged gap(s) in the chain (first: {gaps[-pending_gaps]}); "
            "after investigating, run 'xksproxy audit acknowledge --reason TEXT'",
            notes,
            gaps,
            pending_gaps,
            prev_seq or 0,
        )
    summary = f"OK: {count} records, chain intact"
    if gaps:
        summary += f" ({len(gaps)} acknowledged gap(s))"
    return VerifyResult(True, count, summary, notes, gaps, 0, prev_seq or 0)


def _check_gap(
    where: str,
    rec: dict[str, object],
    seq: int,
    prev: str,
    prev_seq: int | None,
    prev_mac: str | None,
) -> None:
    """A gap may jump the seq, but must chain to the last record present before it (or, when
    its writer knew nothing before it, to GENESIS) and name the first seq it says is lost."""
    if prev == GENESIS or prev_mac is None or prev_seq is None:
        return  # a restart (nothing on disk to chain to), or the start of what is verified
    lost_from = rec.get("lostFromSeq")
    if prev != prev_mac or not isinstance(lost_from, int) or lost_from != prev_seq + 1:
        raise _Broken(f"{where}: gap record seq {seq} does not chain to the record before it")
    if seq <= prev_seq:
        raise _Broken(f"{where}: gap record seq {seq}: out of order")


def _partial(reason: str, allow_partial: bool, notes: list[str]) -> None:
    if allow_partial:
        notes.append(f"{reason} (--allow-partial)")
        return
    raise _Broken(f"{reason}; give every file, or --allow-partial to check a slice")


def _check_head(
    path: Path,
    lines: list[tuple[int, bytes]],
    key: bytes,
    notes: list[str],
    allow_partial: bool,
) -> None:
    """The head file beside the newest log names the last record written: it must be there."""
    hp = head_path(path)
    if not hp.exists():
        _partial(
            f"{path}: no {hp.name} beside it: the newest records could have been cut unseen",
            allow_partial,
            notes,
        )
        return
    good: bool | None = None
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
        _partial(
            f"{hp}: describes {name}, not {path.name}: the newest file was not given",
            allow_partial,
            notes,
        )
        return
    last_seq = 0
    for _, raw in lines:
        found = _seq_and_mac(raw)
        if found is None:  # a bad line is reported by the chain walk, not here
            continue
        rec_seq, rec_mac = found
        if rec_seq == seq:
            if rec_mac != mac:
                raise _Broken(f"{path}: record seq {seq} differs from the head record")
            return
        last_seq = max(last_seq, rec_seq)
    raise _Broken(
        f"{path}:{len(lines) + 1}: records after seq {last_seq} were deleted "
        f"(the head says seq {seq} was written)"
    )


def _seq_and_mac(raw: bytes) -> tuple[int, str] | None:
    """A record line's ``seq`` and ``mac``, or None for a line that is not a record."""
    with contextlib.suppress(Exception):
        rec = orjson.loads(raw)
        return int(rec["seq"]), str(rec["mac"])
    return None
