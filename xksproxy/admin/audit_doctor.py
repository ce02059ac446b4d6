"""``doctor``'s audit-trail checks beyond "the chain verifies": an unacknowledged gap (the proxy
is refusing Encrypt/Decrypt), and the free disk space the audit log has left.

Why disk space here: when the audit file system fills up, records cannot be written and the
proxy refuses Encrypt/Decrypt (an audited operation must never succeed unrecorded), so a disk
filling up is an outage in the making; doctor says so before it happens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xksproxy.admin.doctor import FAIL, OK, WARN, Report

#: Below this many free bytes doctor FAILs (a batch or a rotation may not fit).
DISK_FAIL_BYTES = 64 * 1024 * 1024
#: Doctor WARNs below the larger of this and two rotations' worth of audit data.
DISK_WARN_BYTES = 512 * 1024 * 1024


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check_audit_integrity(report: Report, config: Any) -> None:
    """An alarm file means a recorded gap nobody acknowledged: the proxy refuses crypto."""
    a = config.audit
    if a.file is None:
        return
    from xksproxy.observe.audit import alarm_path

    alarm = alarm_path(Path(a.file))
    if alarm.exists():
        report.add(
            "audit integrity",
            FAIL,
            f"{alarm.name}: a gap on the audit chain is not acknowledged"
            + ("; Encrypt/Decrypt are refused" if a.refuse_on_gap else ""),
            "investigate (xksproxy audit verify), then xksproxy audit acknowledge --reason TEXT",
        )
    else:
        report.add("audit integrity", OK, "no unacknowledged gap")


def check_audit_disk(report: Report, config: Any) -> None:
    a = config.audit
    if a.file is None:
        return
    directory = Path(a.file).parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    free = free_bytes(directory)
    warn_at = max(DISK_WARN_BYTES, 2 * int(a.rotate_bytes))
    detail = f"{free // (1024 * 1024)} MiB free on {directory}"
    fix = "free space or ship rotated files off the host; lower [audit] keep_files"
    if free < DISK_FAIL_BYTES:
        report.add("audit disk space", FAIL, detail + " (audit writes will fail)", fix)
    elif free < warn_at:
        report.add("audit disk space", WARN, f"{detail} (< {warn_at // (1024 * 1024)} MiB)", fix)
    else:
        report.add("audit disk space", OK, detail)


def check_audit_anchor(report: Report, config: Any) -> None:
    """Without an HSM anchor (the file-key mode of older configs) a rollback of log and head
    together verifies as intact; with one, the key must exist and checkpoints be recent."""
    a = config.audit
    if a.file is None:
        return
    if a.anchor_hsm is None:
        from xksproxy.admin.embedded import is_embedded_default

        # The embedded default is for evaluation on a software token: reported, not warned, as
        # the demo keys are (the operator did not choose it; production configs get the WARN).
        report.add(
            "audit anchor",
            OK if is_embedded_default(config) else WARN,
            "no HSM anchor: log and head rolled back together would verify as intact"
            + (" (embedded evaluation default)" if is_embedded_default(config) else ""),
            "set [audit] anchor_hsm = NAME, then xksproxy audit checkpoint --create-key",
        )
        return
    from xksproxy.observe.audit import anchor

    cp = anchor.newest(config)
    if cp is None:
        report.add(
            "audit anchor",
            WARN,
            f"[[hsm]] {a.anchor_hsm}: no checkpoint yet",
            "xksproxy audit checkpoint --create-key",
        )
    elif not cp.valid:
        report.add(
            "audit anchor",
            FAIL,
            f"[[hsm]] {a.anchor_hsm}: the newest checkpoint (seq {cp.seq}) has a wrong MAC",
            "investigate: a checkpoint object on the token was forged",
        )
    else:
        report.add("audit anchor", OK, f"[[hsm]] {a.anchor_hsm}: seq {cp.seq} at {cp.time}")
