"""End-of-session audit of everything the proxy wrote: no plaintext, AAD, secret or PIN anywhere,
and one request-log JSON line per request carrying its kmsRequestId.

Runs last (conftest orders it): it stops the shared server with SIGTERM so buffered output is on
disk, and asserts the server exits.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from conformance_helpers import (
    DENIED_REQUEST_IDS,
    LOGGED_REQUEST_IDS,
    PRINCIPAL,
    SENSITIVE,
    SIGNATURES,
)
from server_harness import run_cli

SKIP_DIRS = {"secrets", "tokens", "softhsm", "tls"}


def log_files(state_dir: Path) -> list[Path]:
    """Server output captures plus every file under audit/log locations of the state dir."""
    found = []
    for p in state_dir.rglob("*"):
        if not p.is_file() or SKIP_DIRS & set(p.relative_to(state_dir).parts[:-1]):
            continue
        rel = p.relative_to(state_dir)
        if (
            p.suffix in {".out", ".log", ".jsonl"}
            or rel.parts[0] in {"audit", "log", "logs"}
            or ".log." in p.name
        ):
            found.append(p)
    return found


def needles(label: str, value: bytes) -> list[tuple[str, bytes]]:
    """Search forms of one sensitive value: raw, standard and urlsafe base64, hex (prefixes for
    large values, which a log might truncate)."""
    head = value[:30]
    forms = [
        ("raw", head),
        ("base64", base64.b64encode(head)[:40]),
        ("urlsafe-base64", base64.urlsafe_b64encode(head)[:40]),
        ("hex", head.hex().encode()),
    ]
    return [(f"{label}/{kind}", n) for kind, n in forms if len(n) >= 16]


@pytest.fixture(scope="module")
def stopped(server):
    code = server.stop()
    return server, code


def test_server_exits_on_sigterm(stopped):
    _, code = stopped
    assert code is not None, "server ignored SIGTERM for 20 s and was killed"
    assert code in (0, -15), f"exit code {code}"


def test_no_plaintext_aad_or_secret_in_logs(stopped, state):
    server, _ = stopped
    files = log_files(state.path)
    assert server.log_path in files
    values: list[tuple[str, bytes]] = list(SENSITIVE)
    values += [(f"sigv4-secret-{i}", s.encode()) for i, s in enumerate(state.secrets_used)]
    pins = sorted((state.path / "secrets").glob("*.pin"))
    for pin_file in pins:
        pin = pin_file.read_text().strip()
        if len(pin) >= 6:
            values.append((f"pin:{pin_file.name}", pin.encode()))
    values += [(f"sigv4-signature-{i}", s.encode()) for i, s in enumerate(SIGNATURES)]
    hits = []
    for path in files:
        data = path.read_bytes()
        for label, value in values:
            forms = needles(label, value) if len(value) >= 16 else [(label, value)]
            for kind, needle in forms:
                if needle in data:
                    hits.append(f"{path.relative_to(state.path)}: {kind}")
    assert not hits, "sensitive values found in logs:\n" + "\n".join(sorted(set(hits))[:40])
    # Control: the same scan does find what *should* be logged (the caller's principal ARN).
    if LOGGED_REQUEST_IDS:
        assert any(PRINCIPAL.encode() in p.read_bytes() for p in files), "scan read no logs"


def find_request_ids(obj: object) -> list[str]:
    if isinstance(obj, dict):
        out = [v for k, v in obj.items() if k == "kmsRequestId" and isinstance(v, str)]
        for v in obj.values():
            out += find_request_ids(v)
        return out
    if isinstance(obj, list):
        return [x for v in obj for x in find_request_ids(v)]
    return []


def test_one_request_log_line_per_request(stopped):
    """Exactly one *request record* (a JSON line with kmsRequestId and a status/outcome) per
    request; other lines (e.g. an error report) may also carry the id for correlation."""
    server, _ = stopped
    if not LOGGED_REQUEST_IDS:
        pytest.skip("no request of this run was marked for the request-log check")
    any_line: dict[str, int] = {}
    records: dict[str, int] = {}
    for line in server.log_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        is_record = isinstance(doc, dict) and ({"status", "outcome", "result"} & set(doc))
        for request_id in set(find_request_ids(doc)):
            any_line[request_id] = any_line.get(request_id, 0) + 1
            if is_record:
                records[request_id] = records.get(request_id, 0) + 1
    missing = [r for r in LOGGED_REQUEST_IDS if r not in any_line]
    assert not missing, f"{len(missing)}/{len(LOGGED_REQUEST_IDS)} kmsRequestIds never logged"
    bad = {r: records.get(r, 0) for r in LOGGED_REQUEST_IDS if records.get(r, 0) != 1}
    assert not bad, (
        f"{len(bad)} requests without exactly one request record: {list(bad.items())[:5]}"
    )


def test_startup_lines(stopped):
    server, _ = stopped
    text = server.log_text()
    assert "xksproxy: listening on http://" + server.host in text, text[:2000]
    assert "xksproxy: key store" in text


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def test_request_records_carry_spec_fields(stopped):
    """xks-spec §9: kmsRequestId, kmsOperation, principal, key store, key id, result, latency."""
    server, _ = stopped
    if not LOGGED_REQUEST_IDS:
        pytest.skip("no request of this run was marked for the request-log check")
    wanted = set(LOGGED_REQUEST_IDS)
    records = [
        d
        for d in json_lines(server.log_text())
        if set(find_request_ids(d)) & wanted and {"status", "outcome", "result"} & set(d)
    ]
    assert records
    for doc in records:
        text = json.dumps(doc)
        assert PRINCIPAL in text, doc
        assert any(op in text for op in ("Encrypt", "Decrypt", "DescribeKey")), doc
        assert '"demo"' in text, f"no key store / key id in {doc}"
        assert any("latency" in k or "duration" in k for k in doc), f"no latency in {doc}"


def test_denials_name_the_rule(stopped):
    server, _ = stopped
    if not DENIED_REQUEST_IDS:
        pytest.skip("no denied request in this run")
    lines = json_lines(server.log_text())
    for request_id in DENIED_REQUEST_IDS:
        mine = [json.dumps(d) for d in lines if request_id in find_request_ids(d)]
        assert mine, f"denied request {request_id} not logged"
        assert any("conformance-denied-role" in m for m in mine), mine


def test_audit_log_verifies_and_detects_tampering(stopped, state, tmp_path):
    """The audit trail exists, `xksproxy audit verify` accepts it and rejects a changed copy."""
    if not LOGGED_REQUEST_IDS:
        pytest.skip("no request in this run")
    audit_dir = state.path / "audit"
    files = sorted(
        p
        for p in audit_dir.glob("xksproxy-audit.log*")
        if p.is_file() and p.suffix not in {".head", ".lock"}
    )
    assert files, f"no audit log under {audit_dir}: {sorted(audit_dir.glob('*'))}"
    done = run_cli("audit", "verify", "--config", str(state.config), *map(str, files))
    assert done.returncode == 0, done.stdout + done.stderr
    victim = max(files, key=lambda p: p.stat().st_size)
    lines = victim.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3, "audit log suspiciously short"
    copy = tmp_path / victim.name
    shutil.copy2(victim, copy)
    others = [str(p) for p in files if p != victim]
    done = run_cli("audit", "verify", "--config", str(state.config), *others, str(copy))
    assert done.returncode == 0, "control: an untouched copy must verify: " + done.stderr
    middle = len(lines) // 2
    lines[middle] = (
        lines[middle].replace(b"demo", b"dem0", 1)
        if b"demo" in lines[middle]
        else lines[middle][:-2] + b"X" + lines[middle][-1:]
    )
    copy.write_bytes(b"".join(lines))
    done = run_cli("audit", "verify", "--config", str(state.config), *others, str(copy))
    assert done.returncode != 0, "audit verify accepted a tampered log"
